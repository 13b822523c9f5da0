"""Models by library name (issue 18): ``torchvision:<arch>`` and ``timm:<arch>``.

Random weights only (``pretrained`` stays False: nothing downloads); 64 px inputs. The wrapper
must keep the toolkit's contract (RGB in [0, 1] → logits, the normalisation inside and
differentiated through), declare its capabilities, load local checkpoints safely, and run through
the methods, the runner and the CLI.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from attrib_bench.cli import cli
from attrib_bench.core.checkpoints import sha256_file
from attrib_bench.core.errors import (
    AttribBenchError,
    CheckpointError,
    ModelOutputError,
    NotApplicableError,
    RunError,
    UnknownNameError,
)
from attrib_bench.core.registry import MODELS, applicable_methods, create_method, create_model
from attrib_bench.data.imageset import ImageSet
from attrib_bench.models import library, protocols
from attrib_bench.runners import benchmark

SIZE = 64
CHEAP = {"intgrad": {"n_steps": 4}, "occlusion": {"patch_size": 16, "stride": 16}}


def _inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, SIZE, SIZE, generator=g), torch.tensor([3, 7][:n])


def _tiny_set(classes: int = 10, n: int = 6) -> ImageSet:
    g = torch.Generator().manual_seed(2)
    return ImageSet(torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                    torch.arange(n) % classes, tuple(f"c{i}" for i in range(classes)), "tiny")


@pytest.fixture(scope="module")
def tv_resnet():
    torch.manual_seed(0)
    return create_model("torchvision:resnet18", num_classes=10)


@pytest.fixture(scope="module")
def timm_resnet():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    return create_model("timm:test_resnet", num_classes=10)


def _captum_reference(name: str, model: torch.nn.Module, x: torch.Tensor,
                      target: torch.Tensor) -> torch.Tensor:
    """captum applied to a plain function of the wrapper: (B, H, W), channels summed."""
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    def forward(z: torch.Tensor) -> torch.Tensor:
        return model(z)

    leaf = x.clone().requires_grad_(True)
    if name == "grad":
        maps = Saliency(forward).attribute(leaf, target=target, abs=False)
    elif name == "ixg":
        maps = InputXGradient(forward).attribute(leaf, target=target)
    else:
        maps = IntegratedGradients(forward).attribute(leaf, baselines=torch.zeros_like(x),
                                                      target=target, n_steps=4)
    return maps.detach().sum(1)


# ----------------------------------------------------------------------------- the wrapper


def test_prefixes_are_registered_and_resolve():
    assert {"torchvision", "timm"} <= set(MODELS.prefixes())
    entry = MODELS.get("torchvision:resnet50")
    assert entry.metadata["prefix"] == "torchvision" and entry.metadata["arch"] == "resnet50"
    assert "torchvision:resnet50" in MODELS


def test_torchvision_wrapper_records_and_declares(tv_resnet):
    m = tv_resnet
    assert (m.library, m.arch, m.num_classes, m.input_size) == ("torchvision", "resnet18", 10,
                                                                (3, 224, 224))
    assert m.mean == pytest.approx(library.IMAGENET_MEAN) and m.std == pytest.approx(
        library.IMAGENET_STD)
    assert m.weights == "random" and m.checkpoint_sha256 is None and not m.training
    assert protocols.probability(m) == "softmax"
    assert {"gradcam_layer", "features_head"} <= set(protocols.capabilities(m))
    assert m.gradcam_layer is m.model.layer4


def test_normalisation_is_inside(tv_resnet):
    x, _ = _inputs()
    mean = torch.tensor(library.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(library.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        wrapped, bare = tv_resnet(x), tv_resnet.model((x - mean) / std)
        split = tv_resnet.forward_head(tv_resnet.forward_features(x))
    assert wrapped.shape == (2, 10)
    torch.testing.assert_close(wrapped, bare, rtol=0, atol=0)
    torch.testing.assert_close(split, wrapped, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("arch", "layer"), [("mobilenet_v3_small", "features.12"),
                                           ("alexnet", "features")])
def test_torchvision_features_split_and_layer(arch, layer):
    m = create_model(f"torchvision:{arch}", num_classes=5)
    x, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(m.forward_head(m.forward_features(x)), m(x), rtol=1e-6,
                                   atol=1e-6)
    assert m.gradcam_layer is m.model.get_submodule(layer)


def test_no_clean_split_leaves_the_capability_absent():
    m = create_model("torchvision:squeezenet1_1")  # features, then a conv classifier
    assert not protocols.has(m, "features_head") and m.num_classes == 1000


def test_meta_check_refuses_non_logit_outputs():
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x

    with torch.device("meta"):
        wrapper = library.LibraryModel(Pair(), library="torchvision", arch="pair",
                                       mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(3, 8, 8),
                                       num_classes=3)
    with pytest.raises(ModelOutputError, match="return only the logits"):
        library.check_output(wrapper)


def test_unknown_names_and_bad_options_are_one_line():
    with pytest.raises(UnknownNameError, match="did you mean resnet50"):
        create_model("torchvision:resnet51")
    with pytest.raises(UnknownNameError, match="no classification model 'fasterrcnn"):
        create_model("torchvision:fasterrcnn_resnet50_fpn")
    with pytest.raises(AttribBenchError, match="drop that option"):
        create_model("torchvision:resnet18", no_such_option=1)
    with pytest.raises(CheckpointError, match="have 1000 classes, not 10"):  # before any download
        create_model("torchvision:resnet18", pretrained=True, num_classes=10)


def test_missing_timm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(AttribBenchError, match=r"pip install 'attrib-bench\[timm\]'"):
        create_model("timm:resnet18")


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_loads_with_its_head_size_and_sha256(tmp_path, suffix):
    source = create_model("torchvision:mobilenet_v3_small", num_classes=7)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = create_model("torchvision:mobilenet_v3_small", checkpoint=str(path))
    assert loaded.num_classes == 7 and loaded.checkpoint_sha256 == sha256_file(path)
    x, _ = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    state = create_model("torchvision:mobilenet_v3_small").model.state_dict()
    del state["features.0.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as info:
        create_model("torchvision:mobilenet_v3_small", checkpoint=tmp_path / "bad.safetensors")
    text = str(info.value)
    assert "1 missing (e.g. features.0.0.weight)" in text and "1 unexpected (e.g. extra.weight)" \
        in text and "\n" not in text


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name", ["grad", "ixg", "intgrad", "gradcam", "occlusion"])
def test_methods_on_torchvision_resnet(tv_resnet, name):
    _check_method(tv_resnet, name)


def _check_method(model, name: str) -> None:
    """Finite (2, SIZE, SIZE) maps; the gradient methods equal captum's on the wrapped model."""
    x, target = _inputs()
    maps = create_method(name, model, **CHEAP.get(name, {})).attribute(x, target)
    assert maps.shape == (2, SIZE, SIZE) and torch.isfinite(maps).all()
    if name in ("grad", "ixg", "intgrad"):
        reference = _captum_reference(name, model, x, target)
        torch.testing.assert_close(maps, reference, rtol=1e-5,
                                   atol=1e-5 * float(reference.abs().max()))


