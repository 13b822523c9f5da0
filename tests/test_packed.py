"""Tests for attrib_bench.data.packed: CIFAR-10 as JPEG train mosaics and a lossless WebP test
mosaic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attrib_bench.core.errors import ChecksumError, DataNotFoundError
from attrib_bench.data import ImageSet, load_cifar10, resolve_data_root
from attrib_bench.data.packed import (
    MANIFEST_NAME,
    PackedChecksumError,
    from_mosaic,
    load_packed,
    main,
    pack_cifar10,
    pack_image_sets,
    to_mosaic,
)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
BATCH, COLS = 30, 8  # 30 tiles, 8 per row: 4 rows, the last one ragged (6 tiles + 2 padding)


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """uint8 (n, 3, 32, 32) images that JPEG compresses well: upsampled 4x4 noise, each distinct."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    fine = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear",
                                           align_corners=False)
    return (fine * 255).round().to(torch.uint8)


def image_set(images: torch.Tensor, seed: int, name: str) -> ImageSet:
    labels = torch.randint(0, 10, (len(images),), generator=torch.Generator().manual_seed(seed))
    return ImageSet(images, labels, CLASSES, name)


@pytest.fixture(scope="module")
def tiny():
    """75 smooth train images (batches of 30, 30, 15) and 50 noisy test images (ragged rows)."""
    train = image_set(smooth_images(75, 1), 2, "tiny-train")
    noise = torch.randint(0, 256, (50, 3, 32, 32), generator=torch.Generator().manual_seed(3),
                          dtype=torch.uint8)
    return train, image_set(noise, 4, "tiny-test")


@pytest.fixture()
def packed(tiny, tmp_path):
    train, test = tiny
    manifest = pack_image_sets(train, test, tmp_path, quality=90, subsampling="4:4:4",
                               batch_size=BATCH, tiles_per_row=COLS, webp_quality=0, webp_method=0)
    return tmp_path, manifest


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "tensor(" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------------- mosaics


def test_mosaic_places_tile_k_at_row_k_div_cols_col_k_mod_cols():
    images = torch.arange(11, dtype=torch.uint8)[:, None, None, None].expand(11, 3, 2, 2).numpy()
    mosaic = to_mosaic(images, 4)
    assert mosaic.shape == (3 * 2, 4 * 2, 3)
    for k in range(11):
        r, c = k // 4, k % 4
        assert (mosaic[r * 2:(r + 1) * 2, c * 2:(c + 1) * 2] == k).all()
    assert (mosaic[4:, 6:] == 0).all()  # the padding tile after the last image
    assert np.array_equal(from_mosaic(mosaic, 11, (2, 2)), images)


# ----------------------------------------------------------------------------- round trip


def test_files_and_manifest(packed):
    out, manifest = packed
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([MANIFEST_NAME, "labels.npz", "test.webp", "train-1.jpg",
                            "train-2.jpg", "train-3.jpg"])
    on_disk = json.loads((out / MANIFEST_NAME).read_text())
    assert on_disk == manifest
    assert manifest["format_version"] == 1 and manifest["class_names"] == list(CLASSES)
    assert manifest["train"]["count"] == 75 and manifest["test"]["count"] == 50
    assert manifest["train"]["quality"] == 90 and manifest["train"]["subsampling"] == "4:4:4"
    assert manifest["tile"]["tiles_per_row"] == COLS
    with Image.open(out / "train-1.jpg") as im:  # 30 tiles: 4 rows of 8, the last ragged
        assert im.size == (COLS * 32, 4 * 32) and im.format == "JPEG"
    with Image.open(out / "train-3.jpg") as im:  # the last batch holds 15 images: 2 rows
        assert im.size == (COLS * 32, 2 * 32)
    with Image.open(out / "test.webp") as im:  # 50 tiles: 7 rows
        assert im.size == (COLS * 32, 7 * 32) and im.format == "WEBP"
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_test_split_round_trips_bit_exact(packed, tiny):
    out, _ = packed
    ds = load_packed(out, "test")
    assert ds.name == "cifar10-test" and ds.class_names == CLASSES
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (50, 3, 32, 32)
    assert torch.equal(ds.images, tiny[1].images)
    assert ds.labels.dtype == torch.int64 and torch.equal(ds.labels, tiny[1].labels)


def test_train_split_is_close_and_keeps_the_tile_order(packed, tiny):
    out, manifest = packed
    ds = load_packed(out, "train")
    original = tiny[0]
    assert ds.name == "cifar10-train-jpeg-q90-444" and len(ds) == 75
    assert torch.equal(ds.labels, original.labels)
    diff = (ds.images.float() - original.images.float()).abs()
    assert diff.mean().item() < 2.0  # smooth images at q90 4:4:4
    assert manifest["train"]["mean_abs_error"] == pytest.approx(diff.mean().item(), rel=1e-6)
    assert manifest["train"]["max_abs_error"] == int(diff.max().item())
    # image j of the packed set is nearest to original j: tile k of batch i is image i*30 + k
    dist = (ds.images.float().flatten(1)[:, None] - original.images.float().flatten(1)[None])
    nearest = dist.abs().mean(-1).argmin(1)
    assert torch.equal(nearest, torch.arange(75))


