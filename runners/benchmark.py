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

import inspect
import json
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

from attrib_bench import evaluation
from attrib_bench.data import ImageSet, get_dataset
from attrib_bench.errors import NotApplicableError, RunError
from attrib_bench.evaluation import ieee_float32, resolve_device
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext, Metric, SampleSet
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

    def identity(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))


def _slug(name: str) -> str:
    """A file-system-safe folder name for a model, method or metric name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def _split_names(value: str | Iterable[str] | Mapping[str, Any]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def _accepts(factory: Any, name: str) -> bool:
    """Whether ``factory`` (a class or function) takes keyword ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


# ----------------------------------------------------------------------------- one part


@dataclass
class Part:
    """One (model, method, metric) cell of the sweep and where its chunks live in ``store``."""

    model: str
    method: str
    metric: str
    store: Store

    @property
    def folder(self) -> str:
        return self.store.path("parts", _slug(self.model), _slug(self.method), _slug(self.metric))

    def chunk_path(self, index: int) -> str:
        return f"{self.folder}/chunk-{index:05d}.parquet"

    def done(self, index: int) -> bool:
        """A chunk counts as done when its file exists and reads back (atomic writes)."""
        path = self.chunk_path(index)
        if not self.store.exists(path):
            return False
        try:
            self.store.read_parquet(path, columns=["value"])
        except Exception:  # noqa: BLE001 - any unreadable file is redone, never trusted
            self.store.remove(path)
            return False
        return True


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
    part.store.write(part.chunk_path(index), lambda tmp: rows.to_parquet(tmp, index=False))
    return elapsed


def _evaluate_part(part: Part, metric: Metric, samples: SampleSet, ctx: EvalContext,
                   config: RunConfig, method_config: dict[str, Any],
                   metric_config: dict[str, Any], progress: bool) -> float:
    """Evaluate the missing chunks of one part in this process; returns the seconds spent."""
    chunks = chunk_ids(samples, config.batch_size)
    todo = [i for i in range(len(chunks)) if not part.done(i)]
    seconds = 0.0
    done_samples = len(samples.ids) - sum(len(chunks[i]) for i in todo)
    with tqdm(total=len(samples.ids), initial=done_samples, unit="sample", disable=not progress,
              desc=f"{part.model} · {part.method} · {part.metric}", dynamic_ncols=True,
              leave=True) as bar:
        for index in todo:
            seconds += evaluate_chunk(part, index, chunks[index], metric, samples, ctx, config,
                                      method_config, metric_config)
            bar.update(len(chunks[index]))
    return seconds


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
        if previous != identity:
            if not overwrite:
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
    if requested == ["all"]:
        from attrib_bench.methods.base import applicable_methods

        return applicable_methods(model)
    return requested


def _build_method(name: str, model: nn.Module, hparams: dict[str, Any], seed: int) -> Any:
    factory = METHODS.get(name).factory
    kwargs = dict(hparams)
    if _accepts(factory, "seed"):
        kwargs.setdefault("seed", seed)
    method = create_method(name, model, **kwargs)
    method.allow_nonfinite = True  # NaN maps become flagged rows, not a stopped run
    return method