def test_gradcam_defaults_to_layer4(tv_resnet):
    method = create_method("gradcam", tv_resnet)
    assert method.layer is tv_resnet.model.layer4 and method.layer_name == "model.layer4"


def test_gradcam_layer_paths_are_the_librarys_own(tv_resnet):
    """`--set gradcam.layer=layer4.1` names torchvision's layer (inside the wrapper's
    ``model``), and the wrapper's own path works too."""
    inner = tv_resnet.model.layer4[1]
    assert create_method("gradcam", tv_resnet, layer="layer4.1").layer is inner
    assert create_method("gradcam", tv_resnet, layer="model.layer4.1").layer is inner


def test_deeplift_refuses_torchvision_resnets_reused_relu(tv_resnet):
    x, target = _inputs(1)
    reused = "ReLU module 'model.layer1.0.relu'.* is called 2 times"
    with pytest.raises(NotApplicableError, match=reused):
        create_method("deeplift", tv_resnet).attribute(x, target)


def test_applicable_methods_with_an_example_leaves_deeplift_out(tv_resnet):
    """By attributes alone DeepLift looks applicable to a torchvision ResNet; with an example
    input its reused-ReLU check runs, as in the runner, and it is left out; the rest stay."""
    x, _ = _inputs(2)
    by_attributes = applicable_methods(tv_resnet)
    with_example = applicable_methods(tv_resnet, x)
    assert "deeplift" in by_attributes and "deeplift" not in with_example
    assert set(by_attributes) - set(with_example) == {"deeplift"}
    assert {"grad", "ixg", "gradcam", "occlusion"} <= set(with_example)


