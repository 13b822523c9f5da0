"""The benchmark runner: model × method × metric sweeps with tidy tables, a cache and resume.

``run(models, methods, metrics, ...)`` (and ``attrib-bench run``) checks its options once into
:class:`~attrib_bench.runners.settings.RunSettings`, then :func:`sweep` reads **plan → execute →
gather → summarise**:

1. *plan* (:func:`plan_run`): every name, setting, model, (model, metric) sample set and
   (model, method, metric) part is built and checked before anything is written, into a
   :class:`Plan` of :class:`~attrib_bench.runners.jobs.PartJob` s (:class:`RunOutcome` hands
   it back with the rows);
2. *execute*: the chunks (``chunk_size`` samples each) without a verified file go to an
   executor (:class:`~attrib_bench.runners.jobs.LocalExecutor`, or Dask:
   :mod:`attrib_bench.runners.distributed`), which writes each chunk's rows atomically to
   ``DIR/parts/<model>/<method>/<metric>/chunk-NNNNN-<sha256>.parquet`` and returns what it
   cost; a re-run of the same command skips the verified chunks, so a killed run resumes with no
   lost and no duplicated rows;
3. *gather* the parts into ``DIR/results.parquet`` (+ ``results.csv``);
4. *summarise* into ``DIR/summary.csv`` and ``DIR/manifest.json``.

Maps go through the attribution cache and whole-dataset logits (sample selection) through the
pool-logits cache, both in ``DIR/cache`` unless ``cache=`` names a folder that several runs share
(:mod:`attrib_bench.runners.cache`).

Rows are long format: ``model, method, metric, sample, key, variant, stat, value`` plus metric
columns (e.g. ``target``), a ``flag`` ("nonfinite" where the method produced NaN/inf, else "")
and the config columns ``dataset, seed, method_config, metric_config``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core import evaluation, hparams
from attrib_bench.core.checkpoints import sha256_file
from attrib_bench.core.checks import naming
from attrib_bench.core.errors import AttribBenchError, MetricError, NotApplicableError, RunError
from attrib_bench.core.evaluation import count_parameters, eval_mode, resolve_device
from attrib_bench.core.provenance import describe_hardware, git_commit
from attrib_bench.core.registry import (
    METHODS,
    METRICS,
    MODELS,
    Registry,
    create_metric,
    create_model,
    method_display,
)
from attrib_bench.data import BaseImageSet, get_dataset
from attrib_bench.metrics.base import ROW_COLUMNS, Metric, SampleSet, SelectContext
from attrib_bench.models import protocols
from attrib_bench.runners.cache import CacheStats, PoolLogits, model_digest, model_identity
from attrib_bench.runners.jobs import (
    ChunkResult,
    Executor,
    LocalExecutor,
    Part,
    PartJob,
    RunConfig,
    build_method,
    pending_chunks,
    verified_chunk,
)
from attrib_bench.runners.settings import (
    ExecutorOptions,
    RunRequest,
    RunSettings,
    check_model_fits,
    check_output_classes,
    run_settings,
    sample_count_key,
)
from attrib_bench.runners.storage import Store, parquet_bytes

#: Leading columns of the results table, in order (metric-specific columns follow ``value``).
ID_COLUMNS = ("model", "method", "metric")
CONFIG_COLUMNS = ("dataset", "seed", "method_config", "metric_config")
BOOTSTRAP_RESAMPLES = 2000
RUN_FILE = "run.json"


def _report_corrupt(store: Store, paths: list[str]) -> None:
    """One stderr line per chunk file that failed its checksum (it is recomputed)."""
    for path in paths:
        print(f"warning: {_inside(store, path)} failed its checksum or is not this run's "
              "(corrupt, truncated, unchecked or copied from another run): deleted; its chunk "
              "is recomputed", file=sys.stderr)


def _inside(store: Store, path: str) -> str:
    """``path`` relative to the store's folder (as the manifest lists it)."""
    return path[len(store.root):].lstrip("/") if path.startswith(store.root) else path


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


# ----------------------------------------------------------------------------- run folders


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


# ----------------------------------------------------------------------------- the sweep


