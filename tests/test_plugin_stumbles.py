"""Plugins, plots and reports as a new user meets them (issue 41).

A run records its methods' labels and colours, so ``plot`` and ``report`` draw it the same
without ``--plugin``; ``--plugin`` takes a ``.py`` file; an unknown name hints at ``--plugin``;
runs that cannot be compared are not merged; a missing ``--checkpoint`` is one line before any
model is built; the manifest's ``built`` holds plugin hyper-parameters; the grid-pool error says
what it found, what it needs and the fixes; the docs say what ``--n-samples`` counts per metric.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.colors import to_hex
from test_run_checks import CHEAP, _data, _model  # the toy data and model of the run checks
from torch import nn

from attrib_bench.cli import cli
from attrib_bench.core.errors import MetricError, PlotError, PluginError, UnknownNameError
from attrib_bench.core.registry import (
    METHODS,
    METRICS,
    MODELS,
    load_plugins,
    method_label,
    register_method,
)
from attrib_bench.data import ImageSet
from attrib_bench.metrics import Metric, SampleSet, make_rows
from attrib_bench.metrics.base import SelectContext
from attrib_bench.metrics.localisation import Localisation
from attrib_bench.plots import figures_for, method_colours, plot_results
from attrib_bench.report import render_report
from attrib_bench.runners.benchmark import run
from attrib_bench.store import add_runs, load_run, load_runs

REPO = Path(__file__).resolve().parents[1]
MINE = "mine-41"


def _run(out: Path, methods: str, settings: tuple[str, ...] = (), metrics: str = "pixel-removal"):
    return run({"toy": _model()}, methods, metrics, dataset=_data(), out=out, progress=False,
               settings=[*CHEAP, *settings], chunk_size=6)


@pytest.fixture()
def mine():
    """A user's method with its own label and colour, registered for one test only."""

    @register_method(MINE, label="Mine 41", colour="#123456")
    def mine_41(model, inputs, target, p: int = 2):
        """A user's method: the input's p-norm over channels."""
        return inputs.norm(p=p, dim=1)

    yield
    METHODS.remove(MINE)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _legend(fig) -> dict[str, str]:
    """Label → colour of the pixel-removal figure's curves."""
    return {line.get_label(): to_hex(line.get_color()) for ax in fig.axes
            for line in ax.get_lines() if not line.get_label().startswith("_")}


# ----------------------------------------------------------------------------- 1. display


def test_a_run_draws_its_plugin_methods_as_recorded_without_the_plugin(tmp_path, mine):
    out = tmp_path / "run"
    _run(out, f"{MINE},grad")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["display"]["methods"][MINE] == {"label": "Mine 41", "colour": "#123456",
                                                    "control": False}
    METHODS.remove(MINE)  # opened elsewhere: the plugin is not loaded
    assert method_label(MINE) == MINE
    from attrib_bench.compare import compare_runs

    _, ranks, lines, _ = compare_runs(out)  # compare's verdict too
    assert len(ranks) and any("Mine 41" in line for line in lines), lines
    assert not any(f"{MINE} " in line for line in lines), lines
    curves = _legend(figures_for(load_runs(out))["pixel-removal"])
    assert any(label.startswith("Mine 41") and colour == "#123456"
               for label, colour in curves.items()), curves
    assert not any(label.startswith(MINE) for label in curves)
    page = render_report(load_runs(out))
    assert "<td class=\"text\">Mine 41</td>" in page
    # a results store keeps the record
    add_runs(tmp_path / "store", [out])
    store_curves = _legend(figures_for(load_run(tmp_path / "store"))["pixel-removal"])
    assert any(label.startswith("Mine 41") and colour == "#123456"
               for label, colour in store_curves.items()), store_curves


def test_the_runs_record_comes_before_the_registry():
    from attrib_bench.core.registry import recorded_display

    record = {"methods": {"grad": {"label": "Grad as run", "colour": "#abcdef"},
                          "zeta": {"label": "Zeta", "colour": None}}}
    with recorded_display(record):
        assert method_label("grad") == "Grad as run"
        assert method_colours(["grad", "zeta", "ixg"])["grad"] == "#abcdef"
        assert method_label("ixg") == METHODS.get("ixg").metadata["label"]  # not recorded
        assert method_colours(["zeta"])["zeta"] == method_colours(["unrecorded"])["unrecorded"]
    assert method_label("grad") == METHODS.get("grad").metadata["label"]  # outside the block


