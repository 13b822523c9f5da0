"""Sweeps on Dask: one task per (model, method, metric, chunk), the same tables as in-process.

``run(..., executor="dask")`` (``attrib-bench run --executor dask``) plans the sweep in this
process exactly as the in-process runner does (models, sample selection, chunking), then sends
every chunk that is not written yet as one task to a ``dask.distributed`` cluster: a new
``LocalCluster`` of ``workers`` processes, an existing cluster at ``scheduler``, or a given
``Client``. Models and sample sets are scattered once to the workers; a task builds the method,
evaluates its chunk and writes the rows with the runner's atomic chunk writer, to the same run
folder (any fsspec URL every worker can reach, e.g. ``s3://``). The client then gathers the
chunks into the tables as an in-process run does.

Why this gives identical tables and survives failures: a chunk's rows depend only on its sample
ids and the seed, never on where or when it ran; a chunk file appears whole or not at all; a task
whose worker dies is rerun elsewhere by the scheduler (and ``retries`` reruns a task that raised
for a transient reason), and a rerun first looks for the file of an earlier attempt, so rows are
never duplicated; a resumed run submits only the chunks whose files are missing. The executor
returns each chunk's :class:`~attrib_bench.runners.jobs.ChunkResult` (seconds, cache counts,
worker, peak memory); the runner sums them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from attrib_bench.core.errors import AttribBenchError, RunError
from attrib_bench.core.perf import WORKER_ENV, peak_rss_mb, retain_freed_memory
from attrib_bench.core.registry import PLUGIN_MODULES, load_plugins
from attrib_bench.runners.cache import CacheStats
from attrib_bench.runners.jobs import ChunkJob, ChunkResult, evaluate_chunk

#: Reruns of a task that raised (a worker that died is rescheduled by Dask without counting).
TASK_RETRIES = 2
#: How long to wait for an existing cluster's scheduler to answer.
CONNECT_TIMEOUT = "20s"


class Payload:
    """A model or sample set as the workers receive it: pickled whole by plain pickle.

    Why: Dask's own serializer for a bare ``nn.Module`` rebuilds its hook dicts as plain dicts,
    which cannot be weakly referenced, so registering a hook on the worker (GradCAM) fails.
    """

    def __init__(self, value: Any) -> None:
        self.value = value


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise RunError("--executor dask needs dask.distributed: pip install "
                       "'attrib-bench[dask]' (or 'dask[distributed]')") from None
    return distributed


def run_chunk(chunk: ChunkJob, model: Payload, samples: Payload, device: str,
              threads: int | None, plugins: tuple[str, ...] = ()) -> ChunkResult:
    """A Dask task: evaluate one chunk and write its rows (skips a chunk already written).

    ``chunk`` carries its part's method and metric configuration; ``model`` and ``samples``
    arrive separately so that they are scattered once per worker instead of shipped with every
    task. ``plugins``: the client's ``--plugin`` modules, imported here too so that the worker's
    registry knows their methods by name (they must be importable on the worker: installed, on
    its PYTHONPATH, or sent with ``Client.upload_file``).
    """
    for module in plugins:
        if module not in PLUGIN_MODULES:
            load_plugins([module])
    retain_freed_memory()  # as the CLI does: fixed-shape batches stop paying page faults
    # Set in this (task) thread: OpenMP's thread count is per calling thread, and Dask starts
    # workers with OMP_NUM_THREADS=1. Unless told, a task gets cores / the worker's task slots.
    torch.set_num_threads(threads or _default_threads())
    worker = str(getattr(_this_worker(), "address", "local"))
    job = chunk.job
    if job.part.done(chunk.index, job.identity(chunk.ids)):
        # a rerun after the first attempt wrote its file
        return ChunkResult(chunk.key, chunk.index, None, len(chunk.ids), 0.0, CacheStats(),
                           worker, peak_rss_mb())
    torch_device = torch.device(device)
    result = evaluate_chunk(chunk, torch_device, model=model.value.to(torch_device),
                            samples=samples.value)
    result.worker, result.peak_rss_mb = worker, peak_rss_mb()
    return result


def _this_worker() -> Any:
    """The Dask worker running this task, or None when called outside a worker."""
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def _default_threads() -> int:
    """Cores divided by this worker's task slots (1 slot outside a worker)."""
    worker = _this_worker()
    slots = worker.state.nthreads if worker is not None else 1
    return max(1, (os.cpu_count() or 1) // max(1, slots))



def local_cluster(workers: int) -> Any:
    """A ``LocalCluster`` of ``workers`` single-task processes with :data:`WORKER_ENV`.

    The malloc settings must be in the environment when a worker process starts (glibc reads
    them once), hence Dask's ``pre-spawn-environ`` rather than the nanny's ``env``.
    """
    import dask

    distributed = _import_distributed()
    environ = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENV.items()}
    with dask.config.set(environ):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                        processes=True, dashboard_address=":0")


