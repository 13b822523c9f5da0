"""Settings' ranges declared with their type (``PositiveInt``, ``Between``) and the one converter
that checks them, whichever way a value comes in (the registry, ``--set`` text, a class built
directly); and, per owner that used to check by hand, that the old wrong input is still one line.
"""

from __future__ import annotations

import json
from typing import Annotated

import numpy as np
import pytest
import torch
from torch import nn

from attrib_bench.core.errors import (
    MethodError,
    MethodSettingError,
    MetricError,
    MetricSettingError,
    SettingError,
)
from attrib_bench.core.hparams import (
    AtLeast,
    AtMost,
    Between,
    HParam,
    Positive,
    PositiveFloat,
    PositiveInt,
    check_settings,
    convert,
    hparams_of,
    resolve,
    setting_error,
    violation,
)
from attrib_bench.core.registry import METHODS, register_method


def _convert(value, annotation, *, from_text=False):
    return convert(value, HParam("n", annotation, None), "method 'm'", from_text=from_text)


def _refusal(value, annotation, *, from_text=False) -> str:
    with pytest.raises(SettingError) as info:
        _convert(value, annotation, from_text=from_text)
    return str(info.value)


# ----------------------------------------------------------------------------- the mechanism


def test_a_positive_int_refuses_zero_in_one_line_naming_the_setting_and_the_fix():
    assert _refusal(0, PositiveInt) == "method 'm': n must be a positive int, got 0"
    assert _refusal(-3, PositiveInt) == "method 'm': n must be a positive int, got -3"
    assert _convert(1, PositiveInt) == 1
    value = _convert(np.int64(7), PositiveInt)  # a NumPy int is taken, as an int
    assert value == 7 and type(value) is int


def test_a_bool_is_refused_where_an_int_is_declared_with_or_without_a_range():
    for annotation in (int, PositiveInt):
        assert _refusal(True, annotation).startswith("method 'm': n must be int, got True: "
                                                     "write an integer")


def test_text_is_parsed_first_and_the_refusal_shows_the_parsed_value():
    assert _convert(" 12 ", PositiveInt, from_text=True) == 12
    assert _refusal("0", PositiveInt, from_text=True).endswith("got 0")  # not '0'
    assert "must be int, got '1.5'" in _refusal("1.5", PositiveInt, from_text=True)


@pytest.mark.parametrize(("rule", "inside", "outside"), [
    (Between(0, 1), [0, 0.5, 1], [-1e-9, 1 + 1e-9]),  # closed by default: both ends inside
    (Between(0, 1, open_lo=True), [1e-300, 1], [0, -1]),
    (Between(0, 1, open_hi=True), [0, 1 - 1e-9], [1, 2]),
    (Between(0, 1, open_lo=True, open_hi=True), [0.5], [0, 1]),
    (AtLeast(1), [1, 10**9], [0, 0.999]),
    (AtMost(4096), [-5, 4096], [4097]),
    (Positive(), [1e-300, 3], [0, -1e-300]),
])
def test_between_takes_its_bounds_as_declared(rule, inside, outside):
    assert all(rule.admits(v) for v in inside), rule
    assert not any(rule.admits(v) for v in outside), rule


@pytest.mark.parametrize(("annotation", "value", "expected"), [
    (Annotated[float, Between(0, 1, open_lo=True)], 0, "a number in (0, 1]"),
    (Annotated[float, Between(0, 1, open_hi=True)], 1, "a number in [0, 1)"),
    (Annotated[int, Between(1, 4096)], 0, "an int in [1, 4096]"),
    (Annotated[int, AtLeast(1, "grids to draw")], 0, "an int >= 1 (grids to draw)"),
    (Annotated[float, AtLeast(0)], -0.1, "a number >= 0"),
    (Annotated[float, AtMost(2)], 3, "a number <= 2"),
    (PositiveFloat, 0, "a positive number"),
    (Annotated[float, Positive("Gaussian std in pixels")], -1, "a positive number (Gaussian "
                                                                "std in pixels)"),
    (PositiveInt | None, 0, "a positive int or None"),
])
def test_a_refusal_says_what_the_value_must_be(annotation, value, expected):
    assert f"n must be {expected}, got " in _refusal(value, annotation)
    assert violation(value, annotation) == expected


def test_rules_are_checked_in_order_and_the_first_refused_is_named():
    steps = Annotated[int, Positive(), AtMost(4096, "n² memory")]
    assert _refusal(0, steps).endswith("n must be a positive int, got 0")
    assert _refusal(4097, steps).endswith("n must be an int <= 4096 (n² memory), got 4097")
    assert _convert(4096, steps) == 4096


def test_an_optional_range_takes_none_and_its_text():
    assert _convert(None, PositiveInt | None) is None
    assert _convert("none", PositiveInt | None, from_text=True) is None
    assert _convert("3", PositiveInt | None, from_text=True) == 3
    assert violation("x", PositiveInt | None) == "int | None"  # the wrong type: the type


def test_a_range_is_not_part_of_the_listed_type():
    """Listings (``attrib-bench list``) show the type as before: ``max_batch: int = 64``."""
    assert str(HParam("max_batch", PositiveInt, 64)) == "max_batch: int = 64"
    assert HParam("p", PositiveInt | None, None).type_name == "int | None"


