"""Maps for the qualitative figures (paper Fig. 7 and Fig. 8), saved so plots need no model.

``compute_examples`` explains a few test images with each method (Fig. 8) and, for a model with
model-inherent maps, one multi-image grid for each of its cells' classes (Fig. 7); ``save`` writes
them as one safetensors file (maps float32, labels and settings in the JSON metadata), which
:func:`attrib_bench.plots.example_figures` reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from attrib_bench.core.errors import NotApplicableError, PlotError
from attrib_bench.core.registry import applicable_methods
from attrib_bench.data import BaseImageSet
from attrib_bench.data.predict import predict_logits
from attrib_bench.metrics.base import SelectContext
from attrib_bench.runners.jobs import build_method
from attrib_bench.runners.settings import resolve_method
from attrib_bench.runners.storage import atomic_write, slug


@dataclass
class Examples:
    """Images (N, 3, H, W) with per-method maps (N, H, W); optionally a grid (3, nH, nW) with one
    map per cell class (n², nH, nW). Arrays are float32 numpy."""

    model: str
    images: np.ndarray
    labels: list[str]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    grid: np.ndarray | None = None
    grid_maps: np.ndarray | None = None
    grid_labels: list[str] = field(default_factory=list)
    grid_n: int = 0
    grid_method: str = ""


#: The Fig. 7 grid is drawn (the authors' sampling) from the first GRID_POOL test images only:
#: ranking the whole test set for one grid costs a minute on a CPU.
GRID_POOL = 2000


def pick_images(model: nn.Module, dataset: BaseImageSet, count: int, device: torch.device
                ) -> np.ndarray:
    """Indices of the first correctly classified test image of each of the first ``count``
    classes (dataset order), so the sheet shows distinct, fairly explained classes."""
    head = dataset.subset(50 * count)  # enough for every class on CIFAR-sized sets
    predicted = predict_logits(model, head, device=device, progress=False).argmax(1)
    chosen: dict[int, int] = {}
    for index in torch.nonzero(predicted == head.labels).flatten().tolist():
        chosen.setdefault(int(head.labels[index]), index)
    return np.array([chosen[c] for c in sorted(chosen)[:count]], dtype=np.int64)


def compute_examples(model: nn.Module, name: str, dataset: BaseImageSet,
                     methods: Iterable[str] = ("all",), count: int = 6, grid_n: int = 3,
                     grid_method: str = "inherent", seed: int = 0,
                     device: str | torch.device = "cpu") -> Examples:
    """Explain ``count`` images with each method in ``methods`` that applies to the model (or
    "all"), and one ``grid_n``² grid (the authors' sampling on the first :data:`GRID_POOL`
    images) with ``grid_method`` for each cell's class; no grid where ``grid_method`` does not
    apply (ResNet-56)."""
    from attrib_bench.metrics.localisation import Localisation

    device = torch.device(device)
    model = model.to(device).eval()
    index = torch.as_tensor(pick_images(model, dataset, count, device))
    images, labels = dataset.float_images(index), dataset.labels[index]  # on the CPU
    inputs, targets = images.to(device), labels.to(device)
    names = dataset.class_names
    found = Examples(name, images.numpy(), [names[t] for t in labels.tolist()])
    chosen = applicable_methods(model) if list(methods) == ["all"] else list(methods)
    for method_name in chosen:
        try:
            method = _default_method(method_name, model, seed)
        except NotApplicableError:  # e.g. inherent on ResNet-56: one method list for all models
            continue
        found.maps[method_name] = method.attribute(inputs, targets).detach().float().cpu().numpy()
    try:
        explain = _default_method(grid_method, model, seed)
    except NotApplicableError:
        return found
    pool = dataset.subset(GRID_POOL)  # one grid needs only a few confident images per class
    samples = Localisation(n=grid_n).select(model, pool, 1, SelectContext(device))
    grid, cells = samples.fetch(samples.ids[:1])  # on the CPU
    cells = cells.reshape(-1)
    found.grid = grid[0].numpy()
    found.grid_labels = [names[c] for c in cells.tolist()]
    repeated = grid.to(device).expand(len(cells), *grid.shape[1:])
    found.grid_maps = explain.attribute(repeated, cells.to(device)).detach().float().cpu().numpy()
    found.grid_n, found.grid_method = grid_n, grid_method
    return found


def _default_method(name: str, model: nn.Module, seed: int) -> Any:
    """Method ``name`` on ``model`` with its default configuration and ``seed``."""
    return build_method(name, model, resolve_method(name, {}, seed))


def examples_file(results_dir: str | Path, model: str) -> Path:
    """Where a run folder keeps the examples of ``model``: ``examples/<model>.safetensors``."""
    return Path(results_dir) / "examples" / f"{slug(model)}.safetensors"


def save_examples(examples: Examples, path: str | Path) -> Path:
    """Write ``examples`` as one safetensors file (atomically); returns the path."""
    path = Path(path)
    tensors = {"images": torch.from_numpy(np.ascontiguousarray(examples.images, np.float32))}
    for method, maps in examples.maps.items():
        tensors[f"maps.{method}"] = torch.from_numpy(np.ascontiguousarray(maps, np.float32))
    if examples.grid is not None:
        tensors["grid"] = torch.from_numpy(np.ascontiguousarray(examples.grid, np.float32))
        tensors["grid_maps"] = torch.from_numpy(np.ascontiguousarray(examples.grid_maps,
                                                                     np.float32))
    meta = {"model": examples.model, "labels": examples.labels, "methods": list(examples.maps),
            "grid_labels": examples.grid_labels, "grid_n": examples.grid_n,
            "grid_method": examples.grid_method}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                             metadata={"examples": json.dumps(meta)}))
    return path


def load_examples(path: str | Path) -> Examples:
    """Read a file written by :func:`save_examples`; :class:`PlotError` if it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as handle:
            meta = json.loads((handle.metadata() or {})["examples"])
            arrays = {key: handle.get_tensor(key).numpy() for key in handle.keys()}
    except (SafetensorError, ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise PlotError(f"{path} is not an examples file ({type(exc).__name__}): rewrite it with "
                        "attrib-bench examples") from None
    return Examples(
        model=meta["model"], images=arrays["images"], labels=meta["labels"],
        maps={m: arrays[f"maps.{m}"] for m in meta["methods"]}, grid=arrays.get("grid"),
        grid_maps=arrays.get("grid_maps"), grid_labels=meta["grid_labels"],
        grid_n=meta["grid_n"], grid_method=meta["grid_method"])
