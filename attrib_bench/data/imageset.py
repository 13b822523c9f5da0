"""Image sets: what every dataset reader returns, and where data lives.

Two kinds share one interface (:class:`BaseImageSet`), which every consumer (evaluation, the
grids, the metrics, the caches, training) uses instead of a tensor of all images:

* :class:`ImageSet` holds the whole set in memory as uint8 (N, C, H, W) (CIFAR-10, TinyImageNet);
* :class:`FileImageSet` holds a list of image files, their labels and a transform, and decodes
  only the images asked for (ImageNet: 50 000 validation images at 224 px would be 7.5 GB).

The readers (:mod:`attrib_bench.data.cifar10`, :mod:`attrib_bench.data.packed`,
:mod:`attrib_bench.data.datasets`) depend on this small module only; :mod:`attrib_bench.data`
re-exports its names; :func:`tensor_digest` is reused by :mod:`attrib_bench.runners.cache`.
"""

from __future__ import annotations

import abc
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
import torch

from attrib_bench.core.errors import DataNotFoundError, InputShapeError, SettingError
from attrib_bench.core.hparams import AtLeast, violation

DATA_ENV_VAR = "ATTRIB_BENCH_DATA"
SPLITS = ("train", "test")
#: How to point a reader at the data; ends every "data not found" line.
DATA_ROOT_HINT = f"pass --data-root DIR, set {DATA_ENV_VAR}, or add --download"
#: Worker processes that decode a :class:`FileImageSet` in whole-dataset passes (default: see
#: :func:`default_decode_workers`).
DECODE_WORKERS_ENV_VAR = "ATTRIB_BENCH_DECODE_WORKERS"

#: What selects images: an int (one image, no batch dimension), a slice, or an index tensor,
#: numpy array or list of any shape (the result has that shape followed by (C, H, W)).
Index = int | slice | torch.Tensor | np.ndarray | Sequence[int]


def resolve_data_root(root: str | Path | None = None) -> Path:
    """Data directory: ``root`` if given, else ``$ATTRIB_BENCH_DATA``, else ``../shared/data``.

    The default is ``shared/data`` beside the repository checkout (this file is repo/attrib_bench/).
    """
    if root is None or root == "":
        default = Path(__file__).resolve().parents[3] / "shared" / "data"
        root = os.environ.get(DATA_ENV_VAR) or default
    return Path(root).expanduser().resolve()


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 over the dtypes, shapes and bytes of ``tensors`` (on any device)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        data = tensor.detach().contiguous().cpu()
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def default_decode_workers() -> int:
    """Decoding processes for whole-dataset passes: ``$ATTRIB_BENCH_DECODE_WORKERS`` if set,
    else one per CPU less one, at most 8, and none (decode in this process) on <= 2 CPUs."""
    text = os.environ.get(DECODE_WORKERS_ENV_VAR, "").strip()
    if text:
        try:
            return max(0, int(text))
        except ValueError:
            raise SettingError(f"{DECODE_WORKERS_ENV_VAR}={text!r} is not an int: set it to a "
                               "number of processes, e.g. 4, or 0") from None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    return 0 if cpus <= 2 else min(8, cpus - 1)


def _as_index(index: Index) -> int | slice | torch.Tensor:
    """``index`` as something a tensor can be indexed with (numpy arrays and lists as tensors)."""
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return int(index)
    if isinstance(index, (slice, torch.Tensor)):
        return index
    array = np.asarray(index)
    return torch.from_numpy(array if array.dtype == np.bool_ else array.astype(np.int64))


class BaseImageSet(abc.ABC):
    """A labelled image set, in memory or decoded on demand: the interface consumers use.

    Attributes every set has: ``labels`` int64 (N,) (always in memory), ``class_names`` (one per
    class, label order), ``name`` (e.g. "cifar10-test"; part of cache keys and run tables).
    Images come out as uint8 (…, C, H, W) RGB (:meth:`uint8`) or float32 in [0, 1]
    (:meth:`float_images`); a whole-dataset pass reads :meth:`batches` in dataset order.
    """

    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of images N."""

    @property
    @abc.abstractmethod
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image, in pixels."""

    @property
    @abc.abstractmethod
    def channels(self) -> int:
        """C: 3 (RGB) for every reader here."""

    @abc.abstractmethod
    def uint8(self, index: Index) -> torch.Tensor:
        """Images ``index`` as uint8: (C, H, W) for an int, else ``index``'s shape + (C, H, W)
        ((b, C, H, W) for a slice or a 1-D index)."""

    @abc.abstractmethod
    def batches(self, batch_size: int, workers: int | None = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 (b, C, H, W), int64 labels (b,)) batches of ``batch_size`` in dataset order,
        the last one shorter; ``workers``: decoding processes (file-backed sets only; None:
        :func:`default_decode_workers`)."""

    @abc.abstractmethod
    def subset(self, n: int | None) -> BaseImageSet:
        """The first ``n`` images in dataset order (all of them if ``n`` is None or >= len)."""

    @abc.abstractmethod
    def digest(self) -> str:
        """A sha256 hex digest of the content (images or files, labels): a cache-key part."""

    @abc.abstractmethod
    def in_memory(self, workers: int | None = 0) -> ImageSet:
        """The set decoded into an :class:`ImageSet` (itself if it already is one)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def nbytes(self) -> int:
        """Bytes the decoded uint8 images take (or would take) in memory: N·C·H·W."""
        height, width = self.image_size
        return len(self) * self.channels * height * width

    def float_images(self, index: Index = slice(None)) -> torch.Tensor:
        """Images ``index`` as float32 in [0, 1]: (B, C, H, W), or (C, H, W) for an int index."""
        return self.uint8(index).float().div_(255.0)


