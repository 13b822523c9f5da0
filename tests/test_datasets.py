"""The dataset registry and its readers (issue 18, point 1): TinyImageNet, ImageFolder and ImageNet
trees built here with PIL, file-backed image sets (decoded on demand, identical with and without
worker processes, digests that see a changed file), and the CLI's --dataset options."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from attrib_bench.cli import cli
from attrib_bench.core.errors import DataNotFoundError, SettingError, UnknownNameError
from attrib_bench.core.registry import MODELS, list_datasets
from attrib_bench.data import (
    FileImageSet,
    ImageSet,
    dataset_options,
    evaluation_split,
    get_dataset,
)
from attrib_bench.data.imageset import ResizeCrop, tensor_digest

WNIDS = ("n01443537", "n01629819", "n01641577")
WORDS = {"n01443537": "goldfish, Carassius auratus", "n01629819": "European fire salamander",
         "n01641577": "bullfrog, Rana catesbeiana", "n09999999": "unused, other"}
#: ImageFolder classes: (name, [(file, (width, height))]); sizes vary, extensions in any case.
FOLDER = {"cat": [("a.png", (40, 30)), ("b.JPG", (50, 50)), ("deep/c.jpeg", (37, 61))],
          "dog": [("d.bmp", (64, 48)), ("e.webp", (36, 36))],
          "emu": [("f.PNG", (90, 45)), ("g.jpg", (45, 90))]}


def _image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    """A random ``size`` (width, height) image at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.randint(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}
    image.save(path, fmt[path.suffix.lower()], **({"lossless": True}
                                                  if path.suffix.lower() == ".webp" else {}))


def _pil_uint8(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.fixture()
def tiny_root(tmp_path: Path) -> Path:
    """A TinyImageNet tree: 3 classes, 2 train images each (one greyscale), 4 val images."""
    folder = tmp_path / "tiny-imagenet-200"
    folder.mkdir()
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WORDS.items()))
    seed = 0
    for wnid in WNIDS:
        for i in range(2):
            mode = "L" if (wnid, i) == (WNIDS[1], 1) else "RGB"
            _image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (64, 64), seed, mode)
            seed += 1
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val_labels = [WNIDS[2], WNIDS[0], WNIDS[1], WNIDS[0]]
    lines = []
    for i, wnid in enumerate(val_labels):
        _image(folder / "val" / "images" / f"val_{i}.JPEG", (64, 64), 100 + i)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    _image(folder / "test" / "images" / "test_0.JPEG", (64, 64), 200)  # unlabelled: not read
    return tmp_path


@pytest.fixture()
def folder_root(tmp_path: Path) -> Path:
    """An ImageFolder tree of one split: 3 classes, 7 images of various sizes, a stray file."""
    root = tmp_path / "flowers"
    seed = 0
    for name, files in FOLDER.items():
        for file, size in files:
            _image(root / name / file, size, seed)
            seed += 1
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def _folder(root: Path, **options) -> FileImageSet:
    return get_dataset("imagefolder", "val", root, **{"image_size": 32, "resize": 36, **options})


# ----------------------------------------------------------------------------- registry


def test_builtins_are_registered_with_their_metadata():
    assert list_datasets() == ["cifar10", "imagefolder", "imagenet", "tinyimagenet"]
    assert [evaluation_split(n) for n in list_datasets()] == ["test", "val", "val", "val"]
    assert dataset_options("imagenet") == {"image_size": 224, "resize": 256, "classes": None}
    assert dataset_options("imagefolder", {"image_size": "32"}, from_text=True) == {
        "image_size": 32, "resize": 256}
    assert dataset_options("cifar10") == {}


def test_unknown_names_and_options_are_one_line():
    with pytest.raises(UnknownNameError, match="did you mean tinyimagenet") as info:
        get_dataset("tinyimagnet")
    assert "\n" not in str(info.value)
    with pytest.raises(SettingError, match="no option 'imgsize': did you mean image_size"):
        dataset_options("imagefolder", {"imgsize": 32})
    with pytest.raises(SettingError, match="image_size must be int, got 'big'"):
        dataset_options("imagefolder", {"image_size": "big"}, from_text=True)
    with pytest.raises(SettingError, match="root is not an option: use --data-root"):
        dataset_options("imagenet", {"root": "/x"})


