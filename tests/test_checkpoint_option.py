"""``--checkpoint`` always loads the file or refuses in one line, whatever the factory's
signature; the manifest records where every model's weights came from (round-3 case
``plugin_checkpoint_ignored.sh``: the file was silently ignored)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from attrib_bench.core.errors import CheckpointError
from attrib_bench.core.registry import MODELS, create_model, register_model, takes_checkpoint
from attrib_bench.runners.benchmark import run

CALLS: list[dict] = []


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


@pytest.fixture()
def factories():
    """Three plugin factories as users write them: the README's ``(pretrained=False, **kw)``,
    one without ``**kw``, and one that loads ``checkpoint`` itself."""

    @register_model("ck-kwargs", override=True)
    def with_kwargs(pretrained=False, **kw):
        return _cnn()

    @register_model("ck-plain", override=True)
    def plain(pretrained=False):
        return _cnn()

    @register_model("ck-own", override=True)
    def own(pretrained=False, checkpoint=None):
        CALLS.append({"checkpoint": checkpoint})
        model = _cnn()
        if checkpoint is not None:
            model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model

    yield
    for name in ("ck-kwargs", "ck-plain", "ck-own"):
        MODELS.remove(name)


def _zero_file(tmp_path: Path, suffix: str = ".safetensors") -> Path:
    state = {k: torch.zeros_like(v) for k, v in _cnn().state_dict().items()}
    path = tmp_path / f"zero{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["ck-kwargs", "ck-plain"])
def test_a_factory_without_a_checkpoint_parameter_gets_the_file_loaded(factories, tmp_path,
                                                                       name):
    assert not takes_checkpoint(MODELS.get(name).factory)
    model = create_model(name, pretrained=False, checkpoint=str(_zero_file(tmp_path)))
    assert all(not v.any() for v in model.state_dict().values()) and not model.training


def test_a_factory_that_names_checkpoint_loads_it_itself(factories, tmp_path):
    assert takes_checkpoint(MODELS.get("ck-own").factory)
    path = str(_zero_file(tmp_path, ".pt"))
    CALLS.clear()
    model = create_model("ck-own", pretrained=False, checkpoint=path)
    assert CALLS == [{"checkpoint": path}]
    assert all(not v.any() for v in model.state_dict().values())


def test_a_file_that_does_not_fit_or_does_not_exist_is_one_line(factories, tmp_path, one_line):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"0.weight": torch.zeros(4, 3, 3, 3)}, str(wrong))
    with pytest.raises(CheckpointError) as error:
        create_model("ck-kwargs", pretrained=False, checkpoint=str(wrong))
    one_line(error, "wrong.safetensors", "does not fit")
    with pytest.raises(CheckpointError) as error:
        create_model("ck-plain", pretrained=False, checkpoint=str(tmp_path / "missing.pt"))
    one_line(error, "missing.pt", "does not exist")


def test_a_run_benchmarks_the_checkpoint_and_records_it(factories, tmp_path, signal_set):
    """All-zero weights: every logit is 0, every probability exactly 0.1 (the case's check);
    the manifest names the file and its sha256."""
    path = _zero_file(tmp_path)
    rows = run("ck-kwargs", "grad", "pixel-removal", checkpoint=str(path), n_samples=2,
               dataset=signal_set(20, 16), out=tmp_path / "run", progress=False,
               settings=["pixel-removal.steps=4"])
    probs = rows[rows.stat == "prob"].value.to_numpy()  # every step of every curve
    assert len(probs) == 20 and np.allclose(probs, 0.1, rtol=0, atol=1e-7)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["models"]["ck-kwargs"]["weights_file"] == {
        "file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_the_manifest_says_where_each_model_came_from(tmp_path, signal_set):
    run({"mine": _cnn().eval()}, "grad", "pixel-removal", n_samples=2, progress=False,
        dataset=signal_set(20, 16), out=tmp_path / "run", settings=["pixel-removal.steps=4"])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["models"]["mine"]["weights_file"] == {"source": "the module given to run()"}


def test_a_checkpoint_with_a_given_module_is_refused_not_ignored(tmp_path, signal_set,
                                                                 one_line):
    """A new user's find: run({"mine": module}, checkpoint=FILE) benchmarked the module's own
    weights while the manifest recorded the file."""
    from attrib_bench.core.errors import RunError

    with pytest.raises(RunError) as error:
        run({"mine": _cnn().eval()}, "grad", "pixel-removal", n_samples=2, progress=False,
            checkpoint=str(_zero_file(tmp_path)), dataset=signal_set(20, 16),
            out=tmp_path / "run", settings=["pixel-removal.steps=4"])
    one_line(error, "cannot be loaded into a module given to run()", "load_state_dict")
    assert not (tmp_path / "run").exists()
