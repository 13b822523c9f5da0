"""The run folder's life (issue 41): literal paths, a disk that fills up, one run per folder, and
the caller's models given back as they were.

- Paths are literal: an ``--out``/``--cache`` named ``exp[1]``, ``a*b`` or ``what?`` is that
  folder (fsspec reads those characters as a pattern); run and resume work there.
- A write the file system refuses mid-run (no space, a quota, a permission, read-only) is one
  line naming what filled up and where, and that re-running resumes; the resume is exact.
- A second run on a local folder that a run holds refuses at once in one line naming the
  holder; a killed holder leaves no stale lock.
- ``run({"m": net}, ...)`` gives ``net`` back with every submodule's mode, its tensors' devices,
  ``requires_grad`` and grads as they were, also when the run raises.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from attrib_bench.cli import cli
from attrib_bench.core.errors import AttribBenchError, RunError
from attrib_bench.data import ImageSet
from attrib_bench.runners import storage
from attrib_bench.runners.benchmark import Plan, run, sweep
from attrib_bench.runners.jobs import Part
from attrib_bench.runners.settings import RunRequest, run_settings
from attrib_bench.runners.storage import Store

CHEAP = ["pixel-removal.steps=4", "pixel-removal.num_images=6"]
LOCK = ".attrib-bench.lock"  # storage.LOCK_FILE; spelled out so that the test runs on old code
#: Folder names with every character that a glob pattern reads, and the decoys they would match.
NAMES = {"exp[1]": "exp1", "a*b": "aXb", "what?": "what!", "x[!y]z": "xaz"}


def _data(n: int = 12) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (n,), generator=g), ("a", "b", "c"), "toy")


def _model(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes)).eval()


def _run(out, model: nn.Module | None = None, **kw) -> pd.DataFrame:
    return run({"toy": model or _model()}, kw.pop("methods", "grad"), "pixel-removal",
               dataset=_data(), out=out, progress=False, settings=CHEAP,
               chunk_size=kw.pop("chunk_size", 2), **kw)


def _plan(out) -> Plan:
    """The plan of :func:`_run`'s default run in ``out``, from a dry run (nothing is written)."""
    request = RunRequest({"toy": _model()}, "grad", "pixel-removal", chunk_size=2,
                         dataset=_data(), settings=CHEAP)
    return sweep(run_settings(request, out=out, progress=False, dry_run=True)).plan


def _chunks(out: Path) -> list[Path]:
    return sorted((out / "parts").rglob("chunk-*.parquet"))


# ----------------------------------------------------------------------------- literal paths


@pytest.mark.parametrize("name", list(NAMES))
def test_store_glob_matches_below_the_folder_only(tmp_path, name):
    for folder in (name, NAMES[name]):  # the decoy matches the name read as a pattern
        part = tmp_path / folder / "parts" / "m"
        part.mkdir(parents=True)
        (part / f"chunk-00000-{folder}.parquet").write_bytes(b"x")
    found = Store(tmp_path / name).glob("parts", "*", "chunk-*.parquet")
    assert found == [f"{tmp_path}/{name}/parts/m/chunk-00000-{name}.parquet"]
    assert Store(tmp_path / name).glob("parts", "m") == [f"{tmp_path}/{name}/parts/m"]
    assert Store(tmp_path / name).glob("parts", "nothing") == []


@pytest.mark.parametrize("name", list(NAMES))
def test_memory_store_glob_and_remove_are_literal(name):
    root = f"memory://run-folder-test/{os.getpid()}"
    for folder in (name, NAMES[name]):
        Store(f"{root}/{folder}").write_text(f"/run-folder-test/{os.getpid()}/{folder}/parts/m/"
                                             "chunk-00000-x.parquet", folder)
    store, decoy = Store(f"{root}/{name}"), Store(f"{root}/{NAMES[name]}")
    assert store.glob("parts", "*", "chunk-*.parquet") == [store.path("parts", "m",
                                                                      "chunk-00000-x.parquet")]
    store.remove(store.path("parts"))  # fsspec's rm globs first: it deleted the decoy's
    assert not store.exists(store.path("parts", "m", "chunk-00000-x.parquet"))
    assert decoy.read_text(decoy.path("parts", "m", "chunk-00000-x.parquet")) == NAMES[name]
    Store(root).remove(Store(root).root)


