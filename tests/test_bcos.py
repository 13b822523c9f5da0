"""B-cos networks through the authors' ``bcos`` package (issue 19): the registered model, its
inherent maps against the package's own explanation, completeness in float64 and float32, the
capabilities the metrics use (GradCAM layer, features/head split, DiFull grid), all on random
weights with non-trivial batch-norm statistics."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("bcos")

from attrib_bench.cli import cli  # noqa: E402
from attrib_bench.core.registry import create_method, create_model, list_models  # noqa: E402
from attrib_bench.metrics.localisation import DisconnectedGrid  # noqa: E402
from attrib_bench.models import protocols  # noqa: E402


def _model(dtype: torch.dtype = torch.float32):
    """bcos-resnet20 with random weights and random running statistics in its batch norms
    (so that the norms are not identities), in eval mode."""
    torch.manual_seed(0)
    model = create_model("bcos-resnet20")
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_var") and module.running_var is not None:
                module.running_var.uniform_(0.5, 2.0)
            if hasattr(module, "running_mean") and module.running_mean is not None:
                module.running_mean.uniform_(-0.2, 0.2)
    return model.to(dtype).eval()


def _images(b: int, dtype: torch.dtype = torch.float32, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_listed_with_its_capabilities():
    result = CliRunner().invoke(cli, ["list", "models"])
    assert result.exit_code == 0 and "bcos-resnet20" in result.output
    model = _model()
    assert protocols.capabilities(model) == ["probability", "contributions", "gradcam_layer",
                                             "features_head", "encoded_input", "head_pooling"]
    assert protocols.head_pooling(model) == "mean"  # B-cos: a global average pool
    assert protocols.probability(model) == "sigmoid"
    assert model.gradcam_layer is model.net.layer3
    assert sum(p.numel() for p in model.parameters()) == 272_112  # the package's config


def test_encoding_is_the_packages_add_inverse_inside_the_model():
    model, x = _model(), _images(2)
    z = model.encode(x)
    torch.testing.assert_close(z, torch.cat([x, 1 - x], dim=1), rtol=0, atol=0)
    torch.testing.assert_close(model(x), model.net(z), rtol=0, atol=0)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_inherent_maps_are_complete(dtype, rtol):
    """Σ W(x) ⊙ x_enc = target logit − logit bias (−log 9), through the `inherent` method."""
    model, x = _model(dtype), _images(4, dtype)
    target = torch.tensor([0, 3, 7, 9])
    assert model.logit_bias == pytest.approx(-torch.log(torch.tensor(9.0)).item())
    maps = create_method("inherent", model).attribute(x, target)  # (B, H, W), channels summed
    logits = model(x).gather(1, target[:, None])[:, 0].detach()
    torch.testing.assert_close(maps.sum((1, 2)), logits - model.logit_bias,
                               rtol=max(rtol, 1e-9), atol=3e-7 if dtype == torch.float32 else 0)
    # random weights give evidence of 1e-5 to 1e-3 beside the bias's 2.2, below float32's
    # resolution of the logit: without the bias the logit is the evidence itself
    model.net.logit_layer.logit_bias = None
    assert model.logit_bias == 0.0
    logits = model(x).gather(1, target[:, None])[:, 0].detach()
    torch.testing.assert_close(maps.sum((1, 2)), logits, rtol=rtol, atol=0)


def test_inherent_equals_the_packages_own_explanation():
    """`inherent` vs `model.explain(...)["contribution_map"]` of the bcos package, per image and
    class, to 1e-5."""
    model, x = _model(), _images(3)
    target = torch.tensor([2, 5, 8])
    ours = create_method("inherent", model).attribute(x, target)
    for i in range(3):
        with pytest.warns(UserWarning, match="require grad"):
            theirs = model.net.explain(model.encode(x[i:i + 1]), idx=int(target[i]))
        assert theirs["explained_class_idx"] == int(target[i])
        torch.testing.assert_close(ours[i], theirs["contribution_map"][0].detach(), rtol=0,
                                   atol=1e-5)


def test_batched_contributions_equal_one_image_at_a_time():
    model, x = _model(torch.float64), _images(4, torch.float64)
    target = torch.tensor([1, 1, 6, 0])
    batched = model.contributions(x, target)
    for i in range(4):
        single = model.contributions(x[i:i + 1], target[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-12, atol=1e-12)


def test_contributions_refuse_training_mode():
    from attrib_bench.core.errors import MethodError

    model = _model().train()
    with pytest.raises(MethodError, match="eval mode"):
        model.contributions(_images(1), torch.tensor([0]))


def test_features_head_split_is_the_forward():
    model, x = _model(torch.float64), _images(2, torch.float64)
    features = model.forward_features(x)
    assert features.shape == (2, 64, 8, 8)
    torch.testing.assert_close(model.forward_head(features), model(x), rtol=0, atol=0)


def test_difull_grid_maps_sum_to_the_grid_logit():
    """On the disconnected 2×2 grid the head averages the cells' evidence: each cell's map is
    divided by 4, and the grid map sums to the grid logit − bias."""
    model = _model(torch.float64)
    grid = DisconnectedGrid(model, 2)
    x = _images(2, torch.float64, size=64)
    target = torch.tensor([4, 1])
    maps = grid.contributions(x, target)
    assert maps.shape == (2, 6, 64, 64)
    logits = grid(x).gather(1, target[:, None])[:, 0].detach()
    torch.testing.assert_close(maps.sum((1, 2, 3)), logits - model.logit_bias, rtol=1e-9, atol=0)


def test_gradcam_finds_the_last_stage():
    model, x = _model(), _images(2)
    maps = create_method("gradcam", model).attribute(x, torch.tensor([0, 1]))
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def test_a_trained_bcos_model_joins_the_zoo(tmp_path):
    """`train`'s export → `zoo_sidecar` → a zoo folder registers a B-cos entry whose weights
    load with their sha256 checked (float16 storage, float32 compute)."""
    from attrib_bench.core.registry import MODELS
    from attrib_bench.models.zoo import register_zoo_folder, zoo_sidecar
    from attrib_bench.runners.train import TrainConfig, export

    model = _model()
    exported = tmp_path / "train" / "bcos-resnet20.safetensors"
    export(model, TrainConfig(model="bcos-resnet20"), exported, dataset="folder-train",
           test_accuracy=12.5, epochs_done=1, extra={"registered_dataset": "imagefolder"})
    zoo_sidecar(exported, "bcos-resnet20-test-zoo", tmp_path / "zoo", accuracy=12.5,
                provenance="a test")
    try:
        assert register_zoo_folder(tmp_path / "zoo") == ["bcos-resnet20-test-zoo"]
        entry = MODELS.get("bcos-resnet20-test-zoo")
        assert entry.metadata["family"] == "bcos" and entry.metadata["pretrained_cfg"].accuracy \
            == 12.5
        # the data it was trained on, as `train` records it (hints name it; "cifar10" before)
        assert entry.metadata["dataset"] == "imagefolder"
        assert "12.50 % on the imagefolder test set" in entry.description
        loaded = create_model("bcos-resnet20-test-zoo", pretrained=True)
        for key, value in model.state_dict().items():
            expected = value.half().float() if value.is_floating_point() else value
            torch.testing.assert_close(loaded.state_dict()[key], expected, rtol=0, atol=0,
                                       msg=key)
    finally:
        MODELS.remove("bcos-resnet20-test-zoo")


def _shipped_bcos() -> list[str]:
    from attrib_bench.core.registry import MODELS

    return [name for name in list_models("bcos-*")
            if MODELS.get(name).metadata.get("pretrained_cfg") is not None]


@pytest.mark.real
@pytest.mark.parametrize("name", _shipped_bcos())
def test_shipped_bcos_accuracy_completeness_and_package_agreement(name, data_root):
    """A shipped B-cos model on the original CIFAR-10 test set: its recorded predictions
    (tests/data/test_set_predictions.json, keyed by the weights' sha256) score the recorded top-1
    and the model classifies every 20th test image as recorded (all of them: `-m full_pass`,
    below); on 16 real images its `inherent` maps complete (float32 rtol 1e-4, float64 1e-9)
    and equal the package's own explanation to 1e-5."""
    from reference_predictions import check_recorded

    from attrib_bench.data import load_cifar10

    model = create_model(name, pretrained=True).eval()
    test_set = load_cifar10("test", root=data_root)
    check_recorded(name, model, test_set)
    x, target = test_set.float_images(slice(0, 16)), test_set.labels[:16]
    for dtype, rtol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        typed = model.to(dtype)
        maps = create_method("inherent", typed).attribute(x.to(dtype), target)
        with torch.no_grad():
            chosen = typed(x.to(dtype)).gather(1, target[:, None])[:, 0]
        torch.testing.assert_close(maps.sum((1, 2)), chosen - typed.logit_bias, rtol=rtol,
                                   atol=1e-5 if dtype == torch.float32 else 1e-9)
    model = model.float()
    maps = create_method("inherent", model).attribute(x[:4], target[:4])
    for i in range(4):
        with pytest.warns(UserWarning, match="require grad"):
            theirs = model.net.explain(model.encode(x[i:i + 1]), idx=int(target[i]))
        torch.testing.assert_close(maps[i], theirs["contribution_map"][0].detach(), rtol=0,
                                   atol=1e-5)


@pytest.mark.real
@pytest.mark.full_pass
@pytest.mark.parametrize("name", _shipped_bcos())
def test_shipped_bcos_classifies_the_whole_test_set_as_recorded(name, data_root):
    """The full pass behind the test above: every test image classified as recorded, the
    recorded top-1 (with the logits' own accuracy to 0.05)."""
    from reference_predictions import check_recorded

    from attrib_bench.core.evaluation import top1_accuracy
    from attrib_bench.core.registry import MODELS
    from attrib_bench.data import load_cifar10

    test_set = load_cifar10("test", root=data_root)
    logits = check_recorded(name, create_model(name, pretrained=True).eval(), test_set, full=True)
    assert top1_accuracy(logits, test_set.labels) == pytest.approx(
        MODELS.get(name).metadata["pretrained_cfg"].accuracy, abs=0.05)
