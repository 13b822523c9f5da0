"""CIFAR-10 packed small enough to carry: train as JPEG mosaics (lossy), test as lossless WebP.

A packed folder holds

* ``train-{i}.jpg`` (i = 1, 2, ...): the train images in dataset order, ``batch_size`` (10,000)
  per file, as one mosaic of 32 x 32 tiles, ``tiles_per_row`` (100) tiles wide. Tile k of file i
  is train image (i - 1) * batch_size + k, at tile row k // tiles_per_row, tile column
  k % tiles_per_row; a ragged last row is padded with black tiles. **Lossy**: JPEG at the recorded
  quality and chroma subsampling (the mean and max absolute error in 8-bit levels, 0-255, of the
  decoded images against the originals are recorded).
* ``test.webp``: all test images, same tile layout, in one lossless WebP. **Exact**: the decoded
  pixels are checked against the sha256 of the original test images on every load.
* ``labels.npz``: the labels of each packed split (``train``, ``test``), uint8 when they fit.
* ``cifar10-packed.json`` (:data:`MANIFEST_NAME`): format version, codec settings, counts, tile
  layout, class names, each file's sha256 and size, the sha256 of the original images
  (uint8 (N, 3, 32, 32), C order) and labels (int64) of each split, and the train error figures.
  Written last, so a folder with a manifest is complete.

:func:`load_packed` verifies each file's sha256 against the manifest before decoding it and returns
an :class:`~attrib_bench.data.imageset.ImageSet` (uint8 (N, 3, 32, 32), int64 labels).
:func:`attrib_bench.data.load_cifar10` uses it whenever its root holds a manifest, so
``--data-root PACKED_DIR`` works everywhere the original data does. The test split is named
``cifar10-test`` (it is the original, bit for bit); the train split
``cifar10-train-jpeg-q{quality}-{subsampling}`` (e.g. ``cifar10-train-jpeg-q90-444``), since it
is not the original.

CLI: ``python -m attrib_bench.data.packed pack --data-root DIR --out DIR [--quality Q]`` and
``python -m attrib_bench.data.packed verify DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from attrib_bench.core.errors import (
    AttribBenchError,
    ChecksumError,
    DataNotFoundError,
    InputShapeError,
)
from attrib_bench.data.cifar10 import read_cifar10
from attrib_bench.data.imageset import SPLITS, ImageSet, resolve_data_root

MANIFEST_NAME = "cifar10-packed.json"
FORMAT = "attrib-bench-cifar10-packed"
FORMAT_VERSION = 1
LABELS_NAME = "labels.npz"
TEST_NAME = "test.webp"
SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")
_WEBP_MAX_SIDE = 16383  # libwebp's limit on either side
_JPEG_MAX_SIDE = 65500


class PackedChecksumError(ChecksumError, DataNotFoundError):
    """A packed file, or its decoded pixels, differ from the sha256 recorded in the manifest.

    Both a :class:`ChecksumError` and a :class:`DataNotFoundError`, so either ``except`` catches it.
    """


def _repack_hint(out_dir: Path | str) -> str:
    return (f"copy the folder again, or repack it with `python -m attrib_bench.data.packed pack "
            f"--data-root ORIGINAL_DATA --out {out_dir}`")


# ----------------------------------------------------------------------------- mosaics


def train_file_name(i: int) -> str:
    """Name of the i-th train mosaic, 1-based: ``train-{i}.jpg``."""
    return f"train-{i}.jpg"


def to_mosaic(images: np.ndarray, tiles_per_row: int) -> np.ndarray:
    """Tile uint8 (N, C, H, W) images into one uint8 (rows*H, tiles_per_row*W, C) mosaic.

    Image k lands at tile row k // tiles_per_row, column k % tiles_per_row; the tiles after the
    last image (a ragged last row) are zeros. rows = ceil(N / tiles_per_row).
    """
    n, c, h, w = images.shape
    rows = max(1, math.ceil(n / tiles_per_row))
    padded = np.zeros((rows * tiles_per_row, c, h, w), dtype=np.uint8)
    padded[:n] = images
    # (rows, cols, C, H, W) -> (rows, H, cols, W, C)
    grid = padded.reshape(rows, tiles_per_row, c, h, w).transpose(0, 3, 1, 4, 2)
    return np.ascontiguousarray(grid.reshape(rows * h, tiles_per_row * w, c))


def from_mosaic(mosaic: np.ndarray, n: int, tile: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`to_mosaic`: the first ``n`` tiles of a (rows*H, cols*W, C) mosaic as
    uint8 (n, C, H, W), C order."""
    h, w = tile
    height, width, c = mosaic.shape
    rows, cols = height // h, width // w
    grid = mosaic.reshape(rows, h, cols, w, c).transpose(0, 2, 4, 1, 3)
    return np.ascontiguousarray(grid.reshape(rows * cols, c, h, w)[:n])


