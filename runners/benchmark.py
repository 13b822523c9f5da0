"""The benchmark runner: model × method × metric sweeps with tidy tables, a cache and resume.

``run(models, methods, metrics, ...)`` (and ``attrib-bench run``) evaluates every (model, method,
metric) part in chunks of ``batch_size`` samples. Each chunk's rows are written atomically to
``DIR/parts/<model>/<method>/<metric>/chunk-NNNNN.parquet``; a re-run of the same command skips
the chunks that exist, so a killed run resumes with no lost and no duplicated rows. At the end
the parts are gathered into ``DIR/results.parquet`` (+ ``results.csv``), ``DIR/summary.csv`` and
``DIR/manifest.json``. Maps go through the attribution cache (``DIR/cache``).

Rows are long format: ``model, method, metric, sample, key, variant, stat, value`` plus metric
columns (e.g. ``target``), a ``flag`` ("nonfinite" where the method produced NaN/inf, else "")
and the config columns ``dataset, seed, method_config, metric_config``.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from attrib_bench import evaluation, hparams
from attrib_bench.data import ImageSet, get_dataset
from attrib_bench.errors import MetricError, NotApplicableError, RunError, SettingError
from attrib_bench.evaluation import eval_mode, ieee_float32, resolve_device
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext, Metric, SampleSet
from attrib_bench.models.protocols import check_logits
from attrib_bench.provenance import describe_hardware, git_commit
from attrib_bench.registry import METHODS, METRICS, create_method, create_metric, create_model
from attrib_bench.runners.cache import AttributionCache, cached_explainer, model_digest
from attrib_bench.runners.storage import Store

#: Leading columns of the results table, in order (metric-specific columns follow ``value``).
ID_COLUMNS = ("model", "method", "metric")
CONFIG_COLUMNS = ("dataset", "seed", "method_config", "metric_config")
BOOTSTRAP_RESAMPLES = 2000
RUN_FILE = "run.json"


@dataclass
class RunConfig:
    """What a run computes; a resumed run must match it (``device`` and ``out`` may differ)."""

    models: list[str]
    methods: list[str]
    metrics: list[str]
    n_samples: int | None = None
    batch_size: int = 32
    seed: int = 0
    dataset: str = "cifar10"
    split: str = "test"
    checkpoint: str | None = None
    method_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: methods/metrics were "all": a part that does not apply is skipped, not an error
    all_methods: bool = False
    all_metrics: bool = False

    def identity(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))


def _slug(name: str) -> str:
    """A file-system-safe folder name for a model, method or metric name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def _split_names(value: str | Iterable[str] | Mapping[str, Any]) -> list[str]:
    """Names from "a,b" or an iterable, in order, each once (``grad,grad`` is ``grad``)."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(n for n in names if n))


# ----------------------------------------------------------------------------- one part


@dataclass
class Part:
    """One (model, method, metric) cell of the sweep and where its chunks live in ``store``.

    A chunk is the parquet file ``chunk-NNNNN-<sha256>.parquet``: its name carries the sha256 of
    its bytes, so a truncated or altered file (one flipped bit) is detected before it is read,
    reported, deleted and recomputed. One atomic rename writes file and checksum together.
    """

    model: str
    method: str
    metric: str
    store: Store

    @property
    def folder(self) -> str:
        return self.store.path("parts", _slug(self.model), _slug(self.method), _slug(self.metric))

    def chunk_files(self, index: int) -> list[str]:
        """Files of chunk ``index`` (normally none or one; older unchecked names included)."""
        return self.store.glob("parts", _slug(self.model), _slug(self.method),
                               _slug(self.metric), f"chunk-{index:05d}*.parquet")

    def chunk_path(self, index: int, digest: str) -> str:
        return f"{self.folder}/chunk-{index:05d}-{digest}.parquet"

    def write_chunk(self, index: int, rows: pd.DataFrame) -> str:
        """Write ``rows`` as chunk ``index``, atomically, named by their sha256; the path."""
        buffer = io.BytesIO()
        rows.to_parquet(buffer, index=False)
        data = buffer.getvalue()
        path = self.chunk_path(index, hashlib.sha256(data).hexdigest())
        self.store.write(path, lambda tmp: tmp.write_bytes(data))
        return path

    def state(self, index: int, expected: ChunkIdentity | None = None
              ) -> tuple[bool, list[str]]:
        """(done, corrupt): whether chunk ``index`` has a verified file, and the files that
        failed their checksum or, given ``expected``, hold other samples or another method or
        metric configuration (a chunk copied from another run); those are deleted here, so that
        the chunk is recomputed."""
        done, corrupt = False, []
        for path in self.chunk_files(index):
            data = None if done else verified_chunk(self.store, path)
            if data is not None and (expected is None or expected.matches(data)):
                done = True
                continue
            self.store.remove(path)  # corrupt, unchecked (older name) or a second copy
            corrupt.append(path)
        return done, corrupt

    def done(self, index: int, expected: ChunkIdentity | None = None) -> bool:
        """Whether chunk ``index`` is written and its checksum holds (a bad file is deleted)."""
        return self.state(index, expected)[0]


@dataclass(frozen=True)
class ChunkIdentity:
    """What a chunk of this run must hold: its sample ids and the method and metric configs."""

    ids: tuple[int, ...]
    method_config: str
    metric_config: str

    def matches(self, data: bytes) -> bool:
        """Whether the chunk file's bytes hold exactly these samples under these configs."""
        try:
            rows = pd.read_parquet(io.BytesIO(data),
                                   columns=["sample", "method_config", "metric_config"])
        except Exception:  # noqa: BLE001 - unreadable despite its checksum: not this run's
            return False
        return (set(rows["sample"].tolist()) == set(self.ids)
                and set(rows["method_config"]) == {self.method_config}
                and set(rows["metric_config"]) == {self.metric_config})


