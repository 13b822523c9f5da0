"""What ``run`` checks before it works, and what it refuses to trust afterwards (issue 16).

Typed ``--set`` values, settings that name nothing in the run, the full resolved configuration
in the tables and the cache key, fail-fast planning with honest skips, output folders that
cannot be created, plugins that fail, and checksummed chunks (bit flips, truncation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from attrib_bench.cli import cli
from attrib_bench.core import hparams
from attrib_bench.core.errors import (
    MethodError,
    ModelOutputError,
    NotApplicableError,
    PluginError,
    RunError,
    SettingError,
)
from attrib_bench.core.registry import METHODS, create_method, load_plugins, register_method
from attrib_bench.data import ImageSet
from attrib_bench.runners.benchmark import run, sweep
from attrib_bench.runners.jobs import Part
from attrib_bench.runners.settings import RunRequest, run_settings
from attrib_bench.runners.storage import Store

CASES = Path(__file__).resolve().parents[2] / "shared" / "cases"
CHEAP = ["pixel-removal.steps=4", "pixel-removal.num_images=6"]


def _data(n: int = 12) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (n,), generator=g), ("a", "b", "c"), "toy")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


def _run(out: Path | None, methods: str = "grad", settings: tuple[str, ...] = (), **kw):
    return run({"toy": kw.pop("model", None) or _model()}, methods, kw.pop("metrics",
               "pixel-removal"), dataset=_data(), out=out, progress=False,
               settings=[*CHEAP, *settings], chunk_size=kw.pop("chunk_size", 2), **kw)


# ----------------------------------------------------------------------------- typed settings


@pytest.mark.parametrize(("text", "expected"), [
    ("False", False), ("false", False), ("0", False), ("FALSE", False), ("True", True),
    ("1", True), ("yes", True)])
def test_bool_text_parses_in_any_case(text, expected):
    spec = hparams.HParam("abs", bool, False)
    assert hparams.convert(text, spec, "method 'grad'", from_text=True) is expected


def test_text_values_parse_to_the_declared_type():
    spec = hparams.hparams_of(METHODS.get("intgrad").factory)
    assert hparams.convert("7", spec["n_steps"], "m", from_text=True) == 7
    with pytest.raises(SettingError, match="n_steps must be int, got 'two'"):
        hparams.convert("two", spec["n_steps"], "m", from_text=True)
    with pytest.raises(SettingError, match="rule must be 'gausslegendre'"):
        hparams.convert("simpson", spec["rule"], "m", from_text=True)
    optional = hparams.HParam("x", float | None, None)
    assert hparams.convert("None", optional, "m", from_text=True) is None
    assert hparams.convert("2", optional, "m", from_text=True) == 2.0
    with pytest.raises(SettingError):  # an API value of the wrong type is refused too
        create_method("grad", _model(), abs="False")


def test_set_abs_false_gives_the_default_table_and_abs_true_differs(tmp_path):
    default = _run(tmp_path / "a")
    as_text = _run(tmp_path / "b", settings=("grad.abs=False",))
    pd.testing.assert_frame_equal(default.drop(columns="method_config"),
                                  as_text.drop(columns="method_config"))
    assert json.loads(as_text["method_config"].iloc[0])["config"]["abs"] is False
    absolute = _run(tmp_path / "c", settings=("grad.abs=TRUE",))
    assert json.loads(absolute["method_config"].iloc[0])["config"]["abs"] is True
    assert not np.allclose(absolute["value"], default["value"])


def test_full_resolved_config_is_in_the_tables_even_when_not_set(tmp_path):
    rows = _run(tmp_path / "r", methods="intgrad")
    method = json.loads(rows["method_config"].iloc[0])
    assert method["name"] == "intgrad" and method["config"]["n_steps"] == 20
    assert method["config"]["rule"] == "gausslegendre" and method["config"]["max_batch"] == 64
    metric = json.loads(rows["metric_config"].iloc[0])
    assert metric["steps"] == 4 and metric["fraction"] == 0.25 and metric["order"] == "both"


@pytest.mark.parametrize(("setting", "message"), [
    ("intgard.n_steps=2", "'intgard' is not a selected method or metric: did you mean intgrad"),
    ("intgrad.abs=1", "method 'intgrad' has no hyper-parameter 'abs'"),
    ("intgrad.n_stps=2", "did you mean n_steps"),
    ("intgrad.n_steps=2.5", "n_steps must be int, got '2.5'"),
    ("ixg.max_batch=2", "'ixg' is not selected in this run"),
    ("broken", "use NAME.KEY=VALUE")])
def test_bad_settings_are_one_line_before_anything_is_written(tmp_path, setting, message):
    out = tmp_path / "never"
    with pytest.raises(SettingError, match=message) as info:
        _run(out, methods="intgrad", settings=(setting,))
    assert "\n" not in str(info.value) and not out.exists()


@pytest.mark.parametrize("metric", ["localisation", "localisation-difull"])
def test_zero_grids_is_refused_before_any_model_runs(tmp_path, metric, monkeypatch):
    """`--set localisation.num_grids=0` used to pass, run the pool's logits pass and end in "no
    results were produced"; like --n-samples 0 it is now one line before any work."""
    from attrib_bench.core.errors import MetricError
    from attrib_bench.runners import benchmark

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(benchmark, "_load_model", no_model)
    out = tmp_path / "never"
    with pytest.raises(MetricError, match=rf"^metric '{metric}': num_grids must be an int >= 1 "
                                          r"\(grids to draw\), got 0$"):
        run("resnet56", "grad", metric, out=out, progress=False,
            settings=[f"{metric}.num_grids=0"])
    assert not out.exists()


