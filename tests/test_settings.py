"""A run's options as one checked object: RunRequest → run_settings → RunSettings → sweep.

``run()`` and ``attrib-bench run`` both build these; the checks run once, in a fixed order,
before anything is loaded or written, and :func:`sweep` hands back the rows with their plan.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from torch import nn

from attrib_bench.core.errors import RunError, SettingError
from attrib_bench.data import ImageSet
from attrib_bench.runners.benchmark import run, sweep
from attrib_bench.runners.settings import (
    ExecutorOptions,
    RunRequest,
    RunSettings,
    check_store,
    run_config,
    run_settings,
)
from attrib_bench.runners.storage import Store

CHEAP = ("pixel-removal.steps=4", "pixel-removal.num_images=4")


def _data(n: int = 8) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (n,), generator=g), ("a", "b", "c"), "toy")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


def test_a_request_keeps_iterables_as_tuples_and_resolves_the_same_twice():
    request = RunRequest(iter(["resnet56"]), (m for m in ["grad", "ixg"]), ["pixel-removal"],
                         settings=(s for s in ["grad.abs=true"]), chunk_size=4)
    assert (request.models, request.methods, request.metrics) == (
        ("resnet56",), ("grad", "ixg"), ("pixel-removal",))
    first, second = request.config(), request.config()  # generators would be spent by now
    assert first.identity() == second.identity()
    assert first.methods == ["grad", "ixg"] and first.method_hparams["grad"]["abs"] is True
    assert first.chunk_size == 4 and request.modules() == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 1  # type: ignore[misc]


def test_a_request_config_is_run_config_of_its_fields():
    request = RunRequest("resnet56,resnet56", "occ5", "pixel-removal", n_samples=3, seed=7,
                         metric_hparams={"pixel-removal": {"steps": 5}},
                         settings=["occ5.stride=3"])
    direct = run_config(["resnet56"], "occ5", "pixel-removal", n_samples=3, chunk_size=32,
                        seed=7, dataset="cifar10", checkpoint=None, method_hparams=None,
                        metric_hparams={"pixel-removal": {"steps": 5}},
                        settings=["occ5.stride=3"])
    assert request.config() == direct


def test_run_settings_check_in_order_executor_checkpoint_request_out_cache(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    bad = dict(checkpoint="w.pt", chunk_size=0)
    with pytest.raises(RunError, match="unknown executor 'ray'"):
        run_settings(RunRequest({"m": _model()}, **bad), ExecutorOptions("ray"), out=blocker / "x")
    with pytest.raises(RunError, match="cannot be loaded into a module given to run"):
        run_settings(RunRequest({"m": _model()}, **bad), out=blocker / "x")
    with pytest.raises(RunError, match="--chunk-size must be an int >= 1, got 0"):
        run_settings(RunRequest({"m": _model()}, chunk_size=0), out=blocker / "x")
    with pytest.raises(RunError, match="cannot create the output folder .*is not a folder"):
        run_settings(RunRequest({"m": _model()}), out=blocker / "x", cache=blocker / "y")
    with pytest.raises(RunError, match="cannot create the cache folder .*pass --cache"):
        run_settings(RunRequest({"m": _model()}), out=tmp_path / "out", cache=blocker / "y")
    assert not (tmp_path / "out").exists()  # checked, not created


def test_run_settings_hold_the_checked_values(tmp_path):
    model = _model()
    request = RunRequest({"m": model}, "grad", "pixel-removal", dataset=_data())
    settings = run_settings(request, out=tmp_path / "out", device="cpu", dry_run=True)
    assert isinstance(settings, RunSettings) and settings.request is request
    assert settings.modules == {"m": model} and settings.modules["m"] is model
    assert settings.executor == ExecutorOptions() and settings.cache is None
    assert isinstance(settings.out, Store) and settings.out.root == str(tmp_path / "out")
    assert settings.config == request.config() and settings.dry_run and settings.progress


def test_check_store_makes_a_local_folder_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = check_store("runs/a")
    assert store is not None and store.root == str(tmp_path / "runs" / "a")
    assert check_store(None) is None and not (tmp_path / "runs").exists()


def test_at_image_size_resolves_the_size_defaults_again_only_when_they_differ():
    settings = run_settings(RunRequest("resnet56", "occ5", "pixel-removal"))
    assert settings.config.defaults_from_data["image_size"] == [32, 32]
    assert settings.at_image_size((32, 32)) is settings
    larger = settings.at_image_size((64, 64))
    assert larger.config.method_hparams["occ5"] == {
        **settings.config.method_hparams["occ5"], "patch_size": 8, "stride": 4}
    assert larger.config.defaults_from_data["methods"] == {"occ5": {"patch_size": 8,
                                                                    "stride": 4}}
    assert settings.config.method_hparams["occ5"]["patch_size"] == 4  # the original is kept
    assert dataclasses.replace(larger, config=settings.config) == settings


def test_a_setting_for_a_method_not_in_the_run_fails_in_run_settings():
    with pytest.raises(SettingError, match="'rise' is not selected in this run"):
        run_settings(RunRequest("resnet56", "grad", "pixel-removal",
                                method_hparams={"rise": {"n_masks": 8}}))


def test_sweep_returns_run_s_rows_and_the_plan_they_came_from(tmp_path):
    options = dict(dataset=_data(), settings=CHEAP, chunk_size=3)
    rows = run({"toy": _model()}, "grad,ixg", "pixel-removal", out=tmp_path / "a",
               progress=False, **options)
    request = RunRequest({"toy": _model()}, "grad,ixg", "pixel-removal", **options)
    outcome = sweep(run_settings(request, out=tmp_path / "b", progress=False))
    pd.testing.assert_frame_equal(outcome.results, rows)
    parts = {job.part.key for job in outcome.plan.jobs}
    assert parts == set(map(tuple, rows[["model", "method", "metric"]].to_numpy().tolist()))
    assert parts == {("toy", "grad", "pixel-removal"), ("toy", "ixg", "pixel-removal")}
    assert outcome.plan.samples["toy/pixel-removal"]["n"] == 4
    assert all(job.chunk_size == 3 and job.part.store.root == str(tmp_path / "b")
               for job in outcome.plan.jobs)
