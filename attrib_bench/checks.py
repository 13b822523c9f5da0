"""Input validation shared by models, methods and metrics: one clear line, not a torch traceback."""

from __future__ import annotations

import torch

from attrib_bench.errors import InputShapeError


def check_images(x: object, channels: int = 3, name: str = "inputs") -> torch.Tensor:
    """Return ``x`` if it is a float image batch (B, channels, H, W); raise one line otherwise."""
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"{name} must be a torch.Tensor of shape (B, {channels}, H, W), "
                              f"got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        hint = " (add a batch dimension with x[None])" if x.dim() == 3 else ""
        raise InputShapeError(
            f"{name} must have shape (B, {channels}, H, W) with RGB values in [0, 1], "
            f"got {tuple(x.shape)}{hint}"
        )
    if not x.is_floating_point():
        raise InputShapeError(
            f"{name} must be floating point in [0, 1], got {x.dtype} (use x.float() / 255)"
        )
    return x
