"""The n x n multi-image grids of the CoDA-Nets localisation metric (paper eq. 11).

:class:`GridDataset` reproduces the grid sampling of the CoDA-Nets authors' code: n*n confidently
and correctly classified images of distinct classes, most confident first, drawn with
``np.random.RandomState(seed)``; :func:`compose_grids` tiles cells column-first, as the authors do.
The protocol of the localisation metric (:mod:`attrib_bench.metrics.localisation`), hence here.
"""

from __future__ import annotations

import numpy as np
import torch

from attrib_bench.core.errors import InputShapeError
from attrib_bench.data.imageset import BaseImageSet


def cell_slices(k: int, n: int, height: int, width: int) -> tuple[slice, slice]:
    """(row slice, column slice) of cell ``k`` in an n x n grid of (height, width) cells.

    Cells are placed column-first, as in the authors' code: cell k is at row k % n, column k // n.
    """
    if not 0 <= k < n * n:
        raise IndexError(f"cell index {k} out of range for a {n}x{n} grid")
    row, col = k % n, k // n
    return slice(row * height, (row + 1) * height), slice(col * width, (col + 1) * width)


def compose_grids(cells: torch.Tensor) -> torch.Tensor:
    """Tile (G, n*n, C, H, W) cell images into (G, C, n*H, n*W) grids, column-first.

    Cell k lands at row k % n, column k // n (see :func:`cell_slices`). Works for any dtype.
    """
    if cells.dim() != 5:
        raise InputShapeError(f"cells must have shape (G, n*n, C, H, W), got {tuple(cells.shape)}")
    g, nn_, c, h, w = cells.shape
    n = int(round(nn_**0.5))
    if n * n != nn_:
        raise InputShapeError(f"cells dim 1 must be a square number n*n, got {nn_}")
    # k = col * n + row  ->  (G, col, row, C, H, W)  ->  (G, C, row, H, col, W)
    return cells.reshape(g, n, n, c, h, w).permute(0, 3, 2, 4, 1, 5).reshape(g, c, n * h, n * w)


def class_pools(logits: torch.Tensor, labels: torch.Tensor, probability: str = "sigmoid"
                ) -> list[np.ndarray]:
    """Per class, the indices of correctly classified images, most confident first.

    ``logits`` is (N, K), ``labels`` (N,). Confidence is the target's ``probability``
    ("sigmoid": the target logit's order, the authors'; "softmax": the softmax probability,
    for cross-entropy models). The sort is stable: ties keep dataset order.
    """
    scores, labels_np = _check_logits(logits, labels)
    correct = scores.argmax(axis=1) == labels_np
    if probability == "softmax":
        scores = torch.from_numpy(scores).softmax(dim=1).numpy()
    target = scores[np.arange(len(labels_np)), labels_np]
    pools = []
    for c in range(scores.shape[1]):
        idx = np.flatnonzero(correct & (labels_np == c))
        pools.append(idx[np.argsort(-target[idx], kind="stable")])
    return pools


