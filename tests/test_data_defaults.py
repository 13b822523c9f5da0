"""Settings that come from the data (issue 18, points 3 and 4): method defaults scaled with the
image size (occlusion patches, LIME's quickshift kernel), the dataset's protocol (TinyImageNet's
250 grids), both recorded in the manifest; a run that refuses a model built for other data; and
the TinyImageNet and ImageFolder paths end to end on generated trees (train, eval, run, plot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from attrib_bench.cli import cli
from attrib_bench.core.errors import RunError
from attrib_bench.core.registry import METHODS, MODELS
from attrib_bench.data import ImageSet
from attrib_bench.runners.settings import image_size_defaults, resolve_method, run_config


def _config(dataset, methods="occ5,occ9,lime,rise,grad", metrics="localisation",
            settings=(), options=None, metric_hparams=None):
    return run_config(["resnet56"], methods, metrics, n_samples=None, chunk_size=8, seed=0,
                      dataset=dataset, checkpoint=None, method_hparams=None,
                      metric_hparams=metric_hparams, settings=list(settings),
                      dataset_options=options)


# ----------------------------------------------------------------------------- image size


@pytest.mark.parametrize(("side", "occ5", "occ9"), [
    (64, {"patch_size": 8, "stride": 4}, {"patch_size": 16, "stride": 4}),
    (224, {"patch_size": 28, "stride": 14}, {"patch_size": 56, "stride": 14}),
    (96, {"patch_size": 12, "stride": 6}, {"patch_size": 24, "stride": 6}),
    (32, {}, {}),
    (24, {}, {}),  # smaller than the paper's images: the 32 px values stay
])
def test_occlusion_patches_keep_their_share_of_the_image(side, occ5, occ9):
    """occ5 is 1/8 of a 32 px side, occ9 1/4, stride 1/16: the same shares at any side."""
    assert image_size_defaults("occ5", (side, side)) == occ5
    assert image_size_defaults("occ9", (side, side)) == occ9
    assert image_size_defaults("occlusion", (side, side)) == occ5  # occ5's defaults
    assert image_size_defaults("occ5", (side, side + 50)) == occ5  # the shorter side counts


@pytest.mark.parametrize(("side", "kernel"), [(64, 2.0), (100, 3.125), (224, 4.0), (512, 4.0),
                                              (32, None), (16, None)])
def test_lime_kernel_grows_with_the_side_up_to_the_package_default(side, kernel):
    expected = {} if kernel is None else {"kernel_size": kernel}
    assert image_size_defaults("lime", (side, side)) == expected


def test_methods_without_size_dependent_defaults_keep_theirs():
    """RISE's mask grid is relative to the input; gradient methods have no size setting."""
    for name in ("rise", "grad", "ixg", "intgrad", "gradcam", "deeplift"):
        assert image_size_defaults(name, (224, 224)) == {}, name
    assert image_size_defaults("occ5", None) == {}


def test_a_cifar10_config_is_exactly_the_defaults():
    """At 32 px nothing is rescaled: the committed CIFAR-10 runs keep their identity."""
    config = _config("cifar10", methods="all")
    assert config.defaults_from_data == {"image_size": [32, 32], "methods": {}, "metrics": {}}
    for name in METHODS.names():
        assert config.method_hparams[name] == resolve_method(name, {}, 0), name
    assert "defaults_from_data" not in config.identity()


def test_the_run_settings_win_over_the_size_defaults():
    config = _config("tinyimagenet", settings=["occ9.stride=3", "lime.kernel_size=1.5"])
    assert config.method_hparams["occ9"]["patch_size"] == 16
    assert config.method_hparams["occ9"]["stride"] == 3
    assert config.method_hparams["lime"]["kernel_size"] == 1.5
    assert config.method_hparams["occ5"]["patch_size"] == 8
    assert config.defaults_from_data["methods"] == {
        "occ5": {"patch_size": 8, "stride": 4}, "occ9": {"patch_size": 16}}
    assert config.defaults_from_data["image_size"] == [64, 64]


def test_imagefolder_size_comes_from_its_option():
    config = _config("imagefolder", methods="occ5,lime", options={"image_size": 224})
    assert config.defaults_from_data["methods"] == {"occ5": {"patch_size": 28, "stride": 14},
                                                    "lime": {"kernel_size": 4.0}}
    small = _config("imagefolder", methods="occ5", options={"image_size": 32, "resize": 36})
    assert small.defaults_from_data["methods"] == {}


