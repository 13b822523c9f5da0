"""The attribution cache: maps stored once per (model weights, method + hyper-parameters, inputs).

A second run with another metric on the same inputs (pixel removal and randomisation both explain
the first test images for their labels) reuses the maps instead of recomputing them. Entries are
safetensors files named by the sha256 of their key and carry the sha256 of the map bytes in their
metadata: a truncated or altered entry is detected, deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from attrib_bench.runners.storage import Store, atomic_write

__all__ = ["AttributionCache", "atomic_write", "cached_explainer", "model_digest",
           "tensor_digest"]


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 over the dtypes, shapes and bytes of ``tensors`` (on any device)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        data = tensor.detach().contiguous().cpu()
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def model_digest(model: nn.Module) -> str:
    """sha256 of a model's class name and state dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_digest(value).encode())
    return digest.hexdigest()


class AttributionCache:
    """Maps (B, H, W) stored under ``root`` (a path or fsspec URL), keyed by :meth:`key`.

    ``root=None`` disables it.
    """

    def __init__(self, root: str | Path | Store | None) -> None:
        self.store = Store(root) if isinstance(root, (str, Path)) else root
        self.hits = self.misses = self.corrupt = 0

    @staticmethod
    def key(model_hash: str, method_id: dict[str, Any], inputs: torch.Tensor,
            targets: torch.Tensor) -> str:
        """The entry name: sha256 of the model hash, the method id (JSON) and the input bytes."""
        text = json.dumps({"model": model_hash, "method": method_id}, sort_keys=True, default=str)
        return hashlib.sha256((text + tensor_digest(inputs, targets)).encode()).hexdigest()

    def _path(self, key: str) -> str:
        assert self.store is not None
        return self.store.path(key[:2], f"{key}.safetensors")

    def get(self, key: str) -> torch.Tensor | None:
        """The stored maps, or None if absent or corrupt (a corrupt entry is deleted)."""
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
        if self.store is None:
            return
        maps = maps.detach().contiguous().cpu()
        self.store.write(self._path(key), lambda tmp: save_file(
            {"maps": maps}, str(tmp), metadata={"sha256": tensor_digest(maps)}))


def cached_explainer(method: Any, cache: AttributionCache, model_hash: str,
                     method_id: dict[str, Any]) -> Callable[[torch.Tensor, torch.Tensor],
                                                           torch.Tensor]:
    """``explain(inputs, targets) -> maps`` that reads ``cache`` first and fills it on a miss."""

    def explain(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        key = cache.key(model_hash, method_id, inputs, targets)
        maps = cache.get(key)
        if maps is None:
            maps = method.attribute(inputs, targets)
            cache.put(key, maps)
        return maps.to(device=inputs.device, dtype=inputs.dtype)

    return explain