def sample_grids(logits: torch.Tensor, labels: torch.Tensor, n: int = 3, num_grids: int = 500,
                 seed: int = 42, probability: str = "sigmoid"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw up to ``num_grids`` n x n grids as the CoDA-Nets authors do; returns (indices, classes).

    Both are int64 (G, n*n): source image indices in draw order, and their classes. A class is
    available while its next unused image (most confident first, see :func:`class_pools`) has
    target probability > 0.5 (``probability``: "sigmoid", the authors' models', or "softmax" for
    a cross-entropy model, whose sigmoid would call any positive logit confident). While more
    than n*n classes are available (strictly, as in the
    authors' code: for 3x3 on 10 classes all 10 must be available), n*n distinct classes are drawn
    with ``RandomState(seed).choice(available_classes, n*n, replace=False)`` and each gives its next
    image; this reproduces the authors' ``np.random.seed(42); np.random.choice`` stream. The
    authors' code also skips one image between grids through a bookkeeping quirk; we do not.
    """
    if n < 2:
        raise ValueError(f"grid size n must be >= 2, got {n}")
    if num_grids < 0:
        raise ValueError(f"num_grids must be >= 0, got {num_grids}")
    pools = class_pools(logits, labels, probability)  # validates the shapes
    num_classes = logits.shape[1]
    if n * n > num_classes:
        raise ValueError(
            f"a {n}x{n} grid needs at least {n * n} classes, logits have {num_classes}"
        )
    confident = _confident(logits, labels, probability)
    classes = np.arange(num_classes)
    pointer = np.zeros(num_classes, dtype=np.int64)

    def is_available(c: int) -> bool:
        return bool(pointer[c] < len(pools[c]) and confident[pools[c][pointer[c]]])

    available = np.array([is_available(c) for c in classes], dtype=bool)
    rng = np.random.RandomState(seed)
    grids: list[list[int]] = []
    grid_classes: list[np.ndarray] = []
    while available.sum() > n * n and len(grids) < num_grids:
        chosen = rng.choice(classes[available], size=n * n, replace=False)
        grid = []
        for c in chosen:
            grid.append(int(pools[c][pointer[c]]))
            pointer[c] += 1
            available[c] = is_available(c)
        grids.append(grid)
        grid_classes.append(chosen)
    shape = (len(grids), n * n)
    indices = torch.tensor(grids, dtype=torch.int64).reshape(shape)
    return indices, torch.tensor(np.array(grid_classes), dtype=torch.int64).reshape(shape)


def _check_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N, K) float logits and (N,) labels; return them as float64 / int64 numpy arrays."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputShapeError(f"logits must be a float tensor of shape (N, K), got {got}")
    labels = torch.as_tensor(labels)
    if labels.shape != logits.shape[:1]:
        raise InputShapeError(
            f"labels must have shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    labels_np = labels.detach().cpu().numpy().astype(np.int64)
    if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= logits.shape[1]):
        raise InputShapeError(f"labels must lie in [0, {logits.shape[1]}) to index the logits")
    return logits.detach().cpu().double().numpy(), labels_np


def _confident(logits: torch.Tensor, labels: torch.Tensor, probability: str = "sigmoid"
               ) -> np.ndarray:
    """Bool (N,): the target's sigmoid or softmax probability > 0.5, computed in the logits'
    own precision (>= fp32)."""
    scores = logits.detach().cpu()
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    if probability == "softmax":
        scores = scores.softmax(dim=1)
    else:
        scores = scores.sigmoid()
    labels = torch.as_tensor(labels).cpu().long()
    target = scores.gather(1, labels[:, None])[:, 0]
    return (target > 0.5).numpy()


class GridDataset(torch.utils.data.Dataset):
    """n x n multi-image grids for the localisation metric, built from an image set (in memory
    or file-backed: only the grids' cells are decoded).

    ``logits`` (N, K) are a model's outputs on ``image_set``; grids are drawn by
    :func:`sample_grids`. ``indices`` and ``classes`` are int64 (G, n*n); item i is
    (grid float32 (C, n*H, n*W) in [0, 1], classes (n*n,)). G may be below ``requested`` when the
    pool of confident images runs out (then ``exhausted`` is True).
    """

    def __init__(self, image_set: BaseImageSet, logits: torch.Tensor, n: int = 3,
                 num_grids: int = 500, seed: int = 42, probability: str = "sigmoid") -> None:
        if isinstance(logits, torch.Tensor) and logits.dim() == 2:
            if logits.shape[0] != len(image_set):
                raise InputShapeError(
                    f"logits have {logits.shape[0]} rows but {image_set.name} has "
                    f"{len(image_set)} images: compute logits on the same image set"
                )
            if logits.shape[1] != image_set.num_classes:
                raise InputShapeError(
                    f"logits have {logits.shape[1]} classes but {image_set.name} has "
                    f"{image_set.num_classes}"
                )
        self.image_set = image_set
        self.n = n
        self.seed = seed
        self.requested = num_grids
        self.cell_size = image_set.image_size
        self.indices, self.classes = sample_grids(logits, image_set.labels, n, num_grids, seed,
                                                  probability)

    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def exhausted(self) -> bool:
        """True if fewer grids than requested could be built."""
        return len(self) < self.requested

    def batch(self, index: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grids ``index`` as float32 (B, C, n*H, n*W) in [0, 1] and their classes (B, n*n)."""
        idx = self.indices[index]
        if idx.dim() == 1:  # a scalar index: keep the batch dimension
            idx = idx[None]
        cells = self.image_set.uint8(idx)  # (B, n*n, C, H, W) uint8
        grids = compose_grids(cells).float().div_(255.0)
        return grids, self.classes[index].reshape(idx.shape)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"grid index {i} out of range for {len(self)} grids")
        grids, classes = self.batch(torch.tensor([i]))
        return grids[0], classes[0]
