"""Grid localisation (CoDA-Nets paper, eq. 11), and its DiFull variant (Rao et al. 2023).

``localisation``: n x n grids of confidently and correctly classified images of distinct classes
(:class:`attrib_bench.metrics.grids.GridDataset`, the authors' sampling, seed 42). Every cell k is
explained for its own class on the whole grid; the map (B, n·H, n·W) is clamped at 0 and summed
per cell;

    score_k = positive mass in cell k / positive mass in the whole grid   (0 if the total is 0).

An oracle scores 1, a uniform map 1/n². A map with NaN or inf gives NaN (the runner flags it).
Cell k sits at row k % n, column k // n (:func:`attrib_bench.metrics.grids.cell_slices`).

``localisation-difull``: the same grids and score, but the model sees the cells *disconnected*
(:class:`DisconnectedGrid`): each cell goes through the model's feature extractor on its own, so
no information flows between cells, and the head classifies the feature maps placed side by side
in the same n x n layout. The other cells can then only lower a cell's logit through the head, so
any positive attribution outside the explained cell is the method's error, not the model's.
A model takes part by offering the ``features_head`` capability
(:mod:`attrib_bench.models.protocols`, timm's names): ``forward_features(x) -> (B, C, h, w)`` and
``forward_head(f) -> (B, K)`` with ``forward_head(forward_features(x)) == forward(x)``. The
built-in models split as follows:

* CoDA-Net: ``forward_features`` = the [r, g, b, 1−r, 1−g, 1−b] encoding and all DAU layers (the
  class evidence map, K channels); ``forward_head`` = Σ over positions / T + b0. The grid's logit
  is then exactly Σ over cells of each cell's evidence + b0, and ``contributions`` stays complete
  on the grid.
* CIFAR ResNet: ``forward_features`` = normalisation, conv1-bn-relu and the three stages (64
  channels); ``forward_head`` = global average pool + linear, so the grid's logit is the linear
  layer applied to the mean of the cells' pooled features.

The wrapper declares what the model declares of ``probability`` and ``temperature``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core.checks import check_images, model_label
from attrib_bench.core.errors import InputShapeError, MetricError, MetricSettingError
from attrib_bench.core.hparams import AtLeast, HParam, PositiveInt, convert
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
    SeriesPanel,
    make_rows,
    typed_hparams,
)
from attrib_bench.metrics.grids import GridDataset, compose_grids
from attrib_bench.models import protocols

GridSize = Literal[2, 3, 4]
GRID_SIZES: tuple[int, ...] = get_args(GridSize)
#: How many grids a localisation draws.
GridCount = Annotated[int, AtLeast(1, "grids to draw")]


# ----------------------------------------------------------------------------- scoring


def split_cells(grids: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, n·H, n·W) grids → (B·n², C, H, W) cells, grid-major, cell k at row k%n, col k//n.

    The inverse of :func:`attrib_bench.metrics.grids.compose_grids` (after a reshape to
    (B, n², ...)).
    """
    b, c, gh, gw = grids.shape
    if gh % n or gw % n:
        raise InputShapeError(f"a {n}x{n} grid needs a height and width divisible by {n}, "
                              f"got {gh}x{gw}")
    h, w = gh // n, gw // n
    # (B, C, row, H, col, W) -> (B, col, row, C, H, W): k = col * n + row
    cells = grids.reshape(b, c, n, h, n, w).permute(0, 4, 2, 1, 3, 5)
    return cells.reshape(b * n * n, c, h, w)