_CHUNK_NAME = re.compile(r"chunk-\d{5}-([0-9a-f]{64})\.parquet$")


def verified_chunk(store: Store, path: str) -> bytes | None:
    """The bytes of a chunk file if their sha256 is the one in its name, else None."""
    match = _CHUNK_NAME.search(path)
    if match is None:
        return None
    try:
        data = store.read_bytes(path)
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == match.group(1) else None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _finish_rows(rows: pd.DataFrame, part: Part, config: RunConfig,
                 method_config: dict[str, Any], metric_config: dict[str, Any]) -> pd.DataFrame:
    """Add the id, flag and config columns to a metric's rows; fixed column order."""
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        raise RunError(f"metric {part.metric!r} returned rows without columns {missing}: "
                       f"rows need {', '.join(ROW_COLUMNS)} (use metrics.base.make_rows)")
    rows = rows.copy()
    rows.insert(0, "model", part.model)
    rows.insert(1, "method", part.method)
    rows.insert(2, "metric", part.metric)
    rows["value"] = rows["value"].astype("float64")
    rows["flag"] = np.where(np.isfinite(rows["value"].to_numpy()), "", "nonfinite")
    rows["dataset"] = config.dataset
    rows["seed"] = config.seed
    rows["method_config"] = _json(method_config)
    rows["metric_config"] = _json(metric_config)
    rows["sample"] = rows["sample"].astype("int64")
    for column in ("key", "variant", "stat"):
        rows[column] = rows[column].astype(str)
    return rows


def chunk_identity(ids: np.ndarray, method_config: dict[str, Any],
                   metric_config: dict[str, Any]) -> ChunkIdentity:
    """The :class:`ChunkIdentity` a chunk of ``ids`` written with these configs has."""
    return ChunkIdentity(tuple(int(i) for i in ids), _json(method_config), _json(metric_config))


def chunk_ids(samples: SampleSet, batch_size: int) -> list[np.ndarray]:
    """The sample ids of each chunk (the unit that is written, resumed and distributed)."""
    return [samples.ids[i:i + batch_size] for i in range(0, len(samples.ids), batch_size)]


def evaluate_chunk(part: Part, index: int, ids: np.ndarray, metric: Metric,
                   samples: SampleSet, ctx: EvalContext, config: RunConfig,
                   method_config: dict[str, Any], metric_config: dict[str, Any]) -> float:
    """Evaluate one chunk and write its rows atomically; returns the seconds spent."""
    start = time.perf_counter()
    inputs, targets = samples.fetch(ids)
    inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
    with ieee_float32(ctx.device):  # a GPU gives the CPU's numbers (no TF32 convolutions)
        rows = metric.evaluate(ctx, inputs, targets, ids)
    rows = _finish_rows(rows, part, config, method_config, metric_config)
    elapsed = time.perf_counter() - start
    rows["seconds"] = elapsed / max(len(rows), 1)  # per-row share: sums to wall time
    part.write_chunk(index, rows)
    return elapsed


