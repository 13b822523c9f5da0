"""Per-row target gradients with one forward pass per distinct input.

Grid localisation explains every n×n grid n² times, once per cell's class, so a batch holds each
grid n² times in a row. A plain autograd call (captum's Saliency, InputXGradient) runs the model
on all b·n² copies; :func:`target_gradients` runs it once per distinct input and then one
backward per target of that input, keeping the graph between them: 2.9× faster on
xs-coda-sq-t1000, 1.9× on ResNet-56, same gradients to 2.2e-7 relative (float rounding of the
smaller batch; ``benchmarks/grid_gradients.py``, recorded in ``benchmarks/README.md``).
``torch.autograd.grad(..., is_grads_batched=True)`` would do the backward passes in one vmap,
but the CoDA-Nets' DAU layers have no batching rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def run_starts(inputs: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True where row i of ``inputs`` (B, ...) differs from row i − 1 (and at 0), so
    ``run_starts(x).sum()`` is the number of forward passes :func:`target_gradients` needs."""
    b = inputs.shape[0]
    starts = torch.ones(b, dtype=torch.bool, device=inputs.device)
    if b > 1:
        flat = inputs.detach().reshape(b, -1)
        starts[1:] = (flat[1:] != flat[:-1]).any(dim=1)
    return starts


def target_gradients(forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
    """∂ forward(x)[i, target[i]] / ∂ x[i] for every row i of ``inputs``.

    ``forward`` maps (U, ...) to scores (U, K), one row per input row, rows independent (a model
    in eval mode); ``inputs`` (B, ...), ``target`` LongTensor (B,). Rows equal to the row before
    them share one forward pass; the backward passes are as many as the longest run of equal rows
    (1 for a batch of distinct rows, which is then one forward and one backward, as autograd
    does). Returns a detached (B, ...) tensor in the inputs' dtype. Needs grad mode enabled.
    """
    b = inputs.shape[0]
    starts = run_starts(inputs)
    group = torch.cumsum(starts.long(), 0) - 1  # (B,) index of each row's distinct input
    first = starts.nonzero().flatten()
    rank = torch.arange(b, device=inputs.device) - first[group]  # position within its run
    leaf = inputs.detach()[starts].requires_grad_(True)
    scores = forward(leaf)
    target = target.to(scores.device)
    grads = torch.empty_like(inputs)
    rounds = int(rank.max()) + 1 if b else 0
    for j in range(rounds):  # one backward per target of the longest run: n² for a grid
        rows = (rank == j).nonzero().flatten()
        chosen = scores[group[rows], target[rows]].sum()
        (grad,) = torch.autograd.grad(chosen, leaf, retain_graph=j < rounds - 1)
        grads[rows] = grad[group[rows]]
    return grads.detach()
