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
for a transient reason), and a rerun overwrites the same file, so rows are never duplicated;
a resumed run submits only the chunks whose files are missing.
"""

from __future__ import annotations

import copy
import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attrib_bench.errors import AttribBenchError, RunError
from attrib_bench.perf import WORKER_ENV, peak_rss_mb, retain_freed_memory
from attrib_bench.registry import PLUGIN_MODULES, load_plugins
from attrib_bench.runners.benchmark import (
    Part,
    PartJob,
    RunConfig,
    chunk_identity,
    chunk_ids,
    evaluate_chunk,
)
from attrib_bench.runners.cache import AttributionCache
from attrib_bench.runners.storage import Store

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


def run_chunk(job: PartJob, model: Payload, samples: Payload, index: int,
              ids: np.ndarray, config: RunConfig, device: str, threads: int | None,
              plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Dask task: evaluate one chunk of one part and write its rows (skips a written chunk).

    ``model`` and ``samples`` arrive separately from ``job`` so that they are scattered once
    per worker instead of shipped with every task. ``plugins``: the client's ``--plugin``
    modules, imported here too so that the worker's registry knows their methods by name
    (they must be importable on the worker: installed, on its PYTHONPATH, or sent with
    ``Client.upload_file``).
    """
    for module in plugins:
        if module not in PLUGIN_MODULES:
            load_plugins([module])
    retain_freed_memory()  # as the CLI does: fixed-shape batches stop paying page faults
    # Set in this (task) thread: OpenMP's thread count is per calling thread, and Dask starts
    # workers with OMP_NUM_THREADS=1. Unless told, a task gets cores / the worker's task slots.
    torch.set_num_threads(threads or _default_threads())
    worker = str(getattr(_this_worker(), "address", "local"))
    if job.part.done(index, chunk_identity(ids, job.method_id, job.metric_config)):
        # a rerun after the first attempt wrote its file
        return {"index": index, "seconds": 0.0, "hits": 0, "misses": 0, "corrupt": 0,
                "worker": worker, "peak_rss_mb": peak_rss_mb()}
    torch_device = torch.device(device)
    job = copy.copy(job)
    job.model, job.samples = model.value.to(torch_device), samples.value
    cache = AttributionCache(job.part.store.child("cache"))
    seconds = evaluate_chunk(job.part, index, ids, job.metric, job.samples,
                             job.context(config, torch_device, cache), config, job.method_id,
                             job.metric_config)
    return {"index": index, "seconds": seconds, "hits": cache.hits, "misses": cache.misses,
            "corrupt": cache.corrupt, "worker": worker, "peak_rss_mb": peak_rss_mb()}


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


class DaskRunner:
    """Evaluates a sweep's part jobs as Dask tasks; owns the client it creates (``close``)."""

    def __init__(self, *, client: Any = None, scheduler: str | None = None,
                 workers: int | None = None, progress: bool = True) -> None:
        distributed = _import_distributed()
        self._owned: list[Any] = []
        self.progress = progress
        self.threads: int | None = None
        self.tasks = 0
        self.peak_rss_mb: dict[str, float] = {}
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

    def evaluate(self, jobs: list[PartJob], config: RunConfig, device: torch.device,
                 out: Store, cache: AttributionCache
                 ) -> tuple[list[dict[str, Any]], list[str]]:
        """Run every missing chunk of ``jobs`` on the cluster.

        Returns per-part seconds (manifest) and the chunk files that failed their checksum
        (deleted and recomputed)."""
        distributed = _import_distributed()
        if out.local:  # workers may run in another directory: an absolute path
            out = Store(os.path.abspath(out.root))
        scattered: dict[int, Any] = {}

        def shipped(thing: Any) -> Any:
            """A future of ``thing`` on the workers; one per object, sent once."""
            if id(thing) not in scattered:
                payload = thing
                if isinstance(thing, torch.nn.Module) and device.type != "cpu":
                    payload = copy.deepcopy(thing).cpu()  # moved to the device on the worker
                scattered[id(thing)] = self.client.scatter(Payload(payload), broadcast=True,
                                                           hash=False)
            return scattered[id(thing)]

        futures, sizes, corrupt = [], {}, []
        seconds: dict[tuple[str, str, str], float] = defaultdict(float)
        for job in jobs:
            part = Part(job.part.model, job.part.method, job.part.metric, out)
            light = copy.copy(job)
            light.part, light.model, light.samples = part, None, None  # sent separately
            model, samples = shipped(job.model), shipped(job.samples)
            key = (part.model, part.method, part.metric)
            seconds[key] += 0.0
            for index, ids in enumerate(chunk_ids(job.samples, config.batch_size)):
                done, bad = part.state(index, chunk_identity(ids, job.method_id,
                                                             job.metric_config))
                corrupt += bad
                if done:
                    continue
                future = self.client.submit(
                    run_chunk, light, model, samples, index, ids, config, str(device),
                    self.threads, tuple(PLUGIN_MODULES),
                    key=f"attrib-bench-{'/'.join(key)}/{index}-{id(self):x}", pure=False,
                    retries=TASK_RETRIES)
                futures.append(future)
                sizes[future.key] = (key, len(ids))
        self.tasks += len(futures)
        total = sum(size for _, size in sizes.values())
        with tqdm(total=total, unit="sample", disable=not self.progress, dynamic_ncols=True,
                  desc=f"dask · {len(futures)} tasks") as bar:
            for future in distributed.as_completed(futures):
                try:
                    result = future.result()
                except AttribBenchError:
                    raise
                except distributed.KilledWorker as exc:
                    raise RunError(f"Dask task {future.key} killed its workers repeatedly "
                                   f"({exc}): it may run out of memory; lower --batch-size") \
                        from None
                key, size = sizes[future.key]
                seconds[key] += result["seconds"]
                cache.hits += result["hits"]
                cache.misses += result["misses"]
                cache.corrupt += result["corrupt"]
                worker = result["worker"]
                self.peak_rss_mb[worker] = max(self.peak_rss_mb.get(worker, 0.0),
                                               result["peak_rss_mb"])
                bar.update(size)
        return [{"model": m, "method": meth, "metric": metric, "seconds_this_run": round(s, 3)}
                for (m, meth, metric), s in seconds.items()], corrupt
