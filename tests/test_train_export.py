"""What ``attrib-bench train`` hands the trainer (``train_and_export`` in runners/train.py:
export names, run folders, head sizes), and the model capabilities the trainer reads through
models/protocols.py (issue 42)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attrib_bench.core.errors import ModelOutputError
from attrib_bench.models import protocols
from attrib_bench.models.coda_net import build_coda
from attrib_bench.runners.train import (
    TrainConfig,
    TrainData,
    TrainJob,
    export_name,
    training_model,
    with_dataset_head,
)


@pytest.mark.parametrize(("model", "settings", "name"), [
    ("xs-coda", {}, "xs-coda-sq-t1000"),  # the model's own T and the default norm
    ("xs-coda", {"temperature": 10.0, "norm": "l2"}, "xs-coda-l2-t10"),
    ("xl-coda", {}, "xl-coda-sq-t6400"),
    ("resnet56", {}, "resnet56"),
    ("torchvision:resnet18", {}, "torchvision_resnet18"),
])
def test_export_names(model, settings, name):
    assert export_name(TrainConfig(model=model, **settings)) == name


def test_the_run_folder_defaults_to_the_export_name(tmp_path):
    config = TrainConfig(model="xs-coda", temperature=10.0)
    assert TrainJob(config, TrainData()).run_dir == Path("runs/train/xs-coda-sq-t10")
    job = TrainJob(config, TrainData(), out_dir=tmp_path, resume=True)
    assert job.run_dir == tmp_path and job.starts_afresh
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert not job.starts_afresh
    assert not TrainJob(config, TrainData(), out_dir=tmp_path / "new").starts_afresh


def test_a_library_models_head_gets_the_datasets_classes(signal_set):
    data = signal_set(10)  # 10 classes
    library = TrainConfig(model="torchvision:resnet18")
    assert with_dataset_head(library, data).model_kwargs == {"num_classes": 10}
    own = TrainConfig(model="torchvision:resnet18", model_kwargs={"num_classes": 3})
    assert with_dataset_head(own, data) is own  # a head the config sets is kept
    coda = TrainConfig(model="xs-coda")
    assert with_dataset_head(coda, data) is coda  # checked against the data, not resized


# ---------------------------------------------------------------- capabilities the trainer reads


def test_training_keeps_the_projections_of_every_dau_layer(tiny_coda_plan):
    model = training_model(TrainConfig(model="xs-coda", model_kwargs=tiny_coda_plan),
                           torch.device("cpu"))
    flags = [m.keep_projection for m in model.modules() if hasattr(m, "keep_projection")]
    assert flags == [True] * len(tiny_coda_plan["out_channels"])
    assert protocols.keep_projections(model, keep=False) == len(flags)
    assert not any(m.keep_projection for m in model.modules() if hasattr(m, "keep_projection"))
    assert protocols.keep_projections(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())) == 0


def test_the_linear_map_is_read_through_protocols(tiny_coda_plan, one_line):
    """Its logits are the forward's, and the map ⊙ the encoded input sums to the target's
    logit minus the bias (the CoDA-Nets' completeness), through a DataParallel wrapper too."""
    torch.manual_seed(0)
    model = build_coda("xs", temperature=10.0, **tiny_coda_plan).double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 4, 9])
    logits, linear_map = protocols.linear_map(nn.DataParallel(model), x, target)
    torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
    assert linear_map.shape == (3, 6, 32, 32)
    torch.testing.assert_close((linear_map * model.encode(x)).sum((1, 2, 3)),
                               logits[torch.arange(3), target] - model.logit_bias,
                               rtol=1e-10, atol=1e-10)
    with pytest.raises(ModelOutputError) as error:
        protocols.linear_map(nn.Linear(2, 2), x, target)
    one_line(error, "has no forward_with_linear_map")