def run(models: str | Iterable[str] | Mapping[str, nn.Module],
        methods: str | Iterable[str] = "all",
        metrics: str | Iterable[str] = "all",
        *,
        n_samples: int | None = None,
        chunk_size: int = 32,
        device: str = "cpu",
        out: str | Path | None = None,
        cache: str | Path | None = None,
        seed: int = 0,
        checkpoint: str | None = None,
        overwrite: bool = False,
        dataset: str | BaseImageSet = "cifar10",
        data_root: str | Path | None = None,
        dataset_options: Mapping[str, Any] | None = None,
        method_hparams: Mapping[str, Mapping[str, Any]] | None = None,
        metric_hparams: Mapping[str, Mapping[str, Any]] | None = None,
        settings: Iterable[str] = (),
        progress: bool = True,
        dry_run: bool = False,
        executor: str = "local",
        scheduler: str | None = None,
        workers: int | None = None,
        client: Any = None,
        batch_size: int | None = None) -> pd.DataFrame:
    """Run the sweep and return every row (the table written to ``out/results.parquet``).

    ``models``: registered names (a list or "a,b"), or a mapping name → ``nn.Module`` for a
    user's own models; ``methods``/``metrics``: names or "all"; ``n_samples`` shrinks each metric's
    default sample count; ``chunk_size``: samples per chunk, the unit that is written, resumed
    and distributed (methods batch their own forwards, ``max_batch``); ``dataset``: a registered
    dataset name (``attrib-bench list datasets``; read from ``data_root``, its evaluation split:
    CIFAR-10's test, TinyImageNet's and ImageNet's val) or an image set (an
    :class:`~attrib_bench.data.imageset.ImageSet` or
    :class:`~attrib_bench.data.imageset.FileImageSet`);
    ``dataset_options``: the named dataset's options as Python values (e.g. imagefolder's
    ``{"image_size": 32}``), resolved with their defaults into the config; ``*_hparams``:
    per-name hyper-parameters as Python values, ``settings``: the same as ``"NAME.KEY=VALUE"``
    text (the CLI's ``--set``), parsed to each hyper-parameter's declared type
    (:mod:`attrib_bench.core.hparams`). ``out``: a folder or an fsspec URL (``memory://``,
    ``s3://``…); None uses a temporary folder. ``cache``: the cache
    folder (attribution maps, pool logits; default ``out/cache``): runs that share one reuse
    each other's maps and sample-selection logits. ``executor="dask"`` runs each (model, method,
    metric, chunk) as a Dask task: on ``client`` (a ``distributed.Client``), on the cluster at
    ``scheduler`` ("tcp://host:8786"), or on a new ``LocalCluster`` of ``workers`` processes;
    see :mod:`attrib_bench.runners.distributed`. ``batch_size``: the former name of
    ``chunk_size`` (deprecated; a FutureWarning).

    **Fail fast.** Before the first chunk runs (and before anything is written), every name,
    setting, model, (model, metric) sample set and (model, method, metric) part is built and
    checked: the model's output on one sample must be logits (B, K), and each method's
    ``preflight`` runs on one sample. With ``methods="all"`` (or ``metrics="all"``), a part that
    does not apply is skipped with its reason (manifest ``skipped``, stderr), and so is a named
    method on the models it does not apply to (``inherent`` on a ResNet beside a CoDA-Net); a
    named method that applies to none of the models, or a named metric that does not apply,
    stops the run in one line. ``dry_run=True`` stops after these checks and returns an empty
    table: no chunk is computed and nothing is written to ``out``; :func:`sweep` of the same
    options (:func:`~attrib_bench.runners.settings.run_settings`) hands back the plan too.
    The checks select the samples, which for the grid localisations means one pass over the
    test set: with an explicit ``cache``, a dry run stores those pool logits there
    (a cache, not the run's output), so the real run does not pay the pass again.

    **The run folder.** Its path is literal (``exp[1]``, ``a*b`` are those folders; see
    :mod:`attrib_bench.runners.storage`). A local ``out`` is held by this run from before the
    models are loaded until the tables are written (:meth:`Store.lock`): a second run on it
    raises :class:`~attrib_bench.runners.storage.FolderInUseError` at once, naming the first.
    A write the file system refuses mid-run (no space, a quota, a permission, read-only) raises
    :class:`OutputWriteError`, naming the folder and the file; the chunks already written are
    kept and re-running resumes from them. The models given as modules come back with every
    submodule's mode and every tensor's device, ``requires_grad`` and ``.grad`` as they were,
    also when the run raises.
    """
    started = time.perf_counter()
    if batch_size is not None:
        warnings.warn("run(batch_size=...) is now chunk_size= (samples per chunk); batch_size "
                      "will be removed in the next release", FutureWarning, stacklevel=2)
        chunk_size = batch_size
    request = RunRequest(models, methods, metrics, n_samples=n_samples, chunk_size=chunk_size,
                         seed=seed, dataset=dataset, checkpoint=checkpoint,
                         dataset_options=dataset_options, method_hparams=method_hparams,
                         metric_hparams=metric_hparams, settings=settings)
    checked = run_settings(request, ExecutorOptions(executor, scheduler, workers, client),
                           out=out, cache=cache, device=device, data_root=data_root,
                           overwrite=overwrite, dry_run=dry_run, progress=progress)
    return sweep(checked, started).results


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`sweep` hands back: every row (``results``, the table written to
    ``out/results.parquet``; empty for a dry run) and the :class:`Plan` they came from."""

    results: pd.DataFrame
    plan: Plan


def sweep(settings: RunSettings, started: float | None = None) -> RunOutcome:
    """Run checked ``settings`` (:func:`~attrib_bench.runners.settings.run_settings`): plan,
    then, unless it is a dry run, execute, gather and summarise; :func:`run` with its options
    as one object, whose outcome also holds the plan (a dry run's checked parts).

    ``started``: ``time.perf_counter()`` when the caller began (the manifest's wall time;
    None: now). The run folder's lock, the given modules' state and the errors are
    :func:`run`'s."""
    started = time.perf_counter() if started is None else started
    with contextlib.ExitStack() as guard:
        if settings.out is not None and not settings.dry_run:  # a second run on it refuses now
            guard.enter_context(settings.out.lock())
        guard.callback(_keep_module_state(settings.modules.values()))
        device = resolve_device(settings.device)
        images = _images(settings)
        settings = settings.at_image_size(images.image_size)  # the metadata may not say it
        runner = (None if settings.dry_run
                  else _executor(settings.executor, settings.progress))
        try:
            return _plan_and_run(settings, images, device, runner, started)
        finally:
            if runner is not None:
                runner.close()


def _images(settings: RunSettings) -> BaseImageSet:
    """The run's image set: the one given, else the named dataset's evaluation split."""
    dataset, config = settings.request.dataset, settings.config
    if isinstance(dataset, BaseImageSet):
        return dataset
    return get_dataset(config.dataset, config.split, root=settings.data_root,
                       **config.dataset_options)


def _plan_and_run(settings: RunSettings, images: BaseImageSet, device: torch.device,
                  runner: Executor | None, started: float) -> RunOutcome:
    """Plan in the run's folder (a temporary one without ``out``), then run the plan with
    ``runner`` (None: a dry run, which stops after the plan and writes nothing to the run
    folder). A write the file system refuses is one :class:`OutputWriteError` line."""
    with tempfile.TemporaryDirectory(prefix="attrib-bench-") as tmp:
        out = settings.out if settings.out is not None else Store(tmp)
        cache = settings.cache if settings.cache is not None else out.child("cache")
        plan = plan_run(settings, images, out, cache, device)
        if runner is None:  # a dry run
            if settings.cache is not None:
                plan.pool.flush()
            return RunOutcome(pd.DataFrame(columns=[*ID_COLUMNS, *ROW_COLUMNS[1:]]), plan)
        try:
            return RunOutcome(_run(settings, plan, out, device, runner, started), plan)
        except OSError as exc:
            error = _write_error(exc, out, cache)
            if error is None:
                raise
            raise error from None


#: The errors of a write that the file system refused, what each says and its fix: a full disk or
#: quota, or a folder that was made unwritable or read-only while the run wrote to it.
WRITE_ERRNOS = {
    errno.ENOSPC: ("the disk holding {folder} is full", "free space there"),
    errno.EDQUOT: ("the disk quota of {folder} is used up", "free space or raise the quota"),
    errno.EFBIG: ("a file grew larger than the file-size limit in {folder}",
                  "raise the limit (ulimit -f) or use another file system"),
    errno.EACCES: ("permission denied writing in {folder}", "make it writable"),
    errno.EPERM: ("writing in {folder} is not permitted", "make it writable"),
    errno.EROFS: ("{folder} became read-only", "remount it read-write")}


class OutputWriteError(RunError):
    """A run's folder or cache stopped taking writes (a full disk, a quota, a permission or
    a read-only file system, :data:`WRITE_ERRNOS`). ``path``: the file being written; ``errno``
    the system's error number. The chunks already written are kept and checked: re-running the
    same command resumes from them (nothing is lost, nothing is duplicated)."""

    def __init__(self, message: str, path: str, errno: int) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


def _write_error(exc: OSError, out: Store, cache: Store) -> OutputWriteError | None:
    """The one-line :class:`OutputWriteError` for a refused write (``exc.filename``: the file,
    :meth:`Store.write` sets it), or None for another ``OSError`` (raised as it is)."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    path = str(exc.filename or "")

    def holds(store: Store) -> bool:
        return path.startswith(store.root.rstrip("/") + "/")

    store = cache if holds(cache) and not holds(out) else out if holds(out) else None
    folder = (f"the {'cache' if store is cache else 'run'} folder {store.url}" if store
              else os.path.dirname(path) or "the run folder")
    what, fix = WRITE_ERRNOS[exc.errno]
    file = re.sub(r"([0-9a-f]{8})[0-9a-f]{56}", r"\1…", _inside(store, path) if store else path)
    return OutputWriteError(
        f"{what.format(folder=folder)} (writing {file or 'a file'}): {fix}, then re-run the "
        "same command; it resumes from the chunks written, nothing is lost", path, exc.errno)


def _keep_module_state(models: Iterable[nn.Module]) -> Callable[[], None]:
    """A function that puts ``models`` back as they are now: each submodule's ``training``
    flag, each parameter's and buffer's device, each parameter's ``requires_grad`` and
    ``.grad``. A run switches the models it is given to eval mode on the run's device
    (:func:`_load_model`); the caller's models (one being trained, say) come back as they
    were, also when the run raises, as a method's ``attribute()`` restores the mode. Tensors
    are moved back in place (``.data``), so that an optimizer's references stay valid."""
    saved = []
    for model in models:
        if not isinstance(model, nn.Module):
            continue
        for module in model.modules():
            saved.append((module, module.training,
                          {name: (p.device, p.requires_grad, p.grad)
                           for name, p in module.named_parameters(recurse=False)},
                          {name: b.device for name, b in module.named_buffers(recurse=False)}))

    def restore() -> None:
        with torch.no_grad():
            for module, training, parameters, buffers in saved:
                module.training = training  # not train(): that would set the submodules too
                for name, (device, requires_grad, grad) in parameters.items():
                    param = module._parameters.get(name)
                    if param is None:
                        continue
                    if param.device != device:
                        moved = param.data.to(device)
                        try:
                            param.data = moved  # in place: an optimizer's references hold
                        except RuntimeError:  # a meta tensor cannot take real data
                            param = module._parameters[name] = nn.Parameter(moved, requires_grad)
                    if param.grad is not grad:
                        param.grad = grad
                    if param.requires_grad != requires_grad:
                        param.requires_grad_(requires_grad)
                for name, device in buffers.items():
                    buffer = module._buffers.get(name)
                    if buffer is not None and buffer.device != device:
                        module._buffers[name] = buffer.to(device)

    return restore


def _executor(options: ExecutorOptions, progress: bool) -> Executor:
    """The executor ``options`` name ("local" or "dask"; Dask is imported only when asked
    for)."""
    if options.name == "dask":
        from attrib_bench.runners.distributed import DaskExecutor

        return DaskExecutor(client=options.client, scheduler=options.scheduler,
                            workers=options.workers, progress=progress)
    return LocalExecutor(progress)


def _run(settings: RunSettings, plan: Plan, out: Store, device: torch.device,
         executor: Executor, started: float) -> pd.DataFrame:
    """Execute ``plan``'s missing chunks, then gather and summarise (see the module doc).

    ``started``: ``time.perf_counter()`` when :func:`run` began (the manifest's wall time
    includes loading the models and selecting the samples)."""
    config, overwrite = settings.config, settings.overwrite
    planned = time.perf_counter()
    if not plan.jobs:
        reasons = "; ".join(f"{s['method']} on {s['model']}: {s['reason']}"
                            for s in plan.skipped[:3])
        raise RunError(f"no (model, method, metric) part applies: {reasons or 'nothing selected'}")
    try:
        _prepare_out(out, {**config.identity(), "model_hashes": plan.hashes}, overwrite)
    except OSError as exc:
        raise RunError(f"cannot write the output folder {out.url[:200]!r}: "
                       f"{exc.strerror or exc}; pass --out a folder you can write") from None
    plan.pool.flush()
    todo, corrupt = pending_chunks(plan.jobs)
    _report_corrupt(out, corrupt)
    done = executor.evaluate(todo, device)
    results = _gather(out, config, [job.part for job in plan.jobs])
    timings = part_timings(results)
    results = results.drop(columns=["seconds", "compute"], errors="ignore")
    summary = summarise(results, plan.metrics, config.seed)
    digests = write_tables(out, results, summary)
    manifest = {"config": config.identity(), "defaults_from_data": config.defaults_from_data,
                "tables_sha256": digests,
                "parts": _part_seconds(plan.jobs, done),
                "skipped": plan.skipped, "samples": plan.samples,
                "corrupt_chunks": [_inside(out, p) for p in corrupt],
                "executor": executor.describe(),
                **_manifest_extras(results, plan, done, device, time.perf_counter() - started),
                "plan_seconds_this_run": round(planned - started, 3),
                "models": {name: {**_model_info(model, plan.weights[name], plan.hashes[name]),
                                  "weights_file": plan.sources[name]}
                           for name, model in plan.models.items()},
                "seconds_per_part_all_runs": timings}
    out.write_text(out.path("manifest.json"), json.dumps(manifest, indent=1, default=str))
    flagged = int((results["flag"] != "").sum()) if len(results) else 0
    if flagged:
        print(f"warning: {flagged} rows have non-finite values (flag 'nonfinite'); "
              "they are kept in results and left out of the summary", file=sys.stderr)
    return results


def _method_id(name: str, method: Any, config: dict[str, Any], view: str) -> dict[str, Any]:
    """What the results' ``method_config`` column and the attribution cache's key hold."""
    return {"name": name, "config": config, "view": view, "class": type(method).__qualname__}


def _shared_maps_id(method: Any, model: nn.Module, config: dict[str, Any],
                    view: str) -> dict[str, Any] | None:
    """The cache id of the method whose maps ``method`` computes exactly (its
    ``same_maps_as``, built with the same ``config`` on ``model``), or None: then the part's
    maps are cached under its own id. A run of both computes the maps once."""
    other = getattr(method, "same_maps_as", None)
    if not other:
        return None
    try:
        twin = build_method(other, model, config)
    except AttribBenchError:  # the twin does not take this configuration: no sharing
        return None
    return _method_id(other, twin, config, view)


def part_timings(results: pd.DataFrame) -> list[dict[str, Any]]:
    """Per part, the seconds its chunks took over every call that computed them (``seconds``),
    and split by where they ran (``seconds_by_compute``: :func:`~attrib_bench.runners.jobs.
    compute_label` → seconds; "unknown" for chunks written before 2026-11-30, which did not
    record it). ``results``: the gathered chunk rows with their ``seconds`` and ``compute``."""
    compute = (results["compute"].fillna("unknown") if "compute" in results
               else pd.Series("unknown", index=results.index))
    frame = results[list(ID_COLUMNS)].assign(seconds=results["seconds"], compute=compute)
    timings = []
    for key, part in frame.groupby(list(ID_COLUMNS), sort=False):
        by_compute = part.groupby("compute", sort=True)["seconds"].sum()
        timings.append({**dict(zip(ID_COLUMNS, key, strict=True)),
                        "seconds": round(float(part["seconds"].sum()), 3),
                        "seconds_by_compute": {str(k): round(float(v), 3)
                                               for k, v in by_compute.items()}})
    return timings


def _part_seconds(jobs: list[PartJob], done: list[ChunkResult]) -> list[dict[str, Any]]:
    """Per part, the seconds its chunks took in this run (0 for a part that was complete) and
    the method as built on the part's model (``method``'s repr: its resolved settings); for a
    part whose chunks took another method's rows (:meth:`PartJob.twin_rows`),
    ``rows_taken_from`` {method: chunks}."""
    seconds: dict[tuple[str, str, str], float] = defaultdict(float)
    taken: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    for result in done:
        seconds[result.key] += result.seconds
        if result.rows_from:
            taken[result.key][result.rows_from] += 1
    return [{"model": job.part.model, "method": job.part.method, "metric": job.part.metric,
             "seconds_this_run": round(seconds[job.part.key], 3), "built": job.method_repr,
             **({"rows_taken_from": dict(taken[job.part.key])} if taken[job.part.key] else {})}
            for job in jobs]


@dataclass
class Plan:
    """What a run will evaluate, built and checked before anything is written.

    ``hashes``: each model's :func:`~attrib_bench.runners.cache.model_identity` (the cache's
    and the run folder's key); ``weights``: its
    :func:`~attrib_bench.runners.cache.model_digest` (the weights alone, the manifest's
    ``sha256``). ``pool``: the whole-dataset logits the selections used (flushed to the cache
    once the run folder is checked; a dry run writes nothing)."""

    models: dict[str, nn.Module]
    hashes: dict[str, str]
    metrics: dict[str, Metric]
    jobs: list[PartJob]
    samples: dict[str, dict[str, Any]]
    skipped: list[dict[str, str]]
    pool: PoolLogits
    weights: dict[str, str]
    sources: dict[str, dict[str, str]]


def _skip(skipped: list[dict[str, str]], model: str, method: str, metric: str,
          reason: str) -> None:
    """Record a part that does not apply (manifest ``skipped``; stderr once the plan holds)."""
    reason = reason.splitlines()[0][:400] if reason else "does not apply"
    skipped.append({"model": model, "method": method, "metric": metric, "reason": reason})


def _first_sample(samples: SampleSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample's input (1, 3, H, W) and one target class (1,), for the checks."""
    inputs, target = samples.fetch(samples.ids[:1])
    return inputs.to(device), target.reshape(len(target), -1)[:, 0].long().to(device)


def _weights_source(name: str, given: nn.Module | None, checkpoint: str | None
                    ) -> dict[str, str]:
    """Where a model's weights were read from, for the manifest: the ``file`` (absolute path)
    and its ``sha256`` for ``--checkpoint`` or a zoo entry's weights; else what built them."""
    if given is not None:
        return {"source": "the module given to run()"}
    if checkpoint is not None:
        path = Path(checkpoint).resolve()
        return {"file": str(path), "sha256": sha256_file(path)}
    cfg = MODELS.get(name).metadata.get("pretrained_cfg")
    if cfg is not None:
        return {"file": str(cfg.path()), "sha256": cfg.sha256}
    return {"source": f"the factory of {name!r}"}


def _load_model(name: str, model: nn.Module | None, checkpoint: str | None,
                device: torch.device) -> nn.Module:
    """The model a run explains, on ``device`` in eval mode: ``model`` (a user's module; inside
    ``nn.DataParallel``/``DistributedDataParallel`` its ``.module``, whose capabilities and
    numbers those wrappers only hide: :func:`~attrib_bench.models.protocols.unwrap`), else
    the registered ``name`` built with its weights or ``checkpoint``."""
    if model is None:
        from attrib_bench.models.zoo import checkpoint_kwargs

        with naming(name):  # a checkpoint that does not fit names the model as given
            model = create_model(name, pretrained=checkpoint is None, checkpoint=checkpoint,
                                 **checkpoint_kwargs(name, checkpoint))
    return protocols.unwrap(model).to(device).eval()


def _select(name: str, metric: Metric, model: nn.Module, images: BaseImageSet,
            n_samples: int | None, ctx: SelectContext) -> SampleSet:
    """``metric.select``; a metric written for the old (device, batch_size) contract (or any
    other number of parameters) is one line naming the fix."""
    parameters = list(inspect.signature(metric.select).parameters)
    if len(parameters) != 4 or parameters[-1] in ("device", "batch_size"):
        raise MetricError(f"metric {name!r}: select(model, dataset, n_samples, device, "
                          "batch_size) is the old contract; take (model, dataset, n_samples, "
                          "ctx) and use ctx.device (and ctx.logits(model, dataset) for a "
                          "whole-dataset pass)")
    return metric.select(model, images, n_samples, ctx)


def plan_run(settings: RunSettings, images: BaseImageSet, out: Store, cache: Store,
             device: torch.device) -> Plan:
    """Build and check every (model, method, metric) part of ``settings.config`` on
    ``images``, its chunks to be written in ``out``, maps and pool logits cached in ``cache``;
    nothing is written.

    Raises one line for what a user named and cannot run; records (and prints) what ``all``
    selected and does not apply.
    """
    config = settings.config
    metrics = {name: create_metric(name, **config.metric_hparams[name])
               for name in config.metrics}
    loaded = _load_models(settings, images, device)
    weights = {name: model_digest(model) for name, model in loaded.items()}
    # the cache's and the run folder's key: weights, buffers, structure, code and the name
    hashes = {name: model_identity(model, name) for name, model in loaded.items()}
    pool = PoolLogits(cache.child("logits"), device, progress=settings.progress,
                      hashes={id(model): hashes[name] for name, model in loaded.items()},
                      weights={id(model): weights[name] for name, model in loaded.items()})
    planning = _Planning(config, images, SelectContext(device, pool.predict, settings.progress),
                         out, cache, hashes)
    for name, model in loaded.items():
        with naming(name):
            check_output_classes(name, model, images, device=device, fix=CLASSES_FIX)
    # Build every method first (their settings' values are checked on construction), so that
    # a wrong value stops the run before the samples are drawn (a pass over the dataset).
    cells = _prepare_cells(planning, loaded, metrics)
    jobs = [job for cell in cells for job in _cell_jobs(planning, cell)]
    _check_named_methods(config, jobs, planning.refused)
    for item in planning.skipped:
        print(f"skipped: {item['model']} · {item['method']} · {item['metric']}: "
              f"{item['reason']}", file=sys.stderr)
    sources = {name: _weights_source(name, settings.modules.get(name), config.checkpoint)
               for name in loaded}
    return Plan(loaded, hashes, metrics, jobs, planning.samples, planning.skipped, pool,
                weights, sources)


def _load_models(settings: RunSettings, images: BaseImageSet, device: torch.device
                 ) -> dict[str, nn.Module]:
    """Each model of the run by name, on ``device`` in eval mode (:func:`_load_model`); a
    registered one is first checked to fit ``images`` (:func:`check_model_fits`), before any
    weights are read."""
    config = settings.config
    for name in config.models:
        if name not in settings.modules:
            metadata = MODELS.get(name).metadata
            check_model_fits(name, metadata, images, config.dataset, needs_weights=(
                config.checkpoint is None and metadata.get("family") == "coda"
                and not metadata.get("pretrained_cfg")))
    return {name: _load_model(name, settings.modules.get(name), config.checkpoint, device)
            for name in config.models}


@dataclass
class _Planning:
    """What each step of :func:`plan_run` reads (the config, the images, the sample
    selection's context, the run and cache folders, the models' identities) and what it
    records: the parts that do not apply (``skipped``), the first reason each method was
    refused (``refused``) and each (model, metric) sample set's description (``samples``)."""

    config: RunConfig
    images: BaseImageSet
    select: SelectContext
    out: Store
    cache: Store
    hashes: dict[str, str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    refused: dict[str, NotApplicableError] = field(default_factory=dict)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def refuse(self, model: str, method: str, metric: str, exc: NotApplicableError) -> None:
        """Record that ``method`` does not apply to this (model, metric) part."""
        self.refused.setdefault(method, exc)
        _skip(self.skipped, model, method, metric, str(exc))


@dataclass
class _Cell:
    """One (model, metric) pair ready to plan: the loaded ``model``, the metric's ``view`` of
    it (:meth:`Metric.prepare_model`) and the ``methods`` built on that view, by name."""

    model_name: str
    model: nn.Module
    metric_name: str
    metric: Metric
    view: nn.Module
    methods: dict[str, Any]


def _prepare_cells(planning: _Planning, loaded: Mapping[str, nn.Module],
                   metrics: Mapping[str, Metric]) -> list[_Cell]:
    """Every (model, metric) pair's view and methods, models first; a pair whose metric does
    not take the model is skipped when the metrics were "all" (else its error is raised), a
    method that does not apply is refused (:meth:`_Planning.refuse`)."""
    cells = []
    for model_name, model in loaded.items():
        for metric_name, metric in metrics.items():
            try:
                with naming(model_name):  # messages name the model as the run knows it
                    view = metric.prepare_model(model)
            except MetricError as exc:
                if not planning.config.all_metrics:
                    raise
                _skip(planning.skipped, model_name, "*", metric_name, str(exc))
                continue
            built: dict[str, Any] = {}
            for method_name in planning.config.methods:
                try:
                    with naming(model_name):
                        built[method_name] = build_method(
                            method_name, view, planning.config.method_hparams[method_name])
                except NotApplicableError as exc:
                    planning.refuse(model_name, method_name, metric_name, exc)
            cells.append(_Cell(model_name, model, metric_name, metric, view, built))
    return cells


def _cell_jobs(planning: _Planning, cell: _Cell) -> list[PartJob]:
    """The cell's samples (recorded in ``planning.samples``) and one :class:`PartJob` per
    method whose ``preflight`` passes on the first sample (the others are refused)."""
    t0 = time.perf_counter()
    # --n-samples is in the config of a metric with a sample_count setting already
    n_samples = None if sample_count_key(cell.metric_name) else planning.config.n_samples
    with naming(cell.model_name):
        samples = _select(cell.metric_name, cell.metric, cell.model, planning.images,
                          n_samples, planning.select)
    planning.samples[f"{cell.model_name}/{cell.metric_name}"] = {  # the count wins over info
        **samples.info, "n": len(samples), "seconds": round(time.perf_counter() - t0, 3)}
    example = _first_sample(samples, planning.select.device) if len(samples) else None
    jobs = []
    for method_name, method in cell.methods.items():
        try:
            if example is not None and callable(getattr(method, "preflight", None)):
                with eval_mode(cell.view):
                    method.preflight(*example)
        except NotApplicableError as exc:
            planning.refuse(cell.model_name, method_name, cell.metric_name, exc)
            continue
        jobs.append(_part_job(planning, cell, method_name, method, samples, n_samples))
    return jobs


def _part_job(planning: _Planning, cell: _Cell, method_name: str, method: Any,
              samples: SampleSet, n_samples: int | None) -> PartJob:
    """The :class:`PartJob` of ``method`` (built on ``cell.view``) in ``cell``."""
    config = planning.config
    method_config = config.method_hparams[method_name]
    return PartJob(
        part=Part(cell.model_name, method_name, cell.metric_name, planning.out),
        metric=cell.metric, samples=samples, model=cell.view,
        model_hash=planning.hashes[cell.model_name], method_config=method_config,
        method_id=_method_id(method_name, method, method_config, cell.metric.model_view),
        metric_config={"name": cell.metric_name, **config.metric_hparams[cell.metric_name],
                       "n_samples": n_samples},
        dataset=config.dataset, seed=config.seed, chunk_size=config.chunk_size,
        cache=planning.cache, method_repr=repr(method),
        cache_id=_shared_maps_id(method, cell.view, method_config, cell.metric.model_view))


def _check_named_methods(config: RunConfig, jobs: list[PartJob],
                         refused: Mapping[str, NotApplicableError]) -> None:
    """A method named (not "all") must apply to at least one model: else the first reason it
    was refused is raised."""
    if config.all_methods:
        return
    planned = {job.method for job in jobs}
    for name, exc in refused.items():
        if name not in planned:
            raise exc


#: How a run fixes a model whose head is not the dataset's class count.
CLASSES_FIX = ("use a model for {n} classes (torchvision:/timm: models take --checkpoint FILE "
               "with a {n}-class head, or num_classes={n} from Python) or a dataset with {k} "
               "classes")


def _gather(out: Store, config: RunConfig, parts: list[Part]) -> pd.DataFrame:
    """Every verified chunk of this run's ``parts``, in (model, method, metric, sample) order.

    Each file's checksum is checked again as it is read: a file altered since the run checked
    it stops the gathering in one line (re-running recomputes it); the table never holds it.
    """
    frames = []
    for part in parts:
        for path in part.chunk_files():
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
                       "written by two runs at once; run the same command again (it keeps one "
                       "copy of each chunk and recovers the exact tables; --overwrite would "
                       "recompute everything)")
    return results


def write_tables(out: Store, results: pd.DataFrame, summary: pd.DataFrame) -> dict[str, str]:
    """Write a run's tables (``results.parquet`` via :func:`parquet_bytes`, ``results.csv``,
    ``summary.csv``) atomically into ``out``; returns {file name: sha256} for the manifest's
    ``tables_sha256``, against which :func:`attrib_bench.plots.load_run` checks them (a table
    edited afterwards is refused)."""
    tables = {"results.parquet": parquet_bytes(results),
              "results.csv": results.to_csv(index=False).encode(),
              "summary.csv": summary.to_csv(index=False).encode()}
    for name, data in tables.items():
        out.write(out.path(name), lambda tmp, data=data: Path(tmp).write_bytes(data))
    return {name: hashlib.sha256(data).hexdigest() for name, data in tables.items()}


def _model_info(model: nn.Module, digest: str, identity: str) -> dict[str, Any]:
    """What plots and reports need to know about a model: class, size, temperature, weights
    (``sha256``: :func:`~attrib_bench.runners.cache.model_digest`; ``identity``: what keys its
    cache entries, :func:`~attrib_bench.runners.cache.model_identity`; ``checkpoint_sha256``:
    the weights file a module records it was loaded from,
    :func:`~attrib_bench.models.protocols.checkpoint_sha256`)."""
    temperature = getattr(model, "temperature", None)
    info = {"class": type(model).__qualname__,
            "parameters": count_parameters(model),
            "temperature": float(temperature) if isinstance(temperature, (int, float)) else None,
            "sha256": digest, "identity": identity}
    checkpoint_sha256 = protocols.checkpoint_sha256(model)
    if checkpoint_sha256:  # a library model's weights file (torchvision:/timm: --checkpoint)
        info["checkpoint_sha256"] = checkpoint_sha256
    return info


def _inherited_defaults(registry: Registry, name: str) -> dict[str, Any]:
    """Defaults a class taking ``**kwargs`` passes on to its bases (a plugin's
    ``__init__(self, model, *, power=1.0, **kw)``: the base's max_batch and seed)."""
    target = hparams.unwrap(registry.get(name).factory)[0] if name in registry else None
    init = getattr(target, "__init__", None) if inspect.isclass(target) else None
    try:
        takes_any = init is not None and any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values())
    except (TypeError, ValueError):
        takes_any = False
    found: dict[str, Any] = {}
    for base in target.__mro__[1:] if takes_any else ():
        if "__init__" in vars(base) and base is not object:
            for key, spec in hparams.hparams_of(base).items():
                found.setdefault(key, spec.default)
    return found


def _origin(registry: Registry, name: str) -> dict[str, Any]:
    """Where ``name``'s factory comes from: its class, the plugin module that registered it
    (None for the built-in ones) and that module file's sha256."""
    target = hparams.unwrap(registry.get(name).factory)[0] if name in registry else None
    module = str(getattr(target, "__module__", "") or "")
    plugin = None if not module or module.startswith("attrib_bench.") else module
    source = getattr(sys.modules.get(plugin or ""), "__file__", None)
    return {"class": f"{module}.{getattr(target, '__qualname__', name)}", "plugin": plugin,
            **({"plugin_sha256": sha256_file(source)}
               if source and os.path.isfile(source) else {})}


def _built(jobs: list[PartJob]) -> dict[str, dict[str, Any]]:
    """Each planned method's and metric's :func:`_origin` and hyper-parameters as built
    (inherited defaults, the resolved configuration, the metric's own ``hparams``)."""
    built: dict[str, dict[str, Any]] = {"methods": {}, "metrics": {}}
    for job in jobs:
        if job.part.method not in built["methods"]:
            built["methods"][job.part.method] = {
                **_origin(METHODS, job.part.method),
                "hparams": {**_inherited_defaults(METHODS, job.part.method),
                            **job.method_config}}
        if job.part.metric not in built["metrics"]:
            config = {k: v for k, v in job.metric_config.items() if k != "name"}
            built["metrics"][job.part.metric] = {
                **_origin(METRICS, job.part.metric),
                "hparams": {**_inherited_defaults(METRICS, job.part.metric), **config,
                            **dict(getattr(job.metric, "hparams", {}) or {})}}
    return built


def _manifest_extras(results: pd.DataFrame, plan: Plan, done: list[ChunkResult],
                     device: torch.device, seconds: float) -> dict[str, Any]:
    """The manifest's provenance beyond the config, among them ``display`` (each method's label
    and colour, so that ``plot`` and ``report`` draw the run the same without its plugins:
    :func:`~attrib_bench.core.registry.method_display`) and ``built`` (each method's and metric's
    class, the plugin module that registered it, if any, and its hyper-parameters as built,
    defaults and the run's seed included, for plugins as for the built-in ones)."""
    built = _built(plan.jobs)
    maps = sum((r.cache for r in done), CacheStats())
    return {
        "display": method_display(built["methods"]),
        "built": built,
        "versions": _versions(),
        "git_commit": git_commit(),
        "device": str(device),
        "hardware": describe_hardware(device),
        "cuda_float32": (("ieee" if evaluation.IEEE_FLOAT32 else "pytorch default (TF32 convs)")
                         if device.type == "cuda" else None),
        "wall_seconds_this_run": round(seconds, 3),
        "rows": len(results),
        "rows_nonfinite": int((results["flag"] != "").sum()),
        "cache": maps.as_dict(),
        "pool_logits_cache": {**plan.pool.stats.as_dict(),
                              "seconds": round(plan.pool.seconds, 3)},
        "cache_folder": plan.jobs[0].cache.url if plan.jobs and plan.jobs[0].cache else None,
    }