def _encode(mosaic: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image, ImageFile

    buffer = io.BytesIO()
    # With optimize=True Pillow hands libjpeg a buffer of width·height bytes, which a noisy
    # image at high quality overflows ("Suspension not allowed here"): allow the raw size.
    before = ImageFile.MAXBLOCK
    ImageFile.MAXBLOCK = max(before, mosaic.size + 65536)
    try:
        Image.fromarray(mosaic, "RGB").save(buffer, fmt, **options)
    finally:
        ImageFile.MAXBLOCK = before
    return buffer.getvalue()


def _decode(data: bytes, where: Path) -> np.ndarray:
    """uint8 (H, W, 3) pixels of an encoded image; one-line error if Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unreadable file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataNotFoundError(
            f"cannot decode {where} ({reason[:120]}): {_repack_hint(where.parent)}"
        ) from None


# ----------------------------------------------------------------------------- hashing, io


def _sha256(data: bytes | np.ndarray | torch.Tensor) -> str:
    """Hex sha256 of raw bytes, or of an array's bytes in C order."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().contiguous().numpy()
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(data).hexdigest()


def _labels_sha256(labels: np.ndarray | torch.Tensor) -> str:
    """sha256 of labels as little-endian int64, C order."""
    return _sha256(np.asarray(labels, dtype="<i8"))


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(out_dir: str | Path) -> dict:
    """The manifest of a packed folder; one-line :class:`DataNotFoundError` if absent or bad."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataNotFoundError(f"no packed CIFAR-10 in {out_dir} ({MANIFEST_NAME} is missing): "
                                f"{_repack_hint(out_dir)}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DataNotFoundError(f"cannot read {path} ({reason}): {_repack_hint(out_dir)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataNotFoundError(
            f"{path} is not a packed CIFAR-10 manifest: {_repack_hint(out_dir)}"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataNotFoundError(
            f"{path} has format version {manifest.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION}: {_repack_hint(out_dir)}"
        )
    return manifest


def write_manifest(out_dir: str | Path, manifest: dict) -> None:
    """Write ``manifest`` atomically as ``out_dir``/cifar10-packed.json (indented, sorted keys)."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _atomic_write(Path(out_dir) / MANIFEST_NAME, text.encode())


def _codec_versions() -> dict[str, str | None]:
    import PIL
    from PIL import features

    return {"pillow": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"),
            "webp": features.version("webp")}


# ----------------------------------------------------------------------------- packing


def _check_image_set(image_set: ImageSet, split: str, tiles_per_row: int, max_side: int) -> None:
    n, c, h, w = image_set.images.shape
    if c != 3:
        raise InputShapeError(f"{split} images must be RGB (N, 3, H, W), got {c} channels")
    rows = max(1, math.ceil(n / tiles_per_row))
    if tiles_per_row * w > max_side or rows * h > max_side:
        raise InputShapeError(
            f"a {split} mosaic of {n} tiles, {tiles_per_row} per row, would be "
            f"{tiles_per_row * w} x {rows * h} px, over the codec's {max_side} px: "
            "change tiles_per_row (or batch_size for train)"
        )


class _FolderWriter:
    """Writes files atomically into ``out`` and records each one's sha256 and size in ``files``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: dict[str, dict] = {}

    def put(self, name: str, data: bytes) -> None:
        _atomic_write(self.out / name, data)
        self.files[name] = {"sha256": _sha256(data), "bytes": len(data)}


def _check_pack_settings(train: ImageSet | None, test: ImageSet | None, quality: int,
                         subsampling: str, batch_size: int, tiles_per_row: int
                         ) -> tuple[list[str], tuple[int, int]]:
    """Refuse bad settings and mismatched splits before anything is written; returns the class
    names and the tile size (H, W) the splits share."""
    if train is None and test is None:
        raise ValueError("nothing to pack: give a train and/or a test ImageSet")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must lie in 1..100, got {quality}")
    if subsampling not in SUBSAMPLINGS:
        raise ValueError(
            f"subsampling must be one of {', '.join(SUBSAMPLINGS)}, got {subsampling!r}"
        )
    if batch_size < 1 or tiles_per_row < 1:
        raise ValueError(f"batch_size and tiles_per_row must be >= 1, got {batch_size}, "
                         f"{tiles_per_row}")
    sets = {name: s for name, s in (("train", train), ("test", test)) if s is not None}
    class_names = {tuple(s.class_names) for s in sets.values()}
    if len(class_names) != 1:
        raise InputShapeError("train and test ImageSets have different class names")
    tiles = {s.image_size for s in sets.values()}
    if len(tiles) != 1:
        raise InputShapeError(f"train and test images differ in size: {sorted(tiles)}")
    if train is not None:
        _check_image_set(train.subset(batch_size), "train", tiles_per_row, _JPEG_MAX_SIDE)
    if test is not None:
        _check_image_set(test, "test", tiles_per_row, _WEBP_MAX_SIDE)
    return list(class_names.pop()), tiles.pop()


def _pack_train(train: ImageSet, writer: _FolderWriter, tile: tuple[int, int], quality: int,
                subsampling: str, batch_size: int, tiles_per_row: int) -> dict:
    """Write the train JPEG mosaics; returns the manifest's "train" section, with the mean and
    max absolute error (8-bit levels) of the decoded images against the originals."""
    images = train.images.numpy()
    names, abs_sum, max_err = [], 0, 0
    for i, start in enumerate(range(0, len(train), batch_size), start=1):
        batch = images[start:start + batch_size]
        data = _encode(to_mosaic(batch, tiles_per_row), "JPEG", quality=int(quality),
                       subsampling=subsampling, optimize=True)
        decoded = from_mosaic(_decode(data, writer.out / train_file_name(i)), len(batch), tile)
        diff = np.abs(decoded.astype(np.int16) - batch.astype(np.int16))
        abs_sum += int(diff.sum(dtype=np.int64))
        max_err = max(max_err, int(diff.max(initial=0)))
        writer.put(train_file_name(i), data)
        names.append(train_file_name(i))
    return {
        "count": len(train), "batch_size": batch_size, "files": names,
        "codec": "jpeg", "lossless": False, "quality": int(quality),
        "subsampling": subsampling, "optimize": True,
        "original_images_sha256": _sha256(images),
        "labels_sha256": _labels_sha256(train.labels.numpy()),
        "mean_abs_error": abs_sum / max(1, images.size),
        "max_abs_error": max_err,
        "error_units": "8-bit levels (0-255), decoded vs original, all pixels and channels",
    }


def _pack_test(test: ImageSet, writer: _FolderWriter, tile: tuple[int, int], tiles_per_row: int,
               webp_quality: int, webp_method: int) -> dict:
    """Write the lossless WebP test mosaic after checking it decodes bit-exact (else
    :class:`PackedChecksumError`); returns the manifest's "test" section."""
    images = test.images.numpy()
    data = _encode(to_mosaic(images, tiles_per_row), "WEBP", lossless=True,
                   quality=int(webp_quality), method=int(webp_method))
    decoded = from_mosaic(_decode(data, writer.out / TEST_NAME), len(test), tile)
    original_sha = _sha256(images)
    if _sha256(decoded) != original_sha:
        raise PackedChecksumError(
            f"the lossless WebP of the test split does not decode bit-exact with this Pillow "
            f"({_codec_versions()}): pack with another Pillow build"
        )
    writer.put(TEST_NAME, data)
    return {
        "count": len(test), "files": [TEST_NAME], "codec": "webp", "lossless": True,
        "webp_quality": int(webp_quality), "webp_method": int(webp_method),
        "original_images_sha256": original_sha,
        "labels_sha256": _labels_sha256(test.labels.numpy()),
    }


def _labels_file(labels: dict[str, np.ndarray]) -> bytes:
    """The labels of each split as a compressed .npz (uint8 where they fit, else int64)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{
        split: lab.astype(np.uint8 if lab.size == 0 or 0 <= lab.min() <= lab.max() <= 255
                          else np.int64)
        for split, lab in labels.items()
    })
    return buffer.getvalue()


def pack_image_sets(train: ImageSet | None, test: ImageSet | None, out_dir: str | Path, *,
                    quality: int = 90, subsampling: str = "4:4:4", batch_size: int = 10_000,
                    tiles_per_row: int = 100, webp_quality: int = 100,
                    webp_method: int = 4) -> dict:
    """Pack ``train`` (JPEG mosaics, lossy) and/or ``test`` (one lossless WebP) into ``out_dir``.

    ``train``/``test`` are :class:`ImageSet` s of uint8 (N, 3, H, W); either may be None to leave
    that split out. ``quality`` (1-100) and ``subsampling`` ("4:4:4", "4:2:2", "4:2:0") set the
    JPEG encoder (Pillow, ``optimize=True``); ``batch_size`` images go into each train mosaic;
    ``webp_quality`` (0-100) and ``webp_method`` (0-6) trade lossless WebP encode time for size
    (100 and 4: 17.1 MB for the CIFAR-10 test set; 0 and 0: 17.8 MB, ~10x faster). The test
    mosaic is decoded again and must equal the original bit for bit, else
    :class:`PackedChecksumError`. Every file is written atomically; an existing manifest is
    removed first and the new one written last. Returns the manifest (see the module docstring).
    """
    class_names, tile = _check_pack_settings(train, test, quality, subsampling, batch_size,
                                             tiles_per_row)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # the folder is incomplete until the end
    writer = _FolderWriter(out)
    manifest: dict = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": "cifar10",
        "class_names": class_names,
        "tile": {
            "height": tile[0], "width": tile[1], "channels": 3, "tiles_per_row": tiles_per_row,
            "order": "tile k at tile row k // tiles_per_row, tile column k % tiles_per_row",
            "padding": "black (zero) tiles after the last image",
        },
        "codecs": _codec_versions(),
        "labels_file": LABELS_NAME,
        "files": writer.files,
    }
    labels: dict[str, np.ndarray] = {}
    if train is not None:
        manifest["train"] = _pack_train(train, writer, tile, quality, subsampling, batch_size,
                                        tiles_per_row)
        labels["train"] = train.labels.numpy()
    if test is not None:
        manifest["test"] = _pack_test(test, writer, tile, tiles_per_row, webp_quality,
                                      webp_method)
        labels["test"] = test.labels.numpy()
    writer.put(LABELS_NAME, _labels_file(labels))
    write_manifest(out, manifest)
    return manifest


def pack_cifar10(root: str | Path | None, out_dir: str | Path, quality: int = 90,
                 subsampling: str = "4:4:4", splits: Sequence[str] = SPLITS, **options) -> dict:
    """Pack the original CIFAR-10 under ``root`` (see :func:`resolve_data_root`) into ``out_dir``.

    ``splits`` chooses what to pack ("train", "test" or both); ``options`` go to
    :func:`pack_image_sets`. ``root`` must hold the original ``cifar-10-batches-py``, not a packed
    folder (that would JPEG-encode the train images twice). Returns the manifest.
    """
    root_path = resolve_data_root(root)
    if (root_path / MANIFEST_NAME).is_file():
        raise DataNotFoundError(f"{root_path} is a packed folder: pack from the original "
                                "cifar-10-batches-py (--data-root of the original data)")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise DataNotFoundError(f"unknown splits {unknown or list(splits)}: use train and/or test")
    sets = {split: read_cifar10(split, root_path) for split in splits}
    return pack_image_sets(sets.get("train"), sets.get("test"), out_dir, quality=quality,
                           subsampling=subsampling, **options)


# ----------------------------------------------------------------------------- loading


def _read_verified(out: Path, name: str, manifest: dict) -> bytes:
    """Bytes of ``out``/``name``, after checking them against the manifest's sha256."""
    entry = manifest.get("files", {}).get(name)
    path = out / name
    if not isinstance(entry, dict) or "sha256" not in entry:
        raise DataNotFoundError(f"{out / MANIFEST_NAME} records no sha256 for {name}: "
                                f"{_repack_hint(out)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataNotFoundError(f"cannot read packed file {path} ({reason}): "
                                f"{_repack_hint(out)}") from None
    actual = _sha256(data)
    if actual != entry["sha256"]:
        raise PackedChecksumError(
            f"packed file {path} has sha256 {actual[:16]}…, {MANIFEST_NAME} records "
            f"{entry['sha256'][:16]}…: it is corrupt or from another pack; {_repack_hint(out)}"
        )
    return data


def load_packed(out_dir: str | Path, split: str = "test") -> ImageSet:
    """Split ``split`` of the packed CIFAR-10 in ``out_dir`` as an :class:`ImageSet`.

    Images are uint8 (N, 3, 32, 32), labels int64 (N,), in dataset order. Every file's sha256 is
    checked before it is decoded; the test images (lossless) must then hash to the recorded
    sha256 of the original test set, so "cifar10-test" here is the original bit for bit. The train
    images are the decoded JPEG (lossy; mean abs error in the manifest), named
    ``cifar10-train-jpeg-q{quality}-{subsampling without colons}``. Errors are one line that names
    the fix (:class:`DataNotFoundError`, :class:`PackedChecksumError`). Not cached here:
    :func:`attrib_bench.data.load_cifar10` caches.
    """
    if split not in SPLITS:
        raise DataNotFoundError(f"unknown CIFAR-10 split {split!r}: use one of {', '.join(SPLITS)}")
    out = Path(out_dir)
    manifest = read_manifest(out)
    info = manifest.get(split)
    if not isinstance(info, dict):
        raise DataNotFoundError(
            f"the packed CIFAR-10 in {out} has no {split} split: repack with splits including "
            f"{split} (`python -m attrib_bench.data.packed pack --data-root ORIGINAL_DATA "
            f"--out {out}`)"
        )
    tile = manifest["tile"]
    tile_hw = (int(tile["height"]), int(tile["width"]))
    cols = int(tile["tiles_per_row"])
    count = int(info["count"])
    names = list(info["files"])
    per_file = [count] if split == "test" else [
        min(int(info["batch_size"]), count - j * int(info["batch_size"])) for j in range(len(names))
    ]
    label_bytes = _read_verified(out, manifest.get("labels_file", LABELS_NAME), manifest)
    parts = []
    for name, n in zip(names, per_file, strict=True):
        mosaic = _decode(_read_verified(out, name, manifest), out / name)
        rows = max(1, math.ceil(n / cols))
        expected = (rows * tile_hw[0], cols * tile_hw[1], 3)
        if mosaic.shape != expected:
            raise PackedChecksumError(
                f"{out / name} decodes to {mosaic.shape[1]} x {mosaic.shape[0]} px, expected "
                f"{expected[1]} x {expected[0]}: {_repack_hint(out)}"
            )
        parts.append(from_mosaic(mosaic, n, tile_hw))
    images = np.concatenate(parts) if len(parts) > 1 else parts[0]
    with np.load(io.BytesIO(label_bytes), allow_pickle=False) as npz:
        if split not in npz.files:
            raise DataNotFoundError(f"{out / LABELS_NAME} has no {split} labels: "
                                    f"{_repack_hint(out)}")
        labels = npz[split].astype(np.int64)
    if len(images) != count or labels.shape != (count,):
        raise PackedChecksumError(
            f"the packed {split} split in {out} has {len(images)} images and {labels.size} labels, "
            f"{MANIFEST_NAME} records {count}: {_repack_hint(out)}"
        )
    if _labels_sha256(labels) != info["labels_sha256"]:
        raise PackedChecksumError(f"the packed {split} labels in {out} differ from the recorded "
                                  f"sha256: {_repack_hint(out)}")
    if split == "test" and _sha256(images) != info["original_images_sha256"]:
        raise PackedChecksumError(
            f"the decoded test images in {out} are not bit-exact to the original test set "
            f"(sha256 differs; Pillow {_codec_versions()['pillow']}): {_repack_hint(out)}"
        )
    if split == "test":
        name = "cifar10-test"
    else:
        name = f"cifar10-train-jpeg-q{info['quality']}-{str(info['subsampling']).replace(':', '')}"
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels),
                    tuple(manifest["class_names"]), name)


