"""The run's cache: attribution maps, and the logits of a model on a whole dataset.

**Maps** (:class:`AttributionCache`) are stored once per (model weights, method + configuration,
inputs): a second run with another metric on the same inputs (pixel removal and randomisation
both explain the first test images for their labels) reuses them instead of recomputing them.
**Pool logits** (:class:`PoolLogits`) are a model's logits on every image of a dataset, stored
once per (model weights, dataset images and labels): sample selections that rank a test set
(both grid localisations) classify it once per cache, not once per metric and run.

Entries are safetensors files named by the sha256 of their key and carry the sha256 of their
tensor in their metadata: a truncated or altered entry is detected, deleted and recomputed.
Hits, misses and corrupt entries are counted per object and returned as :class:`CacheStats`,
which callers add up (a Dask worker's counts come back in its task's result).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from attrib_bench.evaluation import INFERENCE_BATCH, predict_logits
from attrib_bench.imageset import BaseImageSet, tensor_digest
from attrib_bench.runners.storage import Store, atomic_write

__all__ = ["AttributionCache", "CacheStats", "PoolLogits", "atomic_write", "cached_explainer",
           "model_digest", "tensor_digest"]


def model_digest(model: nn.Module) -> str:
    """sha256 of a model's class name and state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_digest(value).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheStats:
    """Counts of one cache's lookups; ``a + b`` adds them (results from several workers)."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(self.hits + other.hits, self.misses + other.misses,
                          self.corrupt + other.corrupt)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TensorCache:
    """One tensor per key under ``root`` (a path, fsspec URL or :class:`Store`), checksummed.

    ``root=None`` disables it (every lookup misses and nothing is stored or counted).
    """

    def __init__(self, root: str | Path | Store | None) -> None:
        self.store = Store(root) if isinstance(root, (str, Path)) else root
        self.hits = self.misses = self.corrupt = 0

    @property
    def stats(self) -> CacheStats:
        """This object's lookups so far."""
        return CacheStats(self.hits, self.misses, self.corrupt)

    def _path(self, key: str) -> str:
        assert self.store is not None
        return self.store.path(key[:2], f"{key}.safetensors")

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor, or None if absent or corrupt (a corrupt entry is deleted)."""
        if self.store is None or not self.store.exists(self._path(key)):
            self.misses += self.store is not None
            return None
        path = self._path(key)
        try:
            data = self.store.read_bytes(path)
            maps = load(data)["maps"]
            header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
            ok = header.get("__metadata__", {}).get("sha256") == tensor_digest(maps)
        except (SafetensorError, OSError, KeyError, ValueError):
            ok = False
        if not ok:
            self.corrupt += 1
            self.misses += 1
            self.store.remove(path)
            return None
        self.hits += 1
        return maps

    def put(self, key: str, maps: torch.Tensor) -> None:
        """Store ``maps`` under ``key``, atomically (nothing when the cache is disabled)."""
        if self.store is None:
            return
        maps = maps.detach().contiguous().cpu()
        self.store.write(self._path(key), lambda tmp: save_file(
            {"maps": maps}, str(tmp), metadata={"sha256": tensor_digest(maps)}))


class AttributionCache(TensorCache):
    """Maps (B, H, W) stored under ``root``, keyed by :meth:`key`."""

    @staticmethod
    def key(model_hash: str, method_id: dict[str, Any], inputs: torch.Tensor,
            target: torch.Tensor) -> str:
        """The entry name: sha256 of the model hash, the method id (JSON) and the input bytes."""
        text = json.dumps({"model": model_hash, "method": method_id}, sort_keys=True, default=str)
        return hashlib.sha256((text + tensor_digest(inputs, target)).encode()).hexdigest()


class PoolLogits:
    """``predict(model, dataset) -> logits (N, K)``, cached in ``root`` (the run's
    ``cache/logits``), keyed by the model's weights sha256 and the dataset's images and labels.

    ``hashes``: id(model) → weights sha256 the caller already has (else computed here). A
    result is also kept in memory for this object's life (two metrics of one run share it).
    New entries wait in memory until :meth:`flush`: the runner flushes once the run folder is
    checked, and a dry run never does (it writes nothing). ``stats`` counts lookups (a miss is a
    pass computed here); ``seconds`` is the time those passes took.
    """

    def __init__(self, root: str | Path | Store | None, device: torch.device, *,
                 hashes: dict[int, str] | None = None, progress: bool = False) -> None:
        self.cache = TensorCache(root)
        self.device = device
        self.hashes = dict(hashes or {})
        self.progress = progress
        self.seconds = 0.0
        self._hits = self._computed = 0
        self._memory: dict[str, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] = {}
        self._datasets: dict[int, str] = {}

    @property
    def stats(self) -> CacheStats:
        """Hits (in memory or in the cache folder), misses (passes computed), corrupt entries."""
        return CacheStats(self._hits + self.cache.hits, self._computed, self.cache.corrupt)

    def key(self, model: nn.Module, dataset: BaseImageSet) -> str:
        """sha256 of the model's weights hash, the dataset's name and its content digest
        (:meth:`~attrib_bench.imageset.BaseImageSet.digest`: images and labels in memory, or
        each file's path, size, mtime and label), computed once per dataset object."""
        model_hash = self.hashes.get(id(model)) or model_digest(model)
        data = self._datasets.get(id(dataset))
        if data is None:
            data = self._datasets[id(dataset)] = dataset.digest()
        text = json.dumps({"model": model_hash, "dataset": dataset.name, "data": data})
        return hashlib.sha256(text.encode()).hexdigest()

    def predict(self, model: nn.Module, dataset: BaseImageSet) -> torch.Tensor:
        """The logits (N, K) of ``model`` on every image of ``dataset``, on the CPU."""
        key = self.key(model, dataset)
        if key in self._memory:
            self._hits += 1
            return self._memory[key]
        logits = self.cache.get(key)
        if logits is None:
            start = time.perf_counter()
            logits = predict_logits(model, dataset, INFERENCE_BATCH, self.device,
                                    progress=self.progress)
            self.seconds += time.perf_counter() - start
            self._computed += 1
            self._pending[key] = logits
        self._memory[key] = logits
        return logits

    def flush(self) -> None:
        """Store the logits computed since the last flush."""
        for key, logits in self._pending.items():
            self.cache.put(key, logits)
        self._pending = {}


def cached_explainer(method: Any, cache: AttributionCache, model_hash: str,
                     method_id: dict[str, Any]) -> Callable[[torch.Tensor, torch.Tensor],
                                                           torch.Tensor]:
    """``explain(inputs, targets) -> maps`` that reads ``cache`` first and fills it on a miss."""

    def explain(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        key = cache.key(model_hash, method_id, inputs, target)
        maps = cache.get(key)
        if maps is None:
            maps = method.attribute(inputs, target)
            cache.put(key, maps)
        return maps.to(device=inputs.device, dtype=inputs.dtype)

    return explain