def test_local_path_with_double_colon_is_that_folder(tmp_path):
    # fsspec's URL parser reads "::" as a chain of file systems and cut the path at it
    assert Store(tmp_path / "a::b").root == f"{tmp_path}/a::b"
    assert Store("memory://x/a").url == "memory://x/a"


@pytest.mark.parametrize("name", list(NAMES))
def test_run_and_resume_in_folders_with_pattern_characters(tmp_path, name, one_line):
    out, cache = tmp_path / name / name, tmp_path / f"cache {name}"
    decoy = tmp_path / name / NAMES[name]  # a finished run beside it, that the name matches
    _run(decoy, seed=2)
    decoy_chunks = _chunks(decoy)
    first = _run(out, cache=cache)
    chunks = _chunks(out)
    assert len(chunks) == 3  # 6 images, 2 per chunk
    again = _run(out, cache=cache)
    pd.testing.assert_frame_equal(first, again)
    assert _chunks(out) == chunks  # resumed: nothing written again
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cache"]["misses"] == 0 and manifest["cache"]["hits"] == 0  # all resumed
    changed = _run(out, cache=cache, overwrite=True, seed=1)  # --overwrite clears literally
    assert len(_chunks(out)) == 3 and not changed.empty
    assert _chunks(decoy) == decoy_chunks  # neither read nor deleted


def test_store_report_and_plot_read_folders_with_pattern_characters(tmp_path):
    out = tmp_path / "runs[1]" / "a*b?"
    _run(out)
    runner = CliRunner()
    into = tmp_path / "st[o]re*"
    result = runner.invoke(cli, ["store", "--into", str(into), str(out)])
    assert result.exit_code == 0, result.output
    for results in (out, tmp_path / "runs[1]", into):
        result = runner.invoke(cli, ["report", "--results", str(results), "--out",
                                     str(tmp_path / "r[1].html")])
        assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- refused writes


def _refuse_writes(monkeypatch, code: int, after: int, where: str = "/parts/") -> list[str]:
    """Make the local store's writes to paths holding ``where`` fail with ``code`` after
    ``after`` of them succeeded, as ``write()`` on a full disk does (no file name)."""
    written: list[str] = []
    real = storage.atomic_write

    def refused(tmp):
        raise OSError(code, os.strerror(code))

    def atomic_write(path, write):
        if where in str(path):
            if len(written) >= after:
                return real(path, refused)
            written.append(str(path))
        return real(path, write)

    monkeypatch.setattr(storage, "atomic_write", atomic_write)
    return written


@pytest.mark.parametrize(("code", "says"), [
    (errno.ENOSPC, "the disk holding the run folder"),
    (errno.EDQUOT, "disk quota"),
    (errno.EACCES, "permission denied writing in the run folder"),
    (errno.EROFS, "became read-only")])
def test_a_write_refused_mid_run_is_one_line_and_the_resume_is_exact(tmp_path, monkeypatch,
                                                                      code, says, one_line):
    expected = _run(tmp_path / "whole")
    out = tmp_path / "run"
    written = _refuse_writes(monkeypatch, code, after=1)
    with pytest.raises(AttribBenchError) as error:
        _run(out)
    one_line(error, says, str(out), "re-run the same command", "resumes", "parts/toy/grad",
             limit=240 + len(str(out)))  # the folder's length grows with pytest's counter
    assert isinstance(error.value, RunError) and error.value.errno == code
    assert len(written) == 1 and len(_chunks(out)) == 1  # what was written is kept
    monkeypatch.undo()
    resumed = _run(out)
    pd.testing.assert_frame_equal(resumed, expected)  # no duplicated and no missing rows
    assert len(_chunks(out)) == 3