# ----------------------------------------------------------------------------- CLI


def _verify(out_dir: str) -> None:
    manifest = read_manifest(out_dir)
    present = [s for s in SPLITS if isinstance(manifest.get(s), dict)]
    for split in present:
        ds = load_packed(out_dir, split)
        info = manifest[split]
        if split == "test":
            detail = "bit-exact to the original test set (sha256 checked)"
        else:
            detail = (f"lossy JPEG q{info['quality']} {info['subsampling']}, mean abs error "
                      f"{info['mean_abs_error']:.3f} / 255, max {info['max_abs_error']}")
        print(f"{split}: {ds.name}, {len(ds)} images {tuple(ds.images.shape[1:])}, "
              f"{ds.num_classes} classes; {detail}")
    print(f"ok: {out_dir} ({', '.join(present)}); every file matches its sha256")


def main(argv: Sequence[str] | None = None) -> int:
    """``pack`` or ``verify`` a packed CIFAR-10 folder; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m attrib_bench.data.packed",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="pack the original CIFAR-10 into a folder")
    pack.add_argument("--data-root", default=None,
                      help="folder holding cifar-10-batches-py (default: $ATTRIB_BENCH_DATA, "
                           "else ../shared/data)")
    pack.add_argument("--out", required=True, help="packed folder to write")
    pack.add_argument("--quality", type=int, default=90, help="JPEG quality of the train split")
    pack.add_argument("--subsampling", choices=SUBSAMPLINGS, default="4:4:4")
    pack.add_argument("--splits", default="train,test", help="comma-separated: train,test")
    verify = sub.add_parser("verify", help="check every file and decode every split")
    verify.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            splits = [s for s in args.splits.split(",") if s]
            manifest = pack_cifar10(args.data_root, args.out, args.quality, args.subsampling,
                                    splits=splits)
            total = sum(f["bytes"] for f in manifest["files"].values())
            print(f"packed {', '.join(splits)} into {args.out}: {total / 1e6:.1f} MB")
            if "train" in manifest:
                print(f"train: mean abs error {manifest['train']['mean_abs_error']:.3f} / 255")
        else:
            _verify(args.out_dir)
    except AttribBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
