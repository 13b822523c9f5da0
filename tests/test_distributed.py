"""Sweeps on Dask: the same table as in-process, a killed worker, resume, fsspec URLs, errors.

The toy metric and data of the runner tests (``test_runner.TOY``) live in a module file, which
``Client.upload_file`` sends to the workers (and to any worker that restarts), as a user would
ship a plugin module.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import fsspec
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from test_runner import _run, toy  # noqa: F401 - toy: a fixture, used by name

from attrib_bench.cli import cli
from attrib_bench.core.errors import RunError
from attrib_bench.models.resnet_cifar import CifarResNet
from attrib_bench.runners.benchmark import run
from attrib_bench.runners.distributed import local_cluster

distributed = pytest.importorskip("distributed")

ROW_KEYS = ["model", "method", "metric", "sample", "key", "variant", "stat"]


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes (with nannies, which restart a killed worker)."""
    with local_cluster(2) as local, distributed.Client(local) as client:
        yield client


@pytest.fixture()
def shipped(toy, cluster):  # noqa: F811
    """The toy module, importable on every worker of ``cluster``."""
    cluster.upload_file(toy.__file__)
    return toy


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(ROW_KEYS, ignore_index=True)


def _sweep(module, out, **kw):
    """The toy sweep plus a small ResNet with GradCAM (hooks on the worker's copy)."""
    torch.manual_seed(0)
    models = {"lin": module.toy_model(), "res": CifarResNet(1, num_classes=3).eval()}
    return run(models, "grad,ixg,gradcam", "toy-mass", dataset=module.toy_data(), out=out,
               n_samples=12, chunk_size=3, progress=False, **kw)


def test_two_worker_cluster_gives_the_in_process_table(shipped, tmp_path, cluster):
    here = _sweep(shipped, tmp_path / "here")
    there = _sweep(shipped, tmp_path / "there", executor="dask", client=cluster)
    # (2 methods on lin + 3 on res) × 12 images × (total, max); GradCAM does not apply to lin
    assert len(there) == 5 * 12 * 2
    pd.testing.assert_frame_equal(_sorted(there), _sorted(here))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "there" / "summary.csv"),
                                  pd.read_csv(tmp_path / "here" / "summary.csv"))
    manifest = json.loads((tmp_path / "there" / "manifest.json").read_text())
    assert manifest["executor"]["workers"] == 2 and manifest["executor"]["tasks"] == 5 * 4
    assert len(manifest["parts"]) == 5