# ----------------------------------------------------------------------------- TinyImageNet


def test_tinyimagenet_labels_names_and_pixels(tiny_root):
    train = get_dataset("tinyimagenet", "train", tiny_root)
    assert isinstance(train, ImageSet) and train.name == "tinyimagenet-train"
    assert train.images.shape == (6, 3, 64, 64) and train.image_size == (64, 64)
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.class_names == ("goldfish", "European fire salamander", "bullfrog")
    folder = tiny_root / "tiny-imagenet-200"
    grey = _pil_uint8(folder / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_1.JPEG")
    assert torch.equal(train.images[3], grey)  # greyscale decoded as RGB
    assert torch.equal(train.images[3, 0], train.images[3, 2])
    assert get_dataset("tinyimagenet", "train", tiny_root) is train  # cached per process


def test_tinyimagenet_test_is_the_labelled_val_split(tiny_root):
    test = get_dataset("tinyimagenet", "test", tiny_root)
    assert test.name == "tinyimagenet-val" and len(test) == 4
    assert test is get_dataset("tinyimagenet", "val", tiny_root)
    assert test.labels.tolist() == [2, 0, 1, 0]  # val_annotations.txt's order and wnids
    val_1 = _pil_uint8(tiny_root / "tiny-imagenet-200" / "val" / "images" / "val_1.JPEG")
    assert torch.equal(test.images[1], val_1)
    # pointing --data-root at the tiny-imagenet-200 folder itself works too
    inside = get_dataset("tinyimagenet", "val", tiny_root / "tiny-imagenet-200")
    assert torch.equal(inside.images, test.images)


def test_tinyimagenet_missing_layout_is_one_line(tmp_path, tiny_root):
    with pytest.raises(DataNotFoundError) as info:
        get_dataset("tinyimagenet", "val", tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message and "tiny-imagenet-200/ with wnids.txt" in message
    assert "val/val_annotations.txt" in message and "--data-root" in message
    (tiny_root / "tiny-imagenet-200" / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DataNotFoundError, match="is incomplete: val/images/val_2.JPEG, listed "
                                                "in val_annotations.txt, is missing: restore it"):
        get_dataset("tinyimagenet", "val", tiny_root)
    with pytest.raises(DataNotFoundError, match="use one of train, val, test"):
        get_dataset("tinyimagenet", "validation", tiny_root)


# ----------------------------------------------------------------------------- ImageFolder


def test_imagefolder_classes_labels_and_files(folder_root):
    data = _folder(folder_root)
    assert isinstance(data, FileImageSet) and not hasattr(data, "images")
    assert data.class_names == ("cat", "dog", "emu") and data.num_classes == 3
    assert data.files == ("cat/a.png", "cat/b.JPG", "cat/deep/c.jpeg", "dog/d.bmp",
                          "dog/e.webp", "emu/f.PNG", "emu/g.jpg")
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert data.image_size == (32, 32) and data.nbytes == 7 * 3 * 32 * 32
    assert data.uint8(slice(None)).shape == (7, 3, 32, 32)
    assert data.uint8(2).shape == (3, 32, 32)
    assert data.uint8(torch.tensor([[0, 6], [3, 3]])).shape == (2, 2, 3, 32, 32)
    head = data.subset(2)
    assert len(head) == 2 and head.files == data.files[:2] and data.subset(None) is data
    assert data.float_images(np.array([1, 4])).dtype == torch.float32


def test_transform_equals_torchvision_resize_and_centre_crop(folder_root):
    from torchvision import transforms

    reference = transforms.Compose([transforms.Resize(36), transforms.CenterCrop(32),
                                    transforms.PILToTensor()])
    data = _folder(folder_root)
    ours = data.uint8(slice(None)).int()
    for i, file in enumerate(data.files):
        with Image.open(folder_root / file) as image:
            expected = reference(image.convert("RGB")).int()
        assert expected.shape == (3, 32, 32)
        assert (ours[i] - expected).abs().max() <= 1, file
    assert ResizeCrop(32, 36).resized_size(37, 61) == (36, 59)  # int(36 * 61 / 37)


def test_batches_with_and_without_workers_are_identical(folder_root):
    data = _folder(folder_root)
    single = list(data.batches(3, workers=0))
    pooled = list(data.batches(3, workers=2))
    assert [len(b) for b, _ in single] == [3, 3, 1] == [len(b) for b, _ in pooled]
    for (a, la), (b, lb) in zip(single, pooled, strict=True):
        assert a.dtype == torch.uint8 and torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(torch.cat([b for b, _ in single]), data.uint8(slice(None)))
    memory = data.in_memory()
    assert isinstance(memory, ImageSet) and torch.equal(memory.images, data.uint8(slice(None)))


def test_digest_follows_the_files_and_the_transform(folder_root):
    data = _folder(folder_root)
    before = data.digest()
    assert _folder(folder_root).digest() == before
    assert _folder(folder_root, image_size=24).digest() != before
    target = folder_root / "dog" / "d.bmp"
    stat = target.stat()
    _image(target, (64, 48), seed=999)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert data.digest() != before  # same object: the digest reads the files again
    memory = data.in_memory()
    assert memory.digest() == tensor_digest(memory.images, memory.labels)


def test_split_folders_and_their_aliases(tmp_path, folder_root):
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for name in ("a", "b"):
            _image(tree / split / name / "x.png", (40, 40), 1)
    test = get_dataset("imagefolder", "val", tree, image_size=32, resize=36)
    assert Path(test.root) == tree / "test" and test.class_names == ("a", "b")
    only_train = tmp_path / "only-train"
    _image(only_train / "train" / "a" / "x.png", (40, 40), 1)
    with pytest.raises(DataNotFoundError, match="has train/ but no val/") as info:
        get_dataset("imagefolder", "val", only_train)
    assert "\n" not in str(info.value)
    with pytest.raises(DataNotFoundError, match="no image folder at"):
        get_dataset("imagefolder", "val", tmp_path / "nowhere")
    with pytest.raises(SettingError, match="resize 20 is smaller than the crop image_size 32"):
        _folder(folder_root, resize=20)
    with pytest.raises(SettingError, match="dataset option image_size must be an int >= 1, got "
                                           "0: pass --dataset-option image_size=N"):
        _folder(folder_root, image_size=0)


def test_splits_share_one_class_map(tmp_path):
    """train/{cat,dog,fish} and val/{dog,fish}: val labels dog 1 and fish 2, as train does."""
    tree = tmp_path / "tree"
    for split, names in (("train", ("cat", "dog", "fish")), ("val", ("dog", "fish"))):
        for name in names:
            _image(tree / split / name / "x.png", (40, 40), 1)
    train = get_dataset("imagefolder", "train", tree, image_size=32, resize=36)
    val = get_dataset("imagefolder", "val", tree, image_size=32, resize=36)
    assert train.class_names == val.class_names == ("cat", "dog", "fish")
    assert train.labels.tolist() == [0, 1, 2] and val.labels.tolist() == [1, 2]
    assert val.num_classes == 3


def test_a_tree_without_splits_is_no_train_split(folder_root):
    """Training on DIR/<class>/ would evaluate on its own training images: one line."""
    with pytest.raises(DataNotFoundError, match="has no train/ folder: training needs "
                                                "DIR/train/<class>/") as info:
        get_dataset("imagefolder", "train", folder_root)
    assert "\n" not in str(info.value)
    assert len(_folder(folder_root)) == 7  # evaluating on it is fine


def _split_tree(folder_root: Path, tmp_path: Path) -> Path:
    import shutil

    tree = tmp_path / "split-tree"
    for split in ("train", "val"):
        shutil.copytree(folder_root, tree / split)
    return tree


def test_train_gives_a_library_model_the_datasets_classes(folder_root, tmp_path):
    """`train --model torchvision:resnet18` on 3 classes trains a 3-class head (random init),
    exports it under a file name without ":", and `eval --checkpoint` reads it back."""
    tree = _split_tree(folder_root, tmp_path)
    data = ["--dataset", "imagefolder", "--dataset-option", "image_size=32",
            "--dataset-option", "resize=36", "--data-root", str(tree)]
    out = tmp_path / "train"
    trained = CliRunner().invoke(cli, ["train", "--model", "torchvision:resnet18", *data,
                                       "--epochs", "1", "--batch-size", "4", "--quiet",
                                       "--out", str(out)])
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    weights = out / "torchvision_resnet18.safetensors"
    assert weights.is_file()
    evaluated = CliRunner().invoke(cli, ["eval", "--model", "torchvision:resnet18",
                                         "--checkpoint", str(weights), *data])
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    assert "(7 images)" in evaluated.output


def test_train_and_eval_refuse_a_head_of_another_size(folder_root, tmp_path):
    """A plugin model with 5 outputs on 3 classes: one line each, before any step or pass."""
    tree = _split_tree(folder_root, tmp_path)
    MODELS.add("five-net", lambda pretrained=False, checkpoint=None: _tiny_model(5))
    try:
        data = ["--dataset", "imagefolder", "--dataset-option", "image_size=32",
                "--dataset-option", "resize=36", "--data-root", str(tree)]
        trained = CliRunner().invoke(cli, ["train", "--model", "five-net", *data, "--epochs",
                                           "1", "--batch-size", "4", "--out",
                                           str(tmp_path / "t")])
        assert trained.exit_code == 1, trained.output
        assert ("five-net outputs 5 classes, imagefolder-split-tree-train-32px has 3: build it "
                "with num_classes=3") in trained.output
        evaluated = CliRunner().invoke(cli, ["eval", "--model", "five-net", *data])
        assert evaluated.exit_code == 2, evaluated.output
        assert "five-net outputs 5 classes, imagefolder-split-tree-val-32px has 3" in \
            evaluated.output
    finally:
        MODELS.remove("five-net")
    declared = CliRunner().invoke(cli, ["eval", "--model", "resnet56", "--dataset",
                                        "imagefolder", "--data-root", str(tree)])
    assert declared.exit_code == 1, declared.output
    assert ("resnet56 is built for 10 classes at 32 px, imagefolder has 3 classes at 224x224 "
            "px: pass --dataset cifar10 --data-root DIR (its own data)") in declared.output


def test_imagenet_layout_classes_and_names(tmp_path):
    root = tmp_path / "imagenet"
    for i, wnid in enumerate(WNIDS):
        _image(root / "val" / wnid / f"ILSVRC2012_val_{i:08d}.JPEG", (80, 60), i)
    assert get_dataset("imagenet", "val", root).class_names == WNIDS  # no mapping: wnids
    torch.save(({w: tuple(n.split(", ")) for w, n in WORDS.items()}, []), root / "meta.bin")
    assert get_dataset("imagenet", "test", root).class_names[0] == "goldfish"
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n.upper()}\n" for w, n in WORDS.items()))
    two = get_dataset("imagenet", "val", root, classes=2, image_size=32, resize=40)
    assert two.class_names == ("GOLDFISH", "EUROPEAN FIRE SALAMANDER")
    assert two.labels.tolist() == [0, 1] and two.name == "imagenet-val-2cls-32px"
    assert two.uint8(slice(None)).shape == (2, 3, 32, 32)
    with pytest.raises(DataNotFoundError, match="classes=5 but .* has 3 class folders"):
        get_dataset("imagenet", "val", root, classes=5)
    with pytest.raises(DataNotFoundError, match="ImageNet not found: .*train is missing"):
        get_dataset("imagenet", "train", root)


# ----------------------------------------------------------------------------- CLI and runs


def test_cli_lists_the_datasets():
    result = CliRunner().invoke(cli, ["list", "datasets"])
    assert result.exit_code == 0, result.output
    assert "datasets (4):" in result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[2:]}
    assert set(rows) == {"cifar10", "imagefolder", "imagenet", "tinyimagenet"}
    assert "64x64" in rows["tinyimagenet"] and "200" in rows["tinyimagenet"]
    assert "localisation.num_grids=250" in rows["tinyimagenet"]
    assert "image_size=224, resize=256" in rows["imagefolder"]
    assert "datasets (4):" in CliRunner().invoke(cli, ["list"]).output


