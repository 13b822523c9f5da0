"""The zoo's one registration path: every trained entry is a weights file with its sidecar.

The package's own entries and a folder's (``$ATTRIB_BENCH_ZOO``) are read by the same
:func:`read_zoo_sidecar`; ``train``'s export writes that form (a round trip), and the sha256 in
the sidecar is checked at every load.
"""

from __future__ import annotations

import json

import pytest
import torch

from attrib_bench.core.checkpoints import sha256_file
from attrib_bench.core.errors import CheckpointError, ChecksumError
from attrib_bench.core.registry import MODELS, create_model
from attrib_bench.models import zoo
from attrib_bench.models.zoo import BUNDLED_DIR, read_zoo_sidecar, register_zoo_folder
from attrib_bench.runners.train import TrainConfig, build_model, export

#: The shipped weights files (pool logits are data beside an entry, not weights).
SHIPPED = sorted(p for p in BUNDLED_DIR.glob("*.safetensors")
                 if not p.name.endswith(".logits.safetensors"))


@pytest.fixture
def tmp_zoo(monkeypatch):
    """Registers what a test's folders hold, and forgets it afterwards (names, TRAINED, the
    folders a run searches for shipped logits)."""
    monkeypatch.setattr(zoo, "_FOLDERS", list(zoo._FOLDERS))
    before = set(MODELS.names())
    yield
    for name in set(MODELS.names()) - before:
        MODELS.remove(name)
        zoo.TRAINED.pop(name, None)


def _export(folder, name: str, **extra) -> dict:
    """A T=10 xs-coda exported as ``folder/NAME.safetensors`` the way ``train`` exports it."""
    config = TrainConfig(model="xs-coda", temperature=10.0, epochs=1)
    return export(build_model(config), config, folder / f"{name}.safetensors", dataset="tiny",
                  test_accuracy=None, epochs_done=1, extra={"registered_dataset": "cifar10",
                                                            **extra})


@pytest.mark.parametrize("weights", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_weights_file_is_registered_from_its_sidecar(weights):
    """No zoo entry of the package is written into the code: each is its sidecar's."""
    entry = read_zoo_sidecar(weights.with_suffix(".json"), bundled=True)
    assert entry is not None, f"{weights.name} has no sidecar with a zoo section"
    assert entry.cfg.file == weights.name and entry.name == weights.stem
    registered = MODELS.get(entry.name).metadata
    assert registered["pretrained_cfg"] == entry.cfg
    assert registered["trained"] and registered["architecture"] == entry.config["model"]
    assert registered["dataset"] == entry.cfg.dataset


def test_the_bundled_entries_are_exactly_the_shipped_files():
    bundled = {MODELS.get(n).metadata["pretrained_cfg"].file for n in MODELS.names()
               if getattr(MODELS.get(n).metadata.get("pretrained_cfg"), "bundled", False)}
    assert bundled == {p.name for p in SHIPPED}


def test_the_export_is_the_form_the_zoo_registers(tmp_path, tmp_zoo):
    """export → register the export folder → the name loads the stored float16 weights."""
    sidecar = _export(tmp_path, "xs-coda-export-roundtrip")
    entry = read_zoo_sidecar(tmp_path / "xs-coda-export-roundtrip.json")
    assert entry.name == "xs-coda-export-roundtrip" and entry.cfg.accuracy is None
    assert entry.cfg.sha256 == sidecar["sha256"] == sha256_file(tmp_path / entry.cfg.file)
    assert entry.cfg.provenance == f"trained here: {sidecar['command']}"
    assert register_zoo_folder(tmp_path) == ["xs-coda-export-roundtrip"]
    assert "not measured on the CIFAR-10 test set" in MODELS.get(entry.name).description
    expected = build_model(TrainConfig(model="xs-coda", temperature=10.0, epochs=1))
    loaded = create_model(entry.name)
    assert loaded.temperature == 10.0 and not loaded.training
    for key, value in expected.state_dict().items():
        stored = value.half().float() if value.is_floating_point() else value
        torch.testing.assert_close(loaded.state_dict()[key], stored, rtol=0, atol=0, msg=key)


def test_zoo_sidecar_renames_an_export_in_the_same_form(tmp_path, tmp_zoo):
    _export(tmp_path / "run", "xs-coda-sq-t10")  # the default name is the shipped entry's
    zoo.zoo_sidecar(tmp_path / "run" / "xs-coda-sq-t10.safetensors", "xs-coda-renamed",
                    tmp_path / "zoo", accuracy=12.5, provenance="a test")
    written = json.loads((tmp_path / "zoo" / "xs-coda-renamed.json").read_text())
    assert written["zoo"] == zoo.zoo_section("xs-coda-renamed", accuracy=12.5,
                                             provenance="a test")
    assert register_zoo_folder(tmp_path / "zoo") == ["xs-coda-renamed"]
    assert MODELS.get("xs-coda-renamed").metadata["pretrained_cfg"].accuracy == 12.5


def test_a_wrong_sha256_is_refused_at_load_in_one_line(tmp_path, tmp_zoo, one_line):
    _export(tmp_path, "xs-coda-wrong-sha")
    path = tmp_path / "xs-coda-wrong-sha.json"
    sidecar = json.loads(path.read_text())
    sidecar["sha256"] = "0" * 64
    path.write_text(json.dumps(sidecar))
    assert register_zoo_folder(tmp_path) == ["xs-coda-wrong-sha"]
    with pytest.raises(ChecksumError) as error:
        create_model("xs-coda-wrong-sha", pretrained=True)
    one_line(error, "xs-coda-wrong-sha.safetensors has sha256", "expected 0000000000000000")


def test_a_sidecar_without_a_zoo_section_registers_nothing(tmp_path, tmp_zoo):
    _export(tmp_path, "xs-coda-no-zoo")
    path = tmp_path / "xs-coda-no-zoo.json"
    sidecar = json.loads(path.read_text())
    del sidecar["zoo"]
    path.write_text(json.dumps(sidecar))
    (tmp_path / "plan.json").write_text('{"budget_s": 20}')  # a run folder's other JSON
    assert read_zoo_sidecar(path) is None and register_zoo_folder(tmp_path) == []


def test_an_architecture_the_zoo_cannot_build_is_one_line(tmp_path, tmp_zoo, one_line):
    config = TrainConfig(model="resnet56", epochs=1)
    export(build_model(config), config, tmp_path / "resnet56.safetensors", dataset="tiny",
           test_accuracy=None, epochs_done=1, extra={"registered_dataset": "cifar10"})
    with pytest.raises(CheckpointError) as error:
        register_zoo_folder(tmp_path)
    one_line(error, "resnet56.json: zoo sidecars describe CoDA-Nets or B-cos networks, "
                    "not resnet56")