def test_lower_quality_is_smaller_and_named_for_it(tiny, tmp_path):
    train, _ = tiny
    hi = pack_image_sets(train, None, tmp_path / "hi", batch_size=BATCH, tiles_per_row=COLS)
    lo = pack_image_sets(train, None, tmp_path / "lo", quality=75, subsampling="4:2:0",
                         batch_size=BATCH, tiles_per_row=COLS)
    size = lambda m: sum(f["bytes"] for n, f in m["files"].items() if n.endswith(".jpg"))  # noqa: E731
    assert size(lo) < size(hi)
    assert load_packed(tmp_path / "lo", "train").name == "cifar10-train-jpeg-q75-420"


def test_load_cifar10_uses_the_packed_folder(packed, tiny):
    out, _ = packed
    test = load_cifar10("test", root=out)
    assert test.name == "cifar10-test" and torch.equal(test.images, tiny[1].images)
    assert load_cifar10("test", root=out) is test  # cached per process
    assert load_cifar10("train", root=str(out)).name == "cifar10-train-jpeg-q90-444"


# ----------------------------------------------------------------------------- errors


def test_a_flipped_byte_is_a_one_line_checksum_error(packed):
    out, _ = packed
    data = bytearray((out / "test.webp").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "test.webp").write_bytes(bytes(data))
    with pytest.raises(PackedChecksumError) as exc:
        load_packed(out, "test")
    message = one_line(exc)
    assert "test.webp" in message and "sha256" in message and "repack" in message
    assert isinstance(exc.value, ChecksumError) and isinstance(exc.value, DataNotFoundError)
    load_packed(out, "train")  # the train files are untouched


def test_decoded_test_pixels_must_match_the_original_sha256(packed):
    out, manifest = packed
    manifest["test"]["original_images_sha256"] = "0" * 64
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(PackedChecksumError, match="not bit-exact") as exc:
        load_packed(out, "test")
    one_line(exc)


def test_missing_pieces_are_one_line_errors(tiny, tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar10-packed.json is missing") as exc:
        load_packed(tmp_path, "test")
    one_line(exc)
    pack_image_sets(None, tiny[1], tmp_path, tiles_per_row=COLS, webp_method=0)
    with pytest.raises(DataNotFoundError, match="no train split") as exc:
        load_packed(tmp_path, "train")
    one_line(exc)
    (tmp_path / "labels.npz").unlink()
    with pytest.raises(DataNotFoundError, match="labels.npz") as exc:
        load_packed(tmp_path, "test")
    one_line(exc)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DataNotFoundError, match="format version 99") as exc:
        load_packed(tmp_path, "test")
    one_line(exc)


def test_cli_verify(packed, capsys):
    out, _ = packed
    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bit-exact" in text and "cifar10-train-jpeg-q90-444" in text and "ok:" in text
    (out / "train-2.jpg").write_bytes(b"not a jpeg")
    assert main(["verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "train-2.jpg" in err


def test_pack_refuses_a_packed_root_and_bad_settings(packed, tiny, tmp_path):
    out, _ = packed
    with pytest.raises(DataNotFoundError, match="packed folder"):
        pack_cifar10(out, tmp_path / "again")
    with pytest.raises(ValueError, match="subsampling"):
        pack_image_sets(tiny[0], None, tmp_path / "x", subsampling="4:1:1")
    with pytest.raises(ValueError, match="quality"):
        pack_image_sets(tiny[0], None, tmp_path / "x", quality=0)


# ----------------------------------------------------------------------------- real CIFAR-10

REAL = resolve_data_root()


@pytest.mark.real
@pytest.mark.skipif(not (REAL / "cifar-10-batches-py" / "test_batch").is_file(),
                    reason=f"real CIFAR-10 not found under {REAL} (set ATTRIB_BENCH_DATA)")
def test_real_test_split_packs_bit_exact(tmp_path):
    # the fastest lossless WebP settings (~2 s); the exactness does not depend on them
    manifest = pack_cifar10(REAL, tmp_path, splits=("test",), webp_quality=0, webp_method=0)
    assert "train" not in manifest and manifest["test"]["count"] == 10_000
    original = load_cifar10("test")
    packed_test = load_cifar10("test", root=tmp_path)
    assert packed_test is not original and packed_test.name == original.name == "cifar10-test"
    assert torch.equal(packed_test.images, original.images)
    assert torch.equal(packed_test.labels, original.labels)
    assert packed_test.class_names == original.class_names == CLASSES
    assert manifest["files"]["test.webp"]["bytes"] < 20e6