def test_a_run_of_one_method_plots_without_a_traceback(tmp_path):
    """The agreement figure needs three methods; with fewer it was a KeyError traceback."""
    out = tmp_path / "one"
    _run(out, "grad")
    written = plot_results(out)
    assert [p.name for p in written] == ["pixel-removal.png"]


# ----------------------------------------------------------------------------- 2. plugin files


def _plugin_file(folder: Path, module: str, method: str, extra: str = "") -> Path:
    path = folder / f"{module}.py"
    path.write_text(textwrap.dedent(f'''
        {extra}
        from attrib_bench.core.registry import register_method

        @register_method("{method}")
        def method(model, inputs, target):
            """A plugin method."""
            return inputs.sum(1)
    '''))
    return path


@pytest.fixture()
def plugin_cleanup():
    names: list[tuple[str, str]] = []
    yield names
    for module, method in names:
        METHODS.remove(method)
        sys.modules.pop(module, None)


def test_a_plugin_given_as_a_py_file_is_imported(tmp_path, monkeypatch, plugin_cleanup):
    folder = tmp_path / "plugins"
    folder.mkdir()
    path = _plugin_file(folder, "stumble_file_41", "file-method-41")
    plugin_cleanup.append(("stumble_file_41", "file-method-41"))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(cli, ["--plugin", "plugins/stumble_file_41.py", "list", "methods"])
    assert out.exit_code == 0, out.output
    assert "file-method-41" in out.output
    assert load_plugins([str(path)]) == [str(path)]  # once more: not registered twice
    assert "file-method-41" in METHODS


def test_a_bad_plugin_path_is_one_line(tmp_path, monkeypatch, one_line):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PluginError) as info:
        load_plugins(["missing_41.py"])
    one_line(info, "no such file", "missing_41.py")
    with pytest.raises(PluginError) as info:
        load_plugins(["plugins/missing_41"])
    one_line(info, "the path of a .py file")


def test_a_module_the_plugin_imports_is_named_as_the_plugins_own_error(tmp_path, monkeypatch,
                                                                       one_line):
    _plugin_file(tmp_path, "needs_dep_41", "dep-method-41", extra="import no_such_dep_41")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PluginError) as info:
        load_plugins(["needs_dep_41"])
    one_line(info, "plugin 'needs_dep_41' failed while it was imported",
             "No module named 'no_such_dep_41'")


# ----------------------------------------------------------------------------- 3. unknown names


def test_an_unknown_name_in_the_cli_says_to_pass_plugin(tmp_path, monkeypatch, plugin_cleanup):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(cli, ["run", "--model", "resnet56", "--method", "grad-norm-41",
                                   "--out", str(tmp_path / "x")])
    assert out.exit_code == 1
    line = out.output.strip()
    assert "\n" not in line and "unknown method 'grad-norm-41'" in line
    assert "if it is defined in a plugin module, pass --plugin MODULE" in line
    _plugin_file(tmp_path, "hint_plugin_41", "hint-method-41")
    plugin_cleanup.append(("hint_plugin_41", "hint-method-41"))
    out = CliRunner().invoke(cli, ["--plugin", "hint_plugin_41", "eval", "--model", "tiny-41"])
    assert "unknown model 'tiny-41'" in out.output
    assert "another plugin module" in out.output and "(loaded: hint_plugin_41)" in out.output
    with pytest.raises(UnknownNameError) as info:  # from Python: no CLI advice
        MODELS.get("tiny-41")
    assert "--plugin" not in str(info.value)


# ----------------------------------------------------------------------------- 4. incomparable runs


