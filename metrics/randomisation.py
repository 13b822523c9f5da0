"""The model-parameter randomisation test (Adebayo et al., NeurIPS 2018, "Sanity checks").

A method that explains the *model* must give different maps once the model's parameters are
randomised; a method whose maps survive (e.g. an edge detector) fails the check. We compare each
image's map on the trained model with its map on randomised copies, for the same target.

**Layers.** A layer is a sub-module that has its own initialiser, ``reset_parameters()``, and no
ancestor below the root that has one: a DAU layer (its ``reduce`` and ``expand`` convolutions
together), a Conv2d, a Linear, a BatchNorm. Modules the forward pass never calls are left out.
They are ordered **top-first**: by the last time the forward pass calls them, output end first, so
layer 0 is the CoDA-Net's ``layers.8`` and the ResNet's ``linear``. Parameters outside any layer
(e.g. a ViT's position embedding) are never randomised. Layers that share a parameter or buffer
(one tied weight, or views of one storage) cannot be randomised apart: they are one layer named
by their members joined with ``+`` top first (``"b+a"``), randomised together, scored and
reported once; the run's manifest names the shared tensors (``samples`` → ``layer_groups``),
and naming one member alone in ``layers`` is refused in one line naming the group.

**Randomising a layer** means one thing for every layer type: re-initialise it with its own
``reset_parameters()``, i.e. with the distribution it was built with (PyTorch's default for
Conv2d and Linear, so a ResNet's kaiming-normal init is *not* reproduced; B, then A and b, for a
DAU layer). A BatchNorm resets to weight 1, bias 0, running mean 0, running variance 1: the
model randomised down to the input is then a freshly built model, as TensorFlow's variable
initialisers make it in Adebayo et al.'s code. The draw is deterministic given ``seed`` and the
layer's name, does not depend on the device (it is drawn on a CPU copy of the layer and copied
in) and leaves the global RNG untouched; a layer gets the same new values in both modes.

**Modes.** ``cascading``: one deep copy of the model, randomised cumulatively from the top, so
step i has the top i+1 layers randomised. ``independent``: step i has only layer i randomised
(on a copy whose other layers are the original's). The original model is never modified.

**Similarities** per image, of the original map and the randomised one (both (H, W)):
``spearman`` (rank correlation with average ranks for ties, computed in torch), ``spearman_abs``
(the same on absolute values), and ``ssim`` (skimage's defaults: 7×7 uniform window, K1 0.01,
K2 0.03, sample covariance, mean over the window positions that fit, with data_range 1 on maps
scaled each to [0, 1] by its own min and max, as Adebayo et al. do; a constant map scales to 0).
Spearman of a constant map is undefined: NaN, without a warning. A non-finite map gives NaN.
Lower is better for all three: a method passes the check when its maps change.

**Samples:** the first ``num_images`` images of the dataset in order, explained for their
ground-truth label (so that the original and randomised maps share a target that does not depend
on the randomised model's prediction).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from attrib_bench.core.errors import InputShapeError, MetricError
from attrib_bench.core.evaluation import forward_with_hooks
from attrib_bench.core.hparams import PositiveInt
from attrib_bench.core.registry import register_metric
from attrib_bench.data import BaseImageSet
from attrib_bench.metrics.base import (
    EvalContext,
    FigureTables,
    Metric,
    MetricFigure,
    ReportSection,
    SampleSet,
    SelectContext,
    first_image_samples,
    make_rows,
    typed_hparams,
)

Mode = Literal["cascading", "independent"]
MODES: tuple[str, ...] = get_args(Mode)
#: The ``modes`` hyper-parameter: one mode, or both.
ModeChoice = Literal["cascading", "independent", "both"]
STATS: tuple[str, ...] = ("spearman", "spearman_abs", "ssim")

#: skimage.metrics.structural_similarity defaults (uniform window).
SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03


# ----------------------------------------------------------------------------- layers


def randomisation_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Qualified names of ``model``'s layers (see the module docstring), top (output) first.

    The order is found with one forward pass of ``example`` (e.g. one image, (1, 3, H, W)) in
    eval mode without gradients, so the model (BN statistics included) is not changed.
    """
    candidates = {}
    for name, module in model.named_modules():
        if not name or not callable(getattr(module, "reset_parameters", None)):
            continue
        if any(name.startswith(outer + ".") for outer in candidates):
            continue  # inside a layer that resets it (e.g. a DAU layer's convolutions)
        if next(module.parameters(), None) is None and next(module.buffers(), None) is None:
            continue
        candidates[name] = module
    last_call: dict[str, int] = {}
    clock = itertools.count()

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            last_call[name] = next(clock)

        return hook

    forward_with_hooks(model, example, [(module, recorder(name))
                                        for name, module in candidates.items()])
    order = sorted(last_call, key=last_call.__getitem__, reverse=True)
    groups = shared_groups({name: candidates[name] for name in order})
    return [GROUP_SEPARATOR.join(group) for group in groups]


