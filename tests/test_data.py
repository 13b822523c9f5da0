"""Tests for attrib_bench.data: data root, CIFAR-10 loading, and the CoDA-Nets grid protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import attrib_bench.data as data
from attrib_bench.core.errors import DataNotFoundError, InputShapeError, UnknownNameError
from attrib_bench.data import ImageSet, get_dataset, load_cifar10, resolve_data_root
from attrib_bench.metrics.grids import (
    GridDataset,
    cell_slices,
    class_pools,
    compose_grids,
    sample_grids,
)

K = 10


# ----------------------------------------------------------------------------- helpers


def make_logits(targets: list[tuple[int, float]], k: int = K, wrong: dict | None = None):
    """Logits (N, k) where image i has class targets[i][0] and target logit targets[i][1].

    Every other logit is -50, except ``wrong[i] = (cls, value)`` which makes image i predicted
    as ``cls`` when ``value`` exceeds the target logit.
    """
    logits = torch.full((len(targets), k), -50.0)
    labels = torch.tensor([c for c, _ in targets], dtype=torch.int64)
    for i, (c, v) in enumerate(targets):
        logits[i, c] = v
    for i, (c, v) in (wrong or {}).items():
        logits[i, c] = v
    return logits, labels


def reference_grids(logits: torch.Tensor, labels: torch.Tensor, n: int, num_grids: int,
                    seed: int) -> list[list[int]]:
    """Independent re-implementation with plain lists and the global legacy numpy RNG."""
    rows = logits.tolist()
    labs = labels.tolist()
    k = len(rows[0])
    per_class: list[list[tuple[float, int]]] = [[] for _ in range(k)]
    for i, (row, lab) in enumerate(zip(rows, labs, strict=True)):
        if row.index(max(row)) == lab:
            per_class[lab].append((-row[lab], i))
    for entries in per_class:
        entries.sort()  # by -logit, then by index: descending logit, ties in dataset order
    pointer = [0] * k

    def available(c: int) -> bool:
        if pointer[c] >= len(per_class[c]):
            return False
        logit = -per_class[c][pointer[c]][0]
        return 1.0 / (1.0 + math.exp(-logit)) > 0.5

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        grids = []
        while sum(available(c) for c in range(k)) > n * n and len(grids) < num_grids:
            candidates = [c for c in range(k) if available(c)]
            grid = []
            for c in np.random.choice(candidates, n * n, replace=False):
                grid.append(per_class[c][pointer[c]][1])
                pointer[c] += 1
            grids.append(grid)
    finally:
        np.random.set_state(state)
    return grids


def random_problem(seed: int, n_images: int = 300, k: int = K):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n_images,), generator=gen)
    logits = torch.randn(n_images, k, generator=gen) * 2.0
    logits[torch.arange(n_images), labels] += 2.5  # mostly correct, some misclassified
    return logits, labels


def uses_per_class(indices: torch.Tensor, labels: torch.Tensor) -> dict[int, list[int]]:
    """Per class, the image indices in the order the grids used them."""
    used: dict[int, list[int]] = {}
    for i in indices.flatten().tolist():
        used.setdefault(int(labels[i]), []).append(i)
    return used


# ----------------------------------------------------------------------------- compose_grids


@pytest.mark.parametrize("n", [2, 3])
def test_compose_grids_places_cell_k_at_row_k_mod_n_col_k_div_n(n):
    h, w = 2, 3
    cells = torch.arange(n * n, dtype=torch.float32).view(1, n * n, 1, 1, 1)
    cells = cells.expand(2, n * n, 3, h, w).clone()
    cells[1] += 100  # a second grid with different values
    grids = compose_grids(cells)
    assert grids.shape == (2, 3, n * h, n * w)
    for k in range(n * n):
        block = grids[:, :, (k % n) * h:(k % n + 1) * h, (k // n) * w:(k // n + 1) * w]
        assert torch.all(block[0] == k)
        assert torch.all(block[1] == k + 100)


def test_compose_grids_2x2_by_hand():
    cells = torch.tensor([0, 1, 2, 3]).view(1, 4, 1, 1, 1)
    # column-first: [[0, 2], [1, 3]]
    assert compose_grids(cells)[0, 0].tolist() == [[0, 2], [1, 3]]


def test_compose_grids_3x3_by_hand_uint8():
    cells = torch.arange(9, dtype=torch.uint8).view(1, 9, 1, 1, 1)
    out = compose_grids(cells)
    assert out.dtype == torch.uint8
    assert out[0, 0].tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


def test_cell_slices_match_compose_grids():
    n, h, w = 3, 4, 5
    cells = torch.randint(0, 255, (1, n * n, 3, h, w), dtype=torch.uint8)
    grid = compose_grids(cells)[0]
    for k in range(n * n):
        rows, cols = cell_slices(k, n, h, w)
        assert torch.equal(grid[:, rows, cols], cells[0, k])
    assert cell_slices(5, 3, 4, 5) == (slice(8, 12), slice(5, 10))
    with pytest.raises(IndexError):
        cell_slices(9, 3, 4, 5)


def test_compose_grids_rejects_bad_shapes():
    with pytest.raises(InputShapeError):
        compose_grids(torch.zeros(1, 8, 3, 2, 2))
    with pytest.raises(InputShapeError):
        compose_grids(torch.zeros(9, 3, 2, 2))


# ----------------------------------------------------------------------------- pool & sampling


def test_class_pools_drop_misclassified_and_sort_descending_stably():
    logits, labels = make_logits(
        [(0, 1.0), (0, 3.0), (1, 2.0), (0, 3.0), (1, 100.0), (0, 2.0)],
        wrong={4: (5, 200.0)},  # image 4 is predicted as class 5
    )
    pools = class_pools(logits, labels)
    assert pools[0].tolist() == [1, 3, 5, 0]  # 3.0 (idx 1), 3.0 (idx 3: tie keeps order), 2, 1
    assert pools[1].tolist() == [2]
    assert all(len(p) == 0 for p in pools[2:])


def test_class_pools_keep_dataset_order_for_many_ties():
    # Large tie groups (an unstable sort would reorder them): logits 1 or 2, shuffled.
    values = [1.0] * 40 + [2.0] * 40
    values = [values[i] for i in np.random.RandomState(0).permutation(80)]
    logits, labels = make_logits([(0, v) for v in values])
    expected = [i for i, v in enumerate(values) if v == 2.0] + [
        i for i, v in enumerate(values) if v == 1.0
    ]
    assert class_pools(logits, labels)[0].tolist() == expected


def test_each_class_with_two_images_gives_exactly_two_3x3_grids():
    # 20 images, two per class. Grid 1 uses 9 classes, so all 10 remain available;
    # grid 2 leaves 2 images, so at most 2 classes are available and the loop stops.
    targets = [(c, 5.0 - j) for j in range(2) for c in range(K)]
    logits, labels = make_logits(targets)
    indices, classes = sample_grids(logits, labels, n=3)
    assert indices.shape == classes.shape == (2, 9)
    assert indices.dtype == classes.dtype == torch.int64
    assert len(set(indices.flatten().tolist())) == 18
    for used in uses_per_class(indices, labels).values():
        assert used == sorted(used)[: len(used)] and len(used) <= 2
        assert [float(logits[i, labels[i]]) for i in used] == [5.0, 4.0][: len(used)]


def test_one_image_per_class_gives_two_2x2_grids():
    # n=2 needs more than 4 available classes: 10 -> 6 -> 2, so exactly 2 grids of 4.
    logits, labels = make_logits([(c, 1.0) for c in range(K)])
    indices, classes = sample_grids(logits, labels, n=2)
    assert indices.shape == (2, 4)
    assert len(set(classes.flatten().tolist())) == 8
    assert torch.equal(labels[indices], classes)


def test_num_grids_caps_the_loop_and_exhausted_flag():
    targets = [(c, 5.0 - j) for j in range(2) for c in range(K)]
    logits, labels = make_logits(targets)
    images = torch.zeros(len(targets), 3, 2, 2, dtype=torch.uint8)
    iset = ImageSet(images, labels, tuple(str(c) for c in range(K)), "synthetic")
    one = GridDataset(iset, logits, n=3, num_grids=1)
    assert len(one) == 1 and one.requested == 1 and not one.exhausted
    many = GridDataset(iset, logits, n=3, num_grids=500)
    assert len(many) == 2 and many.requested == 500 and many.exhausted
    assert torch.equal(many.indices[:1], one.indices)


def test_sigmoid_half_is_not_confident():
    # Class 0's only image is correctly classified with logit 0 -> sigmoid = 0.5, not > 0.5,
    # so only 9 classes are available and no 3x3 grid can be made.
    targets = [(0, 0.0)] + [(c, 3.0) for c in range(1, K) for _ in range(3)]
    logits, labels = make_logits(targets)
    indices, _ = sample_grids(logits, labels, n=3)
    assert indices.shape == (0, 9)
    targets[0] = (0, 0.25)
    logits, labels = make_logits(targets)
    assert len(sample_grids(logits, labels, n=3)[0]) >= 1


def test_low_confidence_and_misclassified_images_never_appear():
    # Class 0: logits 4 and 2 are usable, then -0.5 (correct but sigmoid < 0.5) blocks the class.
    # Class 1 holds a misclassified image with the highest target logit.
    targets = [(0, -0.5), (0, 2.0), (0, 4.0)] + [(1, 100.0)]
    targets += [(c, 10.0 - j) for j in range(20) for c in range(1, K)]
    logits, labels = make_logits(targets, wrong={3: (7, 200.0)})
    indices, classes = sample_grids(logits, labels, n=3, seed=42)
    flat = indices.flatten().tolist()
    assert 0 not in flat and 3 not in flat
    assert uses_per_class(indices, labels)[0] == [2, 1]  # logit 4 first, then logit 2
    # The loop stops as soon as class 0 becomes unavailable, i.e. right after its 2nd use.
    assert 0 in classes[-1].tolist()
    assert sum(0 in row for row in classes.tolist()) == 2


def test_grids_use_distinct_classes_in_descending_logit_order():
    logits, labels = random_problem(0)
    indices, classes = sample_grids(logits, labels, n=3, num_grids=500)
    assert len(indices) > 5
    assert torch.equal(labels[indices], classes)
    assert torch.all(logits[indices].argmax(-1) == classes)  # only correct images
    for row in classes.tolist():
        assert len(set(row)) == 9
    assert len(set(indices.flatten().tolist())) == indices.numel()  # no image used twice
    for c, used in uses_per_class(indices, labels).items():
        target = logits[used, c]
        assert torch.all(target[:-1] >= target[1:]), f"class {c} not in descending order"
        assert torch.all(target > 0)


def test_same_seed_same_grids_different_seed_different_grids():
    logits, labels = random_problem(1)
    a, _ = sample_grids(logits, labels, seed=42)
    b, _ = sample_grids(logits, labels, seed=42)
    c, _ = sample_grids(logits, labels, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("problem_seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("seed,num_grids", [(42, 500), (0, 500), (42, 4)])
def test_matches_reference_with_global_numpy_rng(problem_seed, n, seed, num_grids):
    logits, labels = random_problem(problem_seed)
    indices, classes = sample_grids(logits, labels, n=n, num_grids=num_grids, seed=seed)
    expected = reference_grids(logits, labels, n, num_grids, seed)
    assert len(expected) > 0
    assert indices.tolist() == expected
    assert torch.equal(classes, labels[indices])


def test_sampling_validates_arguments():
    logits, labels = random_problem(0)
    with pytest.raises(ValueError, match="n must be >= 2"):
        sample_grids(logits, labels, n=1)
    with pytest.raises(ValueError, match="at least 16 classes"):
        sample_grids(logits, labels, n=4)
    with pytest.raises(InputShapeError):
        sample_grids(logits, labels[:-1])
    with pytest.raises(InputShapeError):
        sample_grids(logits[:, 0], labels)
    with pytest.raises(InputShapeError):
        sample_grids(logits, labels + 10)


# ----------------------------------------------------------------------------- GridDataset


@pytest.fixture
def synthetic_grids():
    logits, labels = random_problem(3, n_images=200)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 3, 4, 5), dtype=torch.uint8, generator=gen)
    iset = ImageSet(images, labels, tuple(f"c{c}" for c in range(K)), "synthetic")
    return iset, logits, GridDataset(iset, logits, n=3, num_grids=6, seed=42)


def test_grid_dataset_cells_hold_the_right_source_images(synthetic_grids):
    iset, logits, ds = synthetic_grids
    assert len(ds) == 6 and ds.n == 3 and ds.cell_size == (4, 5) and not ds.exhausted
    assert torch.equal(ds.indices, sample_grids(logits, iset.labels, 3, 6, 42)[0])
    for g in range(len(ds)):
        grid, classes = ds[g]
        assert grid.shape == (3, 12, 15) and grid.dtype == torch.float32
        assert 0.0 <= grid.min() and grid.max() <= 1.0
        assert torch.equal(classes, iset.labels[ds.indices[g]])
        for k in range(9):
            rows, cols = cell_slices(k, 3, 4, 5)
            src = iset.images[ds.indices[g, k]].float() / 255
            assert torch.equal(grid[:, rows, cols], src)


def test_grid_dataset_batch_agrees_with_getitem(synthetic_grids):
    _, _, ds = synthetic_grids
    grids, classes = ds.batch(slice(1, 4))
    assert grids.shape == (3, 3, 12, 15) and classes.shape == (3, 9)
    for b, i in enumerate(range(1, 4)):
        g, c = ds[i]
        assert torch.equal(grids[b], g) and torch.equal(classes[b], c)
    grids, classes = ds.batch(torch.tensor([5, 0]))
    assert torch.equal(grids[0], ds[5][0]) and torch.equal(classes[1], ds[0][1])
    assert torch.equal(ds[-1][0], ds[5][0])
    with pytest.raises(IndexError):
        ds[6]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    first, first_classes = next(iter(loader))
    assert torch.equal(first, ds.batch(slice(0, 4))[0])
    assert torch.equal(first_classes, ds.classes[:4])


def test_grid_dataset_validates_inputs(synthetic_grids):
    iset, logits, _ = synthetic_grids
    with pytest.raises(InputShapeError, match="rows"):
        GridDataset(iset, logits[:-1])
    with pytest.raises(InputShapeError, match="classes"):
        GridDataset(iset, logits[:, :9])
    with pytest.raises(ValueError):
        GridDataset(iset, logits, n=1)


# ----------------------------------------------------------------------------- ImageSet


def test_image_set_basics():
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    iset = ImageSet(images, torch.tensor([0, 1, 1, 0]), ("a", "b"), "tiny")
    assert len(iset) == 4 and iset.num_classes == 2
    x = iset.float_images()
    assert x.dtype == torch.float32 and x.shape == (4, 3, 2, 2)
    assert torch.allclose(x * 255, images.float())
    assert iset.float_images(1).shape == (3, 2, 2)
    sub = iset.subset(2)
    assert len(sub) == 2 and torch.equal(sub.labels, torch.tensor([0, 1]))
    assert iset.subset(None) is iset and len(iset.subset(10)) == 4
    with pytest.raises(ValueError):
        iset.subset(-1)
    with pytest.raises(InputShapeError):
        ImageSet(images.float(), iset.labels, ("a", "b"), "bad")
    with pytest.raises(InputShapeError):
        ImageSet(images, iset.labels[:3], ("a", "b"), "bad")


# ----------------------------------------------------------------------------- data root


def test_resolve_data_root_order(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    default = Path(__file__).resolve().parents[2] / "shared" / "data"  # beside the checkout
    assert resolve_data_root() == default.resolve()  # ../shared may be a symlink
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path))
    assert resolve_data_root() == tmp_path.resolve()
    explicit = tmp_path / "other"
    assert resolve_data_root(explicit) == explicit.resolve()
    assert resolve_data_root(str(explicit)) == explicit.resolve()


def test_missing_root_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10("test", root=tmp_path / "nowhere")
    msg = str(info.value)
    assert "\n" not in msg and "--data-root" in msg and "nowhere" in msg


def test_root_without_cifar_is_one_line_naming_the_fix(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10("test", root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and "--data-root" in msg and "CIFAR-10 not found" in msg
    assert "--download" in msg and data.DATA_ENV_VAR in msg


def test_env_var_is_honoured_by_the_loader(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "from-env"))
    with pytest.raises(DataNotFoundError, match="from-env"):
        load_cifar10("test")


def test_bad_split_and_unknown_dataset():
    with pytest.raises(DataNotFoundError, match="train, test") as info:
        load_cifar10("validation")
    assert "\n" not in str(info.value)
    with pytest.raises(UnknownNameError, match="did you mean cifar10") as info:
        get_dataset("cifar100")
    assert "\n" not in str(info.value) and "attrib-bench list datasets" in str(info.value)


# ----------------------------------------------------------------------------- real CIFAR-10

CIFAR_DIR = resolve_data_root() / "cifar-10-batches-py"
needs_cifar = pytest.mark.skipif(
    not CIFAR_DIR.is_dir(),
    reason=f"real CIFAR-10 not found at {CIFAR_DIR} (set ATTRIB_BENCH_DATA to its parent)",
)


@pytest.mark.real
@needs_cifar
def test_real_cifar10_test_split():
    ds = load_cifar10("test")
    assert ds.name == "cifar10-test" and len(ds) == 10_000
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (10_000, 3, 32, 32)
    assert ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64
    assert ds.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.class_names[:3] == ("airplane", "automobile", "bird") and ds.num_classes == 10
    assert load_cifar10("test") is ds  # cached in-process
    assert get_dataset("cifar10", "test") is ds


@pytest.mark.real
@needs_cifar
def test_real_cifar10_train_split_and_channel_means():
    ds = load_cifar10("train")
    assert ds.images.shape == (50_000, 3, 32, 32)
    assert ds.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    sums = ds.images.sum(dim=(0, 2, 3), dtype=torch.int64).double()
    means = (sums / (50_000 * 32 * 32 * 255)).tolist()
    assert means == pytest.approx([0.49139968, 0.48215841, 0.44653091], abs=1e-6)


@pytest.mark.real
@needs_cifar
def test_real_cifar10_grids_with_oracle_logits():
    ds = load_cifar10("test")
    logits = torch.nn.functional.one_hot(ds.labels, 10).float() * 5.0  # all correct, all tied
    grids = GridDataset(ds, logits, n=3, num_grids=500)
    assert len(grids) == 500 and not grids.exhausted
    # ties keep dataset order: each class uses its images in increasing index order
    for c, used in uses_per_class(grids.indices, ds.labels).items():
        assert used == sorted(used), c
    x, classes = grids.batch(slice(0, 2))
    assert x.shape == (2, 3, 96, 96)
    rows, cols = cell_slices(4, 3, 32, 32)
    assert torch.equal(x[1, :, rows, cols], ds.float_images(int(grids.indices[1, 4])))