def cell_masses(maps: torch.Tensor, n: int) -> torch.Tensor:
    """Positive mass per cell: maps (M, n·H, n·W) → float64 (M, n²), cell index k = col·n + row.

    Negative values count 0; NaN stays NaN (``clamp`` propagates it).
    """
    m, gh, gw = maps.shape
    if gh % n or gw % n:
        raise InputShapeError(f"maps of a {n}x{n} grid need a height and width divisible by {n}, "
                              f"got {gh}x{gw}")
    positive = maps.detach().double().clamp(min=0)
    per_cell = positive.reshape(m, n, gh // n, n, gw // n).sum(dim=(2, 4))  # (M, row, col)
    return per_cell.transpose(1, 2).reshape(m, n * n)


def localisation_scores(maps: torch.Tensor, n: int) -> torch.Tensor:
    """Eq. 11: maps (G, n², n·H, n·W), map k explaining cell k → scores float64 (G, n²).

    score[g, k] = positive mass of map (g, k) in cell k / its total positive mass; 0 when the
    total is 0; NaN when the map has a NaN or inf.
    """
    g, nn_, gh, gw = maps.shape
    if nn_ != n * n:
        raise InputShapeError(f"expected {n * n} maps per {n}x{n} grid, got {nn_}")
    masses = cell_masses(maps.reshape(g * nn_, gh, gw), n).reshape(g, nn_, nn_)
    own = masses.diagonal(dim1=1, dim2=2)  # (G, n²): map k's mass in cell k
    total = masses.sum(dim=2)
    scores = own / torch.where(total == 0, torch.ones_like(total), total)  # 0 / 1 when empty
    finite = torch.isfinite(maps).flatten(2).all(dim=2)
    return torch.where(finite, scores, torch.full_like(scores, float("nan")))


# ----------------------------------------------------------------------------- metrics


def _localisation_figure(tables: FigureTables) -> Any:
    """Fig. 6, left, of the grid metric drawn
    (:func:`attrib_bench.metrics.figures.localisation_figure`)."""
    from attrib_bench.metrics.figures import localisation_figure  # matplotlib: only to draw

    return localisation_figure(tables.results, tables.metric, tables.manifest)


@register_metric("localisation", family="localisation", paper="Böhle et al. CVPR 2021, eq. 11")
class Localisation(Metric):
    """Grid localisation (eq. 11): the share of positive attribution inside the explained cell.

    Hyper-parameters: ``n`` grid side (2, 3, 4), ``num_grids`` grids to draw (``--n-samples``
    sets it), ``seed`` of the grid sampling. The pool is ranked by the model's logits on the
    whole dataset, from :meth:`SelectContext.logits` (the runner caches them per model weights
    and dataset, so that both grid localisations and later runs pay one pass). Rows: one per
    (grid, cell): ``sample`` grid id, ``key`` cell index k (str), ``stat`` "score", ``value`` in
    [0, 1] (NaN for a non-finite map), plus ``target`` (int, the cell's class).
    """

    name: ClassVar[str] = "localisation"
    description: ClassVar[str] = "share of positive attribution in the explained cell of a grid"
    directions: ClassVar[dict[str, str]] = {"score": "higher"}
    sample_count: ClassVar[str | None] = "num_grids"
    rows_from_maps: ClassVar[bool] = True
    figures: ClassVar[Mapping[str, MetricFigure] | None] = {"": MetricFigure(
        _localisation_figure, "Grid localisation: per-cell scores, boxes over the grids all "
                              "methods of a panel share.")}
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Grid localisation", "The share of positive attribution in the explained cell of an "
        "n×n grid of images of distinct classes (Böhle et al. 2021, eq. 11): higher is better; "
        "an oracle scores 1, a uniform map 1/n².")
    series_panels: ClassVar[tuple[SeriesPanel, ...]] = (
        SeriesPanel("localisation score", "", "score"),)

    def __init__(self, *, n: GridSize = 3, num_grids: GridCount = 500, seed: int = 42) -> None:
        values = typed_hparams(f"metric {self.name!r}", Localisation, {
            "n": n, "num_grids": num_grids, "seed": seed})
        super().__init__(**values)
        self.n, self.num_grids, self.seed = values["n"], values["num_grids"], values["seed"]

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The grids: pool logits of ``model`` on all of ``dataset``, then the authors' sampling.

        Raises :class:`MetricError` when the pool allows fewer grids than requested.
        """
        requested = self.num_grids if n_samples is None else int(n_samples)
        n = self.n
        if n * n >= dataset.num_classes:
            raise MetricError(f"metric {self.name!r}: a {n}x{n} grid needs more than {n * n} "
                              f"classes, {dataset.name} has {dataset.num_classes}: use a smaller n")
        logits = ctx.logits(model, dataset)
        kind = protocols.probability(model)
        grids = GridDataset(dataset, logits, n=n, num_grids=requested, seed=self.seed,
                            probability=kind)
        correct = logits.argmax(1) == dataset.labels
        target = protocols.to_probability(logits, kind).gather(1, dataset.labels[:, None])[:, 0]
        pool = int((correct & (target > 0.5)).sum())
        if grids.exhausted:
            raise MetricError(self._pool_message(len(grids), requested, dataset, pool, kind,
                                                 (correct & (target > 0.5)).cpu()))

        def fetch(ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return grids.batch(torch.as_tensor(np.asarray(ids), dtype=torch.long))

        info = {"grids": len(grids), "grid_size": n, "seed": self.seed, "requested": requested,
                "cell_size": list(dataset.image_size), "pool": pool,
                "correct": int(correct.sum()), "images": len(dataset), "probability": kind}
        return SampleSet(ids=np.arange(len(grids), dtype=np.int64), fetch=fetch, info=info)

    def _pool_message(self, found: int, requested: int, dataset: BaseImageSet, pool: int,
                      kind: str, confident: torch.Tensor) -> str:
        """The one line for a pool that allows ``found`` grids of the ``requested``: how many
        grids and images there are, what a grid needs, and the fixes (fewer grids, a smaller
        grid, another model or dataset). ``confident``: bool (N,), the pool's images."""
        n = self.n
        per_class = torch.bincount(dataset.labels.cpu()[confident],
                                   minlength=dataset.num_classes)
        spread = f"{int(per_class.min())} to {int(per_class.max())} per class"
        fixes = [f"pass --n-samples {found} (or fewer)"] if found else []
        if n > min(GRID_SIZES):
            fixes.append(f"a smaller grid (--set {self.name}.n={n - 1})")
        fixes.append("another model or dataset" if found else
                     "a better-trained model or another dataset")
        fix = ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]
        if not found:
            fix = "use " + fix
        return (f"metric {self.name!r}: only {found} {n}x{n} grids can be drawn from "
                f"{dataset.name} ({pool} correctly classified images with {kind} probability "
                f"> 0.5, {spread}), {requested} requested; a grid takes {n * n} such images "
                f"of distinct classes while more than {n * n} classes have one left: {fix}")

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for grids ``inputs`` (b, 3, n·H, n·W) with cell classes ``target`` (b, n²).

        Each grid is repeated n² times, one copy per cell with that cell's class as target, and
        the whole (b·n², 3, n·H, n·W) batch goes to ``ctx.explain`` in one call.
        """
        n, nn_ = self.n, self.n * self.n
        b = inputs.shape[0]
        if target.shape != (b, nn_):
            raise InputShapeError(f"metric {self.name!r}: target must have shape ({b}, {nn_}) "
                                  f"for {n}x{n} grids, got {tuple(target.shape)}")
        repeated = inputs[:, None].expand(b, nn_, *inputs.shape[1:]).reshape(b * nn_,
                                                                             *inputs.shape[1:])
        maps = ctx.explain(repeated, target.reshape(-1))
        scores = localisation_scores(maps.reshape(b, nn_, *maps.shape[-2:]), n)
        rows = make_rows(np.asarray(samples)[:, None], np.arange(nn_)[None, :],
                         scores.cpu().numpy(), stat="score")
        rows["target"] = target.reshape(-1).cpu().numpy().astype(np.int64)
        return rows


@register_metric("localisation-difull", family="localisation",
                 paper="Rao et al. 2023 (DiFull) on Böhle et al. eq. 11")
class LocalisationDiFull(Localisation):
    """Grid localisation on a disconnected grid (DiFull): cells share no information in the model.

    Same grids, hyper-parameters and rows as ``localisation``; the methods explain
    :class:`DisconnectedGrid` (``prepare_model``), so a perfect method can score 1.
    """

    name: ClassVar[str] = "localisation-difull"
    description: ClassVar[str] = ("localisation on a grid whose cells pass the feature extractor "
                                  "separately (DiFull)")
    model_view: ClassVar[str] = "difull"
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Grid localisation (DiFull)", "The same grids and score, each cell passed through the "
        "feature extractor on its own (Rao et al. 2023), so that a perfect method can score 1.",
        short="DiFull")
    series_panels: ClassVar[tuple[SeriesPanel, ...]] = ()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``DisconnectedGrid(model, n)``; needs ``model.forward_features`` and ``forward_head``."""
        return DisconnectedGrid(model, self.n)


