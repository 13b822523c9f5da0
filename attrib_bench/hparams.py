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
:class:`~attrib_bench.errors.SettingError` line. Sources: the idea is click's and typer's (types
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
from typing import Any, Literal, Union

from attrib_bench.errors import SettingError

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
        return typing.get_type_hints(function)
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


class _Mismatch(Exception):
    """A value that does not fit one alternative of a union (internal)."""


def _convert(value: Any, annotation: Any, from_text: bool) -> Any:
    """``value`` as ``annotation`` (parsed first if ``from_text``); raises :class:`_Mismatch`."""
    if annotation is Any or annotation is _EMPTY:
        if from_text:
            try:
                return json.loads(value)
            except (ValueError, RecursionError):  # not JSON (or nested beyond Python's stack)
                return value
        return value
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        # None first (the text "none"), then the others in order; str last (it takes anything).
        ordered = sorted(options, key=lambda a: (a is not type(None), a is str))
        for option in ordered:
            try:
                return _convert(value, option, from_text)
            except _Mismatch:
                continue
        raise _Mismatch
    if annotation is type(None):
        if value is None or (from_text and str(value).strip().lower() in _NONE):
            return None
        raise _Mismatch
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if from_text and isinstance(value, str):
            value = value.strip()
        for option in allowed:
            try:
                if _convert(value, type(option), from_text) == option:
                    return option
            except _Mismatch:
                continue
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, (bool, _np().bool_)):
            return bool(value)
        if from_text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch
    if annotation is int:
        if from_text and isinstance(value, str):
            text = value.strip()
            if not _INT_TEXT.fullmatch(text):
                raise _Mismatch
            value = int(text)
        elif not _is_int(value):
            raise _Mismatch
        value = int(value)
        if not INT_MIN <= value <= INT_MAX:
            raise _Mismatch
        return value
    if annotation is float:
        if from_text and isinstance(value, str):
            text = value.strip()
            if not _FLOAT_TEXT.fullmatch(text):
                raise _Mismatch
            number = float(text)
            mantissa = text.lower().partition("e")[0]
            if number == 0 and any(c in "123456789" for c in mantissa):  # underflow to 0
                raise _Mismatch
        elif _is_int(value) or _is_float(value):
            try:
                number = float(value)
            except OverflowError:
                raise _Mismatch from None
            if _is_int(value) and number != int(value):  # an int a float cannot hold exactly
                raise _Mismatch
        else:
            raise _Mismatch
        if not math.isfinite(number):
            raise _Mismatch
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is not None and _is_sequence(origin):
        args = typing.get_args(annotation)
        if from_text and isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except (ValueError, RecursionError):
                    raise _Mismatch from None
                if not isinstance(items, list):
                    raise _Mismatch
            else:
                items = [t.strip() for t in text.split(",")]
                if not all(items):  # "", "1,,2", "1,": no empty items ([] is the empty list)
                    raise _Mismatch
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise _Mismatch
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, int]: fixed
            if len(items) != len(args):
                raise _Mismatch
            return tuple(_convert(v, a, from_text and isinstance(v, str))
                         for v, a in zip(items, args, strict=True))
        (item,) = args[:1] or (Any,)
        return [_convert(v, item, from_text and isinstance(v, str)) for v in items]
    if _is_module_type(annotation):
        if isinstance(value, str):  # a module path, resolved by the method
            return value.strip() if from_text else value
        if isinstance(value, annotation):
            return value
        raise _Mismatch
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise _Mismatch
    return value  # an annotation we cannot check (a Protocol, a TypeVar): taken as given


def _np() -> Any:
    import numpy as np

    return np


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, _np().integer)) and not isinstance(value, bool)


def _is_float(value: Any) -> bool:
    return isinstance(value, (float, _np().floating))


def convert(value: Any, spec: HParam, owner: str, *, from_text: bool = False) -> Any:
    """``value`` checked (and parsed, ``from_text``) against ``spec``; one line if it does not fit.

    ``owner`` names the thing in messages, e.g. "method 'intgrad'".
    """
    try:
        return _convert(value, spec.annotation, from_text)
    except _Mismatch:
        shown = " ".join(repr(value).split())  # one line, whatever the value's repr
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        rule = next((r for t, r in _RULES if spec.annotation is t), "")
        raise SettingError(f"{owner}: {spec.name} must be {spec.type_name}, got "
                           f"{shown}{rule}") from None


#: What a value of a plain declared type must look like, for the refusal's line.
_RULES: tuple[tuple[Any, str], ...] = (
    (int, ": write an integer within int64 (digits, no point)"),
    (float, ": write a finite number such as 0.5 or 1e-3"),
    (bool, ": write true/false, yes/no, on/off or 1/0"),
)


def resolve(owner: str, factory: Callable[..., Any], given: Mapping[str, Any], *,
            from_text: bool = False) -> dict[str, Any]:
    """The full configuration: every hyper-parameter's default, overridden by ``given``.

    Unknown keys are one :class:`SettingError` line with the close matches (unless the factory
    takes ``**kwargs``, whose extra keys pass through unchecked). Values are checked against the
    declared types (parsed from text first if ``from_text``). The values' ranges are the
    factory's to check when it is built.
    """
    specs = hparams_of(factory)
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
        config[key] = convert(value, specs[key], owner, from_text=from_text) if key in specs \
            else value
    return config


def describe(factory: Callable[..., Any], skip: tuple[str, ...] = ()) -> str:
    """``"n_steps: int = 20, rule: 'gausslegendre' | ... = 'gausslegendre'"`` for listings."""
    return ", ".join(str(s) for s in hparams_of(factory).values() if s.name not in skip) or "-"


def to_json(config: Mapping[str, Any]) -> str:
    """A configuration as canonical JSON (sorted keys; modules and other objects by ``str``)."""
    return json.dumps(dict(config), sort_keys=True, default=str)