#: Joins the names of layers that share a parameter or buffer into one layer name ("a+b").
GROUP_SEPARATOR = "+"


def shared_groups(layers: dict[str, nn.Module]) -> list[list[str]]:
    """``layers`` (name → module, top first) grouped where they share a tensor.

    Two layers share when a parameter or buffer of one is stored in memory that one of the other
    uses (the same ``nn.Parameter`` tied to two modules, or views of one storage): randomising
    either then changes both, so they are one layer of the test. Each group keeps the top-first
    order and sits where its top member is. Layers that share nothing are groups of one.
    """
    names = list(layers)
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple[str, int], int] = {}
    for i, name in enumerate(names):
        module = layers[name]
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.numel() == 0:
                continue
            storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
            j = owner.setdefault(storage, i)
            parent[root(i)] = root(j)
    grouped: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        grouped.setdefault(root(i), []).append(name)
    return list(grouped.values())


def shared_tensors(model: nn.Module, group: str) -> list[str]:
    """The qualified names of the parameters and buffers that the members of ``group`` (a name
    of :func:`randomisation_layers`) share, e.g. ``["a.weight = b.weight"]``; [] for one layer."""
    members = group.split(GROUP_SEPARATOR)
    if len(members) < 2:
        return []
    modules = dict(model.named_modules())
    seen: dict[tuple[str, int], list[str]] = {}
    for member in members:
        tensors = [*modules[member].named_parameters(remove_duplicate=False),
                   *modules[member].named_buffers(remove_duplicate=False)]
        for key, tensor in tensors:
            if tensor.numel():
                storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
                seen.setdefault(storage, []).append(f"{member}.{key}")
    return [" = ".join(names) for names in seen.values() if len(names) > 1]


def layer_seed(seed: int, name: str) -> int:
    """The seed of layer ``name``'s draw: a stable 63-bit hash of (seed, name)."""
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def randomise_layer(module: nn.Module, seed: int, name: str) -> None:
    """Re-initialise ``module`` in place with its own ``reset_parameters()``, seeded by
    (seed, name), drawn on a CPU copy so that the values do not depend on the device.

    Only the CPU generator is seeded (inside ``fork_rng``, which restores it): ``torch.manual_seed``
    would also reseed every CUDA generator, which ``fork_rng(devices=[])`` does not restore.
    """
    draft = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(layer_seed(seed, name))
        with torch.no_grad():
            draft.reset_parameters()
    module.load_state_dict(draft.state_dict())


def randomised_models(model: nn.Module, layers: Sequence[str], mode: Mode, seed: int
                      ) -> Iterator[tuple[str, nn.Module]]:
    """Yield (layer name, randomised copy of ``model``) for each of ``layers`` in order.

    ``cascading``: layers 0..i randomised; ``independent``: only layer i. One deep copy serves
    every step (independent steps restore the previous layer first), so a yielded model is valid
    until the next step. ``model`` itself is never modified.
    """
    if mode not in MODES:
        raise MetricError(f"randomisation mode must be one of {', '.join(MODES)}, "
                               f"got {mode!r}")
    work = copy.deepcopy(model)  # deepcopy keeps tied parameters tied
    modules = dict(work.named_modules())
    for name in layers:
        members = [modules[member] for member in name.split(GROUP_SEPARATOR)]
        saved = None
        if mode == "independent":
            saved = [{k: v.detach().clone() for k, v in module.state_dict().items()}
                     for module in members]
        for member, module in zip(name.split(GROUP_SEPARATOR), members, strict=True):
            randomise_layer(module, seed, member)
        yield name, work
        if saved is not None:
            for module, state in zip(members, saved, strict=True):
                module.load_state_dict(state)


# ----------------------------------------------------------------------------- similarities


