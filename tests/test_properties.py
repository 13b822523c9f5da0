"""Property-based tests (Hypothesis) over the input checks and the ``--set`` parser.

The one property everywhere: what a user hands in is either **accepted and equal to the value
they meant** (an image batch passed through as it is, a target as the class indices it names, a
setting as its typed value), or **refused with an AttribBenchError whose message is one line** —
never another exception type, never a silent conversion ("1.5" to an int, "true" to a number, an
overflow that wraps or becomes inf).

Inputs: image batches (shapes, dtypes from bool to float64, ranges, NaN/inf, channel counts,
memory layouts, non-tensors), targets (ints of every kind, bools, floats, out of range, wrong
length), ``--set`` items and their values (any unicode text, numbers written every way, ``=``
inside values, whitespace, unknown names) and Python values of the declared types.

Fast by design (a few seconds): modest ``max_examples``, no deadline, no example database, and
derandomized, so that a failure reproduces. ``HYPOTHESIS_PROFILE=explore`` draws 10× more
examples at random (for hunting, not for CI).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Literal

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

from attrib_bench.core import hparams
from attrib_bench.core.checks import check_images, check_range, check_target
from attrib_bench.core.errors import AttribBenchError, SettingError
from attrib_bench.core.registry import METHODS, METRICS, create_method
from attrib_bench.runners.settings import parse_settings, resolve_method, run_config

EXPLORE = os.environ.get("HYPOTHESIS_PROFILE") == "explore"


def _settings(examples: int) -> settings:
    return settings(max_examples=examples * (10 if EXPLORE else 1), deadline=None,
                    database=None, derandomize=not EXPLORE,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def one_line_error(exc: BaseException, kind: type[AttribBenchError] = AttribBenchError) -> str:
    """``exc`` must be a ``kind`` whose message is one non-empty line; returns the message."""
    assert isinstance(exc, kind), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert len(message) < 400, message
    return message


INT64 = (-(2**63), 2**63 - 1)


# ---------------------------------------------------------------------------------------------
# Image batches


class Tiny(nn.Module):
    """A tiny CNN: (B, 3, H, W) → (B, 4) logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


MODELS = {dtype: Tiny().to(dtype).eval() for dtype in (torch.float32, torch.float64)}
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
          torch.int32, torch.int64, torch.bool, torch.complex64]
FLOAT_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