@pytest.mark.parametrize("metric", ["pixel-removal", "randomisation"])
@pytest.mark.parametrize("by_flag", [True, False])
def test_more_images_than_the_dataset_holds_is_refused_not_clipped(tmp_path, metric, by_flag):
    """`--n-samples 20000` on CIFAR-10's 10 000 test images used to run 10 000 while the config
    recorded 20 000; like localisation's grid count it is now one line naming the fix."""
    from attrib_bench.core.errors import MetricError

    out = tmp_path / "never"
    asked = {"n_samples": 13} if by_flag else {}
    settings = [] if by_flag else [f"{metric}.num_images=13"]
    with pytest.raises(MetricError, match=rf"^metric '{metric}': toy has only 12 images, 13 "
                                          r"requested: pass --n-samples 12 \(or fewer\)$"):
        run({"toy": _model()}, "grad", metric, dataset=_data(), out=out, progress=False,
            settings=settings, **asked)
    assert not out.exists()


def test_a_bad_method_value_is_refused_before_the_samples_are_drawn(tmp_path, monkeypatch):
    """`--set rise.n_masks=-3` was refused only after localisation's pass over the dataset
    (minutes on CIFAR-10); every method is now built, and its values checked, first."""
    from attrib_bench.metrics.localisation import Localisation

    def no_pass(*args, **kwargs):
        raise AssertionError("the samples were drawn")

    monkeypatch.setattr(Localisation, "select", no_pass)
    out = tmp_path / "never"
    with pytest.raises(MethodError, match="n_masks must be a positive int, got -3") as info:
        run({"toy": _model()}, "grad,rise", "localisation", dataset=_data(), out=out,
            progress=False, settings=["rise.n_masks=-3"])
    assert "\n" not in str(info.value) and not out.exists()


def test_a_changed_default_never_reuses_cached_maps(tmp_path):
    def scaled(model, inputs, target, factor: float = 1.0):
        inputs = inputs.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)
        return factor * grad

    register_method("scaled-grad")(scaled)
    try:
        out = tmp_path / "cache-run"
        first = _run(out, methods="scaled-grad")
        METHODS.remove("scaled-grad")

        def scaled(model, inputs, target, factor: float = -1.0):  # noqa: F811 - new default
            inputs = inputs.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(),
                                          inputs)
            return factor * grad

        register_method("scaled-grad")(scaled)
        second = _run(out, methods="scaled-grad", overwrite=True)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["cache"]["hits"] == 0  # the new default is a new key
        assert json.loads(second["method_config"].iloc[0])["config"]["factor"] == -1.0
        assert not np.allclose(first["value"], second["value"])
    finally:
        METHODS.remove("scaled-grad")


# ----------------------------------------------------------------------------- fail fast, skips


