"""The work of a sweep, shared by every executor: parts, chunk jobs, and evaluating one chunk.

A sweep is a list of :class:`PartJob` s, one per (model, method, metric) part: everything one
part's chunks need, its method and metric configuration included. A part's samples are cut into
chunks of ``chunk_size`` samples (:class:`ChunkJob`); :func:`evaluate_chunk` evaluates one and
writes its rows atomically, wherever it runs — this process (:class:`LocalExecutor`) or a Dask
worker (:mod:`attrib_bench.runners.distributed`) — and returns a :class:`ChunkResult`: where the
rows are and what it cost. An executor implements :class:`Executor`: evaluate these chunk jobs,
return their results. Statistics are returned and summed, never written into shared objects.

A chunk's rows depend only on its sample ids, the configurations and the seed, never on where or
when it ran, so every executor writes the same files; a chunk file is named by the sha256 of its
bytes (:class:`Part`), so a resumed run skips what is verified and recomputes the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from attrib_bench.core.checks import naming
from attrib_bench.core.errors import RunError
from attrib_bench.core.evaluation import ieee_float32
from attrib_bench.core.registry import create_method
from attrib_bench.methods.base import keep_nonfinite_maps
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext, Metric, SampleSet
from attrib_bench.runners.cache import AttributionCache, CacheStats, cached_explainer
from attrib_bench.runners.storage import Store, slug


@dataclass
class RunConfig:
    """What a run computes; a resumed run must match it (``device``, ``out`` and the cache
    folder may differ). ``chunk_size``: samples per chunk, the unit that is written, resumed
    and distributed (not a forward batch: methods and metrics batch their own work)."""

    models: list[str]
    methods: list[str]
    metrics: list[str]
    n_samples: int | None = None
    chunk_size: int = 32
    seed: int = 0
    dataset: str = "cifar10"
    split: str = "test"
    checkpoint: str | None = None
    method_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: methods/metrics were "all": a part that does not apply is skipped, not an error
    all_methods: bool = False
    all_metrics: bool = False
    #: the dataset's options, resolved (defaults included), e.g. imagefolder's image_size
    dataset_options: dict[str, Any] = field(default_factory=dict)
    #: where the data set defaults (a record for the manifest, not part of the identity: the
    #: values are in ``method_hparams``/``metric_hparams``): {"image_size": [H, W], "methods":
    #: {name: {key: value}} from the image size, "metrics": {name: {key: value}} from the
    #: dataset's protocol}
    defaults_from_data: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """The config as JSON values, without the ``defaults_from_data`` record."""
        values = asdict(self)
        values.pop("defaults_from_data")
        return json.loads(json.dumps(values, sort_keys=True, default=str))


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- chunk files


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
    def key(self) -> tuple[str, str, str]:
        return self.model, self.method, self.metric

    @property
    def folder(self) -> str:
        return self.store.path("parts", slug(self.model), slug(self.method), slug(self.metric))

    def chunk_files(self, index: int | None = None) -> list[str]:
        """Files of chunk ``index`` (normally none or one; older unchecked names included), or
        of every chunk for None."""
        name = "chunk-*.parquet" if index is None else f"chunk-{index:05d}*.parquet"
        return self.store.glob("parts", slug(self.model), slug(self.method), slug(self.metric),
                               name)

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


# ----------------------------------------------------------------------------- jobs


def build_method(name: str, model: nn.Module, config: dict[str, Any],
                 model_name: str | None = None) -> Any:
    """Method ``name`` on ``model`` from its full resolved configuration (seed included);
    its messages name the model ``model_name`` (the run's name for it) when given."""
    with naming(model_name):
        return create_method(name, model, **config)


@dataclass
class PartJob:
    """Everything one part's chunks need, in this process or on a worker.

    ``model``: the metric's view of the model (:meth:`Metric.prepare_model`); ``method_config``
    the method's full configuration (defaults and the run's seed included); ``method_id`` what
    the results' ``method_config`` column and the attribution-cache key hold; ``cache`` the
    attribution cache's folder (None: no cache); ``method_repr`` the built method's ``repr``
    (what its defaults resolved to on this model, e.g. GradCAM's layer), for the manifest only;
    ``cache_id`` the attribution-cache key's method part when it differs from ``method_id``
    (a method whose maps are another's, :attr:`AttributionMethod.same_maps_as`).
    """

    part: Part
    metric: Metric
    samples: SampleSet | None
    model: nn.Module | None
    model_hash: str
    method_config: dict[str, Any]
    method_id: dict[str, Any]
    metric_config: dict[str, Any]
    dataset: str
    seed: int
    chunk_size: int
    cache: Store | None
    method_repr: str = ""
    cache_id: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return self.part.method

    def chunks(self) -> list[np.ndarray]:
        """The sample ids of each chunk, in order."""
        assert self.samples is not None
        ids = self.samples.ids
        return [ids[i:i + self.chunk_size] for i in range(0, len(ids), self.chunk_size)]

    def identity(self, ids: np.ndarray) -> ChunkIdentity:
        """The :class:`ChunkIdentity` a chunk of ``ids`` of this part has."""
        return ChunkIdentity(tuple(int(i) for i in ids), _json(self.method_id),
                             _json(self.metric_config))

    def context(self, device: torch.device, cache: AttributionCache) -> EvalContext:
        """The metric's context: the (cached) explainer and how to rebuild the method."""
        assert self.model is not None
        method = build_method(self.method, self.model, self.method_config, self.part.model)
        return EvalContext(
            model=self.model, device=device, seed=self.seed,
            explain=cached_explainer(method, cache, self.model_hash,
                                     self.cache_id or self.method_id),
            make_method=lambda m: build_method(self.method, m, self.method_config,
                                               self.part.model))

    def finish_rows(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Add the id, flag and config columns to a metric's rows; fixed column order."""
        missing = [c for c in ROW_COLUMNS if c not in rows.columns]
        if missing:
            raise RunError(f"metric {self.part.metric!r} returned rows without columns "
                           f"{missing}: rows need {', '.join(ROW_COLUMNS)} "
                           "(use metrics.base.make_rows)")
        rows = rows.copy()
        rows.insert(0, "model", self.part.model)
        rows.insert(1, "method", self.part.method)
        rows.insert(2, "metric", self.part.metric)
        rows["value"] = rows["value"].astype("float64")
        rows["flag"] = np.where(np.isfinite(rows["value"].to_numpy()), "", "nonfinite")
        rows["dataset"] = self.dataset
        rows["seed"] = self.seed
        rows["method_config"] = _json(self.method_id)
        rows["metric_config"] = _json(self.metric_config)
        rows["sample"] = rows["sample"].astype("int64")
        for column in ("key", "variant", "stat"):
            rows[column] = rows[column].astype(str)
        return rows

    def twin_rows(self, index: int, ids: np.ndarray) -> pd.DataFrame | None:
        """Chunk ``index``'s rows taken from the part of the method whose maps this part's
        method computes (its ``cache_id``), when the metric's rows depend on the maps alone
        (:attr:`Metric.rows_from_maps`) and that part's chunk of the same ``ids`` is written and
        verified in this run; None otherwise (the chunk is then evaluated). The rows keep their
        values and flags and take this part's method and ``method_config``."""
        if self.cache_id is None or not getattr(self.metric, "rows_from_maps", False):
            return None
        twin = replace(self.part, method=str(self.cache_id["name"]))
        expected = replace(self.identity(ids), method_config=_json(self.cache_id))
        for path in twin.chunk_files(index):
            data = verified_chunk(twin.store, path)
            if data is not None and expected.matches(data):
                rows = pd.read_parquet(io.BytesIO(data))
                rows["method"] = self.part.method
                rows["method_config"] = _json(self.method_id)
                return rows
        return None

    def shipped(self) -> PartJob:
        """A copy without the model and the samples, which go to the workers once, separately
        (its part's store and cache must be reachable from there: absolute paths or URLs)."""
        return replace(self, model=None, samples=None)


@dataclass(frozen=True)
class ChunkJob:
    """Chunk ``index`` (sample ``ids``) of ``job``'s part: the unit every executor runs."""

    job: PartJob
    index: int
    ids: np.ndarray

    @property
    def key(self) -> tuple[str, str, str]:
        return self.job.part.key


@dataclass
class ChunkResult:
    """Where a chunk's rows were written and what it cost (summed by the runner)."""

    key: tuple[str, str, str]
    index: int
    path: str | None
    samples: int
    seconds: float
    cache: CacheStats
    worker: str = "local"
    peak_rss_mb: float | None = None
    rows_from: str = ""  # the method whose rows the chunk took (PartJob.twin_rows); "" none


def compute_label(device: torch.device) -> str:
    """Where a chunk ran, for the manifest's accounting: "cpu x2" (torch threads) or
    "cuda NVIDIA H200" (the GPU's name); other devices by their type."""
    device = torch.device(device)
    if device.type == "cpu":
        return f"cpu x{torch.get_num_threads()}"
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return device.type


def evaluate_chunk(chunk: ChunkJob, device: torch.device, *, model: nn.Module | None = None,
                   samples: SampleSet | None = None) -> ChunkResult:
    """Evaluate one chunk and write its rows atomically.

    ``model``/``samples`` replace the job's (a worker receives them separately). Non-finite
    maps are kept and flagged in the rows (``flag`` "nonfinite"), not an error: a long run is
    not stopped by one image.
    """
    job = chunk.job
    model = job.model if model is None else model
    samples = job.samples if samples is None else samples
    if model is not job.model or samples is not job.samples:
        job = replace(job, model=model, samples=samples)
    assert job.samples is not None
    cache = AttributionCache(job.cache)
    start = time.perf_counter()
    rows = job.twin_rows(chunk.index, chunk.ids)
    rows_from = "" if rows is None else str(job.cache_id["name"])  # type: ignore[index]
    if rows is None:
        inputs, target = job.samples.fetch(chunk.ids)
        inputs, target = inputs.to(device), target.to(device)
        with ieee_float32(device), keep_nonfinite_maps():  # a GPU gives the CPU's numbers
            rows = job.metric.evaluate(job.context(device, cache), inputs, target, chunk.ids)
        rows = job.finish_rows(rows)
    elapsed = time.perf_counter() - start
    rows["seconds"] = elapsed / max(len(rows), 1)  # per-row share: sums to wall time
    rows["compute"] = compute_label(device)  # like seconds, for the manifest, not the tables
    path = job.part.write_chunk(chunk.index, rows)
    return ChunkResult(chunk.key, chunk.index, path, len(chunk.ids), elapsed, cache.stats,
                       rows_from=rows_from)


def pending_chunks(jobs: Sequence[PartJob]) -> tuple[list[ChunkJob], list[str]]:
    """The chunks of ``jobs`` without a verified file of this run, and the files that failed
    their checksum or belong to another run (deleted, so that they are recomputed). Parts whose
    method computes another's maps come after the other parts, so that their chunks can take
    that method's rows (:meth:`PartJob.twin_rows`); the order within a part is kept."""
    todo: list[ChunkJob] = []
    corrupt: list[str] = []
    for job in sorted(jobs, key=lambda job: job.cache_id is not None):  # stable
        for index, ids in enumerate(job.chunks()):
            done, bad = job.part.state(index, job.identity(ids))
            corrupt += bad
            if not done:
                todo.append(ChunkJob(job, index, ids))
    return todo, corrupt


# ----------------------------------------------------------------------------- executors


class Executor(Protocol):
    """Evaluates chunk jobs somewhere; the runner plans, executes, gathers and summarises."""

    def evaluate(self, chunks: Sequence[ChunkJob], device: torch.device) -> list[ChunkResult]:
        """Evaluate and write every chunk in ``chunks``; one result per chunk."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the executor."""
        ...

    def close(self) -> None:
        """Release what the executor started (a cluster); nothing for the local one."""
        ...


class LocalExecutor:
    """Evaluates chunks one after another in this process, with one progress bar per part,
    numbered among the parts with work left ("[3/7] model · method · metric")."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def evaluate(self, chunks: Sequence[ChunkJob], device: torch.device) -> list[ChunkResult]:
        results = []
        parts = list(_by_part(chunks))
        for number, (key, part_chunks) in enumerate(parts, start=1):
            total = len(part_chunks[0].job.samples or ())
            todo = sum(len(c.ids) for c in part_chunks)
            with tqdm(total=total, initial=total - todo, unit="sample", leave=True,
                      disable=not self.progress,
                      desc=f"[{number}/{len(parts)}] " + " · ".join(key),
                      dynamic_ncols=True) as bar:
                for chunk in part_chunks:
                    results.append(evaluate_chunk(chunk, device))
                    bar.update(len(chunk.ids))
        return results

    def describe(self) -> dict[str, Any]:
        return {"name": "local"}

    def close(self) -> None:
        return None


def _by_part(chunks: Sequence[ChunkJob]) -> Iterator[tuple[tuple[str, str, str],
                                                          list[ChunkJob]]]:
    """Consecutive chunks grouped by their part, in order."""
    group: list[ChunkJob] = []
    for chunk in chunks:
        if group and chunk.key != group[0].key:
            yield group[0].key, group
            group = []
        group.append(chunk)
    if group:
        yield group[0].key, group