def test_cli_bad_dataset_option_is_one_line(folder_root):
    for option, fragment in (("image_size", "use KEY=VALUE"),
                             ("image_size=big", "image_size must be int"),
                             ("imagesize=3", "did you mean image_size")):
        result = CliRunner().invoke(cli, ["eval", "--model", "resnet56", "--dataset",
                                          "imagefolder", "--dataset-option", option,
                                          "--data-root", str(folder_root)])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], result.output


def test_train_refuses_a_model_built_for_other_data_in_one_line(folder_root, tmp_path):
    """xl-coda (TinyImageNet: 200 classes, 64 px) on 3 classes at 32 px: the fix is named
    before any step runs."""
    result = CliRunner().invoke(cli, ["train", "--model", "xl-coda", "--dataset", "imagefolder",
                                      "--dataset-option", "image_size=32",
                                      "--dataset-option", "resize=32",
                                      "--data-root", str(_split_tree(folder_root, tmp_path)),
                                      "--epochs", "1", "--out", str(tmp_path / "t")])
    assert result.exit_code == 1, result.output
    assert ("xl-coda is built for 200 classes at 64 px, imagefolder has 3 classes at 32x32 px: "
            "pass --dataset tinyimagenet --data-root DIR (its own data)") in result.output
    assert "Traceback" not in result.output and not (tmp_path / "t" / "checkpoint.pt").exists()


