"""The reader of the original CIFAR-10 python batches (``cifar-10-batches-py``), via torchvision.

:func:`attrib_bench.data.load_cifar10` caches it and chooses between this reader and the packed
folders of :mod:`attrib_bench.data.packed`, which reads the originals it packs through it.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from attrib_bench.core.errors import DataNotFoundError
from attrib_bench.data.imageset import DATA_ROOT_HINT, ImageSet

#: The md5 of each file of the original python batches (torchvision's list): each file read is
#: checked against it.
MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f",
       "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
       "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
       "data_batch_4": "634d18415352ddfa80567beed471001a",
       "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
       "test_batch": "40351d587109b95175f43aff81a1287e",
       "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}


def _read_checked(folder: Path, name: str) -> dict | None:
    """The unpickled batch file ``name`` if it exists and matches its md5, else None."""
    try:
        raw = (folder / name).read_bytes()
    except OSError:
        return None
    if hashlib.md5(raw).hexdigest() != MD5[name]:
        return None
    return pickle.loads(raw, encoding="latin1")  # verified: the published file


def read_cifar10(split: str, root: str | Path, download: bool = False) -> ImageSet:
    """CIFAR-10 ``split`` ("train" or "test") from ``root``/cifar-10-batches-py, not cached.

    Returns an :class:`ImageSet` named ``cifar10-{split}`` with uint8 images (N, 3, 32, 32).
    The split's batch files and ``batches.meta`` are read directly, each checked against its
    md5 (:data:`MD5`); torchvision (slow to import) is used only to ``download``. A missing
    root, missing or damaged batches and a failed download are one :class:`DataNotFoundError`
    line naming the fix. Callers want :func:`attrib_bench.data.load_cifar10`, which checks the
    split and caches.
    """
    if not download and not Path(root).is_dir():
        raise DataNotFoundError(f"data root {root} does not exist: {DATA_ROOT_HINT}")
    folder = Path(root) / "cifar-10-batches-py"
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    batches = [_read_checked(folder, name) for name in [*names, "batches.meta"]]
    if all(batch is not None for batch in batches):
        *parts, meta = batches
        images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in parts])
        labels = torch.as_tensor(np.concatenate([b["labels"] for b in parts]), dtype=torch.int64)
        return ImageSet(torch.from_numpy(images.reshape(-1, 3, 32, 32)).contiguous(), labels,
                        tuple(meta["label_names"]), f"cifar10-{split}")
    if not download:
        raise DataNotFoundError(f"CIFAR-10 not found under {root}: {DATA_ROOT_HINT}")
    from torchvision.datasets import CIFAR10  # imported lazily: torchvision is slow to import

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
