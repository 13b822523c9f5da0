"""The metric contract: what the runner gives a metric and what a metric gives back.

A metric evaluates one (model, method) pair on a dataset in three steps, so that the runner can
batch, cache, checkpoint and resume without knowing the metric:

1. :meth:`Metric.select` picks the samples, deterministically (e.g. the paper's 500 grids, or
   the first 1024 test images): a :class:`SampleSet` of stable integer ids and a ``fetch`` that
   turns a batch of ids into ``(inputs, target)`` tensors.
   :meth:`Metric.prepare_model` may wrap the model first (DiFull); ``select`` gets the plain
   model, ``evaluate``'s context the prepared one.
2. :meth:`Metric.evaluate` scores one batch of samples and returns **rows**: a
   :class:`pandas.DataFrame` with the columns :data:`ROW_COLUMNS` (``sample, key, variant, stat,
   value``). The runner adds ``model, method, metric`` and the config columns. ``key`` names the
   grid cell, removal step or randomised layer (a string); ``variant`` a sub-protocol
   (``"least-first"``, ``"cascading"``; ``""`` if none); ``stat`` what ``value`` measures
   (``"score"``, ``"prob"``, ``"spearman"``…). A sample whose map is NaN gives NaN values, never
   an exception: the runner flags and counts those rows.
3. :meth:`Metric.summarise` reduces the rows to one score per (sample, variant, stat), e.g. the
   area under a pixel-removal curve; :attr:`Metric.directions` says, per ``stat``, whether
   ``"higher"`` or ``"lower"`` is better so that summaries can rank methods.

Maps come from :class:`EvalContext`: ``explain(inputs, target)`` is the cached attribution of the
context's model, ``make_method(model)`` builds the same method (same hyper-parameters) on another
model (the randomisation test needs it).

What a metric shows is declared on its class too: :attr:`Metric.figures` names its figures
(:class:`MetricFigure`: a draw function of :class:`FigureTables`, the run's plain tables, and a
caption), :attr:`Metric.report_section` how the HTML report introduces it
(:class:`ReportSection`), :attr:`Metric.series_panels` its summary rows in the temperature series;
registering it with ``ranks=False`` makes it a check, whose methods the summary does not rank.
``attrib-bench plot`` and the report read only these declarations
(:func:`attrib_bench.metrics.figures.presentation`), for the built-in metrics and a plugin's
alike; a metric that declares no figure gets a score figure. A draw function imports matplotlib
inside itself (the built-ins' draw in :mod:`attrib_bench.metrics.figures`), so a run never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core.errors import MetricError, MetricSettingError
from attrib_bench.core.hparams import check_settings
from attrib_bench.data import BaseImageSet
from attrib_bench.data.predict import INFERENCE_BATCH, predict_logits

#: The columns of the rows a metric returns, in order.
ROW_COLUMNS: tuple[str, ...] = ("sample", "key", "variant", "stat", "value")

#: ``explain(inputs (B, 3, H, W), target (B,)) -> maps (B, H, W)``.
Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SampleSet:
    """The samples a metric evaluates: stable ids and how to load a batch of them.

    ``ids`` int64 (N,), unique; ``fetch(ids) -> (inputs, targets)`` with inputs (b, 3, H, W)
    float in [0, 1] and targets (b, ...) long (e.g. (b,) for an image, (b, n²) for a grid).
    ``info`` holds what a run should report (e.g. how many grids the pool allowed).
    """

    ids: np.ndarray
    fetch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)


#: ``predict(model, dataset) -> logits (N, K)`` on the CPU, every image in dataset order.
Predict = Callable[[nn.Module, BaseImageSet], torch.Tensor]


@dataclass(frozen=True)
class SelectContext:
    """What :meth:`Metric.select` may use besides the model and the dataset.

    ``device``: where the model runs; ``predict``: the model's logits on a whole dataset — the
    runner passes one that caches them by (weights sha256, dataset digest) in the run's cache, so
    that ``localisation`` and ``localisation-difull`` (and later runs with the same cache)
    classify the test set once; None computes them here (:func:`predict_logits`, batches of
    :data:`~attrib_bench.data.predict.INFERENCE_BATCH`). ``progress``: whether a long selection
    may show a progress bar.
    """

    device: torch.device = torch.device("cpu")
    predict: Predict | None = None
    progress: bool = False

    def logits(self, model: nn.Module, dataset: BaseImageSet) -> torch.Tensor:
        """(N, K) float logits of ``model`` on every image of ``dataset``, on the CPU."""
        if self.predict is not None:
            return self.predict(model, dataset)
        return predict_logits(model, dataset, INFERENCE_BATCH, self.device,
                              progress=self.progress)


@dataclass
class EvalContext:
    """What :meth:`Metric.evaluate` may use besides the batch."""

    model: nn.Module
    explain: Explainer
    make_method: Callable[[nn.Module], Any]
    device: torch.device
    seed: int = 0


#: ``typed_hparams(owner, factory, values) -> values``: a metric's ``__init__`` checks its own
#: settings with the registry's check (:func:`attrib_bench.core.hparams.check_settings`: declared
#: types and ranges, one :class:`~attrib_bench.core.errors.MetricSettingError` line), so that a
#: metric built directly in Python gets it too. ``factory`` is the class that declares the
#: parameters (not ``type(self)``, which may be a subclass with another signature).
typed_hparams = check_settings


def first_images(owner: str, dataset: BaseImageSet, wanted: int, default: int) -> np.ndarray:
    """Ids of the first ``wanted`` images of ``dataset`` in dataset order, shape (n,).

    ``default`` is the metric's own count (the paper's 1024 for pixel removal): on a smaller
    dataset it means "all of them" and is clipped to ``len(dataset)`` (the sample set's info
    records requested and selected). Any other count is what the user asked for, so a dataset
    with fewer images raises :class:`~attrib_bench.core.errors.MetricError` in one line naming the
    fix, rather than running fewer samples than the config records. ``owner`` names the
    metric in the message ("metric 'pixel-removal'").
    """
    available = len(dataset)
    if wanted > available and wanted != default:
        raise MetricError(f"{owner}: {dataset.name} has only {available} images, {wanted} "
                          f"requested: pass --n-samples {available} (or fewer)")
    return np.arange(min(wanted, available), dtype=np.int64)


def check_maps(name: str, maps: object, inputs: torch.Tensor) -> torch.Tensor:
    """``maps`` as (B, H, W) for ``inputs`` (B, 3, H, W), or one
    :class:`~attrib_bench.core.errors.MetricError` line naming metric ``name``."""
    b, _, h, w = inputs.shape
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != (b, h, w):
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise MetricError(f"metric {name!r} needs maps ({b}, {h}, {w}) from the method, "
                          f"got {got}")
    return maps


def first_image_samples(owner: str, dataset: BaseImageSet, wanted: int, default: int,
                        **info: Any) -> SampleSet:
    """The first ``wanted`` images of ``dataset`` (:func:`first_images`) with their
    ground-truth classes as targets: a :class:`SampleSet` whose ``fetch(ids)`` gives float
    images (b, C, H, W) in [0, 1] and labels (b,). ``info`` is added to the set's record
    ("requested", "selected", "targets")."""
    ids = first_images(owner, dataset, wanted, default)

    def fetch(batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(np.asarray(batch, dtype=np.int64))
        return dataset.float_images(index), dataset.labels[index]

    return SampleSet(ids, fetch, {"requested": wanted, "selected": len(ids),
                                  "targets": "ground truth", **info})


def make_rows(sample: Any, key: Any, value: Any, *, variant: Any = "", stat: Any = "score"
              ) -> pd.DataFrame:
    """Rows from broadcastable columns (scalars or arrays); ``key``/``variant``/``stat`` as str."""
    columns = np.broadcast_arrays(np.asarray(sample, dtype=np.int64), np.asarray(key),
                                  np.asarray(variant), np.asarray(stat),
                                  np.asarray(value, dtype=np.float64))
    sample, key, variant, stat, value = (np.ravel(c) for c in columns)
    return pd.DataFrame({"sample": sample, "key": key.astype(str), "variant": variant.astype(str),
                         "stat": stat.astype(str), "value": value})


# ----------------------------------------------------------------------------- presentation

#: Seeded bootstrap resamples for the bands around mean curves (figures stay byte-identical).
BAND_RESAMPLES = 1000


def mean_band(values: np.ndarray, seed: int = 0, resamples: int = BAND_RESAMPLES,
              level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over samples of ``values`` (n, k) and its seeded percentile-bootstrap CI: three
    (k,) arrays (mean, low, high). Resampling counts are multinomial, so memory is O(B·(n+k))."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    means = counts @ values / n  # (B, k)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return values.mean(axis=0), low, high


@dataclass(frozen=True)
class FigureTables:
    """The plain tables a metric's figure is drawn from: one run's, or a results store's.

    ``metric``: the registered name being drawn (one class may be registered under two names);
    ``results``: the rows of every metric (a store holds per-sample values), whose methods fix
    each method's spare colour, so that it is the same in every figure; ``summary``: one row
    per (model, method, metric, variant, stat) with ``mean``, ``ci_low``, ``ci_high``, ``n``
    and ``direction``; ``manifest``: the run's (``models`` with class, parameters and T,
    ``samples`` per "model/metric"); ``curves``: the mean curves of the curve metrics
    (:attr:`Metric.curve_key`) with their bootstrap bands (:func:`mean_band`), one row per
    (model, method, metric, variant, stat, x) with ``mean``, ``low``, ``high``, ``n``.
    """

    metric: str
    results: pd.DataFrame
    summary: pd.DataFrame
    manifest: Mapping[str, Any]
    curves: pd.DataFrame

    def rows(self) -> pd.DataFrame:
        """The results rows of :attr:`metric` (non-finite ones included: see ``flag``)."""
        return self.results[self.results["metric"] == self.metric]


#: ``draw(tables) -> Figure``, or ``{part: Figure}`` for one figure per part (per model, say).
FigureDrawer = Callable[[FigureTables], Any]


@dataclass(frozen=True)
class MetricFigure:
    """A figure a metric declares (:attr:`Metric.figures`): ``draw`` makes it from
    :class:`FigureTables` (a matplotlib Figure, or a mapping part → Figure); ``caption`` is
    what the report writes under it."""

    draw: FigureDrawer
    caption: str = ""


@dataclass(frozen=True)
class ReportSection:
    """How the HTML report introduces a metric (:attr:`Metric.report_section`): a ``title``
    over its figures, a short ``text`` saying what it measures and which way is better, and
    ``short``, its name where space is tight (an agreement panel's labels; "" = its name)."""

    title: str
    text: str = ""
    short: str = ""


@dataclass(frozen=True)
class SeriesPanel:
    """A summary row the temperature-series figure draws against T: the metric's ``variant``
    and ``stat``, and the panel's axis ``label``."""

    label: str
    variant: str
    stat: str


class Metric:
    """Base class of every metric; subclasses set ``name``, ``description``, ``directions``.

    Hyper-parameters are the subclass constructor's keyword-only parameters, with type hints
    (ranges declared with them: ``PositiveInt``, ``Annotated[float, Between(0, 1)]``) and
    defaults (:mod:`attrib_bench.core.hparams` reads, parses and checks them from there); the
    constructor checks them (:func:`typed_hparams`) and stores the resolved values, defaults
    included, in :attr:`hparams`.
    """

    name: ClassVar[str] = "metric"
    description: ClassVar[str] = ""
    #: stat → "higher" or "lower" (is better), for the summary's ranking.
    directions: ClassVar[dict[str, str]] = {"score": "higher"}
    #: What a refused setting raises (:func:`attrib_bench.core.hparams.setting_error`).
    setting_error: ClassVar[type[MetricSettingError]] = MetricSettingError
    #: The hyper-parameter that holds the number of samples (e.g. "num_grids"), which
    #: ``--n-samples`` sets, so that the recorded configuration shows the count that ran and the
    #: two spellings share a cache key; None: ``n_samples`` reaches :meth:`select` instead.
    sample_count: ClassVar[str | None] = None
    #: The row column that is a curve's x axis when :meth:`evaluate` writes a curve per sample
    #: (pixel removal: "removed"); None when every row is itself a per-sample value. A results
    #: store (:mod:`attrib_bench.store`) keeps a curve metric's per-sample values
    #: (:meth:`summarise`) and each curve's mean with its bootstrap band, not every point.
    curve_key: ClassVar[str | None] = None
    #: The metric's figures, which ``attrib-bench plot`` writes and the report shows: figure
    #: name → :class:`MetricFigure`, the file stem being the registered name for "" and
    #: "<name>-<figure name>" otherwise (a drawer's parts add "-<part>"). None: the default, each
    #: method's mean with its 95 % CI per model and (variant, stat)
    #: (:func:`attrib_bench.metrics.figures.score_figure`); {}: no figure.
    figures: ClassVar[Mapping[str, MetricFigure] | None] = None
    #: The report's section on the metric (:class:`ReportSection`); None: titled with the
    #: registered name, the registry's description as its text. Whether the summary ranks the
    #: methods is the registration's ``ranks`` (default True; ``ranks=False`` for a check).
    report_section: ClassVar[ReportSection | None] = None
    #: Summary rows the temperature-series figure draws against T (:class:`SeriesPanel`).
    series_panels: ClassVar[tuple[SeriesPanel, ...]] = ()

    def __init__(self, **hparams: Any) -> None:
        self.hparams: dict[str, Any] = dict(hparams)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"

    #: True when :meth:`evaluate`'s rows are a function of the maps ``ctx.explain`` returns (with
    #: the model, inputs, targets, sample ids, seed and settings), never of ``ctx.make_method``:
    #: a run then gives a method whose maps are another's (``same_maps_as``, e.g. DeepLIFT on a
    #: CoDA-Net) that method's rows of the same chunk instead of evaluating them again.
    rows_from_maps: ClassVar[bool] = False

    #: Names the model view :meth:`prepare_model` returns ("" = the model itself); part of the
    #: attribution-cache key, since maps of a wrapped model differ from the plain model's.
    model_view: ClassVar[str] = ""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model the metric explains (default: ``model``; DiFull wraps it). Called once."""
        return model

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The samples to evaluate (deterministic; ``n_samples`` None: the paper's number).

        ``model`` is the plain model (not :meth:`prepare_model`'s view); ``ctx`` gives the
        device and the (cached) logits of a model on a whole dataset (:class:`SelectContext`).
        """
        raise NotImplementedError

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows (:data:`ROW_COLUMNS`) for one batch: ``inputs`` (b, 3, H, W), ``target`` the
        batch's targets as :attr:`SampleSet.fetch` gives them, ``samples`` the batch's ids."""
        raise NotImplementedError

    def direction(self, variant: str, stat: str) -> str:
        """"higher" or "lower" (is better) for a summarised (variant, stat); "" if unranked."""
        return self.directions.get(stat, "")

    def summarise(self, rows: pd.DataFrame) -> pd.DataFrame:
        """One value per (sample, variant, stat): by default the mean over ``key``, NaN where any
        key's value is not finite (e.g. a Spearman correlation undefined on a constant map), so
        that the summary counts the sample as non-finite instead of averaging the rest."""
        grouped = rows.assign(_bad=~np.isfinite(rows["value"].to_numpy(dtype=np.float64))) \
            .groupby(["sample", "variant", "stat"], sort=True, dropna=False)
        out = grouped["value"].mean().reset_index()
        out.loc[grouped["_bad"].any().to_numpy(), "value"] = np.nan
        return out
