"""Registry: wildcards, factories, one-line errors with close matches, plugins."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from attrib_bench.core.errors import PluginError, UnknownNameError
from attrib_bench.core.registry import (
    MODELS,
    Registry,
    create_model,
    list_models,
    load_plugins,
)


def test_wildcards_and_exclusions():
    reg = Registry("thing")
    for name in ["s-coda", "xs-coda", "resnet56", "m-coda"]:
        reg.add(name, dict)
    assert reg.names("*coda*") == ["m-coda", "s-coda", "xs-coda"]
    assert reg.names("*coda*", exclude="x*") == ["m-coda", "s-coda"]
    assert reg.names(["res*", "m-*"]) == ["m-coda", "resnet56"]
    assert len(reg) == 4 and "resnet56" in reg


def test_unknown_name_lists_close_matches_on_one_line():
    with pytest.raises(UnknownNameError) as info:
        create_model("s-cod")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown model 's-cod'" in message and "s-coda" in message
    with pytest.raises(UnknownNameError, match="none is close"):
        MODELS.get("zzzzzz")


def test_duplicate_registration_needs_override():
    reg = Registry("thing")

    @reg.register("a")
    def first():
        """First line is the description.

        More text."""
        return 1

    assert reg.get("a").description == "First line is the description."
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    reg.register("a", override=True, description="replaced")(lambda: 2)
    assert reg.create("a") == 2 and reg.get("a").description == "replaced"


def test_builtin_models_are_registered_and_built():
    names = list_models()
    assert {"resnet56", "xs-coda", "s-coda", "m-coda", "l-coda", "xl-coda"} <= set(names)
    model = create_model("xs-coda", temperature=10)
    assert model.temperature == 10 and not model.training
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_plugin_module_registers_a_model(tmp_path, monkeypatch):
    """A user's module, imported by name, adds a model without touching the toolkit."""
    (tmp_path / "my_plugin_mod.py").write_text(textwrap.dedent('''
        import torch
        from attrib_bench.core.registry import register_model

        @register_model("tiny-linear-test", override=True)
        def tiny(pretrained=False, **kw):
            """A linear classifier on 32x32 RGB."""
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_plugins(["my_plugin_mod"])[0] == "my_plugin_mod"
        assert "tiny-linear-test" in list_models("tiny-*")
        assert create_model("tiny-linear-test")(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    finally:
        MODELS.remove("tiny-linear-test")
        sys.modules.pop("my_plugin_mod", None)


def test_missing_plugin_is_one_line():
    with pytest.raises(PluginError) as info:
        load_plugins(["no_such_module_xyz"])
    assert "\n" not in str(info.value) and "PYTHONPATH" in str(info.value)
