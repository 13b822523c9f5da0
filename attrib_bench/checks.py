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


def check_range(x: torch.Tensor, name: str = "inputs", tolerance: float = 1e-6) -> torch.Tensor:
    """Return ``x`` if its values lie in [0, 1] (± ``tolerance``); one line naming the fix if not.

    Kept apart from :func:`check_images` on purpose: models call that in their forward, where
    perturbed inputs (ROAD's filled pixels, noise baselines) may leave [0, 1] slightly; the
    attribution methods check the range of what a user hands them. ``x`` must be finite and
    floating point (check that first). An empty tensor passes.
    """
    if x.numel() == 0:
        return x
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if low >= -tolerance and high <= 1 + tolerance:
        return x
    seen = f"got values in [{low:.4g}, {high:.4g}]"
    if low < -tolerance:
        fix = ("pass RGB in [0, 1] and normalise inside the model (e.g. a first module that "
               "subtracts the mean and divides by the std)")
    elif high > 2:
        fix = "pixel values 0..255? divide by 255"
    else:
        fix = "clamp them with x.clamp(0, 1) or fix the preprocessing"
    raise InputShapeError(f"{name} must be RGB values in [0, 1], {seen}: {fix}")
