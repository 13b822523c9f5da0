"""The shipped, trained CoDA-Nets: checksums, accuracy as recorded, completeness on real images."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from attrib_bench.core.checkpoints import sha256_file
from attrib_bench.core.errors import CheckpointError
from attrib_bench.core.evaluation import top1_accuracy
from attrib_bench.core.registry import MODELS, create_model, list_models
from attrib_bench.data import load_cifar10
from attrib_bench.data.predict import predict_logits
from attrib_bench.models.zoo import BUNDLED_DIR, TRAINED, register_zoo_folder
from attrib_bench.runners.cache import PoolLogits, ShippedLogits, model_digest

NAMES = sorted(TRAINED)


def test_trained_models_are_registered():
    assert NAMES, "no trained model is shipped"
    assert set(NAMES) <= set(list_models("*-coda-*"))


@pytest.mark.parametrize("name", NAMES)
def test_shipped_file_matches_zoo_and_sidecar(name):
    cfg = TRAINED[name][3]
    path = cfg.path()
    assert sha256_file(path) == cfg.sha256
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == cfg.sha256
    assert sidecar["config"]["temperature"] == TRAINED[name][1]


@pytest.mark.parametrize("name", ["xs-coda-sq-t1000", "bcos-resnet20-cifar10"])
def test_a_trained_name_loads_its_weights_unless_told_not_to(name):
    """A name that stands for trained weights loads them by default (it used to give random
    weights silently); ``pretrained=False`` gives the architecture's random init; an
    architecture name stays randomly initialised, as in timm."""
    if name.startswith("bcos"):
        pytest.importorskip("bcos")
    default = create_model(name).state_dict()
    trained = create_model(name, pretrained=True).state_dict()
    torch.manual_seed(0)
    untrained = create_model(name, pretrained=False).state_dict()
    assert all(torch.equal(default[k], trained[k]) for k in trained)
    assert not all(torch.equal(untrained[k], trained[k]) for k in trained)
    architecture = MODELS.get(name).metadata["architecture"]
    torch.manual_seed(0)
    assert not MODELS.get(architecture).metadata.get("trained")
    fresh = create_model(architecture).state_dict()
    assert all(torch.equal(fresh[k], untrained[k]) for k in fresh)


#: The zoo entry whose recorded accuracy is re-measured on all 10 000 test images in the suite
#: (the README's headline model). The XS models differ only in T (a divisor of the logits) and
#: their weights, which load only if their sha256 matches (above), so one full pass checks the
#: forward code all three share; a pass costs about 2 minutes on the 2-core CPU, and three of
#: them were 60 % of the suite's 10-minute budget. `attrib-bench eval --model NAME` re-measures
#: any of them.
FULL_PASS = "xs-coda-sq-t1000"


SHIPPED_LOGITS = BUNDLED_DIR / f"{FULL_PASS}.cifar10-test.logits.safetensors"
#: Every STRIDE-th test image is classified again against the shipped logits (500 images).
STRIDE = 20


def _shipped_logits() -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(SHIPPED_LOGITS)["logits"]


@pytest.mark.real
@pytest.mark.parametrize("name", NAMES)
def test_accuracy_and_completeness_on_real_images(name, data_root):
    """The registered accuracy on the whole test set: for FULL_PASS from its shipped logits
    (their sha256 and key are checked in tests/test_pool_cache.py), which the model reproduces
    on every 20th test image (the whole pass: ``-m full_pass``, below); completeness on 16."""
    model = create_model(name, pretrained=True)
    test_set = load_cifar10("test", root=data_root)
    if name == FULL_PASS:
        shipped = _shipped_logits()
        assert top1_accuracy(shipped, test_set.labels) == pytest.approx(
            TRAINED[name][3].accuracy, abs=0.05)
        every = torch.arange(0, len(test_set), STRIDE)
        with torch.inference_mode():
            again = torch.cat([model.eval()(test_set.float_images(every[i:i + 100]))
                               for i in range(0, len(every), 100)])
        torch.testing.assert_close(again, shipped[every], rtol=1e-4, atol=1e-4)
        logits = shipped
    else:
        logits = predict_logits(model, test_set.subset(16), progress=False)
    x, target = test_set.float_images(slice(0, 16)), test_set.labels[:16]
    maps = model.contributions(x, target)
    with torch.no_grad():
        evidence = model.evidence_encoded(model.encode(x))[torch.arange(16), target]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), evidence, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)),
                               logits[:16][torch.arange(16), target] - model.logit_bias,
                               rtol=1e-4, atol=1e-5)


def _zoo_names_by_file() -> dict[str, str]:
    return {MODELS.get(n).metadata["pretrained_cfg"].file: n for n in list_models()
            if MODELS.get(n).metadata.get("pretrained_cfg") is not None
            and MODELS.get(n).metadata["pretrained_cfg"].bundled}


def test_every_committed_sidecar_records_the_dataset_its_entry_is_registered_for():
    names = _zoo_names_by_file()
    sidecars = sorted(p for p in BUNDLED_DIR.glob("*.json"))
    assert len(sidecars) == len(names) >= 8
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        name = names[sidecar["file"]]
        assert sidecar["registered_dataset"] == MODELS.get(name).metadata["dataset"], path.name


def test_a_zoo_sidecar_without_its_dataset_is_one_line(tmp_path):
    shutil.copy(BUNDLED_DIR / "xs-coda-sq-t50.safetensors", tmp_path / "old.safetensors")
    sidecar = json.loads((BUNDLED_DIR / "xs-coda-sq-t50.json").read_text())
    del sidecar["registered_dataset"]
    sidecar["file"], sidecar["zoo"]["name"] = "old.safetensors", "xs-coda-old-sidecar"
    (tmp_path / "old.json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match=r"old.json: no registered_dataset .*add it"):
        register_zoo_folder(tmp_path)
    assert "xs-coda-old-sidecar" not in MODELS.names()


#: (zoo name, entry) of the shipped logits: the pool a run's grid localisation ranks.
SHIPPED = [(_zoo_names_by_file()[json.loads(path.read_text())["file"]], entry)
           for path in sorted(BUNDLED_DIR.glob("*.json"))
           for entry in ShippedLogits.in_sidecar(path)]


def test_the_quick_runs_model_ships_its_test_set_logits_small_and_checked():
    assert {name for name, _ in SHIPPED} >= {"xs-coda-sq-t1000"}
    total = 0
    for name, entry in SHIPPED:
        recorded = json.loads(entry.sidecar.read_text())["pool_logits"][entry.dataset]
        assert entry.file.parent == BUNDLED_DIR and sha256_file(entry.file) == entry.sha256
        assert recorded["weights_sha256"] == MODELS.get(name).metadata["pretrained_cfg"].sha256
        # keyed by the weights as a run loads them: a run's cache key for this model matches
        assert entry.model == model_digest(create_model(name))
        total += entry.file.stat().st_size
    assert total <= 512 * 1024


@pytest.mark.real
def test_shipped_logits_are_what_a_pass_computes(data_root):
    """The shipped file is used for the real test set (its key matches, the spot check passes)
    and its rows are the logits a pass over the first 128 images computes here."""
    test_set = load_cifar10("test", root=data_root)
    for name, entry in SHIPPED:
        model = create_model(name)
        pool = PoolLogits(None, torch.device("cpu"), shipped=[BUNDLED_DIR])
        logits = pool.predict(model, test_set)
        assert (pool.stats.shipped, pool.stats.misses, pool.refused) == (1, 0, [])
        assert entry.data == test_set.digest()
        subset = predict_logits(model, test_set.subset(128), progress=False)
        torch.testing.assert_close(logits[:128], subset, rtol=1e-5, atol=1e-5)
        assert torch.equal(logits[:128].argmax(1), subset.argmax(1))


@pytest.mark.real
@pytest.mark.full_pass
def test_the_full_pass_scores_the_registered_accuracy_and_gives_the_shipped_logits(data_root):
    """All 10,000 test images classified again (about a minute here): the accuracy the zoo
    registers and the shipped logits, image for image."""
    model = create_model(FULL_PASS, pretrained=True)
    test_set = load_cifar10("test", root=data_root)
    logits = predict_logits(model, test_set, progress=False)
    assert top1_accuracy(logits, test_set.labels) == pytest.approx(
        TRAINED[FULL_PASS][3].accuracy, abs=0.05)
    torch.testing.assert_close(logits, _shipped_logits(), rtol=1e-4, atol=1e-4)
