"""Checkpoints: sha256 before loading, weights_only, one-line errors; the real ResNet-56."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from attrib_bench.core.checkpoints import load_into, read_state_dict, sha256_file, verify_sha256
from attrib_bench.core.errors import CheckpointError, ChecksumError
from attrib_bench.core.registry import create_model
from attrib_bench.models.resnet_cifar import resnet56
from attrib_bench.models.zoo import RESNET56_CIFAR10, load_pretrained


def test_sha256_mismatch_is_refused_before_loading(one_line, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(3)}, str(path))
    verify_sha256(path, sha256_file(path))  # the right hash passes
    with pytest.raises(ChecksumError) as info:
        read_state_dict(path, sha256="0" * 64)
    assert "sha256" in one_line(info)


def test_tampered_zoo_file_fails_with_one_line(one_line, tmp_path):
    """A copy of the ResNet-56 file with one byte changed is rejected by its recorded sha256."""
    model = resnet56()
    fake = tmp_path / RESNET56_CIFAR10.file
    torch.save({"state_dict": model.state_dict()}, fake)  # right structure, wrong bytes
    with pytest.raises(ChecksumError) as info:
        load_pretrained(resnet56(), RESNET56_CIFAR10, weights_root=tmp_path)
    assert "corrupt" in one_line(info)


def test_missing_weights_name_the_fix(one_line, tmp_path):
    with pytest.raises(CheckpointError) as info:
        create_model("resnet56", pretrained=True, weights_root=tmp_path)
    # the message holds tmp_path, whose length grows with pytest's run counter
    assert "ATTRIB_BENCH_WEIGHTS" in one_line(info, limit=240 + len(str(tmp_path)))


def test_corrupt_and_wrong_checkpoints(one_line, tmp_path):
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        read_state_dict(garbage)
    assert "corrupt" in one_line(info)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    other = tmp_path / "other.safetensors"
    save_file({"linear.weight": torch.zeros(10, 64)}, str(other))
    with pytest.raises(CheckpointError) as info:
        create_model("resnet56", checkpoint=other)
    assert "missing" in one_line(info)
    with pytest.raises(CheckpointError) as info:
        load_into(resnet56(), {**resnet56().state_dict(), "linear.bias": torch.zeros(3)}, other)
    assert "wrong shape" in one_line(info)
    trained = tmp_path / "checkpoint.pt"  # what `attrib-bench train` saves to resume
    torch.save({"config": {}, "epoch": 1, "model": resnet56().state_dict(), "optimizer": {}},
               trained)
    with pytest.raises(CheckpointError) as info:
        create_model("resnet56", checkpoint=trained)
    assert "training checkpoint" in one_line(info) and "NAME.safetensors" in one_line(info)


def test_pickled_code_is_not_executed(tmp_path):
    """weights_only=True refuses arbitrary objects in a torch file."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CheckpointError):
        read_state_dict(path, key="state_dict")


def test_user_checkpoint_roundtrip_in_float16(tmp_path):
    model = create_model("xs-coda")
    path = tmp_path / "xs.safetensors"
    save_file({k: v.half() for k, v in model.state_dict().items()}, str(path))
    loaded = create_model("xs-coda", checkpoint=path, sha256=sha256_file(path))
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, model.state_dict()[key].half().float())


@pytest.mark.real
def test_real_resnet56_structure(weights_root):
    model = create_model("resnet56", pretrained=True, weights_root=weights_root)
    assert sum(p.numel() for p in model.parameters()) == 853_018
    raw = torch.load(weights_root / RESNET56_CIFAR10.file, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.conv1.weight, raw["state_dict"]["module.conv1.weight"])


# ----------------------------------------------------------------------------- wrapped keys


def _wrapped(state: dict[str, torch.Tensor], how: str) -> dict:
    """``state`` as a wrapper saves it (round-4 kind: pytorch#9176, timm#2003)."""
    if how == "dataparallel":
        return {f"module.{k}": v for k, v in state.items()}
    if how == "compiled":
        return {f"_orig_mod.{k}": v for k, v in state.items()}
    if how == "compiled-dataparallel":
        return {f"module._orig_mod.{k}": v for k, v in state.items()}
    if how == "lightning":
        return {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3,
                "global_step": 30}
    if how == "torchvision-reference":
        return {"model": state, "optimizer": {}, "epoch": 3}
    return state


@pytest.mark.parametrize("how", ["dataparallel", "compiled", "compiled-dataparallel",
                                 "lightning", "torchvision-reference"])
def test_wrapped_checkpoints_load_by_one_rule(tmp_path, how):
    """Every --checkpoint path unwraps the same way: the built-ins, a plugin's factory and a
    library model (``create_model`` → ``load_into``)."""
    torch.manual_seed(5)
    source = resnet56().state_dict()
    path = tmp_path / f"{how}.pt"
    torch.save(_wrapped(source, how), path)
    model = create_model("resnet56", checkpoint=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_a_foreign_prefix_is_named_in_the_refusal(tmp_path, one_line):
    path = tmp_path / "net.pt"
    torch.save({f"net.{k}": v for k, v in resnet56().state_dict().items()}, path)
    with pytest.raises(CheckpointError) as info:
        create_model("resnet56", checkpoint=path)
    one_line(info, "every key of the file starts with 'net.'", "strip 'net.'", limit=400)


@pytest.mark.real
def test_the_zoo_file_itself_loads_through_checkpoint(weights_root):
    """The akamaster file that ``pretrained=True`` reads (nested ``state_dict``, ``module.``
    keys, a ``best_prec1`` entry) loads with --checkpoint too, to the same weights."""
    by_checkpoint = create_model("resnet56", checkpoint=weights_root / "resnet56-4bfd9763.th")
    pretrained = create_model("resnet56", pretrained=True)
    for (key, a), b in zip(by_checkpoint.state_dict().items(),
                           pretrained.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_a_pickled_module_is_refused_naming_state_dict(tmp_path, one_line):
    """A new user's find: torch.save(model) gave torch's truncated hint with a raw ANSI escape."""
    path = tmp_path / "whole.pt"
    torch.save(resnet56(), path)
    with pytest.raises(CheckpointError) as info:
        create_model("resnet56", checkpoint=path)
    message = one_line(info, "pickled Python objects", "save model.state_dict() instead",
                       limit=200 + len(str(path)))
    assert "\x1b" not in message