# ----------------------------------------------------------------------------- protocol


def test_tinyimagenet_localisation_draws_250_grids_unless_told():
    config = _config("tinyimagenet", metrics="localisation,localisation-difull,pixel-removal")
    assert config.metric_hparams["localisation"]["num_grids"] == 250
    assert config.metric_hparams["localisation-difull"]["num_grids"] == 250
    assert config.metric_hparams["pixel-removal"]["num_images"] == 1024
    assert config.defaults_from_data["metrics"] == {
        "localisation": {"num_grids": 250}, "localisation-difull": {"num_grids": 250}}
    told = _config("tinyimagenet", settings=["localisation.num_grids=40"],
                   metrics="localisation,localisation-difull",
                   metric_hparams={"localisation-difull": {"num_grids": 7}})
    assert told.metric_hparams["localisation"]["num_grids"] == 40
    assert told.metric_hparams["localisation-difull"]["num_grids"] == 7
    assert told.defaults_from_data["metrics"] == {}
    assert _config("cifar10").metric_hparams["localisation"]["num_grids"] == 500


# ----------------------------------------------------------------------------- runs


def _pattern_set(side: int, classes: int = 10, per_class: int = 2) -> ImageSet:
    rng = np.random.RandomState(0)
    images = torch.from_numpy(rng.randint(0, 256, (classes * per_class, 3, side, side),
                                          dtype=np.uint8))
    labels = torch.arange(classes).repeat_interleave(per_class)
    return ImageSet(images, labels, tuple(f"c{k}" for k in range(classes)), f"pattern{side}")


class MeanColourNet(nn.Module):
    """Nearest class colour, as a linear model on the image's mean RGB (an analytic classifier:
    logit_k = s·(c_k·m − |c_k|²/2) + margin), confident on images painted in the class colours."""

    def __init__(self, colours: torch.Tensor, scale: float = 60.0, margin: float = 5.0) -> None:
        super().__init__()
        self.linear = nn.Linear(3, len(colours))
        with torch.no_grad():
            self.linear.weight.copy_(scale * colours)
            self.linear.bias.copy_(-scale * (colours ** 2).sum(1) / 2 + margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def test_a_64px_run_records_the_scaled_occlusion_in_its_manifest(tmp_path):
    from attrib_bench.runners.benchmark import run

    data = _pattern_set(64)
    torch.manual_seed(0)
    rows = run({"net": MeanColourNet(torch.rand(10, 3))}, "occ5", "pixel-removal", dataset=data,
               n_samples=1, out=tmp_path / "run", progress=False,
               metric_hparams={"pixel-removal": {"steps": 4}})
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["defaults_from_data"] == {
        "image_size": [64, 64], "methods": {"occ5": {"patch_size": 8, "stride": 4}},
        "metrics": {}}
    config = json.loads(rows["method_config"].iloc[0])["config"]
    assert (config["patch_size"], config["stride"]) == (8, 4)


def test_run_refuses_a_registered_model_built_for_other_data(tmp_path):
    """xs-coda (CIFAR-10: 10 classes at 32 px) on 10 classes at 64 px: one line, before work."""
    from attrib_bench.runners.benchmark import run

    with pytest.raises(RunError) as info:
        run("xs-coda", "grad", "pixel-removal", dataset=_pattern_set(64), n_samples=1,
            out=tmp_path / "run", progress=False)
    assert str(info.value) == (
        "xs-coda is built for 10 classes at 32 px, pattern64 has 10 classes at 64x64 px: pass "
        "--dataset cifar10 --data-root DIR --checkpoint FILE (its own data; it has no weights: "
        "`attrib-bench train --model xs-coda --dataset cifar10 --data-root DIR` trains one)")
    assert not (tmp_path / "run" / "parts").exists()


# ----------------------------------------------------------------------------- end to end

COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1],
                        [0.9, 0.1, 0.9], [0.1, 0.9, 0.9]])