# ----------------------------------------------------------------------------- DiFull wrapper


class DisconnectedGrid(nn.Module):
    """A classifier of n x n grids whose cells pass ``model.forward_features`` separately (DiFull).

    RGB grids (B, 3, n·H, n·W) → cells (B·n², 3, H, W) → ``model.forward_features`` → maps
    reassembled column-first into (B, C, n·h, n·w) (:meth:`forward_features`) →
    :attr:`gradcam_layer` (an identity, so GradCAM sees the combined map) → ``model.forward_head``
    → logits (B, K) (:meth:`forward_head`). When ``model`` has ``contributions`` (a CoDA-Net), the
    wrapper is a :class:`DisconnectedContributionsGrid` that has it too. ``probability`` and
    ``temperature`` are the model's (None where it declares none).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> DisconnectedGrid:
        # (no arguments when copy/pickle rebuild an instance: then cls is already the right one)
        model = args[0] if args else kwargs.get("model")
        if cls is DisconnectedGrid and protocols.has(model, "contributions"):
            cls = DisconnectedContributionsGrid
        return super().__new__(cls)

    def __init__(self, model: nn.Module, n: int) -> None:
        super().__init__()
        if not protocols.has(model, "features_head"):
            missing = [a for a in protocols.CAPABILITIES["features_head"][0]
                       if getattr(model, a, None) is None]
            raise MetricError(
                f"{model_label(model)} has no {' or '.join(f'{a}()' for a in missing)} for the "
                "DiFull grid: add "
                "forward_features(x) -> (B, C, h, w) and forward_head(f) -> logits (B, K) with "
                "forward_head(forward_features(x)) == forward(x), or use metric 'localisation'")
        self.model = model
        self.n = convert(n, HParam("n", PositiveInt, 3), "DisconnectedGrid",
                         error=MetricSettingError)
        #: Identity on the reassembled (B, C, n·h, n·w) feature map: the layer GradCAM hooks.
        self.gradcam_layer = nn.Identity()

    def extra_repr(self) -> str:
        return f"n={self.n}"

    @property
    def probability(self) -> str | None:
        """The wrapped model's declared ``probability`` (None if it declares none)."""
        return getattr(self.model, "probability", None)

    @property
    def temperature(self) -> float | None:
        """The wrapped model's ``temperature`` (None if it has none)."""
        return getattr(self.model, "temperature", None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell feature maps placed side by side: (B, 3, n·H, n·W) → (B, C, n·h, n·w)."""
        check_images(x)
        cells = split_cells(x, self.n)
        f = self.model.forward_features(cells)
        return compose_grids(f.reshape(x.shape[0], self.n * self.n, *f.shape[1:]))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) from a reassembled map (B, C, n·h, n·w), via :attr:`gradcam_layer`."""
        return self.model.forward_head(self.gradcam_layer(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DisconnectedContributionsGrid(DisconnectedGrid):
    """A :class:`DisconnectedGrid` around a model with ``contributions`` (a CoDA-Net, a B-cos
    network)."""

    def contributions(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each cell's own contribution map for the grid's ``target`` (B,), placed in the grid.

        (B, 3, n·H, n·W) → (B, C', n·H, n·W) (C' = 6 for CoDA-Nets and B-cos networks). A head
        that sums the positions' evidence (a CoDA-Net: Σ / T + b0) makes the grid's logit − bias
        the sum of the cells' logits − bias; a head that averages them (a B-cos network: 1×1
        classifier, average pool, logit bias; ``model.head_pooling == "mean"``) makes it their
        mean, so each cell's map is divided by n². Either way the map sums to the grid's logit
        minus the model's bias.
        """
        check_images(x)
        nn_ = self.n * self.n
        cells = split_cells(x, self.n)
        target = torch.as_tensor(target, device=x.device).long().reshape(-1)
        maps = self.model.contributions(cells, target.repeat_interleave(nn_))
        if protocols.head_pooling(self.model) == "mean":
            maps = maps / nn_
        return compose_grids(maps.reshape(x.shape[0], nn_, *maps.shape[1:]))
