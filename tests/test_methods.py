"""Attribution methods: each against a reference (captum, a formula, skimage), batching, seeds,
one-line errors, and a user's method registered in a few lines.

Tiny models keep it fast: a 5-layer CoDA-Net (T=10, so that the evidence is not tiny) and a
CIFAR ResNet-8 with random batch-norm statistics, float64, at 12–16 px.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from attrib_bench.cli import cli
from attrib_bench.core.errors import (
    AttribBenchError,
    InputShapeError,
    MethodError,
    NotApplicableError,
    TargetError,
)
from attrib_bench.core.registry import (
    METHODS,
    applicable_methods,
    create_method,
    load_plugins,
    requirements,
)
from attrib_bench.methods.rise import rise_masks
from attrib_bench.models.coda_net import build_coda
from attrib_bench.models.dau import explanation_mode
from attrib_bench.models.resnet_cifar import CifarResNet

#: Cheap settings for the expensive methods (the defaults are checked by the metadata test).
CHEAP = {"rise": {"n_masks": 48}, "lime": {"num_samples": 24}, "intgrad": {"n_steps": 5}}


#: A 5-layer CoDA-Net (the XS plan, shortened): 16 px → 4×4 in the last layer, ~9× faster.
TINY_CODA = {"out_channels": (8, 8, 16, 16, 10), "ranks": (8, 8, 16, 16, 16),
             "kernels": (3, 3, 3, 3, 1), "strides": (1, 2, 1, 2, 1), "paddings": (1, 1, 1, 1, 0)}


def _coda(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(1)
    return build_coda("xs", temperature=10, **TINY_CODA).to(dtype).eval()


def _resnet(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(2)
    model = CifarResNet(1)
    for module in model.modules():  # random statistics: eval-mode BN is then not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.to(dtype).eval()


MODELS = {"coda": _coda, "resnet": _resnet}


class Linear(nn.Module):
    """A linear classifier on RGB images: logits = ⟨w_k, x⟩ + b_k."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (K, 3, H, W)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.flatten(1).T + self.bias


