"""The in-memory image set and where data lives: what every dataset reader returns and needs.

Kept apart from :mod:`attrib_bench.data` so that the readers (:mod:`attrib_bench.cifar10`,
:mod:`attrib_bench.packed`) depend on this small module only, while ``data`` dispatches to them:
no module imports one that imports it back. ``data`` re-exports every name here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from attrib_bench.errors import InputShapeError

DATA_ENV_VAR = "ATTRIB_BENCH_DATA"
SPLITS = ("train", "test")
#: How to point a reader at the data; ends every "data not found" line.
DATA_ROOT_HINT = f"pass --data-root DIR, set {DATA_ENV_VAR}, or add --download"


def resolve_data_root(root: str | Path | None = None) -> Path:
    """Data directory: ``root`` if given, else ``$ATTRIB_BENCH_DATA``, else ``../shared/data``.

    The default is ``shared/data`` beside the repository checkout (this file is repo/attrib_bench/).
    """
    if root is None or root == "":
        default = Path(__file__).resolve().parents[2] / "shared" / "data"
        root = os.environ.get(DATA_ENV_VAR) or default
    return Path(root).expanduser().resolve()


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A labelled image set held in memory as uint8.

    ``images`` is uint8 (N, C, H, W), ``labels`` int64 (N,), ``class_names`` has one name per class.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise InputShapeError(
                f"ImageSet images must be uint8 (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise InputShapeError(
                f"ImageSet labels must be int64 ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def float_images(self, index: int | slice | torch.Tensor = slice(None)) -> torch.Tensor:
        """Images ``index`` as float32 in [0, 1]: (B, C, H, W), or (C, H, W) for an int index."""
        return self.images[index].float().div_(255.0)

    def subset(self, n: int | None) -> ImageSet:
        """The first ``n`` images in dataset order (all of them if ``n`` is None or >= len)."""
        if n is None:
            return self
        if n < 0:
            raise ValueError(f"subset size must be >= 0 or None, got {n}")
        return ImageSet(self.images[:n], self.labels[:n], self.class_names, self.name)
