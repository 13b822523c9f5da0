"""The reader of the original CIFAR-10 python batches (``cifar-10-batches-py``), via torchvision.

Separate from :mod:`attrib_bench.data` (which caches and chooses between this reader and the
packed folders of :mod:`attrib_bench.packed`) so that ``packed`` can read the originals it packs
without importing ``data``, which imports ``packed``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attrib_bench.errors import DataNotFoundError
from attrib_bench.imageset import DATA_ROOT_HINT, ImageSet


def read_cifar10(split: str, root: str | Path, download: bool = False) -> ImageSet:
    """CIFAR-10 ``split`` ("train" or "test") from ``root``/cifar-10-batches-py, not cached.

    Returns an :class:`ImageSet` named ``cifar10-{split}`` with uint8 images (N, 3, 32, 32).
    A missing root, missing or damaged batches and a failed download are one
    :class:`DataNotFoundError` line naming the fix. Callers want
    :func:`attrib_bench.data.load_cifar10`, which checks the split and caches.
    """
    from torchvision.datasets import CIFAR10  # imported lazily: torchvision is slow to import

    if not download and not Path(root).is_dir():
        raise DataNotFoundError(f"data root {root} does not exist: {DATA_ROOT_HINT}")
    try:
        ds = CIFAR10(str(root), train=(split == "train"), download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
        raise DataNotFoundError(f"CIFAR-10 not found under {root}: {DATA_ROOT_HINT}") from exc
    except OSError as exc:  # download failure, unreadable files
        reason = " ".join(str(exc).split())
        raise DataNotFoundError(
            f"could not read or download CIFAR-10 under {root} ({reason}): {DATA_ROOT_HINT}"
        ) from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return ImageSet(images, labels, tuple(ds.classes), f"cifar10-{split}")