class _Plugin(nn.Module):
    """A class whose constructor declares ranges (no ``setting_error``: a SettingError)."""

    def __init__(self, *, width: PositiveFloat = 1.0, count: int = 2) -> None:
        super().__init__()
        self.width = check_settings("plugin", _Plugin, {"width": width, "count": count})


def test_check_settings_reads_the_annotations_of_the_declaring_class():
    assert hparams_of(_Plugin)["width"].annotation == PositiveFloat  # kept, not stripped
    assert _Plugin(width=2).width == {"width": 2.0, "count": 2}
    with pytest.raises(SettingError, match="^plugin: width must be a positive number, got 0.0$"):
        _Plugin(width=0)
    assert setting_error(_Plugin) is SettingError


def test_a_methods_refusal_is_a_method_error_and_a_setting_error_on_every_path():
    """The registry, ``--set`` text (resolve) and a direct construction raise the same line."""

    @register_method("range-test")
    def scaled(model, inputs, target, factor: PositiveFloat = 1.0):
        return factor * inputs.sum(dim=1)

    try:
        model = nn.Flatten()
        factory = METHODS.get("range-test").factory
        assert setting_error(factory) is MethodSettingError
        messages = set()
        for attempt in (lambda: METHODS.create("range-test", model, factor=0),
                        lambda: resolve("method 'range-test'", factory, {"factor": "0"},
                                        from_text=True)):
            with pytest.raises(MethodSettingError) as info:
                attempt()
            assert isinstance(info.value, MethodError) and isinstance(info.value, SettingError)
            messages.add(str(info.value))
        assert messages == {"method 'range-test': factor must be a positive number, got 0.0"}
    finally:
        METHODS.remove("range-test")


# ----------------------------------------------------------------------------- each owner


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize(("name", "settings", "fragment"), [
    ("grad", {"seed": -1}, "seed must be an int in [0, 2147483647]"),
    ("grad", {"max_batch": np.int64(0)}, "max_batch must be a positive int, got 0"),
    ("intgrad", {"n_steps": 4097}, "n_steps must be an int <= 4096 (Gauss-Legendre"),
    ("centre", {"sigma": -0.5}, "sigma must be a positive number (a fraction"),
    ("occlusion", {"patch_size": 0}, "patch_size must be a positive int, got 0"),
    ("rise", {"grid": 0}, "grid must be a positive int, got 0"),
])
def test_a_method_built_directly_refuses_as_by_name(one_line, name, settings, fragment):
    """A method class called directly checks its declared ranges as the registry does."""
    cls = METHODS.get(name).factory
    for build in (lambda: cls(_model(), **settings),
                  lambda: METHODS.create(name, _model(), **settings)):
        with pytest.raises(MethodError) as info:
            build()
        one_line(info, f"method {name!r}: {fragment}")


@pytest.mark.parametrize(("text", "fragment"), [
    ("num_samples=1", "num_samples must be an int >= 2, got 1"),
    ("ratio=1.5", "ratio must be a number in [0, 1], got 1.5"),
    ("kernel_size=0.5", "kernel_size must be a number >= 1 (quickshift's smoothing width"),
    ("kernel_width=0", "kernel_width must be a number in [1e-100, 1e+100] (the width of LIME's"),
])
def test_lime_refuses_its_old_wrong_inputs_in_one_line(one_line, text, fragment):
    """By name and as ``--set`` text (refused before LIME's package is imported)."""
    key, value = text.split("=")
    for attempt in (lambda: METHODS.create("lime", _model(), **{key: json.loads(value)}),
                    lambda: resolve("method 'lime'", METHODS.get("lime").factory, {key: value},
                                    from_text=True)):
        with pytest.raises(MethodError) as info:
            attempt()
        one_line(info, f"method 'lime': {fragment}")


def test_metrics_refuse_out_of_range_settings_as_metric_errors(one_line):
    from attrib_bench.metrics.localisation import DisconnectedGrid, Localisation

    class Split(nn.Module):
        def forward_features(self, x):
            return x

        def forward_head(self, f):
            return f.mean(dim=(2, 3))

    with pytest.raises(MetricSettingError) as info:
        DisconnectedGrid(Split(), 0)
    one_line(info, "DisconnectedGrid: n must be a positive int, got 0")
    assert Localisation.setting_error is MetricSettingError
    assert issubclass(MetricSettingError, MetricError)


def test_dataset_sides_and_imagenet_classes_refuse_in_one_line(one_line):
    from attrib_bench.data import dataset_options
    from attrib_bench.data.imageset import ResizeCrop

    with pytest.raises(SettingError) as info:
        dataset_options("imagenet", {"classes": "0"}, from_text=True)
    one_line(info, "dataset 'imagenet': classes must be a positive int or None, got 0")
    with pytest.raises(SettingError) as info:
        ResizeCrop(True, 36)
    one_line(info, "dataset option image_size must be int, got True",
             "--dataset-option image_size=N")
    crop = ResizeCrop(np.int64(32), 36)  # recorded as plain ints (JSON-able)
    assert type(crop.size) is int and crop.size == 32