def test_a_full_cache_folder_is_named(tmp_path, monkeypatch, one_line):
    cache = tmp_path / "shared-cache"
    _refuse_writes(monkeypatch, errno.ENOSPC, after=0, where="shared-cache")
    with pytest.raises(AttribBenchError) as error:
        _run(tmp_path / "run", cache=cache)
    one_line(error, f"the cache folder {cache}", "free space there", "resumes")


def test_cli_full_disk_is_one_line(tmp_path, monkeypatch):
    from attrib_bench.runners import settings

    real = settings.RunRequest  # what the CLI builds its run from
    monkeypatch.setattr(settings, "RunRequest", lambda models, *a, **kw: real(  # the toy
        {"toy": _model()}, *a, **{**kw, "dataset": _data(), "settings": CHEAP}))
    _refuse_writes(monkeypatch, errno.ENOSPC, after=1)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--model", "toy", "--method", "grad", "--metric",
                                      "pixel-removal", "--out", str(out), "--chunk-size", "2",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: the disk holding the run folder {out} is full")
    assert "re-run the same command; it resumes" in result.output


def test_cli_other_commands_name_a_refused_write_in_one_line(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run(out)
    _refuse_writes(monkeypatch, errno.ENOSPC, after=0, where="report")
    result = CliRunner().invoke(cli, ["report", "--results", str(out)])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "Error: No space left on device: ") and "report.html" in result.output
    assert "free space there, then run the command again" in result.output


# ----------------------------------------------------------------------------- one run per folder


def _hold(folder: Path, pid: int = 4242) -> int:
    """Hold the folder's lock as a run does; the descriptor (closing it releases the lock)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": pid, "host": "elsewhere", "command": "attrib-bench run"})
             .encode())
    return fd


class _Counting(nn.Module):
    """The toy model, counting its forwards (a refusal must come before any work)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _model()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_a_second_run_on_a_held_folder_refuses_at_once(tmp_path, one_line):
    out = tmp_path / "run"
    fd = _hold(out)
    model = _Counting()
    try:
        with pytest.raises(RunError) as error:
            _run(out, model=model)
    finally:
        os.close(fd)
    one_line(error, str(out), "in use by another run", "pid 4242 on host elsewhere",
             "attrib-bench run", "wait", "another --out")
    assert model.calls == 0 and sorted(p.name for p in out.iterdir()) == [LOCK]
    _run(out, model=model)  # released: the run goes ahead
    assert len(_chunks(out)) == 3


def test_cli_refuses_a_held_folder_in_one_line(tmp_path):
    out = tmp_path / "run"
    fd = _hold(out)
    try:
        result = CliRunner().invoke(cli, ["run", "--model", "resnet56", "--method", "grad",
                                          "--metric", "pixel-removal", "--out", str(out)])
    finally:
        os.close(fd)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "in use by another run (pid 4242" in result.output


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_cannot_be_created_is_one_line(one_line):
    """/proc exists and passes the writable check, but takes no new folder: the run stops in
    one line naming the folder and the fix, not a FileNotFoundError traceback."""
    out = "/proc/attrib-bench-nowhere/run"
    settings = run_settings(RunRequest({"m": _model()}, "grad", "pixel-removal",
                                       dataset=_data(), settings=CHEAP), out=out)
    assert settings.out is not None  # the check before work lets it through
    with pytest.raises(RunError) as info:
        sweep(settings)
    one_line(info, "cannot create the folder /proc/attrib-bench-nowhere/run",
             "No such file or directory", "choose a folder you can write (--out)")


def test_a_killed_run_leaves_no_stale_lock(tmp_path, one_line):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, json, os, time
        fd = os.open({str(out / LOCK)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({{"pid": os.getpid(), "host": "h"}}).encode())
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError) as error:
            _run(out)
        one_line(error, f"pid {holder.pid} on host h")
    finally:
        holder.kill()
        holder.wait()
    _run(out)  # the lock died with its holder; its stale record is no obstacle
    assert len(_chunks(out)) == 3