def _flat(maps: torch.Tensor) -> torch.Tensor:
    if maps.dim() < 2:
        raise InputShapeError(f"maps must have shape (B, H, W), got {tuple(maps.shape)}")
    return maps.detach().flatten(1).double()


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row of ``x`` (B, N), ties getting their average rank; float64."""
    n = x.shape[1]
    values, order = x.sort(dim=1, stable=True)
    pos = torch.arange(n, device=x.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, 0).cummax(dim=1).values
    last = torch.where(ends, pos, n - 1).flip(1).cummin(dim=1).values.flip(1)
    mean_rank = (first + last).double() / 2.0 + 1.0
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (B, ...) → (B,) float64.

    Pearson correlation of the average ranks (scipy.stats.spearmanr's definition). NaN where a
    map is constant (undefined) or not finite.
    """
    x, y = _flat(a), _flat(b)
    rx, ry = average_ranks(x), average_ranks(y)
    rx = rx - rx.mean(1, keepdim=True)
    ry = ry - ry.mean(1, keepdim=True)
    den = (rx.pow(2).sum(1) * ry.pow(2).sum(1)).sqrt()
    r = ((rx * ry).sum(1) / den.clamp_min(1e-300)).clamp(-1.0, 1.0)
    ok = (den > 0) & torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
    return torch.where(ok, r, torch.full_like(r, float("nan")))