def _evaluate_part(part: Part, metric: Metric, samples: SampleSet, ctx: EvalContext,
                   config: RunConfig, method_config: dict[str, Any],
                   metric_config: dict[str, Any], progress: bool) -> tuple[float, list[str]]:
    """Evaluate the missing chunks of one part in this process.

    Returns the seconds spent and the chunk files that failed their checksum (recomputed).
    """
    chunks = chunk_ids(samples, config.batch_size)
    todo, corrupt = [], []
    for i in range(len(chunks)):
        done, bad = part.state(i, chunk_identity(chunks[i], method_config, metric_config))
        corrupt += bad
        if not done:
            todo.append(i)
    seconds = 0.0
    done_samples = len(samples.ids) - sum(len(chunks[i]) for i in todo)
    with tqdm(total=len(samples.ids), initial=done_samples, unit="sample", disable=not progress,
              desc=f"{part.model} · {part.method} · {part.metric}", dynamic_ncols=True,
              leave=True) as bar:
        for index in todo:
            seconds += evaluate_chunk(part, index, chunks[index], metric, samples, ctx, config,
                                      method_config, metric_config)
            bar.update(len(chunks[index]))
    return seconds, corrupt


def _report_corrupt(store: Store, paths: list[str]) -> None:
    """One stderr line per chunk file that failed its checksum (it is recomputed)."""
    for path in paths:
        shown = path[len(store.root):].lstrip("/") if path.startswith(store.root) else path
        print(f"warning: {shown} failed its checksum or is not this run's (corrupt, truncated, "
              "unchecked or copied from another run): deleted; its chunk is recomputed",
              file=sys.stderr)


# ----------------------------------------------------------------------------- summary


def bootstrap_ci(values: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (1-D), seeded; (nan, nan) if empty."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarise(results: pd.DataFrame, metrics: Mapping[str, Metric], seed: int = 0
              ) -> pd.DataFrame:
    """Per (model, method, metric, variant, stat): the per-sample scores' mean with a bootstrap
    95 % CI, median, quartiles, n, the number of non-finite samples and the direction."""
    out = []
    for (model, method, metric_name), rows in results.groupby(list(ID_COLUMNS), sort=True):
        metric = metrics[metric_name]
        per_sample = metric.summarise(rows[list(ROW_COLUMNS)])
        for (variant, stat), group in per_sample.groupby(["variant", "stat"], sort=True):
            values = group["value"].to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            low, high = bootstrap_ci(finite, seed)
            quartiles = (np.percentile(finite, [25, 50, 75]) if finite.size
                         else [np.nan] * 3)
            out.append({
                "model": model, "method": method, "metric": metric_name, "variant": variant,
                "stat": stat, "mean": finite.mean() if finite.size else np.nan,
                "ci_low": low, "ci_high": high, "median": quartiles[1], "q25": quartiles[0],
                "q75": quartiles[2], "n": int(finite.size),
                "n_nonfinite": int(values.size - finite.size),
                "direction": metric.direction(str(variant), str(stat)),
            })
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- the sweep


def _versions() -> dict[str, str]:
    names = ("attrib-bench", "torch", "torchvision", "numpy", "pandas", "captum", "lime",
             "scikit-image", "scipy")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _prepare_out(out: Store, identity: dict[str, Any], overwrite: bool) -> None:
    """Create ``out``; refuse a folder that holds a run with another config unless overwriting.

    ``identity`` is the config plus the models' weight hashes: resuming with changed weights
    would mix two models' rows.
    """
    run_file = out.path(RUN_FILE)
    if out.exists(run_file):
        try:
            previous = json.loads(out.read_text(run_file))
        except ValueError:
            previous = {}
        nothing_done = not out.glob("parts", "*", "*", "*", "chunk-*.parquet")
        if previous != identity:
            if not overwrite and not nothing_done:  # a run that wrote no chunk loses nothing
                changed = sorted(k for k in set(previous) | set(identity)
                                 if previous.get(k) != identity.get(k))
                raise RunError(f"{out.url} holds a run with a different config "
                               f"({', '.join(changed)} differ): pass another --out, or "
                               "--overwrite to replace it")
            for name in ("parts", "results.parquet", "results.csv", "summary.csv",
                         "manifest.json"):
                out.remove(out.path(name))
    out.makedirs()
    out.write_text(run_file, json.dumps(identity, indent=1))