def test_timm_wrapper(timm_resnet):
    m = timm_resnet
    assert (m.library, m.num_classes, m.split) == ("timm", 10, "timm")
    assert m.mean == tuple(m.model.pretrained_cfg["mean"]) and m.input_size == tuple(
        m.model.pretrained_cfg["input_size"])
    assert m.gradcam_layer is m.model.get_submodule(m.model.feature_info[-1]["module"])
    x, _ = _inputs()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (m.mean, m.std))
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.model((x - mean) / std), rtol=0, atol=0)
        torch.testing.assert_close(m.forward_head(m.forward_features(x)), m(x), rtol=1e-6,
                                   atol=1e-6)


@pytest.mark.parametrize("name", ["grad", "ixg", "intgrad", "deeplift", "gradcam", "occlusion"])
def test_methods_on_timm(timm_resnet, name):
    _check_method(timm_resnet, name)


# ----------------------------------------------------------------------------- the runner


def test_run_end_to_end_records_the_checkpoint(tmp_path):
    source = create_model("torchvision:resnet18", num_classes=10)
    path = tmp_path / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    model = create_model("torchvision:resnet18", num_classes=10, checkpoint=path)
    rows = benchmark.run({"tv": model}, "grad,gradcam", "pixel-removal", dataset=_tiny_set(),
                         n_samples=2, metric_hparams={"pixel-removal": {"steps": 4}},
                         out=tmp_path / "r", progress=False)
    assert len(rows) and set(rows["method"]) == {"grad", "gradcam"}
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["models"]["tv"]["checkpoint_sha256"] == sha256_file(path)


def test_run_refuses_a_class_count_mismatch(tv_resnet, tmp_path):
    with pytest.raises(RunError, match="tv outputs 10 classes, tiny has 4: .*num_classes=4"):
        benchmark.run({"tv": tv_resnet}, "grad", "pixel-removal", dataset=_tiny_set(4),
                      n_samples=2, out=tmp_path / "r", progress=False, dry_run=True)


def test_cli_run_with_a_library_model(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "get_dataset", lambda *a, **k: _tiny_set(10))
    for classes in (1000, 10):
        source = create_model("torchvision:mobilenet_v3_small", num_classes=classes)
        save_file({k: v.contiguous() for k, v in source.model.state_dict().items()},
                  str(tmp_path / f"k{classes}.safetensors"))
    args = ["run", "--model", "torchvision:mobilenet_v3_small", "--method", "grad",
            "--metric", "pixel-removal", "--n-samples", "2", "--dry-run", "--out",
            str(tmp_path / "r"), "--quiet", "--checkpoint"]
    refused = CliRunner().invoke(cli, [*args, str(tmp_path / "k1000.safetensors")])
    lines = refused.output.strip().splitlines()
    assert refused.exit_code == 1 and len(lines) == 1, refused.output
    assert "outputs 1000 classes, tiny has 10" in lines[0]
    planned = CliRunner().invoke(cli, [*args, str(tmp_path / "k10.safetensors")])
    assert planned.exit_code == 0, planned.output