@st.composite
def image_batches(draw):
    """An image batch as a user might hand it in, and whether it is a valid one."""
    rank = draw(st.sampled_from([4, 4, 4, 4, 3, 2, 5, 0]))
    shape = [draw(st.integers(0, 3))] + [draw(st.integers(0, 5)) for _ in range(rank - 1)]
    if rank >= 2:
        shape[1] = draw(st.sampled_from([3, 3, 3, 1, 4]))
    dtype = draw(st.sampled_from(DTYPES))
    values = draw(st.sampled_from(["unit", "unit", "unit", "byte", "negative", "above",
                                   "nan", "inf", "edges"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    if values == "byte":
        x = (x * 255).round()
    elif values == "negative":
        x = x - 0.5
    elif values == "above":
        x = x + draw(st.sampled_from([1e-7, 1e-5, 0.5, 300.0]))
    elif values == "edges":
        x = (x > 0.5).double()
    if values in ("nan", "inf") and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = math.nan if values == "nan" else -math.inf
    if dtype.is_complex:
        x = x.to(dtype)
    elif dtype == torch.bool:
        x = x > 0.5
    elif not dtype.is_floating_point:
        x = x.nan_to_num(0, 0, 0).clamp(-100, 100).to(dtype)
    else:
        x = x.to(dtype)
    layout = draw(st.sampled_from(["plain", "plain", "channels_last", "strided", "numpy",
                                   "list", "sparse", "grad", "meta"]))
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided" and x.dim() == 4:
        x = torch.cat([x, x], dim=3)[..., ::2]  # a non-contiguous view, same values
    elif layout == "grad" and x.is_floating_point():
        x = x.clone().requires_grad_(True)
    elif layout == "numpy" and dtype not in (torch.bfloat16,):
        x = x.numpy()
    elif layout == "list":
        x = x.tolist()
    elif layout == "sparse" and x.dim() >= 1:
        x = x.to_sparse()
    elif layout == "meta":
        x = x.to("meta")
    model_dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return x, model_dtype


def _valid(x: object, model_dtype: torch.dtype) -> bool:
    """The oracle: what a method must accept (and nothing else)."""
    if (not isinstance(x, torch.Tensor) or x.layout != torch.strided or x.dim() != 4
            or x.device.type == "meta"):
        return False
    b, c, h, w = x.shape
    if c != 3 or h == 0 or w == 0 or x.dtype != model_dtype:
        return False
    if x.numel() == 0:
        return True
    values = x.detach().double()
    return bool(torch.isfinite(values).all()) and bool(
        (values >= -1e-6).all() and (values <= 1 + 1e-6).all())


@_settings(120)
@given(image_batches(), st.sampled_from(["grad", "random"]))
@example((torch.zeros(1, 3, 2, 2, dtype=torch.float16), torch.float32), "grad")
@example((torch.full((1, 3, 2, 2), 1 + 1e-7), torch.float32), "grad")
@example((torch.zeros(2, 3, 0, 4), torch.float32), "grad")
def test_an_image_batch_is_explained_as_it_is_or_refused_in_one_line(batch, name):
    x, model_dtype = batch
    method = create_method(name, MODELS[model_dtype])
    valid = _valid(x, model_dtype)
    try:
        maps = method.attribute(x, 0)
    except Exception as exc:  # noqa: BLE001 - the property is about the exception's type
        one_line_error(exc)
        assert not valid, f"a valid batch was refused: {exc}"
        return
    assert valid, "an invalid batch was accepted"
    assert maps.shape == (x.shape[0], *x.shape[2:]) and maps.dtype == x.dtype


@_settings(60)
@given(image_batches())
def test_check_images_returns_the_batch_itself_or_one_line(batch):
    """The cheap check models call in their forward: no copy, no conversion, one line."""
    x, _ = batch
    try:
        out = check_images(x)
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc)
        return
    assert out is x and x.dim() == 4 and x.shape[1] == 3 and x.is_floating_point()
    if x.device.type != "meta" and torch.isfinite(x.detach().double()).all():
        try:
            assert check_range(x) is x
        except AttribBenchError as exc:
            one_line_error(exc)


# ---------------------------------------------------------------------------------------------
# Targets

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
TORCH_INT_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
                    torch.uint16, torch.uint32, torch.uint64]


def _np_int(dtype: type) -> st.SearchStrategy:
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max)).map(dtype)


@st.composite
def targets(draw, batch: int):
    """(target, intended, named): the class indices (batch,) the user means and the values
    the target names (a scalar names one value, whatever the batch); None, None where it has
    no valid meaning."""
    small = st.integers(-3, 12)
    anyint = st.one_of(small, st.integers(-(2**70), 2**70))
    kind = draw(st.sampled_from(["int", "npint", "tensor0", "array0", "npints", "tensor",
                                 "bool", "float", "npfloat", "floattensor", "list", "other",
                                 "wronglength"]))
    if kind == "int":
        v = draw(anyint)
        return v, [v] * batch, [v]
    if kind == "npint":
        dtype = draw(st.sampled_from(INT_DTYPES))
        v = draw(st.one_of(small.filter(lambda i: i >= 0 or np.iinfo(dtype).min < 0).map(dtype),
                           _np_int(dtype)))
        return v, [int(v)] * batch, [int(v)]
    if kind == "tensor0":
        dtype = draw(st.sampled_from(TORCH_INT_DTYPES))
        info = torch.iinfo(dtype)
        v = draw(st.integers(max(info.min, -3), min(info.max, 12))
                 | st.integers(info.min, 2**64 - 1 if dtype == torch.uint64 else info.max))
        return torch.tensor(v, dtype=dtype), [v] * batch, [v]
    if kind == "array0":
        dtype = draw(st.sampled_from(INT_DTYPES))
        v = draw(_np_int(dtype))
        return np.array(v, dtype=dtype), [int(v)] * batch, [int(v)]
    if kind in ("npints", "tensor", "wronglength"):
        length = batch if kind != "wronglength" else draw(
            st.integers(0, 4).filter(lambda n: n != batch))
        dtype = draw(st.sampled_from(INT_DTYPES))
        info = np.iinfo(dtype)
        values = draw(st.lists(st.integers(max(int(info.min), -3), min(int(info.max), 12))
                               | _np_int(dtype).map(int), min_size=length, max_size=length))
        array = np.array(values, dtype=dtype)
        intended = values if kind != "wronglength" else None
        if kind == "tensor" and dtype not in (np.uint16, np.uint32, np.uint64):
            return torch.from_numpy(array), intended, intended
        return array, intended, intended
    if kind == "bool":
        return draw(st.sampled_from([True, False, np.True_, torch.tensor(True),
                                     torch.tensor([True] * batch)])), None, None
    if kind == "float":
        return draw(st.floats(allow_nan=True, allow_infinity=True)), None, None
    if kind == "npfloat":
        return np.float64(draw(st.integers(0, 9))), None, None
    if kind == "floattensor":
        dtype = draw(st.sampled_from([torch.float32, torch.float16]))
        return torch.zeros(batch, dtype=dtype), None, None
    if kind == "list":
        return draw(st.lists(small, min_size=batch, max_size=batch)), None, None
    return draw(st.sampled_from([None, "3", b"3", object(), 3 + 0j])), None, None