class NaNModel(nn.Module):
    """Finite-looking but NaN logits; has what every method needs (GradCAM layer, contributions)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, 10)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3))) * float("nan")

    def contributions(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], 1) * float("nan")


def _images(batch: int, size: int = 16, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                      dtype=dtype)


def _targets(batch: int) -> torch.Tensor:
    return torch.arange(batch) * 3 % 10


def _build(name: str, model: nn.Module, **hparams):
    """The method, or a skip that says why it does not apply to this model."""
    try:
        return create_method(name, model, **{**CHEAP.get(name, {}), **hparams})
    except NotApplicableError as exc:
        pytest.skip(f"does not apply: {exc}")


# ---------------------------------------------------------------------------------------------
# Against captum


def _captum_reference(name: str, model: nn.Module, x: torch.Tensor, t: torch.Tensor):
    from captum.attr import (
        DeepLift,
        InputXGradient,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        Saliency,
    )

    x = x.clone().requires_grad_(True)
    if name == "grad":
        return Saliency(model).attribute(x, target=t, abs=False).sum(1)
    if name == "ixg":
        return InputXGradient(model).attribute(x, target=t).sum(1)
    if name == "intgrad":
        return IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t,
                                                    n_steps=20).sum(1)
    if name == "deeplift":
        return DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=t).sum(1)
    cam = LayerGradCam(model, model.gradcam_layer).attribute(x, target=t, relu_attributions=True)
    return LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="nearest")[:, 0]


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks")
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("name", ["grad", "ixg", "intgrad", "deeplift", "gradcam"])
def test_captum_methods_equal_direct_captum_calls(name, model_name):
    """Default hyper-parameters, chunked (max_batch=2 on 3 images) vs one direct captum call."""
    model = MODELS[model_name]()
    x, t = _images(3), _targets(3)
    ours = create_method(name, model, max_batch=2).attribute(x, t)
    reference = _captum_reference(name, model, x, t).detach()
    assert ours.shape == (3, 16, 16) and ours.dtype == torch.float64
    assert reference.abs().max() > 0
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * reference.abs().max())


def test_gradcam_is_nearest_upsampled_blocks():
    """On the tiny CoDA-Net (4×4 last layer at 16 px) the map is constant on 4×4 blocks, ≥ 0."""
    maps = create_method("gradcam", _coda()).attribute(_images(2), _targets(2))
    blocks = maps.view(2, 4, 4, 4, 4)
    assert (maps >= 0).all()
    torch.testing.assert_close(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))


def test_deeplift_is_ixg_on_a_coda_net_but_not_on_a_resnet():
    """A CoDA-Net has no ReLU for DeepLift's rule to replace (computed as IxG, which equals
    captum's DeepLift: test_captum_methods_equal_direct_captum_calls); a ResNet does."""
    x, t = _images(3), _targets(3)
    coda, resnet = _coda(), _resnet()
    assert not create_method("deeplift", coda).rescaled
    assert create_method("deeplift", resnet).rescaled
    torch.testing.assert_close(create_method("deeplift", coda).attribute(x, t),
                               create_method("ixg", coda).attribute(x, t), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(create_method("deeplift", resnet).attribute(x, t),
                              create_method("ixg", resnet).attribute(x, t), rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# inherent


def test_inherent_sums_to_logit_minus_bias_and_is_ixg_on_the_encoded_input():
    model, x, t = _coda(), _images(4), _targets(4)
    maps = create_method("inherent", model, max_batch=3).attribute(x, t)
    with torch.no_grad():
        evidence = model.evidence_encoded(model.encode(x))
    rows = torch.arange(4)
    torch.testing.assert_close(maps.sum((1, 2)), evidence[rows, t], rtol=1e-9, atol=0.0)
    # Reference: IxG on the 6-channel encoded input with the dynamic weights detached.
    x_enc = model.encode(x).requires_grad_(True)
    with explanation_mode(model):
        logits = model.forward_encoded(x_enc)
        (grad,) = torch.autograd.grad(logits[rows, t].sum(), x_enc)
    torch.testing.assert_close(maps, (grad * x_enc).sum(1).detach(), rtol=1e-9, atol=1e-14)
    # Not the plain gradient of the (non-linear) model: the detaching matters.
    x_enc = model.encode(x).requires_grad_(True)
    (plain,) = torch.autograd.grad(model.forward_encoded(x_enc)[rows, t].sum(), x_enc)
    assert not torch.allclose(maps, (plain * x_enc).sum(1), rtol=1e-3)


def test_inherent_on_a_resnet_is_one_line_naming_the_methods_that_apply(one_line):
    with pytest.raises(NotApplicableError) as info:
        create_method("inherent", _resnet())
    one_line(info.value, "inherent", "CifarResNet", "contributions", "gradcam", "rise")
    assert "inherent" not in applicable_methods(_resnet())
    assert set(applicable_methods(_coda())) == set(METHODS.names())


def test_inherent_built_directly_names_the_listing_instead(one_line):
    """The class cannot ask the registry (an import cycle): its line points to the listing."""
    from attrib_bench.methods import Inherent

    with pytest.raises(NotApplicableError) as info:
        Inherent(_resnet())
    one_line(info.value, "inherent", "CifarResNet", "model.contributions",
              "`attrib-bench list methods`")
    assert "methods that apply" not in str(info.value)


def test_gradcam_on_a_model_without_a_conv_needs_layer(one_line):
    """No gradcam_layer and no convolution: nothing to default to (any conv model has one)."""
    model = Linear(torch.zeros(10, 3, 8, 8), torch.zeros(10))
    with pytest.raises(NotApplicableError) as info:
        create_method("gradcam", model)
    one_line(info.value, "gradcam_layer", "layer=", "spatial (B, C, h, w) output")
    assert "gradcam" not in applicable_methods(model) and "grad" in applicable_methods(model)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    with pytest.raises(NotApplicableError) as info:  # the alternatives it names apply
        create_method("inherent", plain)
    listed = str(info.value).split("methods that apply to it: ")[1].split(", ")
    assert "grad" in listed and "gradcam" not in listed
    resnet = _resnet()
    explicit = create_method("gradcam", resnet, layer=resnet.layer2).attribute(_images(2),
                                                                               _targets(2))
    assert explicit.shape == (2, 16, 16)


# ---------------------------------------------------------------------------------------------
# Perturbation methods on a linear model, and occlusion against captum


def _linear_problem(size: int = 16, batch: int = 4, seed: int = 0):
    """A linear model with smooth, spatially zero-mean weights and uniform-colour images.

    w ⊙ x is then a smooth zero-mean pattern: RISE's masks are smooth at the scale of a grid
    cell, so RISE recovers w ⊙ x blurred at that scale, and a non-zero mean would add a
    border artefact (the blur is truncated at the image border) unrelated to the method.
    """
    g = torch.Generator().manual_seed(seed)
    weight = F.interpolate(torch.randn(3, 3, 3, 3, generator=g), size=(size, size),
                           mode="bilinear", align_corners=True).double()
    weight -= weight.mean(dim=(2, 3), keepdim=True)
    model = Linear(weight, torch.randn(3, generator=g).double())
    x = torch.rand(batch, 3, 1, 1, generator=g, dtype=torch.float64).expand(-1, -1, size, size)
    target = torch.arange(batch) % 3
    return model, x.contiguous(), target, (weight[target] * x).sum(1)


def test_occlusion_single_pixels_on_a_linear_model_is_weight_times_input():
    g = torch.Generator().manual_seed(3)
    model = Linear(torch.randn(5, 3, 10, 10, generator=g, dtype=torch.float64),
                   torch.randn(5, generator=g, dtype=torch.float64))
    x, t = _images(3, size=10), torch.tensor([0, 4, 2])
    maps = create_method("occlusion", model, patch_size=1, stride=1, max_batch=37).attribute(x, t)
    torch.testing.assert_close(maps, (model.weight[t] * x).sum(1).detach(), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize(("patch", "stride"), [(4, 2), (8, 2), (5, 2), (3, 3)])
def test_occlusion_equals_captum(patch, stride):
    """captum puts the per-pixel value on each of the 3 channels; ours has it once per pixel.

    (5, 2) on 16 px: the last window is cropped at the border in both.
    """
    from captum.attr import Occlusion

    model, x, t = _resnet(), _images(3), _targets(3)
    ours = create_method("occlusion", model, patch_size=patch, stride=stride,
                         max_batch=50).attribute(x, t)
    theirs = Occlusion(model).attribute(x, sliding_window_shapes=(3, patch, patch),
                                        strides=(3, stride, stride), baselines=0, target=t)
    torch.testing.assert_close(theirs, theirs[:, :1].expand_as(theirs))
    theirs = theirs.sum(1).double() / 3  # captum returns float32 whatever the input's dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().max())


def test_occlusion_presets_are_the_papers():
    """occ5/occ9: the authors' code zeroes (K−1)×(K−1) patches, stride 2."""
    for name, patch in (("occ5", 4), ("occ9", 8)):
        method = create_method(name, _resnet())
        assert (method.patch_size, method.stride, method.baseline) == (patch, 2, 0.0)


def test_rise_recovers_weight_times_input_on_a_linear_model():
    model, x, t, reference = _linear_problem()
    maps = create_method("rise", model, n_masks=4000, score="logit", max_batch=4096,
                         seed=0).attribute(x, t)
    for i in range(len(x)):
        r = torch.corrcoef(torch.stack([maps[i].flatten(), reference[i].flatten()]))[0, 1]
        assert r >= 0.9, (i, r.item())


def test_rise_masks_match_the_authors_skimage_generation():
    """Petsiuk et al.: grid < p1, skimage resize(order=1, mode="reflect") to (s+1)·cell, crop."""
    from skimage.transform import resize

    n, s, p1, h, w, seed = 20, 6, 0.3, 14, 11, 5
    masks = rise_masks(n, s, p1, (h, w), seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)  # the draws, in rise_masks' order
    cells = (torch.rand(n, 1, s, s, generator=g) < p1).double()
    shift_y = torch.randint(0, 3, (n, 1), generator=g)
    shift_x = torch.randint(0, 2, (n, 1), generator=g)
    for i in range(n):
        up = resize(cells[i, 0].numpy(), (7 * 3, 7 * 2), order=1, mode="reflect",
                    anti_aliasing=False)
        crop = up[shift_y[i, 0]:shift_y[i, 0] + h, shift_x[i, 0]:shift_x[i, 0] + w]
        torch.testing.assert_close(masks[i], torch.from_numpy(crop), rtol=1e-12, atol=1e-12)
    assert rise_masks(n, s, p1, (h, w), seed, dtype=torch.float64) is masks  # cached


# ---------------------------------------------------------------------------------------------
# Seeds, batching and chunking, for every registered method


@pytest.mark.parametrize("name", ["rise", "lime"])
def test_stochastic_methods_are_seeded(name):
    model, x, t = _resnet(), _images(2), _targets(2)
    first = _build(name, model, seed=7).attribute(x, t)
    again = _build(name, model, seed=7).attribute(x, t)
    other = _build(name, model, seed=8).attribute(x, t)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("name", METHODS.names())
def test_batch_equals_single_images_whatever_the_chunk(name, model_name):
    """8 images at once equal the 8 one by one, and max_batch 1, 7 or large changes nothing.

    float64: in float32 an untrained CoDA-Net's logits are b0 ≈ −2.2 plus tiny evidence, so
    perturbation methods' logit differences keep only a few digits whatever the batching.
    """
    model = MODELS[model_name]()
    x, t = _images(8, size=12), _targets(8)
    whole = _build(name, model, max_batch=1000).attribute(x, t)
    assert whole.shape == (8, 12, 12) and whole.dtype == torch.float64
    assert whole.abs().max() > 0
    tolerance = {"rtol": 1e-7, "atol": 1e-7 * whole.abs().max().item()}
    singles = torch.cat([_build(name, model).attribute(x[i:i + 1], t[i:i + 1])
                         for i in range(8)])
    torch.testing.assert_close(singles, whole, **tolerance)
    chunked = _build(name, model, max_batch=7).attribute(x, t)
    torch.testing.assert_close(chunked, whole, **tolerance)
    one_by_one = _build(name, model, max_batch=1).attribute(x[:3], t[:3])  # 3: keeps it fast
    torch.testing.assert_close(one_by_one, whole[:3], **tolerance)


class CountingModel(nn.Module):
    """Wraps a model and counts the images it is run on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.model(x)


@pytest.mark.parametrize("name", ["occ5", "rise", "lime"])
def test_repeated_images_are_perturbed_once_for_all_their_targets(name):
    """A localisation grid comes once per cell class: same maps, n² times fewer forwards.

    Image 0 three times (classes 1, 4, 1) and image 1 twice (classes 2, 7), interleaved: the
    maps equal each (image, class) explained alone, and the model sees the perturbed copies of
    2 distinct images, not 5.
    """
    images = _images(2, size=12)
    x = images[[0, 1, 0, 1, 0]]
    t = torch.tensor([1, 2, 4, 7, 1])
    counting = CountingModel(_resnet())
    method = _build(name, counting, max_batch=1000)
    alone = []
    for i in range(5):  # the first call also runs one image to learn the number of classes
        counting.images = 0
        alone.append(method.attribute(x[i:i + 1], t[i:i + 1]))
        single_cost = counting.images
    alone = torch.cat(alone)
    counting.images = 0
    maps = method.attribute(x, t)
    shared_cost = counting.images
    assert alone[0].abs().max() > 0 and not torch.allclose(alone[0], alone[2])
    torch.testing.assert_close(maps, alone, rtol=1e-7, atol=1e-7 * alone.abs().max().item())
    torch.testing.assert_close(maps[0], maps[4], rtol=1e-12, atol=1e-12 * maps.abs().max().item())
    assert shared_cost == 2 * single_cost


def test_shared_images_groups_identical_rows():
    from attrib_bench.methods.base import shared_images

    images = _images(3, size=4)
    x, t = images[[2, 0, 2, 2, 1]], torch.tensor([5, 3, 6, 5, 9])
    shared = shared_images(x, t)
    assert len(shared.images) == 3 and shared.classes.shape == (3, 3)
    torch.testing.assert_close(shared.images[shared.image_of], x, rtol=0, atol=0)
    assert torch.equal(shared.classes[shared.image_of, shared.slot_of], t)
    pairs = torch.stack([shared.image_of, shared.slot_of], 1)
    assert len(pairs.unique(dim=0)) == 5


def test_lime_top3_mask_is_the_three_best_positive_superpixels():
    model, x, t = _resnet(), _images(2), _targets(2)
    signed = _build("lime", model, seed=3).attribute(x, t)
    mask = _build("lime", model, seed=3, top3_mask=True).attribute(x, t)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for i in range(2):
        weights = signed[i].unique()
        best = weights[weights > 0].sort(descending=True).values[:3]
        torch.testing.assert_close(mask[i], torch.isin(signed[i], best).double())


def test_methods_restore_training_mode_and_run_in_eval():
    model, x, t = _resnet(), _images(3), _targets(3)
    expected = create_method("grad", model).attribute(x, t)
    model.train()
    torch.testing.assert_close(create_method("grad", model).attribute(x, t), expected)
    assert all(m.training for m in model.modules())


# ---------------------------------------------------------------------------------------------
# Registry metadata and the CLI listing


@pytest.mark.parametrize("name", METHODS.names())
def test_each_method_has_a_description_and_typed_hparams_from_its_signature(name):
    """Hyper-parameters come from the factory's signature only: every one typed, no copies."""
    import functools
    import inspect

    from attrib_bench.core.hparams import hparams_of, type_name

    entry = METHODS.get(name)
    assert entry.description and "\n" not in entry.description
    assert "hparams" not in entry.metadata  # no hand-written copy to drift from the code
    specs = hparams_of(entry.factory)
    assert {"max_batch", "seed"} <= set(specs)
    factory, bound = entry.factory, {}
    while isinstance(factory, functools.partial):
        bound = {**factory.keywords, **bound}
        factory = factory.func
    parameters = inspect.signature(factory).parameters
    for key, spec in specs.items():
        assert type_name(spec.annotation) != "any", (name, key)
        assert spec.default == bound.get(key, parameters[key].default), (name, key)
    assert set(requirements(entry.factory)) <= {"contributions"}
    assert entry.metadata["label"] and entry.metadata["colour"].startswith("#")  # for figures


def _listing_blocks(output: str) -> dict[str, str]:
    """``attrib-bench list methods`` split into one text block per method (any layout)."""
    names, blocks, current = set(METHODS.names()), {}, None
    for line in output.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in names:
            current = first
            blocks[current] = ""
        if current is not None:
            blocks[current] += line + "\n"
    return blocks


def test_cli_lists_methods_with_their_hyper_parameters():
    from attrib_bench.core.hparams import hparams_of

    result = CliRunner().invoke(cli, ["list", "methods"])
    assert result.exit_code == 0, result.output
    blocks = _listing_blocks(result.output)
    assert set(blocks) == set(METHODS.names())
    for name, block in blocks.items():
        for key, spec in hparams_of(METHODS.get(name).factory).items():
            assert key in block and repr(spec.default) in block, (name, key, block)
    # the paper's settings are the defaults
    assert "20" in blocks["intgrad"] and "6000" in blocks["rise"] and "256" in blocks["lime"]
    assert "8" in blocks["occ9"].split("patch_size")[1].split("\n")[0]


# ---------------------------------------------------------------------------------------------
# Bad input: one line each


@pytest.mark.parametrize("name", METHODS.names())
def test_non_finite_input_and_bad_targets_are_one_line(one_line, name):
    model = _coda()
    method = _build(name, model)
    x, t = _images(2), _targets(2)
    for bad_value in (float("nan"), float("inf")):
        bad = x.clone()
        bad[1, 0, 3, 4] = bad_value
        with pytest.raises(InputShapeError) as info:
            method.attribute(bad, t)
        one_line(info.value, "NaN or inf", "[1]")
    for target, fragment in ((torch.tensor([0, 10]), "[0, 10)"), (torch.tensor([-1, 0]), "[0, 10)"),
                             (torch.tensor([[0], [1]]), "shape (2,)"),
                             (torch.tensor([0.0, 1.0]), "integer"), ([0, 1], "LongTensor")):
        with pytest.raises(TargetError) as info:
            method.attribute(x, target)
        one_line(info.value, fragment)


@pytest.mark.parametrize("name", [n for n in METHODS.names()
                                  if not METHODS.get(n).metadata.get("control")])
def test_non_finite_maps_are_one_line(one_line, name):
    """A model whose output is NaN gives NaN maps: one line (the controls never use the
    model's output, so their maps stay finite: not tested here)."""
    method = _build(name, NaNModel().double())
    with pytest.raises(MethodError) as info:
        method.attribute(_images(2), _targets(2))
    one_line(info.value, name if name not in ("occ5", "occ9") else "occlusion", "NaN or inf")


def test_wrong_shapes_hparams_and_modes_are_one_line(one_line):
    model, x, t = _resnet(), _images(2), _targets(2)
    method = create_method("grad", model)
    for bad, fragment in ((x[0], "x[None]"), (x[:, :1], "(B, 3, H, W)"),
                          ((x * 255).long(), "floating point")):
        with pytest.raises(InputShapeError) as info:
            method.attribute(bad, t)
        one_line(info.value, fragment)
    with pytest.raises(AttribBenchError) as info:  # by name: the typed registry refuses it
        create_method("rise", model, score="prob")
    one_line(info.value, "score", "prob")
    from attrib_bench.methods import LIME, RISE

    for cls in (RISE, LIME):  # the class itself, for callers that build it directly
        with pytest.raises(MethodError) as info:
            cls(model, score="prob")
        one_line(info.value, "softmax, sigmoid, logit", "None")
    for name, hparams, fragment in (("intgrad", {"n_step": 20}, "n_steps"),
                                    ("intgrad", {"n_steps": 0}, "positive"),
                                    ("rise", {"p1": 1.5}, "(0, 1]"),
                                    ("occlusion", {"stride": 5}, "uncovered"),
                                    ("grad", {"max_batch": 0}, "max_batch"),
                                    ("gradcam", {"interpolation": "cubic"}, "nearest")):
        # MethodError from the method, or SettingError where the typed registry refuses first
        with pytest.raises(AttribBenchError) as info:
            create_method(name, model, **hparams)
        one_line(info.value, fragment)
    with torch.inference_mode(), pytest.raises(MethodError) as info:
        method.attribute(x, t)
    one_line(info.value, "inference_mode")
    with pytest.raises(MethodError) as info:
        create_method("occ9", model).attribute(_images(1, size=6), _targets(1))
    one_line(info.value, "patch_size 8")


# ---------------------------------------------------------------------------------------------
# A user's method: a plain function, registered in a few lines, from Python and the CLI

PLUGIN = '''
import torch
from attrib_bench.core.registry import register_method

@register_method("grad-norm-test")
def grad_norm(model, inputs, target, p: float = 2):
    """Unsigned: the p-norm over colour channels of the gradient of the target logit."""
    inputs = inputs.detach().requires_grad_(True)
    chosen = model(inputs).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(chosen, inputs)
    return grad.norm(p=p, dim=1)
'''


def test_a_user_method_in_a_plugin_is_listed_and_runs_by_name(one_line, tmp_path, monkeypatch):
    assert len(PLUGIN.strip().splitlines()) < 15
    (tmp_path / "my_methods_test.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        result = CliRunner().invoke(cli, ["--plugin", "my_methods_test", "list", "methods"])
        assert result.exit_code == 0, result.output
        block = _listing_blocks(result.output)["grad-norm-test"]
        assert "p" in block and "2" in block and "Unsigned: the p-norm" in block
        load_plugins(["my_methods_test"])
        model, x, t = _resnet(), _images(5), _targets(5)
        maps = create_method("grad-norm-test", model, p=1, max_batch=2).attribute(x, t)
        from captum.attr import Saliency

        reference = Saliency(model).attribute(x.clone().requires_grad_(True), target=t,
                                              abs=True).sum(1)  # the 1-norm over channels
        torch.testing.assert_close(maps, reference)
        with pytest.raises(MethodError) as info:
            create_method("grad-norm-test", model, q=3)
        one_line(info.value, "q")
    finally:
        METHODS.remove("grad-norm-test")
        sys.modules.pop("my_methods_test", None)


def test_a_function_method_gets_the_seed_and_its_shape_is_checked(one_line):
    def noise(model, inputs, target, seed, scale=1.0):
        """Seeded noise (B, 3, H, W), summed over channels by the toolkit."""
        g = torch.Generator().manual_seed(seed)
        return scale * torch.randn(inputs.shape, generator=g, dtype=inputs.dtype)

    def broken(model, inputs, target):
        """Returns the wrong shape."""
        return inputs[:, 0, :4]

    METHODS.register("noise-test")(noise)
    METHODS.register("broken-test")(broken)
    try:
        assert METHODS.get("noise-test").description.startswith("Seeded noise")
        model, x, t = _resnet(), _images(2), _targets(2)
        a = create_method("noise-test", model, seed=1, scale=2.0).attribute(x, t)
        b = create_method("noise-test", model, seed=1, scale=2.0).attribute(x, t)
        assert a.shape == (2, 16, 16) and torch.equal(a, b)
        with pytest.raises(MethodError) as info:
            create_method("broken-test", model).attribute(x, t)
        one_line(info.value, "broken-test", "(2, 16, 16)")
    finally:
        METHODS.remove("noise-test")
        METHODS.remove("broken-test")


def test_every_error_is_an_attrib_bench_error():
    for cls in (InputShapeError, MethodError, NotApplicableError, TargetError):
        assert issubclass(cls, AttribBenchError)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["grad", "occ5", "rise"])
def test_maps_are_on_the_inputs_device(name):
    model = _resnet(torch.float32).cuda()
    x, t = _images(2, dtype=torch.float32).cuda(), _targets(2).cuda()
    maps = _build(name, model).attribute(x, t)
    assert maps.device == x.device
    cpu = _build(name, _resnet(torch.float32)).attribute(x.cpu(), t.cpu())
    torch.testing.assert_close(maps.cpu(), cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item())