def _check_subset_size(n: int) -> None:
    if n < 0:
        raise ValueError(f"subset size must be >= 0 or None, got {n}")


@dataclass(frozen=True, eq=False)
class ImageSet(BaseImageSet):
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
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def uint8(self, index: Index) -> torch.Tensor:
        """Images ``index`` as uint8 (a view of :attr:`images` for an int or a slice)."""
        return self.images[_as_index(index)]

    def batches(self, batch_size: int, workers: int | None = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Slices of :attr:`images` (views, no copy); ``workers`` is ignored."""
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.images[start:stop], self.labels[start:stop]

    def subset(self, n: int | None) -> ImageSet:
        """The first ``n`` images in dataset order (all of them if ``n`` is None or >= len)."""
        if n is None:
            return self
        _check_subset_size(n)
        return ImageSet(self.images[:n], self.labels[:n], self.class_names, self.name)

    def digest(self) -> str:
        """:func:`tensor_digest` of the images and the labels."""
        return tensor_digest(self.images, self.labels)

    def in_memory(self, workers: int | None = 0) -> ImageSet:
        return self


# ----------------------------------------------------------------------------- file-backed sets


class Transform(Protocol):
    """Turns one decoded RGB PIL image into the set's image size (:class:`ResizeCrop`,
    :class:`NativeSize`)."""

    @property
    def output_size(self) -> tuple[int, int]:
        """(H, W) of every image it returns."""

    def __call__(self, image: Any, path: str) -> Any:
        """The transformed PIL image; ``path`` names the file in errors."""

    def settings(self) -> dict[str, Any]:
        """What the digest and the listings record about it (JSON-able)."""


#: An image side in pixels.
Side = Annotated[int, AtLeast(1)]


@dataclass(frozen=True)
class ResizeCrop:
    """The standard ImageNet evaluation transform: the shorter side to ``resize`` pixels (the
    longer one to ``int(resize * long / short)``), bilinear with antialiasing (PIL's bilinear
    filter widens with the scale factor), then the centre ``size`` x ``size`` crop at
    ``round((H - size) / 2)``, ``round((W - size) / 2)``.

    Resampling and cropping are torchvision's own (``transforms.functional.resize`` and
    ``center_crop`` on the PIL image), so the pixels are those of ``Resize(resize)`` +
    ``CenterCrop(size)``.
    """

    size: Side = 224
    resize: Side = 256

    def __post_init__(self) -> None:
        for key, option in (("size", "image_size"), ("resize", "resize")):
            value = getattr(self, key)
            expected = violation(value, Side)
            if expected is not None:
                raise SettingError(f"dataset option {option} must be {expected}, got "
                                   f"{value!r}: pass --dataset-option {option}=N")
            object.__setattr__(self, key, int(value))  # a NumPy int is recorded as an int
        if self.resize < self.size:
            raise SettingError(f"resize {self.resize} is smaller than the crop image_size "
                               f"{self.size}: give resize >= image_size (e.g. 256 for 224)")

    @property
    def output_size(self) -> tuple[int, int]:
        return self.size, self.size

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shorter side becomes ``resize`` (torchvision's rounding)."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def __call__(self, image: Any, path: str = "") -> Any:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as tvf

        width, height = self.resized_size(*image.size)
        image = tvf.resize(image, [height, width], InterpolationMode.BILINEAR, antialias=True)
        return tvf.center_crop(image, [self.size, self.size])

    def settings(self) -> dict[str, Any]:
        return {"transform": "resize-centre-crop", "image_size": self.size,
                "resize": self.resize, "interpolation": "bilinear-antialias"}


@dataclass(frozen=True)
class NativeSize:
    """No resampling: every image must already be ``height`` x ``width`` (TinyImageNet: 64x64)."""

    height: int
    width: int

    @property
    def output_size(self) -> tuple[int, int]:
        return self.height, self.width

    def __call__(self, image: Any, path: str = "") -> Any:
        if image.size != (self.width, self.height):
            raise InputShapeError(f"{path} is {image.size[0]}x{image.size[1]} pixels, the set's "
                                  f"images are {self.width}x{self.height}: replace the file")
        return image

    def settings(self) -> dict[str, Any]:
        return {"transform": "none", "image_size": [self.height, self.width]}


def decode_image(path: str | Path, transform: Transform) -> torch.Tensor:
    """``path`` decoded with PIL, converted to RGB, transformed: uint8 (3, H, W).

    An unreadable file is one :class:`DataNotFoundError` line naming it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = transform(opened.convert("RGB"), str(path))
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataNotFoundError(f"cannot decode {path} ({reason}): replace or remove the "
                                "file") from None
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class _Decoder(torch.utils.data.Dataset):
    """Item i of a :class:`FileImageSet`: its uint8 (3, H, W) image (for a DataLoader)."""

    def __init__(self, image_set: FileImageSet) -> None:
        self.image_set = image_set

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.image_set.decode(i)