@dataclass
class PartJob:
    """Everything needed to evaluate one part's chunks, in this process or on a worker."""

    part: Part
    metric: Metric
    samples: SampleSet
    model: nn.Module  # the metric's view of the model
    model_hash: str
    method_name: str
    hparams: dict[str, Any]
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
        progress: bool = True,
        executor: str = "local",
        scheduler: str | None = None,
        workers: int | None = None,
        client: Any = None) -> pd.DataFrame:
    """Run the sweep and return every row (the table written to ``out/results.parquet``).

    ``models``: registered names (a list or "a,b"), or a mapping name → ``nn.Module`` for a
    user's own models; ``methods``/``metrics``: names or "all"; ``n_samples`` shrinks each metric's
    default sample count; ``dataset``: a registered dataset name or an :class:`ImageSet`;
    ``*_hparams``: per-name hyper-parameters. ``out``: a folder or an fsspec URL
    (``memory://``, ``s3://``…); None uses a temporary folder. ``executor="dask"`` runs each
    (model, method, metric, chunk) as a Dask task: on ``client`` (a ``distributed.Client``), on
    the cluster at ``scheduler`` ("tcp://host:8786"), or on a new ``LocalCluster`` of
    ``workers`` processes; see :mod:`attrib_bench.runners.distributed`.
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
    if metric_names == ["all"]:
        metric_names = METRICS.names()
    for name in metric_names:
        METRICS.get(name)  # unknown names fail here, with close matches
    method_names = _split_names(methods)
    for name in method_names:
        if name != "all":
            METHODS.get(name)
    model_names = _split_names(models)
    if checkpoint is not None and len(model_names) != 1:
        raise RunError("--checkpoint applies to one model: run one --model per checkpoint")
    if n_samples is not None and n_samples < 1:
        raise RunError(f"--n-samples must be >= 1, got {n_samples}")
    if batch_size < 1:
        raise RunError(f"--batch-size must be >= 1, got {batch_size}")
    dataset_name = dataset.name if isinstance(dataset, ImageSet) else str(dataset)
    config = RunConfig(model_names, method_names, metric_names, n_samples, batch_size, seed,
                       dataset_name, "test", checkpoint,
                       {k: dict(v) for k, v in (method_hparams or {}).items()},
                       {k: dict(v) for k, v in (metric_hparams or {}).items()})
    torch_device = resolve_device(device)
    runner = None
    if executor == "dask":
        from attrib_bench.runners.distributed import DaskRunner

        runner = DaskRunner(client=client, scheduler=scheduler, workers=workers,
                            progress=progress)
    try:
        if out is None:
            with tempfile.TemporaryDirectory(prefix="attrib-bench-") as tmp:
                return _run(config, Store(tmp), torch_device, overwrite, dataset, data_root,
                            given_models, progress, runner)
        return _run(config, Store(out), torch_device, overwrite, dataset, data_root,
                    given_models, progress, runner)
    finally:
        if runner is not None:
            runner.close()


def _run(config: RunConfig, out: Store, device: torch.device, overwrite: bool,
         dataset: str | ImageSet, data_root: str | Path | None,
         given_models: Mapping[str, nn.Module], progress: bool, runner: Any) -> pd.DataFrame:
    images = (dataset if isinstance(dataset, ImageSet)
              else get_dataset(dataset, config.split, root=data_root))
    metrics = {name: create_metric(name, **config.metric_hparams.get(name, {}))
               for name in config.metrics}
    # Build every model and method before writing anything, so bad names fail in one line.
    loaded = {name: _load_model(name, given_models.get(name), config.checkpoint, device)
              for name in config.models}
    hashes = {name: model_digest(model) for name, model in loaded.items()}
    _prepare_out(out, {**config.identity(), "model_hashes": hashes}, overwrite)
    cache = AttributionCache(out.child("cache"))
    started = time.perf_counter()
    manifest: dict[str, Any] = {"config": config.identity(), "parts": [], "skipped": [],
                                "samples": {}}
    jobs: list[PartJob] = []
    for model_name, model in loaded.items():
        for metric_name, metric in metrics.items():
            view = metric.prepare_model(model)
            t0 = time.perf_counter()
            samples = metric.select(model, images, config.n_samples, device, config.batch_size)
            select_seconds = time.perf_counter() - t0
            manifest["samples"][f"{model_name}/{metric_name}"] = {
                "n": len(samples), "seconds": round(select_seconds, 3), **samples.info}
            for method_name in _method_names(config.methods, view):
                hparams = config.method_hparams.get(method_name, {})
                try:
                    method = _build_method(method_name, view, hparams, config.seed)
                except NotApplicableError as exc:
                    if len(config.models) == 1 and config.methods != ["all"]:
                        raise
                    manifest["skipped"].append({"model": model_name, "method": method_name,
                                                "metric": metric_name, "reason": str(exc)})
                    continue
                job = PartJob(
                    Part(model_name, method_name, metric_name, out), metric, samples, view,
                    hashes[model_name], method_name, hparams,
                    {"name": method_name, "hparams": hparams, "seed": config.seed,
                     "view": metric.model_view, "class": type(method).__qualname__},
                    {"name": metric_name, **metric.hparams, "n_samples": config.n_samples})
                if runner is not None:
                    jobs.append(job)
                    continue
                seconds = _evaluate_part(job.part, metric, samples,
                                         job.context(config, device, cache, method), config,
                                         job.method_id, job.metric_config, progress)
                manifest["parts"].append({"model": model_name, "method": method_name,
                                          "metric": metric_name, "seconds_this_run":
                                          round(seconds, 3)})
    if runner is not None:
        manifest["parts"] = runner.evaluate(jobs, config, device, out, cache)
        manifest["executor"] = runner.describe()
    results = _gather(out, config)
    timings = (results.groupby(list(ID_COLUMNS), sort=False)["seconds"].sum().round(3)
               .reset_index().to_dict("records"))
    results = results.drop(columns="seconds")
    summary = summarise(results, metrics, config.seed)
    _write_tables(out, results, summary)
    manifest.update(_manifest_extras(results, cache, device, time.perf_counter() - started))
    manifest["models"] = {name: _model_info(model, hashes[name]) for name, model in loaded.items()}
    manifest["seconds_per_part_all_runs"] = timings
    out.write_text(out.path("manifest.json"), json.dumps(manifest, indent=1, default=str))
    flagged = int((results["flag"] != "").sum()) if len(results) else 0
    if flagged:
        print(f"warning: {flagged} rows have non-finite values (flag 'nonfinite'); "
              "they are kept in results and left out of the summary", file=sys.stderr)
    return results


def _gather(out: Store, config: RunConfig) -> pd.DataFrame:
    """Every chunk of this run's parts, concatenated in (model, method, metric, sample) order."""
    files = out.glob("parts", "*", "*", "*", "chunk-*.parquet")
    if not files:
        raise RunError(f"no results were produced in {out.url}: no (model, method, metric) part "
                       "ran (check that the methods apply to the models)")
    results = pd.concat([out.read_parquet(f) for f in files], ignore_index=True)
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
    from attrib_bench.models.coda_net import count_parameters

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