def test_the_lock_is_released_when_a_run_fails_and_a_new_folder_is_not_left(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(AttribBenchError):
        _run(out, model=_model(classes=5))  # 5 classes on a 3-class dataset: refused in plan
    assert not out.exists()  # the run created it for its lock and wrote nothing else
    _run(out)
    assert (out / LOCK).read_text() == ""  # released: no holder recorded


def test_duplicated_chunks_name_the_plain_re_run_which_recovers(tmp_path, one_line):
    out = tmp_path / "run"
    expected = _run(out)
    part = Part("toy", "grad", "pixel-removal", Store(out))
    rows = pd.read_parquet(_chunks(out)[0])
    rows["seconds"] += 1.0  # a second run's copy of chunk 0: same rows, another timing
    part.write_chunk(0, rows)
    from attrib_bench.runners.benchmark import _gather

    plan = _plan(out)
    config = type("C", (), {"models": ["toy"]})()
    with pytest.raises(RunError) as error:
        _gather(Store(out), config, [job.part for job in plan.jobs])
    message = one_line(error, "duplicated rows", "run the same command again", "recovers")
    assert "re-run with --overwrite" not in message
    pd.testing.assert_frame_equal(_run(out), expected)  # the plain re-run recovers
    assert len(_chunks(out)) == 3


# ----------------------------------------------------------------------------- the caller's model


def _mixed() -> nn.Module:
    """A model in training with a frozen, eval-mode BatchNorm (a fine-tuning setup)."""
    model = _model().train()
    model[1].eval()
    model[1].weight.requires_grad_(False)
    model[6].weight.grad = torch.ones_like(model[6].weight)
    return model


def _state(model: nn.Module) -> list:
    return ([m.training for m in model.modules()],
            [(n, p.device, p.requires_grad, p.grad) for n, p in model.named_parameters()],
            [(n, b.device) for n, b in model.named_buffers()])


def test_run_gives_each_module_its_mode_back(tmp_path):
    model = _mixed()
    before, weight, grad = _state(model), model[0].weight, model[6].weight.grad
    _run(tmp_path / "run", model=model)
    assert [m.training for m in model.modules()] == before[0]
    assert _state(model)[1:] == before[1:]
    assert model[0].weight is weight and model[6].weight.grad is grad


def test_run_gives_the_model_back_when_it_raises(tmp_path):
    model = _mixed()
    model[6] = nn.Linear(4, 5)  # 5 classes on a 3-class dataset: refused after loading
    model[6].train()
    before = _state(model)
    with pytest.raises(AttribBenchError):
        _run(tmp_path / "run", model=model)
    assert _state(model) == before
    with pytest.raises(AttribBenchError):
        _run(tmp_path / "dry", model=model, dry_run=True)
    assert _state(model) == before


def test_module_state_moves_tensors_back_in_place():
    from attrib_bench.runners.benchmark import _keep_module_state

    with torch.device("meta"):
        model = _model()
    restore = _keep_module_state([model])
    model.to_empty(device="cpu")  # as a run moves the model to its device
    model.eval().requires_grad_(False)
    restore()
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    assert all(p.requires_grad for p in model.parameters()) and not model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_run_on_the_gpu_gives_the_model_back_on_its_device(tmp_path):  # pragma: no cover
    model = _mixed()
    _run(tmp_path / "run", model=model, device="cuda")
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    assert model[6].weight.grad.device.type == "cpu"


def test_a_full_disk_while_writing_a_cache_entry_is_one_line(tmp_path, monkeypatch, one_line):
    """A new user's find: safetensors reports a full disk as a SafetensorError ("os error 28"),
    which went past the one-line handling as a 55-line traceback."""
    from safetensors import SafetensorError

    from attrib_bench.runners import cache

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(cache, "save_file", full)
    with pytest.raises(AttribBenchError) as error:
        _run(tmp_path / "run")
    one_line(error, "is full", "cache", "re-run the same command",
             limit=240 + len(str(tmp_path)))