@_settings(200)
@given(st.integers(0, 3).flatmap(lambda b: st.tuples(st.just(b), targets(b))),
       st.sampled_from([1, 4, 10]))
@example((2, (np.int64(3), [3, 3], [3])), 10)
@example((2, (2**64, [2**64] * 2, [2**64])), 10)
@example((2, (np.uint64(2**64 - 1), [2**64 - 1] * 2, [2**64 - 1])), 10)
def test_a_target_is_the_class_indices_it_names_or_one_line(case, classes):
    batch, (target, intended, named) = case
    try:
        out = check_target(target, batch, classes)
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc)
        assert named is None or any(not 0 <= v < classes for v in named), \
            f"refused {target!r} meaning {intended}: {exc}"
        return
    assert named is not None and all(0 <= v < classes for v in named), f"accepted {target!r}"
    assert out.dtype == torch.long and out.tolist() == intended


@_settings(30)
@given(targets(2))
def test_attribute_takes_the_same_targets_as_the_check(case):
    target, intended, _ = case
    method = create_method("grad", MODELS[torch.float32])
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    try:
        maps = method.attribute(x, target)
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc)
        assert intended is None or any(not 0 <= v < 4 for v in intended)
        return
    assert intended is not None and all(0 <= v < 4 for v in intended)
    torch.testing.assert_close(maps, method.attribute(x, torch.tensor(intended)))


# ---------------------------------------------------------------------------------------------
# Setting values as text (--set NAME.KEY=VALUE)

def _spec(annotation, default=None) -> hparams.HParam:
    return hparams.HParam("key", annotation, default)


def _parse(text: str, annotation):
    """Parsed value, or the SettingError (checked to be one line)."""
    try:
        return hparams.convert(text, _spec(annotation), "method 'm'", from_text=True), None
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc, SettingError)
        return None, exc


def _pad(draw, text: str) -> str:
    space = st.sampled_from(["", " ", "  ", "\t"])
    return draw(space) + text + draw(space)


@st.composite
def written_ints(draw):
    """(text, n): an int as a user may write it, and its value."""
    n = draw(st.one_of(st.integers(-1000, 1000), st.integers(*INT64),
                       st.integers(-(2**80), 2**80)))
    text = str(n)
    if draw(st.booleans()) and n >= 0:
        text = "+" + text
    if draw(st.booleans()) and len(text.lstrip("+-")) > 3:
        digits = text.lstrip("+-")
        text = text[:len(text) - len(digits)] + f"{int(digits):_}"
    return _pad(draw, text), n


