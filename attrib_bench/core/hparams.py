"""Hyper-parameters from one place: the factory's signature (names, types, defaults).

A method's or metric's hyper-parameters are the keyword parameters of its constructor (or of
the registered function, after ``model, inputs, target``), with their type hints and defaults.
:func:`hparams_of` reads them, :func:`resolve` turns what a user gave (Python values, or text from
``--set NAME.KEY=VALUE``) into the **full** configuration, defaults included, checking every value
against its declared type, and the listings (:func:`describe`) show them. There are no
hand-written copies to drift from the code: a changed default changes the resolved configuration,
hence the results' ``method_config``/``metric_config`` columns and the attribution-cache key.

Text values are parsed by the declared type (surrounding whitespace ignored, except by ``str``):
``bool`` takes true/false/1/0/yes/no/on/off (any case), ``int`` an ASCII integer (an optional
sign, digits, ``_`` between digits as in Python: ``10_000``) that fits in int64, ``float`` an
ASCII decimal number (``0.5``, ``1e-3``, an int) that is finite, ``None`` takes none/null,
``str`` takes the text as it is, ``Literal[...]`` one of its values, sequences a JSON list or
comma-separated items (no empty item: ``[]`` is the empty list; fixed-length tuples check their
length), and ``nn.Module`` (a layer) a module path such as ``layer4.2`` that the method resolves
on its model. A parameter without a type hint takes a JSON value, else the text. Python values
are checked, never converted by guessing: an ``int`` (or NumPy integer, not a bool) where an
int is declared, an int or float (NumPy's too) that is finite and exact as a float where a
float is declared, a ``bool`` (or NumPy bool) where a bool is. Anything else — ``"1.5"`` for an
int, ``"true"`` for a number, NaN, inf, an overflow, digits of other scripts (``"١٢"``) — is one
:class:`~attrib_bench.core.errors.SettingError` line.

A number's range is declared with its type, in the same signature, and checked by the same
converter: ``max_batch: PositiveInt``, ``fraction: Annotated[float, Between(0, 1,
open_lo=True)]``, ``num_grids: Annotated[int, AtLeast(1, "grids to draw")]`` (:class:`Between`,
:func:`AtLeast`, :func:`AtMost`, :func:`Positive`). The registry checks them before it calls a
factory, :func:`resolve` when a run is configured, and a class built directly checks its own in
``__init__`` with :func:`check_settings`; one refusal line, whichever path: "num_grids must be
an int >= 1 (grids to draw), got 0". Sources: the idea is click's and typer's (types
from the signature); the code is written here because neither parses into ``Literal`` / unions
/ module paths.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from attrib_bench.core.errors import SettingError

#: Parameters of a method factory that are not hyper-parameters (the model, a function's batch).
NOT_HPARAMS = frozenset({"self", "model", "inputs", "target"})

_EMPTY = inspect.Parameter.empty
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}
#: An int as text: ASCII digits, an optional sign, ``_`` between digits (Python's own syntax).
_INT_TEXT = re.compile(r"[+-]?[0-9]+(_[0-9]+)*")
#: A float as text: ASCII digits with an optional point and exponent (no nan, inf, hex).
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+(_[0-9]+)*(\.([0-9]+(_[0-9]+)*)?)?|\.[0-9]+(_[0-9]+)*)"
                         r"([eE][+-]?[0-9]+)?")
#: The int range a setting may take: what torch and NumPy hold (int64).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: its name, declared type (``Any`` if none) and default."""

    name: str
    annotation: Any
    default: Any

    @property
    def type_name(self) -> str:
        return type_name(self.annotation)

    def __str__(self) -> str:
        return f"{self.name}: {self.type_name} = {self.default!r}"


def unwrap(factory: Callable[..., Any]) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The function or class behind ``functools.partial`` layers, and the keywords they bind."""
    bound: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        bound = {**factory.keywords, **bound}
        factory = factory.func
    return factory, bound


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    """Resolved type hints of a function or of a class's ``__init__`` ({} if unresolvable)."""
    function = target.__init__ if inspect.isclass(target) else target
    function = getattr(function, "function", function)
    try:
        return typing.get_type_hints(function, include_extras=True)  # keep Annotated ranges
    except Exception:  # noqa: BLE001 - a hint that does not resolve is treated as untyped
        return {}