@pytest.mark.slow
def test_killed_worker_mid_sweep_leaves_a_complete_table_without_duplicates(
        shipped, tmp_path, cluster):
    out = tmp_path / "killed"
    slow = {"toy-mass": {"delay": 0.2}}  # the kill lands after 3 of 24 chunks
    result: dict = {}

    def sweep() -> None:
        try:
            result["table"] = _run(shipped, out, n_samples=24, chunk_size=2, executor="dask",
                                   client=cluster, metric_hparams=slow)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=sweep)
    thread.start()
    deadline = time.time() + 120
    while len(list(out.glob("parts/*/*/*/chunk-*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    pids = cluster.run(os.getpid)  # {worker address: pid}
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    written = len(list(out.glob("parts/*/*/*/chunk-*.parquet")))
    assert written == 24  # 2 methods × 12 chunks
    table = result["table"]
    assert len(table) == 2 * 24 * 2
    assert not table.duplicated(ROW_KEYS).any()
    # the uninterrupted in-process run without the delay: the same rows but the recorded delay
    expected = _run(shipped, tmp_path / "clean", n_samples=24, chunk_size=2)
    configs = set(table["metric_config"])
    assert len(configs) == 1 and json.loads(configs.pop()) == {
        **json.loads(expected["metric_config"].iloc[0]), **slow["toy-mass"]}
    pd.testing.assert_frame_equal(_sorted(table).drop(columns="metric_config"),
                                  _sorted(expected).drop(columns="metric_config"))
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_resumed_dask_run_submits_only_the_missing_chunks(shipped, tmp_path, cluster):
    out = tmp_path / "run"
    first = _run(shipped, out, n_samples=12, chunk_size=3, executor="dask", client=cluster)
    for chunk in sorted(out.glob("parts/*/grad/*/chunk-*.parquet"))[:2]:
        chunk.unlink()
    (out / "results.parquet").unlink()
    again = _run(shipped, out, n_samples=12, chunk_size=3, executor="dask", client=cluster)
    assert json.loads((out / "manifest.json").read_text())["executor"]["tasks"] == 2
    pd.testing.assert_frame_equal(again, first)


PLUGIN = '''
import torch
from attrib_bench.core.registry import register_method


@register_method("doubled-ixg-test")
def doubled_ixg(model, inputs, target):
    """2 × input × gradient: a user's method known to the workers only through --plugin."""
    inputs = inputs.clone().requires_grad_(True)
    logit = model(inputs).gather(1, target[:, None]).sum()
    return 2 * inputs * torch.autograd.grad(logit, inputs)[0]
'''


def test_plugin_methods_reach_the_workers(shipped, tmp_path, cluster, monkeypatch):
    from attrib_bench.core.registry import METHODS, PLUGIN_MODULES, load_plugins

    (tmp_path / "doubled_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins(["doubled_plugin"])
    try:
        cluster.upload_file(str(tmp_path / "doubled_plugin.py"), load=False)  # imported by tasks
        doubled = _run(shipped, tmp_path / "d", methods="doubled-ixg-test", executor="dask",
                       client=cluster)
        plain = _run(shipped, tmp_path / "p", methods="ixg")
        totals = doubled[doubled["stat"] == "total"]["value"].to_numpy()
        assert abs(totals - 2 * plain[plain["stat"] == "total"]["value"].to_numpy()).max() < 1e-9
    finally:
        METHODS.remove("doubled-ixg-test")
        PLUGIN_MODULES.remove("doubled_plugin")


def test_memory_url_output_in_process_and_on_threads(toy, tmp_path):  # noqa: F811
    """fsspec output (the object-store code path) on memory://, in-process and on 2 threads."""
    local = _run(toy, tmp_path / "local", n_samples=8, chunk_size=3)
    in_memory = _run(toy, "memory://attrib-bench-test/here", n_samples=8, chunk_size=3)
    pd.testing.assert_frame_equal(in_memory, local)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/attrib-bench-test/here/summary.csv")
    assert len(fs.glob("/attrib-bench-test/here/parts/*/*/*/chunk-*.parquet")) == 6
    assert fs.glob("/attrib-bench-test/here/cache/*/*.safetensors")
    with distributed.Client(processes=False, n_workers=2, threads_per_worker=1,
                            dashboard_address=":0") as threads:
        on_threads = _run(toy, "memory://attrib-bench-test/threads", n_samples=8,
                          chunk_size=3, executor="dask", client=threads)
    pd.testing.assert_frame_equal(_sorted(on_threads), _sorted(local))
    resumed = _run(toy, "memory://attrib-bench-test/here", n_samples=8, chunk_size=3)
    pd.testing.assert_frame_equal(resumed, local)
    fs.rm("/attrib-bench-test", recursive=True)


def test_executor_options_fail_in_one_line(toy, tmp_path, monkeypatch):  # noqa: F811
    with pytest.raises(RunError, match="need --executor dask"):
        _run(toy, tmp_path / "a", workers=2)
    with pytest.raises(RunError, match="pass one of them"):
        _run(toy, tmp_path / "a", executor="dask", workers=2, scheduler="tcp://x:1")
    with pytest.raises(RunError, match="unknown executor"):
        _run(toy, tmp_path / "a", executor="ray")
    monkeypatch.setattr("attrib_bench.runners.distributed.CONNECT_TIMEOUT", "1s")
    with pytest.raises(RunError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        _run(toy, tmp_path / "a", executor="dask", scheduler="tcp://127.0.0.1:9")
    result = CliRunner().invoke(cli, ["run", "--model", "xs-coda-sq-t10", "--workers", "2",
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "Error: --scheduler and --workers need --executor dask"]