@dataclass(frozen=True, eq=False)
class FileImageSet(BaseImageSet):
    """A labelled image set read from image files when its images are asked for.

    ``root``: the folder the ``files`` (POSIX paths relative to it, in dataset order) are in;
    ``labels`` int64 (N,) in memory; ``transform`` gives every image one size
    (:class:`ResizeCrop`, :class:`NativeSize`). Nothing is decoded at construction: memory is
    the file list and the labels, whatever the image count.
    """

    root: Path
    files: tuple[str, ...]
    labels: torch.Tensor
    class_names: tuple[str, ...]
    name: str
    transform: Transform

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.files),):
            raise InputShapeError(f"FileImageSet labels must be int64 ({len(self.files)},), "
                                  f"got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.transform.output_size

    @property
    def channels(self) -> int:
        return 3

    def path(self, i: int) -> Path:
        """The file of image ``i``."""
        return Path(self.root) / self.files[i]

    def decode(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 (3, H, W)."""
        return decode_image(self.path(i), self.transform)

    def uint8(self, index: Index) -> torch.Tensor:
        """Decode the files ``index`` selects (in this process), stacked as uint8."""
        positions = torch.arange(len(self))[_as_index(index)]
        images = [self.decode(i) for i in positions.reshape(-1).tolist()]
        height, width = self.image_size
        stacked = (torch.stack(images) if images
                   else torch.empty((0, 3, height, width), dtype=torch.uint8))
        return stacked.reshape(*positions.shape, 3, height, width)

    def batches(self, batch_size: int, workers: int | None = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decoded by a torch DataLoader with ``workers`` processes (0: this process, as in a
        daemon process, which may not start any; None: :func:`default_decode_workers`), in
        dataset order."""
        workers = default_decode_workers() if workers is None else workers
        if workers and multiprocessing.current_process().daemon:
            workers = 0
        loader = torch.utils.data.DataLoader(_Decoder(self), batch_size=batch_size,
                                             shuffle=False, num_workers=workers)
        start = 0
        for images in loader:
            yield images, self.labels[start:start + len(images)]
            start += len(images)

    def subset(self, n: int | None) -> FileImageSet:
        """The first ``n`` files in dataset order (all of them if ``n`` is None or >= len)."""
        if n is None:
            return self
        _check_subset_size(n)
        return replace(self, files=self.files[:n], labels=self.labels[:n])

    def digest(self) -> str:
        """sha256 of the transform's settings and, per file, (relative path, size, mtime_ns,
        label): a changed, replaced or relabelled file changes it; nothing is decoded."""
        digest = hashlib.sha256(b"file-image-set-v1\n")
        digest.update(json.dumps(self.transform.settings(), sort_keys=True).encode())
        root = Path(self.root)
        for rel, label in zip(self.files, self.labels.tolist(), strict=True):
            try:
                stat = os.stat(root / rel)
            except OSError as exc:
                raise DataNotFoundError(f"{root / rel} is gone ({exc.strerror}): the file list "
                                        "is stale; load the dataset again") from None
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
        return digest.hexdigest()

    def in_memory(self, workers: int | None = 0) -> ImageSet:
        """Every image decoded into one uint8 (N, 3, H, W) tensor (filled batch by batch)."""
        height, width = self.image_size
        images = torch.empty((len(self), 3, height, width), dtype=torch.uint8)
        start = 0
        for batch, _ in self.batches(256, workers):
            images[start:start + len(batch)] = batch
            start += len(batch)
        return ImageSet(images, self.labels, self.class_names, self.name)