class ReusedReLU(nn.Module):
    """One nn.ReLU module called twice: captum's DeepLift cannot handle it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


def test_method_all_skips_what_does_not_apply_with_reasons(tmp_path, capsys):
    out = tmp_path / "all"
    rows = run({"toy": ReusedReLU().eval()}, "all", "pixel-removal", dataset=_data(),
               out=out, progress=False, chunk_size=6,
               settings=[*CHEAP, "rise.n_masks=8", "lime.num_samples=8", "intgrad.n_steps=2"])
    skipped = json.loads((out / "manifest.json").read_text())["skipped"]
    reasons = {s["method"]: s["reason"] for s in skipped}
    assert set(reasons) == {"inherent", "deeplift"}
    assert "contributions" in reasons["inherent"] and "ReLU" in reasons["deeplift"]
    assert "deeplift" not in set(rows["method"]) and {"grad", "gradcam"} <= set(rows["method"])
    err = capsys.readouterr().err
    assert "skipped: toy · deeplift · pixel-removal" in err


def test_named_method_that_cannot_apply_stops_before_anything_is_written(tmp_path):
    out = tmp_path / "named"
    with pytest.raises(NotApplicableError, match="ReLU") as info:
        run({"toy": ReusedReLU().eval()}, "grad,deeplift", "pixel-removal", dataset=_data(),
            out=out, progress=False, settings=CHEAP)
    assert "\n" not in str(info.value) and not out.exists()
    with pytest.raises(NotApplicableError, match="inherent"):
        _run(out, methods="grad,inherent")
    assert not out.exists()


def test_a_model_returning_probabilities_or_a_tuple_is_refused_up_front(tmp_path):
    softmax = nn.Sequential(_model(), nn.Softmax(dim=1))
    with pytest.raises(ModelOutputError, match="probabilities"):
        _run(tmp_path / "p", model=softmax)

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _model()

        def forward(self, x):
            return self.net(x), x

    with pytest.raises(ModelOutputError, match="tuple") as info:
        _run(tmp_path / "t", model=Pair())
    assert len(str(info.value)) < 300 and not (tmp_path / "p").exists()


def test_dry_run_checks_everything_and_writes_nothing(tmp_path):
    out = tmp_path / "dry"
    rows = _run(out, methods="grad,ixg", dry_run=True)
    assert rows.empty and not out.exists()
    request = RunRequest({"toy": _model()}, "grad,ixg", "pixel-removal", dataset=_data(),
                         settings=CHEAP, chunk_size=2)
    outcome = sweep(run_settings(request, out=out, progress=False, dry_run=True))
    assert outcome.results.empty and not out.exists()
    assert [job.method for job in outcome.plan.jobs] == ["grad", "ixg"]


def test_output_folder_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match="cannot create the output folder"):
        _run(blocker / "x")
    result = CliRunner().invoke(cli, ["run", "--model", "resnet56", "--method", "grad",
                                      "--out", "/dev/null/x"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot create the output folder" in result.output


# ----------------------------------------------------------------------------- plugins


def test_plugin_failing_at_import_is_one_line_and_debug_shows_it(tmp_path, monkeypatch):
    (tmp_path / "boom_plugin.py").write_text('raise RuntimeError("boom at import")\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PluginError, match="boom_plugin.*RuntimeError: boom at import"):
        load_plugins(["boom_plugin"])
    result = CliRunner().invoke(cli, ["--plugin", "boom_plugin", "list", "models"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    result = CliRunner().invoke(cli, ["--debug", "--plugin", "boom_plugin", "list", "models"])
    assert isinstance(result.exception, RuntimeError)
    sys.modules.pop("boom_plugin", None)


def test_plugin_in_the_current_folder_imports_without_pythonpath(tmp_path):
    (tmp_path / "here_plugin.py").write_text(textwrap.dedent('''
        import torch
        from attrib_bench import register_model

        @register_model("here-linear")
        def here_linear(pretrained=False, **kw):
            """A linear classifier."""
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    '''))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = Path(sys.executable).with_name("attrib-bench")
    done = subprocess.run([str(script), "--plugin", "here_plugin", "list", "models"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "here-linear" in done.stdout


@pytest.mark.skipif(not (CASES / "boom.py").is_file(), reason="../shared/cases not present")
@pytest.mark.real
def test_shared_boom_case_is_one_line():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = Path(sys.executable).with_name("attrib-bench")
    done = subprocess.run([str(script), "--plugin", "boom", "list", "models"], cwd=CASES,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "plugin 'boom' failed while it was imported: RuntimeError: boom at import" \
        in done.stderr


# ----------------------------------------------------------------------------- checksummed chunks


def _chunks(out: Path) -> list[Path]:
    return sorted(out.glob("parts/*/*/*/chunk-*.parquet"))


def test_every_flipped_bit_in_a_chunk_is_detected_and_the_rerun_table_is_exact(tmp_path,
                                                                                capsys):
    out = tmp_path / "flip"
    clean = _run(out, methods="ixg")
    chunk = _chunks(out)[0]
    original = chunk.read_bytes()
    part = Part("toy", "ixg", "pixel-removal", Store(out))
    index = int(chunk.name.split("-")[1])
    positions = np.unique(np.linspace(0, len(original) * 8 - 1, 96).astype(int))
    for bit in positions:
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        chunk.write_bytes(bytes(data))
        done, corrupt = part.state(index)
        assert not done and corrupt and not chunk.exists(), f"flip of bit {bit} not detected"
        chunk.write_bytes(original)
    chunk.write_bytes(original[: len(original) // 2])  # truncated
    again = _run(out, methods="ixg")
    pd.testing.assert_frame_equal(again, clean)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["corrupt_chunks"]) == 1 and chunk.name in manifest["corrupt_chunks"][0]
    assert "failed its checksum" in capsys.readouterr().err
    assert pd.read_parquet(out / "results.parquet").equals(clean)


def test_a_chunk_with_an_old_unchecked_name_is_recomputed(tmp_path):
    out = tmp_path / "old"
    clean = _run(out, methods="ixg")
    chunk = _chunks(out)[0]
    chunk.rename(chunk.with_name(chunk.name.split("-")[0] + "-" + chunk.name.split("-")[1]
                                 + ".parquet"))
    again = _run(out, methods="ixg")
    pd.testing.assert_frame_equal(again, clean)
    assert len(_chunks(out)) == len(list(out.glob("parts/*/*/*/chunk-*-*.parquet")))


def test_a_chunk_copied_from_another_run_is_not_trusted(tmp_path):
    clean = _run(tmp_path / "a", chunk_size=3)
    _run(tmp_path / "b", settings=("grad.abs=true",), chunk_size=3)
    mine, theirs = _chunks(tmp_path / "a")[1], _chunks(tmp_path / "b")[1]
    mine.unlink()
    (mine.parent / theirs.name).write_bytes(theirs.read_bytes())  # intact, but abs=True rows
    again = _run(tmp_path / "a", chunk_size=3)
    pd.testing.assert_frame_equal(again, clean)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert [Path(p).name for p in manifest["corrupt_chunks"]] == [theirs.name]


def test_settings_that_only_a_model_or_the_data_can_check_fail_before_writing(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(NotApplicableError, match="layer '4' outputs .* feature map"):
        _run(out, methods="gradcam", settings=("gradcam.layer=4",))  # the Linear layer
    with pytest.raises(Exception, match="mean has 2 values but toy has 3 channels"):
        _run(out, settings=("pixel-removal.baseline=mean", "pixel-removal.mean=0.5,0.5"))
    assert not out.exists()


def test_names_given_twice_count_once(tmp_path):
    rows = _run(tmp_path / "twice", methods="grad,grad,ixg")
    assert sorted(rows["method"].unique()) == ["grad", "ixg"]


def test_a_run_that_wrote_no_chunk_does_not_lock_its_folder(tmp_path):
    def broken(model, inputs, target):
        raise RuntimeError("broken method")

    register_method("broken-method")(broken)
    out = tmp_path / "unlocked"
    try:
        with pytest.raises(RuntimeError, match="broken method"):
            _run(out, methods="broken-method")
        assert (out / "run.json").exists() and not _chunks(out)
        assert not _run(out, methods="grad").empty  # another config, no --overwrite needed
    finally:
        METHODS.remove("broken-method")