def _tiny_model(num_classes: int = 3):
    from attrib_bench.models.resnet_cifar import CifarResNet

    torch.manual_seed(0)
    return CifarResNet(1, num_classes=num_classes).eval()


def test_run_on_a_file_backed_set(folder_root, tmp_path):
    from attrib_bench.runners.benchmark import run

    data = _folder(folder_root)
    rows = run({"tiny": _tiny_model()}, "grad", "pixel-removal", dataset=data, n_samples=3,
               chunk_size=2, out=tmp_path / "run", progress=False,
               metric_hparams={"pixel-removal": {"steps": 4, "baseline": "mean"}})
    assert len(rows) and np.isfinite(rows["value"]).all()
    assert sorted(rows["sample"].unique()) == [0, 1, 2]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    mean = manifest["samples"]["tiny/pixel-removal"]["mean"]
    expected = data.uint8(slice(None)).double().mean(dim=(0, 2, 3)) / 255
    np.testing.assert_allclose(mean, expected.numpy(), rtol=1e-12)


def test_cli_run_with_dataset_options(folder_root, tmp_path):
    MODELS.add("tiny-folder-net", lambda pretrained=False, checkpoint=None: _tiny_model())
    try:
        out = tmp_path / "cli"
        result = CliRunner().invoke(cli, [
            "run", "--model", "tiny-folder-net", "--method", "grad", "--metric",
            "pixel-removal", "--dataset", "imagefolder", "--dataset-option", "image_size=32",
            "--dataset-option", "resize=36", "--data-root", str(folder_root),
            "--n-samples", "2", "--set", "pixel-removal.steps=4", "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        config = json.loads((out / "manifest.json").read_text())["config"]
        assert (config["dataset"], config["split"]) == ("imagefolder", "val")
        assert config["dataset_options"] == {"image_size": 32, "resize": 36}
    finally:
        MODELS.remove("tiny-folder-net")


def test_training_on_a_file_backed_set_equals_training_in_memory(folder_root, tmp_path):
    from attrib_bench.runners.train import TrainConfig, train

    data = _folder(folder_root)
    MODELS.add("tiny-folder-net", lambda pretrained=False: _tiny_model().train())
    try:
        config = TrainConfig(model="tiny-folder-net", epochs=2, batch_size=2, eval_every=0)
        states = []
        for i, train_set in enumerate((data, data.in_memory())):
            model = train(config, train_set, train_set.subset(3), tmp_path / f"run{i}",
                          progress=False)
            states.append(model.state_dict())
    finally:
        MODELS.remove("tiny-folder-net")
    for key, value in states[0].items():
        torch.testing.assert_close(value, states[1][key], rtol=0, atol=0, msg=key)