@_settings(80)
@given(written_ints())
def test_an_int_setting_is_the_int_written_or_refused_when_out_of_range(case):
    text, n = case
    value, error = _parse(text, int)
    if INT64[0] <= n <= INT64[1]:
        assert error is None and type(value) is int and value == n, (text, value, error)
    else:
        assert error is not None, f"{text!r} (beyond int64) gave {value!r}"


NOT_INTS = ["1.5", "1.0", "1e3", "true", "True", "yes", "nan", "inf", "", " ", "0x10", "1_",
            "_1", "1__0", "--1", "+-1", "١٢", "１２", "²", "1 2", "one", "None", "[1]", "1,2",
            "1=2", "\x00", "5\n0"]


@_settings(80)
@given(st.one_of(st.sampled_from(NOT_INTS), st.text(max_size=12)))
def test_text_that_is_not_an_ascii_integer_is_never_an_int(text):
    value, error = _parse(text, int)
    if error is None:
        stripped = text.strip()
        assert type(value) is int and stripped.isascii() and re.fullmatch(
            r"[+-]?[0-9_]+", stripped) and int(stripped) == value, (text, value)
        assert INT64[0] <= value <= INT64[1]


@st.composite
def written_floats(draw):
    """(text, f): a float as a user may write it (repr, exponent, fixed point, an int)."""
    f = draw(st.floats(allow_nan=False, allow_infinity=False, width=64))
    style = draw(st.sampled_from(["repr", "e", "fixed", "int"]))
    if style == "repr":
        text = repr(f)
    elif style == "e":
        text = f"{f:.17e}"
    elif style == "fixed" and abs(f) < 1e15:
        text = f"{f:.6f}"
        f = float(text)
    else:
        f = float(round(f)) if abs(f) < 2**53 else f
        text = str(int(f)) if abs(f) < 2**53 else repr(f)
    return _pad(draw, text), f


@_settings(80)
@given(written_floats())
def test_a_float_setting_is_the_number_written(case):
    text, f = case
    value, error = _parse(text, float)
    assert error is None and type(value) is float and value == f, (text, value, error)


NOT_FLOATS = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e400", "1e-999", "true",
              "", "1.5.2", "0x1p3", "١.٥", "1,5", "1 000", "e3", ".", "-", "none"]


@_settings(80)
@given(st.one_of(st.sampled_from(NOT_FLOATS), st.text(max_size=12)))
def test_a_float_setting_is_finite_ascii_and_never_under_or_overflows(text):
    value, error = _parse(text, float)
    if error is None:
        stripped = text.strip()
        assert type(value) is float and math.isfinite(value) and stripped.isascii()
        assert value == float(stripped)
        assert value != 0 or not re.search(r"[1-9]", stripped.lower().partition("e")[0]), text


@_settings(60)
@given(st.one_of(st.sampled_from(["true", "FALSE", "Yes", "no", "On", "off", "1", "0"]),
                 st.text(max_size=8)), st.booleans())
def test_a_bool_setting_is_one_of_the_words_or_refused(text, pad):
    text = f" {text} " if pad else text
    value, error = _parse(text, bool)
    word = text.strip().lower()
    if word in {"true", "yes", "on", "1"}:
        assert value is True
    elif word in {"false", "no", "off", "0"}:
        assert value is False
    else:
        assert error is not None, (text, value)


@_settings(60)
@given(st.one_of(st.sampled_from(["nearest", " bilinear ", "Nearest", "none", "area,",
                                  "near"]), st.text(max_size=10)))
def test_a_literal_setting_is_one_of_its_values(text):
    value, error = _parse(text, Literal["nearest", "bilinear", "area"] | None)
    stripped = text.strip()
    if stripped in ("nearest", "bilinear", "area"):
        assert value == stripped
    elif stripped.lower() in ("none", "null"):
        assert value is None and error is None
    else:
        assert error is not None, (text, value)


@_settings(60)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=0, max_size=4),
       st.sampled_from(["json", "commas"]))
def test_a_list_setting_is_the_list_written(values, style):
    if style == "json":
        text = json.dumps(values)
    else:
        assume(values)
        text = ", ".join(repr(v) for v in values)
    value, error = _parse(text, list[float] | None)
    assert error is None and value == values, (text, value, error)