def _load_model(name: str, model: nn.Module | None, checkpoint: str | None,
                device: torch.device) -> nn.Module:
    if model is None:
        from attrib_bench.models.zoo import checkpoint_kwargs

        model = create_model(name, pretrained=checkpoint is None, checkpoint=checkpoint,
                             **checkpoint_kwargs(name, checkpoint))
    return model.to(device).eval()


def _method_names(requested: list[str], model: nn.Module) -> list[str]:
    """``["all"]`` → the registered methods that apply to ``model``, else ``requested``."""
    if requested == ["all"]:
        from attrib_bench.methods.base import applicable_methods

        return applicable_methods(model)
    return requested


def _build_method(name: str, model: nn.Module, hparams: Mapping[str, Any], seed: int) -> Any:
    """Build method ``name`` on ``model`` from its settings; ``seed`` fills an unset seed."""
    config = resolve_method(name, hparams, seed)
    method = create_method(name, model, **config)
    method.allow_nonfinite = True  # NaN maps become flagged rows, not a stopped run
    return method


def resolve_method(name: str, given: Mapping[str, Any], seed: int, *,
                   from_text: bool = False) -> dict[str, Any]:
    """Method ``name``'s full configuration (defaults included, types checked); the run's
    ``seed`` where the method has a seed and it is not set."""
    factory = METHODS.get(name).factory
    config = hparams.resolve(f"method {name!r}", factory, given, from_text=from_text)
    if "seed" in hparams.hparams_of(factory) and "seed" not in given:
        config["seed"] = seed
    return config


def resolve_metric(name: str, given: Mapping[str, Any], *, from_text: bool = False
                   ) -> dict[str, Any]:
    """Metric ``name``'s full configuration (defaults included, types checked)."""
    return hparams.resolve(f"metric {name!r}", METRICS.get(name).factory, given,
                           from_text=from_text)


