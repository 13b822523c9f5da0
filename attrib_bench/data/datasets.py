"""The built-in datasets, registered by name: ``cifar10``, ``tinyimagenet``, ``imagefolder``,
``imagenet`` (``attrib-bench list datasets``; :func:`attrib_bench.data.get_dataset`).

Each is a factory ``f(split="test", root=None, download=False, **options) -> image set``
registered with :func:`~attrib_bench.core.registry.register_dataset` and its metadata:
``image_size`` (H, W) at the default options, ``num_classes`` (None: as many as the folders),
``eval_split`` (the split a benchmark run and ``eval`` use), ``splits``, ``source`` and, where the
dataset has its own evaluation protocol, ``protocol`` ({metric: {setting: value}}: the defaults a
run uses for that metric unless it sets them, e.g. TinyImageNet's 250 localisation grids). Importing
this module registers them; the registry imports it on its first dataset lookup.

CIFAR-10 and TinyImageNet are small enough to be decoded into memory once per process
(:class:`~attrib_bench.data.imageset.ImageSet`: CIFAR-10's 60 000 images are 184 MB, TinyImageNet's
110 000 1.35 GB). ImageFolder trees and ImageNet are returned as a
:class:`~attrib_bench.data.imageset.FileImageSet`: a list of files decoded batch by batch, resized
and centre-cropped (:class:`~attrib_bench.data.imageset.ResizeCrop`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from attrib_bench.core.errors import DataNotFoundError
from attrib_bench.core.hparams import PositiveInt, check_settings
from attrib_bench.core.registry import register_dataset
from attrib_bench.data import load_cifar10
from attrib_bench.data.imageset import (
    FileImageSet,
    ImageSet,
    NativeSize,
    ResizeCrop,
    resolve_data_root,
)

#: File name endings an ImageFolder tree's images may have (any case), as torchvision's
#: ``IMG_EXTENSIONS`` less the rarely used .ppm, .pgm and .tif(f).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TINY_FOLDER = "tiny-imagenet-200"
#: The layout :func:`tinyimagenet` expects, named in its "not found" line.
TINY_LAYOUT = (f"{TINY_FOLDER}/ with wnids.txt, words.txt, train/<wnid>/images/*.JPEG, "
               "val/images/*.JPEG and val/val_annotations.txt")
#: Split names that mean the same labelled evaluation split (TinyImageNet's and ImageNet's test
#: images have no public labels; an ImageFolder tree may call it either).
EVAL_ALIASES = {"test": ("val",), "val": ("test",)}


def _no_download(name: str, how: str) -> DataNotFoundError:
    """The one line for ``download=True`` on a dataset attrib-bench cannot download."""
    return DataNotFoundError(f"{name} cannot be downloaded by attrib-bench: {how}, then pass "
                             "--data-root DIR without --download")


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise DataNotFoundError(f"unknown {name} split {split!r}: use one of {', '.join(splits)}")


# ----------------------------------------------------------------------------- CIFAR-10


@register_dataset("cifar10", image_size=(32, 32), num_classes=10, eval_split="test",
                  splits=("train", "test"), source="Krizhevsky 2009")
def cifar10(split: str = "test", root: str | Path | None = None,
            download: bool = False) -> ImageSet:
    """CIFAR-10: 32x32 RGB, 10 classes, 50 000 train / 10 000 test images (original or packed).

    ``root`` holds ``cifar-10-batches-py/`` or a folder packed by ``python -m
    attrib_bench.data.packed``; see :func:`attrib_bench.data.load_cifar10` (cached per process).
    """
    return load_cifar10(split, root, download)


# ----------------------------------------------------------------------------- TinyImageNet


#: TinyImageNet's localisation protocol: 250 grids (the CoDA-Nets paper's number for
#: TinyImageNet, where CIFAR-10 has 500), drawn by the same rule as CIFAR-10's; see
#: :func:`tinyimagenet`.
TINY_PROTOCOL = {"localisation": {"num_grids": 250}, "localisation-difull": {"num_grids": 250}}


@register_dataset("tinyimagenet", image_size=(64, 64), num_classes=200, eval_split="val",
                  splits=("train", "val", "test"), source="Le & Yang 2015 (CS231n)",
                  protocol=TINY_PROTOCOL)
def tinyimagenet(split: str = "test", root: str | Path | None = None,
                 download: bool = False) -> ImageSet:
    """TinyImageNet-200: 64x64 RGB, 200 classes, 100 000 train / 10 000 val images.

    ``root`` holds the standard ``tiny-imagenet-200/`` folder (or is it): ``wnids.txt`` (the 200
    class wnids; label i is line i), ``words.txt`` (wnid TAB synonyms; a class's name is its
    first synonym), ``train/<wnid>/images/*.JPEG`` (dataset order: classes in wnids.txt order,
    files sorted by name) and ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file TAB
    wnid TAB box; dataset order is the file's line order). ``split`` "train" or "val"; "test" is
    an alias of "val", the labelled evaluation split: TinyImageNet's own ``test/`` images have
    no labels and are not read. Decoded with PIL into one uint8 (N, 3, 64, 64) tensor (greyscale
    images as RGB), cached per process like CIFAR-10; a missing file is one
    :class:`DataNotFoundError` line naming the layout.

    Protocol (registry metadata ``protocol``; a run's own ``--set`` wins): localisation and its
    DiFull variant draw **250 grids** of 3×3 64 px images (192×192 px), by CIFAR-10's rule on
    the val split: correctly classified images whose target probability (the model's declared
    one: sigmoid for the CoDA-Nets, softmax by default) is > 0.5, ranked within their class, 9
    distinct classes per grid, numpy seed 42. The paper says "250" for
    TinyImageNet where it says 500 for CIFAR-10; CIFAR-10's 500 is a grid count, and the val
    split has only 50 images per class, so 250 is read as 250 grids (2250 images of the 10 000),
    not as 250 images per class. Pixel removal: the first 1024 val images in ``val_annotations``
    order, as CIFAR-10's first 1024 test images (its default).
    """
    _check_split("TinyImageNet", split, ("train", "val", "test"))
    if download:
        raise _no_download("TinyImageNet", "download tiny-imagenet-200.zip (CS231n) and unzip "
                                           "it in DIR")
    canonical = "val" if split == "test" else split
    return _tinyimagenet_cached(canonical, str(_tiny_folder(resolve_data_root(root))))


def _tiny_folder(root: Path) -> Path:
    """``root/tiny-imagenet-200``, or ``root`` itself if it is that folder."""
    return root if (root / "wnids.txt").is_file() else root / TINY_FOLDER


def _tiny_missing(folder: Path, what: str) -> DataNotFoundError:
    return DataNotFoundError(f"TinyImageNet not found: {what} is missing under {folder.parent}; "
                             f"expected {TINY_LAYOUT}: pass --data-root DIR (the folder that "
                             f"holds {TINY_FOLDER}/)")


@functools.lru_cache(maxsize=4)
def _tinyimagenet_cached(split: str, folder: str) -> ImageSet:
    """TinyImageNet ``split`` ("train" or "val") of ``folder``, decoded (:func:`tinyimagenet`)."""
    files = _tiny_files(Path(folder), split)
    return files.in_memory(workers=None)


def _tiny_files(folder: Path, split: str) -> FileImageSet:
    """The files and labels of TinyImageNet ``split`` in ``folder`` (nothing decoded)."""
    wnids = _read_lines(folder / "wnids.txt", folder)
    names = _first_synonyms(folder / "words.txt", folder)
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    if split == "train":
        files, labels = _tiny_train(folder, wnids)
    else:
        files, labels = _tiny_val(folder, label_of)
    if not files:
        raise _tiny_missing(folder, f"every image of {split}/")
    class_names = tuple(names.get(wnid, wnid) for wnid in wnids)
    return FileImageSet(folder, tuple(files), torch.tensor(labels, dtype=torch.int64),
                        class_names, f"tinyimagenet-{split}", NativeSize(64, 64))


def _read_lines(path: Path, folder: Path) -> list[str]:
    """The non-empty lines of ``path``, stripped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise _tiny_missing(folder, path.relative_to(folder.parent).as_posix()) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _first_synonyms(path: Path, folder: Path) -> dict[str, str]:
    """words.txt's ``wnid TAB name, synonym, ...`` lines → {wnid: name}."""
    names = {}
    for line in _read_lines(path, folder):
        wnid, _, words = line.partition("\t")
        names[wnid.strip()] = words.split(",")[0].strip() or wnid.strip()
    return names


def _tiny_train(folder: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """``train/<wnid>/images/*`` for each wnid in order, files sorted by name."""
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise _tiny_missing(folder, f"{TINY_FOLDER}/train/{wnid}/images/")
        for name in sorted(os.listdir(images)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(f"train/{wnid}/images/{name}")
                labels.append(label)
    return files, labels


def _tiny_val(folder: Path, label_of: dict[str, int]) -> tuple[list[str], list[int]]:
    """``val/images/<file>`` with the wnid ``val/val_annotations.txt`` gives it, in its order."""
    files, labels = [], []
    annotations = folder / "val" / "val_annotations.txt"
    for line in _read_lines(annotations, folder):
        name, _, rest = line.partition("\t")
        wnid = rest.split("\t")[0].strip()
        if wnid not in label_of:
            raise DataNotFoundError(f"{annotations} labels {name} with {wnid!r}, which is not in "
                                    "wnids.txt: restore the original file")
        if not (folder / "val" / "images" / name).is_file():  # the tree is there, a file not
            raise DataNotFoundError(f"TinyImageNet at {folder} is incomplete: val/images/{name}, "
                                    f"listed in {annotations.name}, is missing: restore it (unzip "
                                    "tiny-imagenet-200.zip again)")
        files.append(f"val/images/{name}")
        labels.append(label_of[wnid])
    return files, labels


# ----------------------------------------------------------------------------- ImageFolder


def find_classes(folder: Path) -> list[str]:
    """The class names of an ImageFolder tree: its sub-folders' names, sorted (torchvision's
    own ``find_classes``; hidden folders count, as there)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def scan_images(folder: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """(files relative to ``folder``, labels): every image under ``folder/<class>/``, class by
    class in ``classes`` order, then by path — torchvision's own ``make_dataset`` (nested
    folders included, links followed). A class of ``classes`` that has no folder here (a class
    of the tree that this split lacks) keeps its label and has no image; a class folder without
    an image is one line."""
    from torchvision.datasets.folder import make_dataset

    present = {name: i for i, name in enumerate(classes) if (folder / name).is_dir()}
    try:
        found = make_dataset(str(folder), present, extensions=IMAGE_EXTENSIONS)
    except FileNotFoundError as exc:  # a class folder without images
        raise DataNotFoundError(f"{folder}: {' '.join(str(exc).split())[:200]}: add images or "
                                "remove the folder") from None
    return ([Path(path).relative_to(folder).as_posix() for path, _ in found],
            [label for _, label in found])


def split_folder(root: Path, split: str) -> Path:
    """The folder of ``split`` in an ImageFolder tree: ``root/<split>/`` (or its alias, "val" for
    "test" and back), else ``root`` itself when it is one split's folder of class folders.

    A ``root`` that holds other splits (``train/``) but not this one is one line.
    """
    if not root.is_dir():
        raise DataNotFoundError(f"no image folder at {root}: pass --data-root DIR, a folder of "
                                "class folders (DIR/<class>/*.jpg) or of splits "
                                "(DIR/val/<class>/*.jpg)")
    for name in (split, *EVAL_ALIASES.get(split, ())):
        if (root / name).is_dir():
            return root / name
    present = split_folders(root)
    if present:
        raise DataNotFoundError(f"{root} has {', '.join(p + '/' for p in present)} but no "
                                f"{split}/: add DIR/{split}/<class>/ or pass --data-root the "
                                "folder of class folders itself")
    if split == "train":
        raise DataNotFoundError(f"{root} has no train/ folder: training needs "
                                "DIR/train/<class>/ beside DIR/val/<class>/ (a single folder of "
                                "classes would be evaluated on its own training images)")
    return root


def split_folders(root: Path) -> list[str]:
    """The split folders (train, val, test) an ImageFolder tree ``root`` has."""
    return [name for name in ("train", "val", "test") if (root / name).is_dir()]


def tree_classes(root: Path) -> list[str]:
    """The classes of an ImageFolder tree: the union of its split folders' class folders,
    sorted (so that every split labels a class alike even if one split lacks it), or
    ``root``'s own class folders for a tree without splits."""
    splits = split_folders(root)
    if not splits:
        return find_classes(root)
    return sorted({name for split in splits for name in find_classes(root / split)})


def _folder_set(folder: Path, classes: list[str], name: str, transform: ResizeCrop,
                class_names: tuple[str, ...] | None = None) -> FileImageSet:
    """A :class:`FileImageSet` of ``classes``' images under ``folder`` (nothing decoded)."""
    files, labels = scan_images(folder, classes)
    return FileImageSet(folder, tuple(files), torch.tensor(labels, dtype=torch.int64),
                        class_names or tuple(classes), name, transform)


@register_dataset("imagefolder", image_size=(224, 224), num_classes=None, eval_split="val",
                  splits=("train", "val", "test"), source="torchvision ImageFolder layout")
def imagefolder(split: str = "test", root: str | Path | None = None, download: bool = False,
                image_size: int = 224, resize: int = 256) -> FileImageSet:
    """Any class-per-folder tree (torchvision ImageFolder), resized and centre-cropped.

    ``root`` is ``DIR/<split>/<class>/*`` ("val" and "test" stand for each other) or, without
    split folders, ``DIR/<class>/*`` itself (an evaluation split only: ``train`` needs its own
    folder). Class = sub-folder name, sorted, over all the tree's splits (every split labels a
    class alike; :func:`tree_classes`); images: .jpg .jpeg
    .png .bmp .webp in any case, nested folders included. Each image: shorter side to ``resize``
    px, centre ``image_size`` crop (:class:`~attrib_bench.data.imageset.ResizeCrop`, the standard
    ImageNet evaluation transform). Returns a file-backed set: nothing is decoded up front.
    """
    if download:
        raise _no_download("an image folder", "put the images in DIR/<class>/")
    transform = ResizeCrop(image_size, resize)
    root_path = resolve_data_root(root)
    folder = split_folder(root_path, split)
    classes = tree_classes(root_path)
    if not classes:
        raise DataNotFoundError(f"{folder} has no class folders: put the images in "
                                f"{folder}/<class>/ or pass --data-root the tree's folder")
    where = folder.name if folder == root_path else f"{root_path.name}-{folder.name}"
    return _folder_set(folder, classes, f"imagefolder-{where}-{image_size}px", transform)


# ----------------------------------------------------------------------------- ImageNet


def imagenet_class_names(root: Path, wnids: list[str]) -> tuple[str, ...]:
    """A name per wnid: the first synonym in ``root/LOC_synset_mapping.txt`` (the Kaggle
    ILSVRC files: ``wnid name, synonym, ...``), else in torchvision's ``root/meta.bin``
    (``(wnid_to_classes, val_wnids)``), else the wnid itself."""
    names: dict[str, str] = {}
    mapping = root / "LOC_synset_mapping.txt"
    meta = root / "meta.bin"
    if mapping.is_file():
        for line in mapping.read_text(encoding="utf-8").splitlines():
            wnid, _, words = line.strip().partition(" ")
            if wnid:
                names[wnid] = words.split(",")[0].strip() or wnid
    elif meta.is_file():
        try:
            wnid_to_classes = torch.load(meta, weights_only=True)[0]
            names = {wnid: str(classes[0]) for wnid, classes in wnid_to_classes.items()}
        except Exception:  # noqa: BLE001 - a damaged meta.bin only costs the readable names
            names = {}
    return tuple(names.get(wnid, wnid) for wnid in wnids)


@register_dataset("imagenet", image_size=(224, 224), num_classes=1000, eval_split="val",
                  splits=("train", "val", "test"), source="ILSVRC-2012 (Russakovsky et al. 2015)")
def imagenet(split: str = "test", root: str | Path | None = None, download: bool = False,
             image_size: int = 224, resize: int = 256, classes: PositiveInt | None = None
             ) -> FileImageSet:
    """ImageNet (ILSVRC-2012) in torchvision's layout (root/val/<wnid>/*.JPEG), resized and cropped.

    "test" is an alias of "val" (the test labels are not public). ``classes``: keep only the
    first N classes in sorted wnid order, labelled 0..N-1 (the paper's ImageNet-100 is
    ``classes=100``). Class names from ``LOC_synset_mapping.txt`` or ``meta.bin`` in ``root``
    (:func:`imagenet_class_names`), else the wnids. Same transform as ``imagefolder``; returns a
    file-backed set (50 000 val images decoded would be 7.5 GB at 224 px).
    """
    _check_split("ImageNet", split, ("train", "val", "test"))
    if download:
        raise _no_download("ImageNet", "get ILSVRC-2012 from image-net.org and lay it out as "
                                       "DIR/val/<wnid>/*.JPEG (torchvision's ImageNet layout)")
    classes = check_settings("dataset 'imagenet'", imagenet, {"classes": classes})["classes"]
    transform = ResizeCrop(image_size, resize)
    root_path = resolve_data_root(root)
    canonical = "val" if split == "test" else split
    folder = root_path / canonical
    if not folder.is_dir():
        raise DataNotFoundError(f"ImageNet not found: {folder} is missing; expected torchvision's "
                                "layout DIR/val/<wnid>/*.JPEG and DIR/train/<wnid>/*.JPEG: pass "
                                "--data-root DIR")
    wnids = find_classes(folder)
    if classes is not None:
        if classes > len(wnids):
            raise DataNotFoundError(f"imagenet classes={classes} but {folder} has {len(wnids)} "
                                    f"class folders: pass classes <= {len(wnids)}")
        wnids = wnids[:classes]
    if not wnids:
        raise DataNotFoundError(f"{folder} has no <wnid> class folders: pass --data-root the "
                                "folder that holds val/<wnid>/")
    suffix = f"-{classes}cls" if classes is not None else ""
    return _folder_set(folder, wnids, f"imagenet-{canonical}{suffix}-{image_size}px", transform,
                       imagenet_class_names(root_path, wnids))


__all__ = ["IMAGE_EXTENSIONS", "cifar10", "find_classes", "imagefolder", "imagenet",
           "imagenet_class_names", "scan_images", "split_folder", "split_folders",
           "tinyimagenet", "tree_classes"]