def minmax_normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map (B, H, W) scaled to [0, 1] by its own min and max (a constant map → 0); float64."""
    m = maps.detach().double()
    lo = m.amin(dim=(1, 2), keepdim=True)
    span = m.amax(dim=(1, 2), keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / span.clamp_min(1e-300), torch.zeros_like(m))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each pair of maps (B, H, W) → (B,) float64, as skimage's structural_similarity
    with its defaults and ``data_range``: 7×7 uniform window, sample covariance, mean over the
    (H−6)·(W−6) window positions that fit (skimage crops the border it pads). NaN if not finite.
    """
    if a.dim() != 3 or a.shape != b.shape or min(a.shape[1:]) < SSIM_WINDOW:
        raise InputShapeError(f"ssim needs two (B, H, W) maps with H, W >= {SSIM_WINDOW}, got "
                              f"{tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.detach().double()[:, None], b.detach().double()[:, None]

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, SSIM_WINDOW, stride=1)

    cov_norm = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def similarities(original: torch.Tensor, randomised: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three statistics (:data:`STATS`) per image for maps (B, H, W): each (B,) float64."""
    return {
        "spearman": spearman(original, randomised),
        "spearman_abs": spearman(original.abs(), randomised.abs()),
        "ssim": ssim(minmax_normalise(original), minmax_normalise(randomised), data_range=1.0),
    }


#: The default count of images (the first in dataset order).
NUM_IMAGES = 100


# ----------------------------------------------------------------------------- metric

def _randomisation_figures(tables: FigureTables) -> dict[str, Any]:
    """Model → its randomisation curves
    (:func:`attrib_bench.metrics.figures.randomisation_figure`), models in figure order."""
    from attrib_bench.metrics.figures import ordered_models, randomisation_figure

    models = ordered_models(tables.rows()["model"], tables.manifest)
    return {model: randomisation_figure(tables.results, model, metric=tables.metric)
            for model in models}


@register_metric("randomisation", family="sanity-check", ranks=False,
                 reference="Adebayo et al. 2018, model-parameter randomisation")
class Randomisation(Metric):
    """Model-parameter randomisation test: similarity of maps before and after randomising layers.

    Hyper-parameters: ``modes`` "cascading", "independent" or "both" (default); ``num_images``
    (default 100, the first images in dataset order; the paper shows this test only
    qualitatively); ``layers`` None (all), an int k (the top k) or a list of layer names (run in
    top-first order); ``seed`` of the layers' draws (None: the run's seed). Rows: ``key`` = layer
    name, ``variant`` = mode, ``stat`` in spearman, spearman_abs, ssim, plus an int column
    ``layer_index``, the layer's position in the model's full top-first list (0 = top). The
    summary (base default) is the mean over the randomised layers.
    """

    name: ClassVar[str] = "randomisation"
    description: ClassVar[str] = "Adebayo et al. (2018) model-parameter randomisation test"
    directions: ClassVar[dict[str, str]] = {stat: "lower" for stat in STATS}
    sample_count: ClassVar[str | None] = "num_images"
    figures: ClassVar[Mapping[str, MetricFigure] | None] = {"": MetricFigure(
        _randomisation_figures, "Parameter randomisation: similarity of the maps to the "
                                "unrandomised model's.")}
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Parameter randomisation (a check, not a ranking)", "The similarity of each map to the "
        "trained model's as layers are randomised, top first (Adebayo et al. 2018): a method "
        "that explains the model drops. Its summary mean is over the randomised layers as well "
        "as the samples.")

    def __init__(self, *, modes: ModeChoice = "both", num_images: PositiveInt = NUM_IMAGES,
                 layers: int | list[str] | None = None, seed: int | None = None) -> None:
        values = typed_hparams("metric 'randomisation'", Randomisation, {
            "modes": modes, "num_images": num_images, "layers": layers, "seed": seed})
        layers = values["layers"]
        if (isinstance(layers, int) and layers < 1) or (
                isinstance(layers, list) and (not layers or len(set(layers)) != len(layers))):
            _bad("layers", layers, "None, a positive int or a list of distinct layer names")
        super().__init__(**values)

    @property
    def modes(self) -> tuple[str, ...]:
        modes = self.hparams["modes"]
        return MODES if modes == "both" else (modes,)

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets."""
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        samples = first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES)
        ids, fetch, info = samples.ids, samples.fetch, samples.info
        if len(ids) and isinstance(model, nn.Module):  # named layers checked up front;
            # layers that share a tensor are named in the manifest
            layers = self.layers_to_randomise(model, fetch(ids[:1])[0].to(ctx.device))
            tied = {name: shared_tensors(model, name) for _, name in layers
                    if GROUP_SEPARATOR in name}
            if tied:
                info["layer_groups"] = tied
        return samples

    def layers_to_randomise(self, model: nn.Module, example: torch.Tensor
                            ) -> list[tuple[int, str]]:
        """(index in the model's top-first list, name) of the layers this metric randomises."""
        names = randomisation_layers(model, example)
        chosen = self.hparams["layers"]
        if chosen is None:
            return list(enumerate(names))
        if isinstance(chosen, int):
            if chosen > len(names):
                raise MetricError(f"metric 'randomisation': layers={chosen} but the model "
                                       f"has {len(names)} layers; pass at most {len(names)}")
            return list(enumerate(names[:chosen]))
        grouped = {m: n for n in names for m in n.split(GROUP_SEPARATOR) if m != n}
        for name in chosen:
            if name in grouped:
                raise MetricError(f"metric 'randomisation': layer {name!r} shares a parameter "
                                  f"with {grouped[name]!r} (randomising one changes the "
                                  f"others): name the group {grouped[name]!r}")
            if name not in names:
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(close)}?" if close else f"top: {names[0]}"
                raise MetricError(f"metric 'randomisation': {name!r} is not a layer of the "
                                  f"model ({hint}; layers are the modules with their own "
                                  f"reset_parameters(), {len(names)} here, top first: "
                                  f"{', '.join(names[:4])}, …)")
        wanted = set(chosen)
        return [(i, n) for i, n in enumerate(names) if n in wanted]

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for one batch: 3 stats × layers × modes per image, plus ``layer_index``."""
        if len(inputs) == 0:
            return _empty_rows()
        inputs, target = inputs.to(ctx.device), target.to(ctx.device)
        original = ctx.explain(inputs, target)
        layers = self.layers_to_randomise(ctx.model, inputs[:1])
        index_of = {n: i for i, n in layers}
        seed = ctx.seed if self.hparams["seed"] is None else self.hparams["seed"]
        frames = []
        for mode in self.modes:
            for name, randomised in randomised_models(ctx.model, [n for _, n in layers], mode,
                                                      seed):
                maps = ctx.make_method(randomised).attribute(inputs, target)
                for stat, values in similarities(original, maps).items():
                    rows = make_rows(samples, name, values.cpu().numpy(), variant=mode, stat=stat)
                    rows["layer_index"] = np.int64(index_of[name])
                    frames.append(rows)
        return pd.concat(frames, ignore_index=True)


def _empty_rows() -> pd.DataFrame:
    rows = make_rows(np.zeros(0, dtype=np.int64), "", np.zeros(0))
    rows["layer_index"] = np.zeros(0, dtype=np.int64)
    return rows


def _bad(name: str, value: object, expected: str) -> None:
    raise MetricError(f"metric 'randomisation': {name} must be {expected}, got {value!r}")
