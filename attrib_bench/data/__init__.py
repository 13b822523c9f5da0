"""The data layer: datasets by name, and CIFAR-10 from the original or a packed folder.

:func:`get_dataset` loads any dataset registered in :data:`attrib_bench.core.registry.DATASETS`
(built-ins in :mod:`attrib_bench.data.datasets`: cifar10, tinyimagenet, imagefolder, imagenet)
as an image set (:mod:`attrib_bench.data.imageset`): an :class:`ImageSet` decoded once into
memory (uint8, (N, 3, H, W)), or a :class:`FileImageSet` that decodes the files a batch needs;
either becomes float in [0, 1] only when a batch is needed. The modules of the package:
``imageset`` (the two kinds of image set), ``cifar10`` (the reader of the original batches),
``packed`` (CIFAR-10 packed small enough to carry to a GPU call), ``datasets`` (the built-in
datasets, registered by name), ``predict`` (a model's logits over a whole set). The n x n
grids of the localisation metric are its protocol, so they live with it
(:mod:`attrib_bench.metrics.grids`).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrib_bench.core.errors import DataNotFoundError, SettingError
from attrib_bench.core.hparams import accepts_any, hparams_of, resolve
from attrib_bench.core.registry import DATASETS
from attrib_bench.data.cifar10 import read_cifar10
from attrib_bench.data.imageset import (
    DATA_ENV_VAR,
    SPLITS,
    BaseImageSet,
    FileImageSet,
    ImageSet,
    resolve_data_root,
)

#: Re-exported: ``from attrib_bench.data import ImageSet`` is the documented spelling.
__all__ = ["DATA_ENV_VAR", "SPLITS", "BaseImageSet", "FileImageSet", "ImageSet",
           "dataset_options", "evaluation_split",
           "get_dataset", "load_cifar10", "resolve_data_root"]

#: The parameters every dataset factory has; its other keyword parameters are its options.
COMMON_PARAMETERS = ("split", "root", "download")


# ----------------------------------------------------------------------------- loading


def load_cifar10(split: str = "test", root: str | Path | None = None,
                 download: bool = False) -> ImageSet:
    """CIFAR-10 ``split`` ("train" or "test") from ``root``/cifar-10-batches-py, cached per process.

    If ``root`` holds a ``cifar10-packed.json``, the split comes from that packed folder instead
    (see :mod:`attrib_bench.data.packed`: sha256-verified; test bit-exact to the original and named
    "cifar10-test", train decoded from JPEG and named e.g. "cifar10-train-jpeg-q90-444").
    Returns an :class:`ImageSet` with uint8 images (N, 3, 32, 32); the cached tensors are shared,
    so do not modify them in place.
    """
    if split not in SPLITS:
        raise DataNotFoundError(f"unknown CIFAR-10 split {split!r}: use one of {', '.join(SPLITS)}")
    return _load_cifar10_cached(split, str(resolve_data_root(root)), bool(download))


@functools.lru_cache(maxsize=8)
def _load_cifar10_cached(split: str, root: str, download: bool) -> ImageSet:
    """The packed folder's split when ``root`` holds a packed manifest, else the original's."""
    # Imported here, not at the top: ``python -m attrib_bench.data.packed`` warns when the
    # package has already imported attrib_bench.data.packed.
    from attrib_bench.data import packed

    if (Path(root) / packed.MANIFEST_NAME).is_file():
        return packed.load_packed(root, split)
    return read_cifar10(split, root, download)


def get_dataset(name: str, split: str = "test", root: str | Path | None = None,
                download: bool = False, **options: Any) -> BaseImageSet:
    """Split ``split`` of the dataset registered as ``name`` (``attrib-bench list datasets``).

    ``options`` are the dataset's own (e.g. ``image_size=224`` for imagefolder), checked against
    its factory's signature (:func:`dataset_options`). An unknown name is one
    :class:`~attrib_bench.core.errors.UnknownNameError` line with the close matches.
    """
    factory = DATASETS.get(name).factory
    return factory(split=split, root=root, download=download,
                   **dataset_options(name, options))


def dataset_options(name: str, given: Mapping[str, Any] | None = None, *,
                    from_text: bool = False) -> dict[str, Any]:
    """Dataset ``name``'s full options: each keyword parameter of its factory other than
    :data:`COMMON_PARAMETERS`, at its default unless ``given`` (as values, or as text from
    ``--dataset-option KEY=VALUE`` when ``from_text``), checked against its declared type.

    An unknown or common key is one :class:`~attrib_bench.core.errors.SettingError` line.
    """
    given = dict(given or {})
    factory = DATASETS.get(name).factory
    options = [key for key in hparams_of(factory) if key not in COMMON_PARAMETERS]
    for key in given:
        if key in COMMON_PARAMETERS:
            flag = "--data-root" if key == "root" else f"--{key}"
            raise SettingError(f"dataset {name!r}: {key} is not an option: use {flag}")
        if key not in options and not accepts_any(factory):
            close = difflib.get_close_matches(key, options, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "none is close"
            raise SettingError(f"dataset {name!r} has no option {key!r}: {hint} (it has "
                               f"{', '.join(options) or 'none'})")
    config = resolve(f"dataset {name!r}", factory, given, from_text=from_text)
    return {key: value for key, value in config.items() if key not in COMMON_PARAMETERS}


def evaluation_split(name: str) -> str:
    """The split dataset ``name`` is evaluated on (its ``eval_split`` metadata; default
    "test"): CIFAR-10's test, TinyImageNet's and ImageNet's val."""
    return str(DATASETS.get(name).metadata.get("eval_split", "test"))
