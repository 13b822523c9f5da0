"""Training: augmentation, schedule, loss decrease, exact resume after a kill, safe export."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from attrib_bench.checkpoints import sha256_file
from attrib_bench.data import ImageSet
from attrib_bench.errors import ChecksumError
from attrib_bench.registry import create_model
from attrib_bench.runners.train import (
    TrainConfig,
    augment,
    bce_one_hot,
    build_model,
    export,
    learning_rate,
    train,
)


def _tiny_set(n: int = 32, size: int = 16, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[:, 0] = (labels * 25).to(torch.uint8)[:, None, None]  # a learnable class signal
    return ImageSet(images, labels, tuple(str(i) for i in range(10)), "tiny")


TINY = dict(model="xs-coda", temperature=10.0, batch_size=16, lr=5e-3, crop_padding=2)


def test_augment_crops_and_flips_without_loops():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    same = augment(images, torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(same, images)
    g = torch.Generator().manual_seed(3)
    out = augment(images, g, padding=1, flip=True)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(2):  # every output is a (possibly mirrored) 4×4 window of the padded image
        windows = [padded[i, :, y:y + 4, x:x + 4] for y in range(3) for x in range(3)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_learning_rate_schedules():
    step = TrainConfig(lr=1.0, lr_decay=2.0, lr_step=30)
    assert [learning_rate(step, e) for e in (0, 29.9, 30, 95)] == [1.0, 1.0, 0.5, 0.125]
    cosine = TrainConfig(lr=1.0, schedule="cosine", epochs=10, warmup_epochs=0)
    assert learning_rate(cosine, 0) == pytest.approx(1.0)
    assert learning_rate(cosine, 5) == pytest.approx(0.5)
    assert learning_rate(cosine, 10) == pytest.approx(0.0, abs=1e-12)


def test_two_steps_lower_the_loss(tmp_path):
    data = _tiny_set(16)
    config = TrainConfig(**{**TINY, "crop_padding": 0, "flip": False}, epochs=2)
    x, y = data.float_images(), data.labels
    with torch.no_grad():
        before = bce_one_hot(build_model(config)(x), y).item()
    model = train(config, data, None, tmp_path, progress=False)  # 1 step per epoch
    with torch.no_grad():
        after = bce_one_hot(model(x), y).item()
    assert after < before


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    data = _tiny_set(32)
    config = TrainConfig(**TINY, epochs=3)
    straight = train(config, data, data, tmp_path / "a", progress=False)
    train(config, data, data, tmp_path / "b", progress=False, stop_after_epochs=1)  # "killed"
    resumed = train(config, data, data, tmp_path / "b", resume=True, progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    with open(tmp_path / "b" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_resume_with_other_options_is_refused(tmp_path):
    data = _tiny_set(16)
    train(TrainConfig(**TINY, epochs=1), data, None, tmp_path, progress=False)
    with pytest.raises(Exception, match="another config"):
        train(TrainConfig(**{**TINY, "lr": 1e-4}, epochs=1), data, None, tmp_path, resume=True,
              progress=False)


def test_export_sidecar_and_tampered_file(tmp_path):
    config = TrainConfig(**TINY, epochs=1)
    model = build_model(config)
    path = tmp_path / "xs.safetensors"
    sidecar = export(model, config, path, dataset="tiny", test_accuracy=12.5, epochs_done=1)
    assert sidecar["sha256"] == sha256_file(path)
    assert json.loads(path.with_suffix(".json").read_text())["config"]["temperature"] == 10.0
    loaded = create_model("xs-coda", checkpoint=path, sha256=sidecar["sha256"], temperature=10)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float())
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as info:
        create_model("xs-coda", checkpoint=path, sha256=sidecar["sha256"])
    assert "\n" not in str(info.value)