def parse_settings(settings: Iterable[str], methods: list[str], metrics: list[str]
                   ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """``["rise.n_masks=500", "pixel-removal.baseline=road"]`` → (method, metric) settings as
    text, split by the selected ``methods`` and ``metrics``; a NAME that is neither, or an item
    not of the form NAME.KEY=VALUE, is one :class:`SettingError` line with the close matches."""
    method_settings: dict[str, dict[str, str]] = {}
    metric_settings: dict[str, dict[str, str]] = {}
    for item in settings:
        name, eq, text = item.partition("=")
        name, dot, key = name.rpartition(".")
        if not (dot and eq and name and key):
            raise SettingError(f"--set {item!r}: use NAME.KEY=VALUE, e.g. rise.n_masks=500")
        if name in metrics:
            metric_settings.setdefault(name, {})[key] = text
        elif name in methods:
            method_settings.setdefault(name, {})[key] = text
        else:
            raise SettingError(_not_selected(name, methods, metrics, f"--set {item!r}"))
    return method_settings, metric_settings


def _not_selected(name: str, methods: list[str], metrics: list[str], what: str) -> str:
    """The one line for a setting whose NAME is not a selected method or metric."""
    selected = [*methods, *metrics]
    close = difflib.get_close_matches(name, selected, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else (
        f"this run has {', '.join(selected)}")
    registered = name in METHODS or name in METRICS
    why = "is not selected in this run (add it to --method/--metric)" if registered else \
        "is not a selected method or metric"
    return f"{what}: {name!r} {why}: {hint}"


@dataclass
class PartJob:
    """Everything needed to evaluate one part's chunks, in this process or on a worker."""

    part: Part
    metric: Metric
    samples: SampleSet
    model: nn.Module  # the metric's view of the model
    model_hash: str
    method_name: str
    hparams: dict[str, Any]  # the method's full configuration
    method_id: dict[str, Any]
    metric_config: dict[str, Any]

    def context(self, config: RunConfig, device: torch.device, cache: AttributionCache,
                method: Any = None) -> EvalContext:
        """The metric's context: the (cached) explainer and how to rebuild the method."""
        if method is None:
            method = _build_method(self.method_name, self.model, self.hparams, config.seed)
        return EvalContext(
            model=self.model, device=device, batch_size=config.batch_size, seed=config.seed,
            explain=cached_explainer(method, cache, self.model_hash, self.method_id),
            make_method=lambda m, n=self.method_name, h=self.hparams: _build_method(
                n, m, h, config.seed))


#: ``run(executor=...)``: in this process (no Dask import), or Dask tasks.
EXECUTORS = ("local", "dask")


def run(models: str | Iterable[str] | Mapping[str, nn.Module],
        methods: str | Iterable[str] = "all",
        metrics: str | Iterable[str] = "all",
        *,
        n_samples: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        out: str | Path | None = None,
        seed: int = 0,
        checkpoint: str | None = None,
        overwrite: bool = False,
        dataset: str | ImageSet = "cifar10",
        data_root: str | Path | None = None,
        method_hparams: Mapping[str, Mapping[str, Any]] | None = None,
        metric_hparams: Mapping[str, Mapping[str, Any]] | None = None,
        settings: Iterable[str] = (),
        progress: bool = True,
        dry_run: bool = False,
        executor: str = "local",
        scheduler: str | None = None,
        workers: int | None = None,
        client: Any = None) -> pd.DataFrame:
    """Run the sweep and return every row (the table written to ``out/results.parquet``).

    ``models``: registered names (a list or "a,b"), or a mapping name → ``nn.Module`` for a
    user's own models; ``methods``/``metrics``: names or "all"; ``n_samples`` shrinks each metric's
    default sample count; ``dataset``: a registered dataset name or an :class:`ImageSet`;
    ``*_hparams``: per-name hyper-parameters as Python values, ``settings``: the same as
    ``"NAME.KEY=VALUE"`` text (the CLI's ``--set``), parsed to each hyper-parameter's declared
    type (:mod:`attrib_bench.hparams`). ``out``: a folder or an fsspec URL (``memory://``,
    ``s3://``…); None uses a temporary folder. ``executor="dask"`` runs each (model, method,
    metric, chunk) as a Dask task: on ``client`` (a ``distributed.Client``), on the cluster at
    ``scheduler`` ("tcp://host:8786"), or on a new ``LocalCluster`` of ``workers`` processes;
    see :mod:`attrib_bench.runners.distributed`.

    **Fail fast.** Before the first chunk runs (and before anything is written), every name,
    setting, model, (model, metric) sample set and (model, method, metric) part is built and
    checked: the model's output on one sample must be logits (B, K), and each method's
    ``preflight`` runs on one sample. With ``methods="all"`` (or ``metrics="all"``), a part that
    does not apply is skipped with its reason (manifest ``skipped``, stderr), and so is a named
    method on the models it does not apply to (``inherent`` on a ResNet beside a CoDA-Net); a
    named method that applies to none of the models, or a named metric that does not apply,
    stops the run in one line. ``dry_run=True`` stops after these
    checks and returns an empty table (nothing is computed or written); the plan is in
    ``run.last_plan``.
    """
    if executor not in EXECUTORS:
        raise RunError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if executor == "local" and (scheduler is not None or workers is not None
                                or client is not None):
        raise RunError("--scheduler and --workers need --executor dask")
    if scheduler is not None and workers is not None:
        raise RunError("--scheduler uses an existing cluster and --workers starts a local one: "
                       "pass one of them")
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise RunError(f"--workers must be >= 1, got {workers}")
    given_models = dict(models) if isinstance(models, Mapping) else {}
    metric_names = _split_names(metrics)
    all_metrics = metric_names == ["all"]
    if all_metrics:
        metric_names = METRICS.names()
    for name in metric_names:
        METRICS.get(name)  # unknown names fail here, with close matches
    method_names = _split_names(methods)
    all_methods = method_names == ["all"]
    for name in method_names:
        if name != "all":
            METHODS.get(name)
    model_names = _split_names(models)
    if checkpoint is not None and len(model_names) != 1:
        raise RunError("--checkpoint applies to one model: run one --model per checkpoint")
    if n_samples is not None and (isinstance(n_samples, bool) or n_samples < 1):
        raise RunError(f"--n-samples must be >= 1, got {n_samples}")
    if isinstance(batch_size, bool) or batch_size < 1:
        raise RunError(f"--batch-size must be >= 1, got {batch_size}")
    selected_methods = METHODS.names() if all_methods else method_names
    text_methods, text_metrics = parse_settings(settings, selected_methods, metric_names)
    for kind, given, names in (("method_hparams", method_hparams, selected_methods),
                               ("metric_hparams", metric_hparams, metric_names)):
        for name in given or {}:
            if name not in names:
                raise SettingError(_not_selected(name, selected_methods, metric_names, kind))
    method_configs = {name: _merge_text(resolve_method, name, resolve_method(
        name, (method_hparams or {}).get(name, {}), seed), text_methods.get(name, {}), seed)
        for name in selected_methods}
    metric_configs = {name: _merge_text(resolve_metric, name, resolve_metric(
        name, (metric_hparams or {}).get(name, {})), text_metrics.get(name, {}))
        for name in metric_names}
    out_store = _check_out(out)
    dataset_name = dataset.name if isinstance(dataset, ImageSet) else str(dataset)
    config = RunConfig(model_names, selected_methods, metric_names, n_samples, batch_size, seed,
                       dataset_name, "test", checkpoint, method_configs, metric_configs,
                       all_methods, all_metrics)
    torch_device = resolve_device(device)
    runner = None
    if executor == "dask" and not dry_run:
        from attrib_bench.runners.distributed import DaskRunner

        runner = DaskRunner(client=client, scheduler=scheduler, workers=workers,
                            progress=progress)
    try:
        if out_store is None:
            with tempfile.TemporaryDirectory(prefix="attrib-bench-") as tmp:
                return _run(config, Store(tmp), torch_device, overwrite, dataset, data_root,
                            given_models, progress, runner, dry_run)
        return _run(config, out_store, torch_device, overwrite, dataset, data_root,
                    given_models, progress, runner, dry_run)
    finally:
        if runner is not None:
            runner.close()


def _merge_text(resolver: Any, name: str, config: dict[str, Any], text: Mapping[str, str],
                *args: Any) -> dict[str, Any]:
    """``config`` with the ``--set`` values in ``text`` parsed to their declared types."""
    if not text:
        return config
    parsed = resolver(name, text, *args, from_text=True)
    return {**config, **{key: parsed[key] for key in text}}


def _check_out(out: str | Path | None) -> Store | None:
    """The output store, checked before any work: a local folder must be creatable."""
    if out is None:
        return None
    try:
        store = Store(out)
    except (ValueError, ImportError) as exc:
        raise RunError(f"--out {str(out)[:200]!r} is not a folder or fsspec URL that can be "
                       f"used here ({exc}): pass a local folder") from None
    if store.local:
        path = Path(store.root)
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            what = "is not a folder" if not path.is_dir() else "is not writable"
            raise RunError(f"cannot create the output folder {str(out)[:200]!r}: {path} {what}; "
                           "pass --out a folder you can write")
    return store


@dataclass
class Plan:
    """What a run will evaluate, built and checked before anything is written."""

    models: dict[str, nn.Module]
    hashes: dict[str, str]
    metrics: dict[str, Metric]
    jobs: list[PartJob]
    samples: dict[str, dict[str, Any]]
    skipped: list[dict[str, str]]


def _skip(skipped: list[dict[str, str]], model: str, method: str, metric: str,
          reason: str) -> None:
    """Record a part that does not apply (manifest ``skipped``; stderr once the plan holds)."""
    reason = reason.splitlines()[0][:400] if reason else "does not apply"
    skipped.append({"model": model, "method": method, "metric": metric, "reason": reason})


def _first_sample(samples: SampleSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's input (1, 3, H, W) and one target class (1,), for the checks."""
    inputs, targets = samples.fetch(samples.ids[:1])
    return inputs.to(device), targets.reshape(len(targets), -1)[:, 0].long().to(device)


def plan_run(config: RunConfig, out: Store, device: torch.device, images: ImageSet,
             given_models: Mapping[str, nn.Module]) -> Plan:
    """Build and check every (model, method, metric) part; nothing is written.

    Raises one line for what a user named and cannot run; records (and prints) what ``all``
    selected and does not apply.
    """
    metrics = {name: create_metric(name, **config.metric_hparams[name])
               for name in config.metrics}
    loaded = {name: _load_model(name, given_models.get(name), config.checkpoint, device)
              for name in config.models}
    hashes = {name: model_digest(model) for name, model in loaded.items()}
    for model in loaded.values():
        x = images.float_images(slice(0, 1)).to(device)
        with torch.inference_mode(), eval_mode(model):
            check_logits(model(x), 1, model)
    skipped: list[dict[str, str]] = []
    refused: dict[str, NotApplicableError] = {}
    jobs: list[PartJob] = []
    samples_info: dict[str, dict[str, Any]] = {}
    for model_name, model in loaded.items():
        for metric_name, metric in metrics.items():
            try:
                view = metric.prepare_model(model)
            except MetricError as exc:
                if not config.all_metrics:
                    raise
                _skip(skipped, model_name, "*", metric_name, str(exc))
                continue
            t0 = time.perf_counter()
            samples = metric.select(model, images, config.n_samples, device, config.batch_size)
            samples_info[f"{model_name}/{metric_name}"] = {
                "n": len(samples), "seconds": round(time.perf_counter() - t0, 3), **samples.info}
            example = _first_sample(samples, device) if len(samples) else None
            for method_name in config.methods:
                method_config = config.method_hparams[method_name]
                try:
                    method = _build_method(method_name, view, method_config, config.seed)
                    if example is not None and callable(getattr(method, "preflight", None)):
                        with eval_mode(view):
                            method.preflight(*example)
                except NotApplicableError as exc:
                    refused.setdefault(method_name, exc)
                    _skip(skipped, model_name, method_name, metric_name, str(exc))
                    continue
                jobs.append(PartJob(
                    Part(model_name, method_name, metric_name, out), metric, samples, view,
                    hashes[model_name], method_name, method_config,
                    {"name": method_name, "config": method_config, "view": metric.model_view,
                     "class": type(method).__qualname__},
                    {"name": metric_name, **config.metric_hparams[metric_name],
                     "n_samples": config.n_samples}))
    if not config.all_methods:  # a named method must apply to at least one model
        planned = {job.method_name for job in jobs}
        for name, exc in refused.items():
            if name not in planned:
                raise exc
    for item in skipped:
        print(f"skipped: {item['model']} · {item['method']} · {item['metric']}: "
              f"{item['reason']}", file=sys.stderr)
    return Plan(loaded, hashes, metrics, jobs, samples_info, skipped)


def _run(config: RunConfig, out: Store, device: torch.device, overwrite: bool,
         dataset: str | ImageSet, data_root: str | Path | None,
         given_models: Mapping[str, nn.Module], progress: bool, runner: Any,
         dry_run: bool = False) -> pd.DataFrame:
    images = (dataset if isinstance(dataset, ImageSet)
              else get_dataset(dataset, config.split, root=data_root))
    plan = plan_run(config, out, device, images, given_models)
    run.last_plan = plan  # type: ignore[attr-defined]
    if dry_run:
        return pd.DataFrame(columns=[*ID_COLUMNS, *ROW_COLUMNS[1:]])
    if not plan.jobs:
        reasons = "; ".join(f"{s['method']} on {s['model']}: {s['reason']}"
                            for s in plan.skipped[:3])
        raise RunError(f"no (model, method, metric) part applies: {reasons or 'nothing selected'}")
    try:
        _prepare_out(out, {**config.identity(), "model_hashes": plan.hashes}, overwrite)
    except OSError as exc:
        raise RunError(f"cannot write the output folder {out.url[:200]!r}: "
                       f"{exc.strerror or exc}; pass --out a folder you can write") from None
    cache = AttributionCache(out.child("cache"))
    started = time.perf_counter()
    manifest: dict[str, Any] = {"config": config.identity(), "parts": [],
                                "skipped": plan.skipped, "samples": plan.samples,
                                "corrupt_chunks": []}
    if runner is not None:
        parts, corrupt = runner.evaluate(plan.jobs, config, device, out, cache)
        manifest["parts"], manifest["corrupt_chunks"] = parts, corrupt
        manifest["executor"] = runner.describe()
    else:
        for job in plan.jobs:
            seconds, corrupt = _evaluate_part(job.part, job.metric, job.samples,
                                              job.context(config, device, cache), config,
                                              job.method_id, job.metric_config, progress)
            manifest["corrupt_chunks"] += corrupt
            manifest["parts"].append({"model": job.part.model, "method": job.part.method,
                                      "metric": job.part.metric,
                                      "seconds_this_run": round(seconds, 3)})
    _report_corrupt(out, manifest["corrupt_chunks"])
    manifest["corrupt_chunks"] = [p[len(out.root):].lstrip("/") for p in
                                  manifest["corrupt_chunks"]]
    results = _gather(out, config, [job.part for job in plan.jobs])
    timings = (results.groupby(list(ID_COLUMNS), sort=False)["seconds"].sum().round(3)
               .reset_index().to_dict("records"))
    results = results.drop(columns="seconds")
    summary = summarise(results, plan.metrics, config.seed)
    _write_tables(out, results, summary)
    manifest.update(_manifest_extras(results, cache, device, time.perf_counter() - started))
    manifest["models"] = {name: _model_info(model, plan.hashes[name])
                          for name, model in plan.models.items()}
    manifest["seconds_per_part_all_runs"] = timings
    out.write_text(out.path("manifest.json"), json.dumps(manifest, indent=1, default=str))
    flagged = int((results["flag"] != "").sum()) if len(results) else 0
    if flagged:
        print(f"warning: {flagged} rows have non-finite values (flag 'nonfinite'); "
              "they are kept in results and left out of the summary", file=sys.stderr)
    return results


def _gather(out: Store, config: RunConfig, parts: list[Part]) -> pd.DataFrame:
    """Every verified chunk of this run's ``parts``, in (model, method, metric, sample) order.

    Each file's checksum is checked again as it is read: a file altered since the run checked
    it stops the gathering in one line (re-running recomputes it); the table never holds it.
    """
    frames = []
    for part in parts:
        for path in out.glob("parts", _slug(part.model), _slug(part.method),
                             _slug(part.metric), "chunk-*.parquet"):
            data = verified_chunk(out, path)
            if data is None:
                out.remove(path)
                raise RunError(f"{path} changed after it was checked (checksum mismatch): "
                               "deleted; re-run the same command to recompute it")
            frames.append(pd.read_parquet(io.BytesIO(data)))
    if not frames:
        raise RunError(f"no results were produced in {out.url}: no (model, method, metric) part "
                       "ran (check that the methods apply to the models)")
    results = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(config.models)}
    results = results.sort_values(
        ["model", "method", "metric", "sample", "variant", "stat", "key"],
        key=lambda s: s.map(order) if s.name == "model" else s, kind="stable",
        ignore_index=True)
    duplicated = results.duplicated(["model", "method", "metric", "sample", "key", "variant",
                                     "stat"]).sum()
    if duplicated:
        raise RunError(f"{duplicated} duplicated rows in {out.url}/parts: the folder was "
                       "written by two runs at once; re-run with --overwrite")
    return results


def _write_tables(out: Store, results: pd.DataFrame, summary: pd.DataFrame) -> None:
    out.write(out.path("results.parquet"), lambda tmp: results.to_parquet(tmp, index=False))
    out.write(out.path("results.csv"), lambda tmp: results.to_csv(tmp, index=False))
    out.write(out.path("summary.csv"), lambda tmp: summary.to_csv(tmp, index=False))


def _model_info(model: nn.Module, digest: str) -> dict[str, Any]:
    """What plots and reports need to know about a model: class, size, temperature, weights."""
    from attrib_bench.evaluation import count_parameters

    temperature = getattr(model, "temperature", None)
    return {"class": type(model).__qualname__,
            "parameters": count_parameters(model),
            "temperature": float(temperature) if isinstance(temperature, (int, float)) else None,
            "sha256": digest}


def _manifest_extras(results: pd.DataFrame, cache: AttributionCache, device: torch.device,
                     seconds: float) -> dict[str, Any]:
    return {
        "versions": _versions(),
        "git_commit": git_commit(),
        "device": str(device),
        "hardware": describe_hardware(device),
        "cuda_float32": (("ieee" if evaluation.IEEE_FLOAT32 else "pytorch default (TF32 convs)")
                         if device.type == "cuda" else None),
        "wall_seconds_this_run": round(seconds, 3),
        "rows": len(results),
        "rows_nonfinite": int((results["flag"] != "").sum()),
        "cache": {"hits": cache.hits, "misses": cache.misses, "corrupt": cache.corrupt},
    }