class DaskExecutor:
    """Evaluates chunk jobs as Dask tasks (the :class:`~attrib_bench.runners.jobs.Executor`
    interface); owns the client and cluster it creates (``close``)."""

    def __init__(self, *, client: Any = None, scheduler: str | None = None,
                 workers: int | None = None, progress: bool = True) -> None:
        distributed = _import_distributed()
        self._owned: list[Any] = []
        self.progress = progress
        self.threads: int | None = None
        self.tasks = 0
        self.peak_rss_mb: dict[str, float] = {}
        #: id(model or sample set) → (the object, its scattered future): sent once
        self._futures: dict[int, tuple[Any, Any]] = {}
        if client is not None:
            self.client = client
        elif scheduler is not None:
            try:
                self.client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                raise RunError(f"cannot reach the Dask scheduler at {scheduler} ({exc}): check "
                               "the address and that `dask scheduler` runs there") from None
            self._owned.append(self.client)
        else:
            count = workers or 1
            # One torch thread pool per worker process, sized to share the cores.
            self.threads = max(1, (os.cpu_count() or 1) // count)
            cluster = local_cluster(count)
            self.client = distributed.Client(cluster)
            self._owned += [self.client, cluster]

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the cluster."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return {"name": "dask", "scheduler": self.client.scheduler.address,
                "workers": len(workers), "torch_threads_per_worker": self.threads,
                "tasks": self.tasks,
                "peak_rss_mb_per_worker": {k: round(v) for k, v in
                                           sorted(self.peak_rss_mb.items())}}

    def close(self) -> None:
        for thing in self._owned:
            thing.close()
        self._owned = []

    def evaluate(self, chunks: Sequence[ChunkJob], device: torch.device) -> list[ChunkResult]:
        """Run ``chunks`` on the cluster, one task each; their results as they complete."""
        distributed = _import_distributed()
        futures = [self._submit(chunk, device) for chunk in chunks]
        self.tasks += len(futures)
        results = []
        with tqdm(total=sum(len(c.ids) for c in chunks), unit="sample", dynamic_ncols=True,
                  disable=not self.progress, desc=f"dask · {len(futures)} tasks") as bar:
            for future in distributed.as_completed(futures):
                result = self._result(future, distributed)
                self.peak_rss_mb[result.worker] = max(self.peak_rss_mb.get(result.worker, 0.0),
                                                      result.peak_rss_mb or 0.0)
                results.append(result)
                bar.update(result.samples)
        return results

    def _submit(self, chunk: ChunkJob, device: torch.device) -> Any:
        """One task for ``chunk``; its model and samples are scattered once per object."""
        job = chunk.job
        light = ChunkJob(job.shipped(), chunk.index, chunk.ids)
        return self.client.submit(
            run_chunk, light, self._scattered(job.model, device),
            self._scattered(job.samples, device), str(device), self.threads,
            tuple(PLUGIN_MODULES), key=f"attrib-bench-{'/'.join(chunk.key)}/{chunk.index}-"
            f"{id(self):x}", pure=False, retries=TASK_RETRIES)

    def _scattered(self, thing: Any, device: torch.device) -> Any:
        """A future of ``thing`` on every worker (a model travels on the CPU)."""
        if id(thing) not in self._futures:
            payload = thing
            if isinstance(thing, torch.nn.Module) and device.type != "cpu":
                payload = copy.deepcopy(thing).cpu()  # moved to the device on the worker
            self._futures[id(thing)] = (thing, self.client.scatter(
                Payload(payload), broadcast=True, hash=False))
        return self._futures[id(thing)][1]

    @staticmethod
    def _result(future: Any, distributed: Any) -> ChunkResult:
        """A task's result; a task that killed its workers is one line naming the fix."""
        try:
            return future.result()
        except AttribBenchError:
            raise
        except distributed.KilledWorker as exc:
            raise RunError(f"Dask task {future.key} killed its workers repeatedly ({exc}): it "
                           "may run out of memory; lower --chunk-size") from None