def _paint(path: Path, k: int, rng: np.random.RandomState) -> None:
    """A 64 px JPEG in class k's colour with a little noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = COLOURS[k].numpy() * 255 + rng.randint(-20, 21, (64, 64, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=95)


def _colour_folder_tree(tmp_path: Path) -> Path:
    """The same classes in an ImageFolder layout: DIR/{train,val}/<class>/*.jpg."""
    rng = np.random.RandomState(1)
    for k in range(len(COLOURS)):
        for split, count in (("train", 2), ("val", 3)):
            for i in range(count):
                _paint(tmp_path / "folder" / split / f"colour{k}" / f"{i}.jpg", k, rng)
    return tmp_path / "folder"


@pytest.fixture()
def colour_tiny_root(tmp_path: Path) -> Path:
    """A TinyImageNet tree whose 6 classes are colours: 2 train and 3 val 64 px images per
    class, each its class colour with a little noise (JPEG, as the real set)."""
    folder = tmp_path / "tiny-imagenet-200"
    wnids = [f"n{k:08d}" for k in range(len(COLOURS))]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tcolour {k}\n" for k, w in enumerate(wnids)))
    rng = np.random.RandomState(0)

    def paint(path: Path, k: int) -> None:
        _paint(path, k, rng)

    lines = []
    for k, wnid in enumerate(wnids):
        for i in range(2):
            paint(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", k)
        for i in range(3):
            name = f"val_{k * 3 + i}.JPEG"
            paint(folder / "val" / "images" / name, k)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return tmp_path


@pytest.mark.parametrize("layout", ["tinyimagenet", "imagefolder"])
def test_train_eval_run_and_plot_end_to_end(layout, colour_tiny_root, tmp_path):
    """`train` a few steps, `eval`, `run` localisation (2x2 grids of 64 px images) and pixel
    removal, then `plot`, all through the CLI on a generated tree of each layout."""
    MODELS.add("colour-net", lambda pretrained=False, checkpoint=None: MeanColourNet(COLOURS),
               dataset="tinyimagenet", num_classes=len(COLOURS), image_size=64)
    try:
        root = (["--dataset", "tinyimagenet", "--data-root", str(colour_tiny_root)]
                if layout == "tinyimagenet" else
                ["--dataset", "imagefolder", "--dataset-option", "image_size=64",
                 "--dataset-option", "resize=64", "--data-root",
                 str(_colour_folder_tree(tmp_path))])
        runner = CliRunner()
        trained = runner.invoke(cli, ["train", "--model", "colour-net", *root, "--epochs", "1",
                                      "--batch-size", "4", "--lr", "1e-4", "--quiet",
                                      "--out", str(tmp_path / "train")])
        assert trained.exit_code == 0, trained.output + repr(trained.exception)
        assert list((tmp_path / "train").glob("*.safetensors"))
        evaluated = runner.invoke(cli, ["eval", "--model", "colour-net", *root])
        assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
        assert "100.00" in evaluated.output  # the analytic colour classifier is exact here
        out = tmp_path / "run"
        ran = runner.invoke(cli, ["run", "--model", "colour-net", "--method", "grad,ixg,occ5",
                                  "--metric", "localisation,pixel-removal", *root,
                                  "--n-samples", "2", "--set", "localisation.n=2",
                                  "--set", "pixel-removal.steps=4", "--out", str(out),
                                  "--quiet"])
        assert ran.exit_code == 0, ran.output + repr(ran.exception)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["config"]["split"] == "val"
        # --n-samples 2 is the grid count that ran, recorded in place of the protocol's 250/500
        assert manifest["config"]["metric_hparams"]["localisation"]["num_grids"] == 2
        assert "localisation" not in manifest["defaults_from_data"]["metrics"]
        assert manifest["defaults_from_data"]["methods"]["occ5"] == {"patch_size": 8,
                                                                     "stride": 4}
        assert manifest["samples"]["colour-net/localisation"]["cell_size"] == [64, 64]
        summary = (out / "summary.csv").read_text()
        assert "localisation" in summary and "pixel-removal" in summary
        plotted = runner.invoke(cli, ["plot", "--results", str(out)])
        assert plotted.exit_code == 0, plotted.output + repr(plotted.exception)
        assert {p.name for p in (out / "figures").glob("*.png")} >= {
            "localisation.png", "pixel-removal.png"}
    finally:
        MODELS.remove("colour-net")