def _edited(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs41")
    _run(root / "grad", "grad")
    _run(root / "ixg", "ixg")
    return root


def test_runs_that_cannot_be_compared_are_not_merged(tmp_path, two_runs, one_line):
    grad, ixg = two_runs / "grad", two_runs / "ixg"
    assert set(load_runs([grad, ixg]).results["method"]) == {"grad", "ixg"}  # comparable
    fewer = _edited(ixg, tmp_path / "fewer", lambda m: m["config"]["metric_hparams"][
        "pixel-removal"].update(num_images=3, max_batch=7))
    load_runs([grad, fewer])  # another sample count or batch size: still comparable

    def other_dataset(m):
        m["config"]["dataset"] = "tinyimagenet"

    def other_baseline(m):
        m["config"]["metric_hparams"]["pixel-removal"]["baseline"] = "road"

    def other_weights(m):
        m["models"]["toy"]["sha256"] = "f" * 64

    def other_forward(m):  # the same weights, another forward (a new user's find)
        m["models"]["toy"]["identity"] = "e" * 64

    cases = [(other_forward, "model 'toy' is another model under one name", "eeeeeeeeeeee"),
             (other_dataset, "datasets differ", "tinyimagenet"),
             (other_baseline, "metric 'pixel-removal' ran with other settings",
              "baseline='road'"),
             (other_weights, "model 'toy' has other weights", "ffffffffffff")]
    for k, (edit, what, shown) in enumerate(cases):
        parent = tmp_path / f"parent{k}"
        shutil.copytree(grad, parent / "grad")
        _edited(ixg, parent / "ixg", edit)
        with pytest.raises(PlotError) as info:
            load_runs(parent)
        one_line(info, what, shown, "in grad", "in ixg", "pass --results one run folder",
                 f"--results {parent / 'grad'}", limit=300 + 2 * len(str(parent)))
    out = CliRunner().invoke(cli, ["report", "--results", str(tmp_path / "parent1")])
    assert out.exit_code == 1 and "datasets differ" in out.output
    assert len(out.output.strip().splitlines()) == 1
    # a store's own runs may differ (it was built so); a run beside it is compared with them
    add_runs(tmp_path / "store", [grad, tmp_path / "parent2" / "ixg"])
    _run(tmp_path / "random", "random")
    with pytest.raises(PlotError, match="ran with other settings"):
        load_runs([tmp_path / "store", tmp_path / "random"])
    add_runs(tmp_path / "store-same", [grad])
    assert set(load_runs([tmp_path / "store-same", tmp_path / "random"]).results["method"]) \
        == {"grad", "random"}


# ----------------------------------------------------------------------------- 5. --checkpoint


def test_a_missing_checkpoint_is_one_line_before_any_model_is_built(tmp_path, monkeypatch):
    (tmp_path / "ckpt_plugin_41.py").write_text(textwrap.dedent('''
        import torch
        from attrib_bench import register_model

        @register_model("ckpt-model-41")
        def ckpt_model(pretrained=False, **kw):
            """Built only when asked; marks that it was."""
            open("built.txt", "w").write("built")
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    '''))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    try:
        for command in (["run", "--method", "grad", "--metric", "pixel-removal",
                         "--n-samples", "2", "--out", "r"],
                        ["eval", "--limit", "2"],
                        ["examples", "--results", "r"]):
            for file, said in (("missing.pt", "does not exist"), ("empty.pt", "is empty")):
                out = CliRunner().invoke(cli, ["--plugin", "ckpt_plugin_41", *command[:1],
                                               "--model", "ckpt-model-41", "--checkpoint",
                                               file, *command[1:]])
                assert out.exit_code == 1, out.output
                assert out.output.startswith(f"Error: --checkpoint {file}") and said in \
                    out.output and len(out.output.strip().splitlines()) == 1, out.output
        assert not (tmp_path / "built.txt").exists()
    finally:
        MODELS.remove("ckpt-model-41")
        sys.modules.pop("ckpt_plugin_41", None)


# ----------------------------------------------------------------------------- 6. built


class _Kwargs(Metric):
    """A plugin metric (registered in the test): the map's mean, per image."""

    directions = {"score": "higher"}

    def __init__(self, *, scale: float = 1.0, **kw):
        super().__init__(**kw)
        self.scale = scale

    def select(self, model, dataset, n_samples, ctx):
        ids = np.arange(n_samples or 4)
        return SampleSet(ids, lambda i: (dataset.float_images(torch.as_tensor(i)),
                                         dataset.labels[i]), {"images": len(ids)})

    def evaluate(self, ctx, inputs, target, samples):
        return make_rows(samples, "mean", self.scale * ctx.explain(inputs, target)
                         .mean((1, 2)).cpu().numpy())


def test_the_manifest_records_plugin_hparams_as_built(tmp_path, mine):
    from attrib_bench.methods.base import AttributionMethod

    class KwargsMethod(AttributionMethod):
        """A plugin method class that passes max_batch and seed on to its base."""

        def __init__(self, model, *, power: float = 1.0, **kw):
            super().__init__(model, **kw)
            self.power = power

        def _attribute_chunk(self, inputs, target):
            return inputs.abs().pow(self.power).sum(1)

    METHODS.add("kwargs-41", KwargsMethod)
    METRICS.add("kwargs-metric-41", _Kwargs)
    try:
        run({"toy": _model()}, f"{MINE},kwargs-41,gradcam", "kwargs-metric-41", dataset=_data(),
            out=tmp_path / "r", progress=False, n_samples=4, chunk_size=4,
            settings=[f"{MINE}.p=3", "kwargs-metric-41.scale=2.5"])
    finally:
        METHODS.remove("kwargs-41")
        METRICS._entries.pop("kwargs-metric-41", None)
    built = json.loads((tmp_path / "r" / "manifest.json").read_text())["built"]
    here = __name__
    assert built["methods"][MINE]["hparams"] == {"p": 3, "max_batch": 64, "seed": 0}
    assert built["methods"][MINE]["plugin"] == here
    assert built["methods"]["kwargs-41"]["hparams"] == {"power": 1.0, "max_batch": 64,
                                                        "seed": 0}
    assert built["methods"]["gradcam"]["plugin"] is None
    assert built["methods"]["gradcam"]["class"] == "attrib_bench.methods.gradcam.GradCAM"
    assert built["metrics"]["kwargs-metric-41"]["hparams"]["scale"] == 2.5
    assert built["metrics"]["kwargs-metric-41"]["class"].endswith("._Kwargs")


# ----------------------------------------------------------------------------- 7. grid pool


def _pool(per_class: list[int]) -> tuple[ImageSet, torch.Tensor]:
    """Images of 10 classes, class c with ``per_class[c]`` confident, correct images and two
    unconfident ones; logits that say so."""
    labels = torch.tensor([c for c, k in enumerate(per_class) for _ in range(k + 2)])
    logits = torch.full((len(labels), 10), -6.0)
    logits[torch.arange(len(labels)), labels] = 4.0
    unsure = torch.tensor([i for i in range(len(labels))
                           if i == 0 or labels[i] != labels[i - 1]]
                          + [i + 1 for i in range(len(labels) - 1)
                             if i == 0 or labels[i] != labels[i - 1]])
    logits[unsure, labels[unsure]] = -1.0  # correct (argmax) but not confident
    images = torch.zeros((len(labels), 3, 4, 4), dtype=torch.uint8)
    return ImageSet(images, labels, tuple(f"c{i}" for i in range(10)), "pool"), logits


class _Sigmoid(nn.Identity):
    """Stands for a model scored by its sigmoid (its logits come from the context)."""

    probability = "sigmoid"


def test_the_grid_pool_error_says_what_it_found_what_it_needs_and_the_fixes(one_line):
    per_class = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    data, logits = _pool(per_class)
    ctx = SelectContext(predict=lambda model, dataset: logits)
    with pytest.raises(MetricError) as info:
        Localisation().select(_Sigmoid(), data, None, ctx)
    one_line(info, "only 2 3x3 grids can be drawn from pool", f"{sum(per_class)} correctly "
             "classified images with sigmoid probability > 0.5, 2 to 11 per class",
             "500 requested", "a grid takes 9 such images of distinct classes",
             "pass --n-samples 2 (or fewer)", "a smaller grid (--set localisation.n=2)",
             "another model or dataset", limit=400)
    with pytest.raises(MetricError) as info:
        Localisation(n=2).select(_Sigmoid(), data, None, ctx)
    assert "smaller grid" not in str(info.value)
    none, logits_none = _pool([0] * 10)
    with pytest.raises(MetricError) as info:
        Localisation().select(_Sigmoid(), none, None,
                              SelectContext(predict=lambda model, dataset: logits_none))
    one_line(info, "only 0 3x3 grids", "use a smaller grid", "a better-trained model",
             limit=400)
    assert "--n-samples" not in str(info.value)


# ----------------------------------------------------------------------------- 8. docs


def test_the_docs_say_what_n_samples_counts_per_metric():
    """docs/runs.md's table of what --n-samples counts names each built-in metric's setting
    and default as the registry has them, and says where the n that ran is recorded."""
    from attrib_bench.core.hparams import hparams_of

    page = (REPO / "docs" / "runs.md").read_text()
    section = page.split("## How many samples: `--n-samples`")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            for name in re.findall(r"`([a-z-]+)`", cells[0]):
                rows[name] = cells
    for name in ("localisation", "localisation-difull", "pixel-removal", "randomisation"):
        factory = METRICS.get(name).factory
        key = factory.sample_count
        assert rows[name][2] == f"`{key}`", (name, rows[name])
        assert rows[name][3].startswith(str(hparams_of(factory)[key].default)), rows[name]
    assert "grids" in rows["localisation"][1] and "images" in rows["pixel-removal"][1]
    assert "images" in rows["randomisation"][1]
    for recorded in ("config.n_samples", 'samples["<model>/<metric>"]', "`n`",
                     "`summary.csv`"):
        assert recorded in section, recorded


# ----------------------------------------------------------------------------- **kw classes


def test_a_plugin_class_passing_kwargs_on_gets_the_runs_seed_and_checked_keys(tmp_path,
                                                                              one_line):
    """``__init__(self, model, *, power=1.0, **kw)`` calling ``super().__init__(model, **kw)``:
    its base's ``max_batch`` and ``seed`` are its settings too, so the run's ``--seed``
    reaches it (it was built with seed 0) and an unknown key is refused before any work."""
    from attrib_bench.core.errors import SettingError
    from attrib_bench.core.hparams import accepts_any, hparams_of
    from attrib_bench.core.registry import METHODS
    from attrib_bench.methods.base import AttributionMethod

    class KwSaliency(AttributionMethod):
        name = "kw-saliency"
        seen: list = []

        def __init__(self, model, *, power: float = 1.0, **kw):
            super().__init__(model, **kw)
            self.power = power
            KwSaliency.seen.append(self.seed)

        def _attribute_chunk(self, inputs, target):
            return inputs.abs().pow(self.power).sum(1)

    METHODS.add("kw-saliency", KwSaliency)
    try:
        assert set(hparams_of(KwSaliency)) == {"power", "max_batch", "seed"}
        assert not accepts_any(KwSaliency)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
        data = ImageSet(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8),
                        torch.arange(12) % 10, tuple("0123456789"), "t")
        kw = dict(dataset=data, n_samples=2, progress=False, settings=["pixel-removal.steps=4"])
        run({"m": model}, "kw-saliency", "pixel-removal", seed=7, out=tmp_path / "r", **kw)
        assert KwSaliency.seen and set(KwSaliency.seen) == {7}
        config = json.loads((tmp_path / "r" / "manifest.json").read_text())["config"]
        assert config["method_hparams"]["kw-saliency"]["seed"] == 7
        with pytest.raises(SettingError) as error:
            run({"m": model}, "kw-saliency", "pixel-removal",
                **{**kw, "settings": ["kw-saliency.pwr=2", "pixel-removal.steps=4"]})
        one_line(error, "pwr")
    finally:
        METHODS.remove("kw-saliency")


def test_plugin_after_the_command_says_where_it_goes():
    result = CliRunner().invoke(cli, ["run", "--plugin", "x", "--model", "resnet56"])
    assert result.exit_code == 2
    assert "put it before the command (attrib-bench --plugin MODULE run ...)" in result.output