def hparams_of(factory: Callable[..., Any]) -> dict[str, HParam]:
    """The hyper-parameters of a registered factory, in signature order.

    A class: its ``__init__``'s parameters with defaults; a :class:`FunctionMethod` class: its
    function's keyword parameters after (model, inputs, target), plus ``max_batch`` and ``seed``;
    ``functools.partial`` presets (``occ5``) show their bound values as defaults.
    """
    target, bound = unwrap(factory)
    found: dict[str, HParam] = {}
    sources = [target]
    function = getattr(target, "function", None)  # a registered plain function's class
    if function is not None:
        sources = [function, target]
    elif isinstance(target, type):
        sources = _init_chain(target)
    for source in sources:
        try:
            parameters = inspect.signature(source).parameters.values()
        except (TypeError, ValueError):
            continue
        hints = _hints(source)
        for p in parameters:
            if (p.name in NOT_HPARAMS or p.name in found or p.default is _EMPTY
                    or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)):
                continue
            found[p.name] = HParam(p.name, hints.get(p.name, Any), bound.get(p.name, p.default))
    return found


def _init_chain(cls: type) -> list[Any]:
    """``cls`` and, while an ``__init__`` passes ``**kwargs`` on, the base classes whose own
    ``__init__`` receives them: a plugin's ``__init__(self, model, *, power=1.0, **kw)`` that
    calls ``super().__init__(model, **kw)`` takes its base's ``max_batch`` and ``seed`` too."""
    chain: list[Any] = [cls]
    for base in cls.__mro__[1:]:
        init = chain[-1].__init__ if isinstance(chain[-1], type) else None
        try:
            passes_on = init is not None and any(
                p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            passes_on = False
        if not passes_on or base is object:
            break
        if "__init__" in vars(base):
            chain.append(base)
    return chain


def accepts_any(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` takes ``**kwargs`` (then unknown keys cannot be refused up front)."""
    target, _ = unwrap(factory)
    if isinstance(target, type) and not hasattr(target, "function"):
        target = _init_chain(target)[-1]  # where a **kwargs chain ends, if it does
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD for p in parameters) and not hasattr(target, "function")


def type_name(annotation: Any) -> str:
    """A short readable name: ``int``, ``bool``, ``float | None``, ``'a' | 'b'``, ``layer``."""
    if annotation is Any or annotation is _EMPTY:
        return "any"
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # a range is shown in a refusal, not in the listings
        return type_name(typing.get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None and _is_sequence(origin):
        args = typing.get_args(annotation)
        return f"list[{type_name(args[0]) if args else 'any'}]"
    if _is_module_type(annotation):
        return "layer"
    return getattr(annotation, "__name__", str(annotation))


def _is_sequence(origin: Any) -> bool:
    return isinstance(origin, type) and issubclass(origin, collections.abc.Sequence) \
        and not issubclass(origin, (str, bytes))


def _is_module_type(annotation: Any) -> bool:
    try:
        from torch import nn
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(annotation, type) and issubclass(annotation, nn.Module)


# ----------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Between:
    """The range a number setting must lie in, declared with its type in the signature:
    ``n_steps: Annotated[int, Between(1, 4096)] = 20``, ``p1: Annotated[float, Between(0, 1,
    open_lo=True)] = 0.1``.

    ``lo``/``hi`` None: unbounded on that side; ``open_lo``/``open_hi``: that bound itself is
    excluded (``Between(0, 1, open_lo=True)`` is (0, 1]). ``means`` says what the number is
    ("grids to draw"); a refusal shows it in parentheses. Checked by :func:`convert` after the
    type, so the registry, :func:`resolve` and :func:`check_settings` all refuse a value out of
    range in one line: "num_grids must be an int >= 1 (grids to draw), got 0".
    """

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    means: str = ""

    def admits(self, value: float) -> bool:
        """Whether ``value`` (an int, or a finite float) lies in the range."""
        above = self.lo is None or (value > self.lo if self.open_lo else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)
        return above and below

    def describe(self, kind: Any) -> str:
        """What a value must be, for a refusal: "a positive int", "an int >= 1", "a number in
        (0, 1]" (``kind``: the declared type, int or float), then ``means`` in parentheses."""
        noun = "an int" if kind is int else "a number"
        if self.lo == 0 and self.open_lo and self.hi is None:
            text = f"a positive {'int' if kind is int else 'number'}"
        elif self.hi is None:
            text = noun if self.lo is None else f"{noun} {'>' if self.open_lo else '>='} {self.lo}"
        elif self.lo is None:
            text = f"{noun} {'<' if self.open_hi else '<='} {self.hi}"
        else:
            text = (f"{noun} in {'(' if self.open_lo else '['}{self.lo}, {self.hi}"
                    f"{')' if self.open_hi else ']'}")
        return f"{text} ({self.means})" if self.means else text


def AtLeast(lo: float, means: str = "") -> Between:
    """``value >= lo``: ``num_grids: Annotated[int, AtLeast(1, "grids to draw")]``."""
    return Between(lo, None, means=means)


def AtMost(hi: float, means: str = "") -> Between:
    """``value <= hi``: ``n_steps: Annotated[int, Positive(), AtMost(4096)]``."""
    return Between(None, hi, means=means)


def Positive(means: str = "") -> Between:
    """``value > 0``, refused as "a positive int" or "a positive number" (with ``means``)."""
    return Between(0, None, open_lo=True, means=means)


#: An int > 0 (a count, a batch size): refused as "NAME must be a positive int, got 0".
PositiveInt = Annotated[int, Positive()]
#: A float > 0 (a width, a standard deviation): refused as "... must be a positive number".
PositiveFloat = Annotated[float, Positive()]


# ----------------------------------------------------------------------------- conversion


class _Mismatch(Exception):
    """A value that does not fit one alternative of a union (internal)."""


class _Refused(_Mismatch):
    """A value of the declared type outside a declared :class:`Between` (internal).

    ``expected`` says what it must be ("a positive int"); ``value`` is the value as converted
    (the refusal shows 0, not the text "0").
    """

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(expected)
        self.expected, self.value = expected, value


#: ``converter(value, annotation, from_text) -> value``, raising :class:`_Mismatch`.
Converter = Callable[[Any, Any, bool], Any]


def _convert(value: Any, annotation: Any, from_text: bool) -> Any:
    """``value`` as ``annotation`` (parsed first if ``from_text``); raises :class:`_Mismatch`."""
    return _converter_for(annotation)(value, annotation, from_text)


def _converter_for(annotation: Any) -> Converter:
    """The converter of ``annotation``'s kind: by its typing construct (:data:`_BY_ORIGIN`:
    Annotated, a union, Literal), by the plain type (:data:`_BY_TYPE`), else a sequence, a
    layer, another class, or an annotation we cannot check (a Protocol, a TypeVar)."""
    if annotation is Any or annotation is _EMPTY:
        return _to_any
    origin = typing.get_origin(annotation)
    if origin in _BY_ORIGIN:
        return _BY_ORIGIN[origin]
    if isinstance(annotation, type) and annotation in _BY_TYPE:
        return _BY_TYPE[annotation]
    if origin is not None and _is_sequence(origin):
        return _to_sequence
    if _is_module_type(annotation):
        return _to_layer
    if isinstance(annotation, type):
        return _to_instance
    return _as_given


def _to_any(value: Any, annotation: Any, from_text: bool) -> Any:
    """No declared type: text is its JSON value if it parses (else the text); a value as is."""
    if not from_text:
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # not JSON (or nested beyond Python's stack)
        return value


def _to_annotated(value: Any, annotation: Any, from_text: bool) -> Any:
    """``Annotated[T, Between(...), ...]``: ``value`` as T, then within each range in order."""
    base, *rules = typing.get_args(annotation)
    converted = _convert(value, base, from_text)
    for rule in rules:
        if isinstance(rule, Between) and converted is not None and not rule.admits(converted):
            raise _Refused(rule.describe(base), converted)
    return converted


def _to_union(value: Any, annotation: Any, from_text: bool) -> Any:
    """The first alternative that takes ``value``: None first (the text "none"), then the
    others in order, str last (it takes anything). A value of a right type but out of its range
    is refused as that: "a positive int or None"."""
    options = typing.get_args(annotation)
    refused: list[_Refused] = []
    for option in sorted(options, key=lambda a: (a is not type(None), a is str)):
        try:
            return _convert(value, option, from_text)
        except _Refused as exc:
            refused.append(exc)
        except _Mismatch:
            continue
    if refused:
        expected = [r.expected for r in refused] + (["None"] if type(None) in options else [])
        raise _Refused(" or ".join(expected), refused[0].value)
    raise _Mismatch


def _to_none(value: Any, annotation: Any, from_text: bool) -> None:
    if value is None or (from_text and str(value).strip().lower() in _NONE):
        return None
    raise _Mismatch


def _to_literal(value: Any, annotation: Any, from_text: bool) -> Any:
    """The Literal's value that ``value`` is (as that value's type: "3" is 3 for ``Literal[3]``)."""
    if from_text and isinstance(value, str):
        value = value.strip()
    for option in typing.get_args(annotation):
        try:
            if _convert(value, type(option), from_text) == option:
                return option
        except _Mismatch:
            continue
    raise _Mismatch


def _to_bool(value: Any, annotation: Any, from_text: bool) -> bool:
    if isinstance(value, (bool, _np().bool_)):
        return bool(value)
    word = value.strip().lower() if from_text and isinstance(value, str) else None
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise _Mismatch


def _to_int(value: Any, annotation: Any, from_text: bool) -> int:
    """An int (or NumPy integer, not a bool), or its ASCII text, within int64."""
    if from_text and isinstance(value, str):
        text = value.strip()
        if not _INT_TEXT.fullmatch(text):
            raise _Mismatch
        value = int(text)
    elif not _is_int(value):
        raise _Mismatch
    number = int(value)
    if not INT_MIN <= number <= INT_MAX:
        raise _Mismatch
    return number


def _to_float(value: Any, annotation: Any, from_text: bool) -> float:
    """A finite float from an int or float (NumPy's too) or from ASCII decimal text."""
    if from_text and isinstance(value, str):
        number = _float_from_text(value.strip())
    elif _is_int(value) or _is_float(value):
        number = _float_from_number(value)
    else:
        raise _Mismatch
    if not math.isfinite(number):
        raise _Mismatch
    return number


def _float_from_text(text: str) -> float:
    if not _FLOAT_TEXT.fullmatch(text):
        raise _Mismatch
    number = float(text)
    mantissa = text.lower().partition("e")[0]
    if number == 0 and any(c in "123456789" for c in mantissa):  # underflow to 0
        raise _Mismatch
    return number


def _float_from_number(value: Any) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise _Mismatch from None
    if _is_int(value) and number != int(value):  # an int a float cannot hold exactly
        raise _Mismatch
    return number


def _to_str(value: Any, annotation: Any, from_text: bool) -> str:
    if isinstance(value, str):
        return value
    raise _Mismatch


def _to_sequence(value: Any, annotation: Any, from_text: bool) -> list[Any] | tuple[Any, ...]:
    """A list of the item type; a fixed-length tuple (``tuple[int, int]``) of its types."""
    items = _sequence_items(value, from_text)
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and args and args[-1] is not Ellipsis:
        if len(items) != len(args):
            raise _Mismatch
        return tuple(_convert(v, a, from_text and isinstance(v, str))
                     for v, a in zip(items, args, strict=True))
    (item,) = args[:1] or (Any,)
    return [_convert(v, item, from_text and isinstance(v, str)) for v in items]


def _sequence_items(value: Any, from_text: bool) -> list[Any]:
    """The items of a list or tuple, of a JSON list, or of comma-separated text."""
    if not (from_text and isinstance(value, str)):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise _Mismatch
    text = value.strip()
    if not text.startswith("["):
        items = [t.strip() for t in text.split(",")]
        if not all(items):  # "", "1,,2", "1,": no empty items ([] is the empty list)
            raise _Mismatch
        return items
    try:
        items = json.loads(text)
    except (ValueError, RecursionError):
        raise _Mismatch from None
    if not isinstance(items, list):
        raise _Mismatch
    return items


def _to_layer(value: Any, annotation: Any, from_text: bool) -> Any:
    """A layer: the module itself, or a module path such as "layer4.2" the method resolves."""
    if isinstance(value, str):
        return value.strip() if from_text else value
    if isinstance(value, annotation):
        return value
    raise _Mismatch


def _to_instance(value: Any, annotation: Any, from_text: bool) -> Any:
    if isinstance(value, annotation):
        return value
    raise _Mismatch


def _as_given(value: Any, annotation: Any, from_text: bool) -> Any:
    return value


#: Converters of the typing constructs, by ``typing.get_origin``.
_BY_ORIGIN: dict[Any, Converter] = {
    Annotated: _to_annotated, Union: _to_union, types.UnionType: _to_union, Literal: _to_literal}
#: Converters of the plain types.
_BY_TYPE: dict[type, Converter] = {
    type(None): _to_none, bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _np() -> Any:
    import numpy as np

    return np


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, _np().integer)) and not isinstance(value, bool)


def _is_float(value: Any) -> bool:
    return isinstance(value, (float, _np().floating))


def _plain(annotation: Any) -> Any:
    """``T`` of ``Annotated[T, ...]``; any other annotation as it is."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated \
        else annotation


def _shown(value: Any) -> str:
    """``repr(value)`` on one line, at most 60 characters."""
    shown = " ".join(repr(value).split())
    return shown if len(shown) <= 60 else shown[:57] + "..."


def convert(value: Any, spec: HParam, owner: str, *, from_text: bool = False,
            error: type[SettingError] = SettingError) -> Any:
    """``value`` checked (and parsed, ``from_text``) against ``spec``'s type and ranges.

    ``owner`` names the thing in messages, e.g. "method 'intgrad'". A value that does not fit
    raises one ``error`` line (:func:`setting_error` gives the owner's): the wrong type as
    "n_steps must be int, got 'two': write an integer ...", a value out of a declared
    :class:`Between` as "num_grids must be an int >= 1 (grids to draw), got 0".
    """
    try:
        return _convert(value, spec.annotation, from_text)
    except _Refused as exc:
        raise error(f"{owner}: {spec.name} must be {exc.expected}, got "
                    f"{_shown(exc.value)}") from None
    except _Mismatch:
        rule = next((r for t, r in _RULES if _plain(spec.annotation) is t), "")
        raise error(f"{owner}: {spec.name} must be {spec.type_name}, got "
                    f"{_shown(value)}{rule}") from None


#: What a value of a plain declared type must look like, for the refusal's line.
_RULES: tuple[tuple[Any, str], ...] = (
    (int, ": write an integer within int64 (digits, no point)"),
    (float, ": write a finite number such as 0.5 or 1e-3"),
    (bool, ": write true/false, yes/no, on/off or 1/0"),
)


def violation(value: Any, annotation: Any) -> str | None:
    """What ``value`` must be when it does not fit ``annotation``: a declared range ("an int
    >= 1"), or the type's name (``type_name``) for a value of another type; None when it fits.

    For a check whose refusal has its own wording, such as a dataset option that names its flag;
    settings of a factory go through :func:`convert` instead.
    """
    try:
        _convert(value, annotation, False)
    except _Refused as exc:
        return exc.expected
    except _Mismatch:
        return type_name(annotation)
    return None


def setting_error(factory: Callable[..., Any]) -> type[SettingError]:
    """The error a refused setting of ``factory`` raises: its class's ``setting_error`` (a
    method's :class:`~attrib_bench.core.errors.MethodSettingError`, a metric's
    :class:`~attrib_bench.core.errors.MetricSettingError`, so that ``except MethodError`` catches a
    method's refusal too), else :class:`~attrib_bench.core.errors.SettingError`."""
    target, _ = unwrap(factory)
    error = getattr(target, "setting_error", SettingError)
    return error if isinstance(error, type) and issubclass(error, SettingError) else SettingError


def check_settings(owner: str, factory: Callable[..., Any], values: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """``values`` checked against, and converted to, the types and ranges of ``factory``'s
    signature: what :meth:`Registry.create <attrib_bench.core.registry.Registry.create>` applies
    before it calls a factory, and what a class built directly in Python applies to its own
    settings in ``__init__`` (``factory`` is the class that declares them, not ``type(self)``,
    which may be a subclass with another signature).

    Keys that are not hyper-parameters pass as they are; NumPy ints become ints, tuples lists.
    ``owner`` names the thing in messages ("metric 'pixel-removal'"); a refusal is one
    :func:`setting_error` line.
    """
    specs = hparams_of(factory)
    error = setting_error(factory)
    return {key: convert(value, specs[key], owner, error=error) if key in specs else value
            for key, value in values.items()}


def resolve(owner: str, factory: Callable[..., Any], given: Mapping[str, Any], *,
            from_text: bool = False) -> dict[str, Any]:
    """The full configuration: every hyper-parameter's default, overridden by ``given``.

    Unknown keys are one :class:`SettingError` line with the close matches (unless the factory
    takes ``**kwargs``, whose extra keys pass through unchecked). Values are checked against the
    declared types and ranges (parsed from text first if ``from_text``); a refusal is one
    :func:`setting_error` line. Rules that are not a type or a range (a stride no larger than
    the patch) are the factory's to check when it is built.
    """
    specs = hparams_of(factory)
    error = setting_error(factory)
    if not accepts_any(factory):
        unknown = [k for k in given if k not in specs]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, specs, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "none is close"
            raise SettingError(f"{owner} has no hyper-parameter {key!r}: {hint} (it has "
                               f"{', '.join(specs) or 'none'})")
    config = {name: spec.default for name, spec in specs.items()}
    for key, value in given.items():
        config[key] = convert(value, specs[key], owner, from_text=from_text, error=error) \
            if key in specs else value
    return config


def describe(factory: Callable[..., Any], skip: tuple[str, ...] = ()) -> str:
    """``"n_steps: int = 20, rule: 'gausslegendre' | ... = 'gausslegendre'"`` for listings."""
    return ", ".join(str(s) for s in hparams_of(factory).values() if s.name not in skip) or "-"


def to_json(config: Mapping[str, Any]) -> str:
    """A configuration as canonical JSON (sorted keys; modules and other objects by ``str``)."""
    return json.dumps(dict(config), sort_keys=True, default=str)