@_settings(60)
@given(st.sampled_from(["", ",", "1,,2", "1,", "[1, null]", "[1, true]", "[NaN]", "[1e999]",
                        "{}", "[", "1;2", "[[1]]"]) | st.text(max_size=10))
@example("[" * 100_000 + "]" * 100_000)  # nested beyond Python's stack: json's RecursionError
def test_a_list_setting_never_drops_or_invents_items(text):
    value, error = _parse(text, list[float])
    if error is None:
        assert isinstance(value, list) and all(type(v) is float and math.isfinite(v)
                                                for v in value)
        stripped = text.strip()
        if not stripped.startswith("["):
            assert len(value) == len(stripped.split(","))


@_settings(40)
@given(st.text(max_size=10), st.text(max_size=10))
def test_a_fixed_length_tuple_setting_has_its_length(a, b):
    value, error = _parse(f"{a},{b}", tuple[int, int])
    if error is None:
        assert isinstance(value, tuple) and len(value) == 2 and all(type(v) is int
                                                                     for v in value)


# ---------------------------------------------------------------------------------------------
# Setting values from Python (run(method_hparams=...), create_method(..., key=value))

PY_VALUES = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none(), st.text(max_size=5),
    st.integers(-100, 100).map(np.int64), st.integers(0, 2**64 - 1).map(np.uint64),
    st.floats(width=32).map(np.float32), st.sampled_from([np.True_, np.False_]),
    st.lists(st.integers(0, 3), max_size=3), st.just(torch.ones(2, 2)), st.just(nn.ReLU()))


@_settings(300)
@given(PY_VALUES, st.sampled_from([int, float, bool, str, int | None, float | None]))
@example(math.nan, float)
@example(2**70, float)
@example(2**53 + 1, float)
@example(np.uint64(2**64 - 1), int)
@example(np.True_, bool)
@example(torch.ones(2, 2), int)
def test_a_python_setting_is_taken_exactly_or_refused(value, annotation):
    try:
        out = hparams.convert(value, _spec(annotation), "method 'm'")
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc, SettingError)
        return
    base = [a for a in (annotation.__args__ if hasattr(annotation, "__args__") else
                        (annotation,)) if a is not type(None)][0]
    if out is None:
        assert value is None
        return
    assert type(out) is base, (value, out)
    if base is int:
        assert not isinstance(value, (bool, np.bool_)) and out == value
        assert INT64[0] <= out <= INT64[1]
    elif base is float:
        assert not isinstance(value, (bool, np.bool_)) and math.isfinite(out) and out == value
    elif base is bool:
        assert isinstance(value, (bool, np.bool_)) and out == value
    else:
        assert out is value


# ---------------------------------------------------------------------------------------------
# --set items: NAME.KEY=VALUE

NAMES = st.sampled_from(["rise", "grad", "pixel-removal", "RISE", "rse", "", "ri se", "ixg"])
KEYS = st.sampled_from(["n_masks", "p1", "abs", "fraction", "score", "N_MASKS", "", "nope"])
VALUES = st.one_of(st.sampled_from(["5", "0.5", "true", "a=b", "", " 7 ", "1.5", "soft max",
                                    "logit", "1e999", "nan"]), st.text(max_size=8))


@st.composite
def set_items(draw):
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=20))
    item = f"{_pad(draw, draw(NAMES))}.{_pad(draw, draw(KEYS))}={draw(VALUES)}"
    return item if draw(st.integers(0, 6)) else item.replace("=", "", 1)


@_settings(150)
@given(st.lists(set_items(), max_size=3))
def test_set_items_are_split_exactly_or_refused_in_one_line(items):
    methods, metrics = ["rise", "grad"], ["pixel-removal"]
    try:
        by_method, by_metric = parse_settings(items, methods, metrics)
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc, SettingError)
        return
    expected: dict[str, dict[str, str]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        name, dot, key = head.rpartition(".")
        assert eq and dot and name.strip() in methods + metrics and key.strip(), item
        expected.setdefault(name.strip(), {})[key.strip()] = value  # the value as written
    assert {**by_method, **by_metric} == expected


@_settings(120)
@given(st.lists(set_items(), max_size=3), st.integers(-2, 2**33) | st.sampled_from([0, 7]))
def test_a_run_config_from_set_items_holds_the_typed_values_or_refuses(items, seed):
    """The whole path from ``--set`` text to a run's resolved configuration."""
    try:
        config = run_config(["resnet56"], "rise,grad", "pixel-removal", n_samples=None,
                            chunk_size=4, seed=seed, dataset="cifar10", checkpoint=None,
                            method_hparams=None, metric_hparams=None, settings=items)
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc)
        return
    assert 0 <= seed <= 2**32 - 1
    specs = {"rise": hparams.hparams_of(METHODS.get("rise").factory),
             "grad": hparams.hparams_of(METHODS.get("grad").factory),
             "pixel-removal": hparams.hparams_of(METRICS.get("pixel-removal").factory)}
    resolved = {**config.method_hparams, **config.metric_hparams}
    for item in items:
        head, _, text = item.partition("=")
        name, _, key = head.rpartition(".")
        name, key = name.strip(), key.strip()
        value = resolved[name][key]
        expected = specs[name][key].annotation
        # the resolved value is the text parsed by its declared type, nothing looser
        if expected is int:
            assert type(value) is int and str(value) == str(int(text.strip()))
        elif expected is float:
            assert type(value) is float and math.isfinite(value)
            assert value == float(text.strip()) and text.strip().isascii()
        elif expected is bool:
            assert type(value) is bool and text.strip().lower() in {
                "true", "false", "yes", "no", "on", "off", "1", "0"}


@_settings(40)
@given(st.sampled_from(sorted(METHODS.names())), st.data())
def test_every_methods_settings_parse_from_their_defaults_text(name, data):
    """Each registered method's default, written as text, parses back to itself."""
    specs = hparams.hparams_of(METHODS.get(name).factory)
    key = data.draw(st.sampled_from(sorted(specs)))
    default = specs[key].default
    if default is None or not isinstance(default, (bool, int, float, str)):
        return
    text = str(default).lower() if isinstance(default, bool) else str(default)
    config = resolve_method(name, {key: text}, seed=0, from_text=True)
    assert config[key] == default


SETTING_VALUES = {
    int: st.one_of(st.integers(-2, 9), st.sampled_from([2**31, 2**40, 2**63 - 1])),
    float: st.one_of(st.floats(-2, 2), st.sampled_from([0.0, -0.0, 1e-300, 1e-5, 1e300])),
    bool: st.booleans(),
}


@_settings(80)
@given(st.sampled_from(sorted(METHODS.names())), st.data())
def test_a_methods_setting_value_is_built_and_run_or_refused_in_one_line(name, data):
    """Any value of a setting's declared type: the method is built and explains a tiny batch,
    or says in one line which value it cannot take (its range), at construction or at the
    first batch (a size that depends on the image) — never another exception."""
    specs = hparams.hparams_of(METHODS.get(name).factory)
    typed = {k: s for k, s in specs.items() if s.annotation in SETTING_VALUES}
    if not typed:
        return
    key = data.draw(st.sampled_from(sorted(typed)))
    value = data.draw(SETTING_VALUES[typed[key].annotation])
    cheap = {"rise": {"n_masks": 4}, "lime": {"num_samples": 4}, "intgrad": {"n_steps": 2}}
    settings_ = {**cheap.get(name, {}), key: value}
    big = any(isinstance(v, int) and not isinstance(v, bool) and v > 64
              for v in settings_.values())
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    try:
        method = create_method(name, MODELS[torch.float32], **settings_)
        if not big or key in ("seed", "max_batch"):  # a huge size would only be slow
            method.attribute(x, 1)
    except Exception as exc:  # noqa: BLE001
        one_line_error(exc)


@pytest.mark.parametrize("text", ["1.5", "true", "1e999", "nan", "١٢", "9" * 30])
def test_documented_refusals_for_an_int_setting(text):
    with pytest.raises(SettingError) as info:
        resolve_method("rise", {"n_masks": text}, seed=0, from_text=True)
    one_line_error(info.value, SettingError)
