"""Input validation shared by models, methods and metrics: one clear line, not a torch traceback.

What each check accepts (anything else is one :class:`~attrib_bench.core.errors.AttribBenchError`
line naming the fix; never another exception, never a silent conversion):

- :func:`check_images`: a dense ``torch.Tensor`` (B, C, H, W), floating point, H and W ≥ 1
  (B = 0 is an empty batch). Cheap (no pass over the values): models call it in their forward.
- :func:`check_finite`: no NaN or inf (the images at fault are named), not on the meta device.
- :func:`check_range`: values in [0, 1] ± ``tolerance`` (the fix depends on what the values
  look like: 0..255, normalised, slightly out).
- :func:`check_target`: class indices, one per image: an integer scalar of any kind (a Python
  ``int``, a NumPy integer, a 0-d integer tensor or array: the same class for every image) or
  an integer tensor or NumPy array of shape (B,); never a bool, a float, a list; with the
  number of classes K, every value in [0, K) (compared exactly, before any conversion).
- :func:`model_label`: how messages name a model: the name the user knows it by (given, or set
  for a block by :func:`naming`, as the benchmark runner does with each model's registered name
  or the key of ``run({"name": model})``), else its Python class.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
from collections.abc import Iterator

import numpy as np
import torch

from attrib_bench.core.errors import InputShapeError, TargetError

#: The name of the model being worked on, for messages (set by :func:`naming`).
_MODEL_NAME: contextvars.ContextVar[str | None] = contextvars.ContextVar("model_name",
                                                                         default=None)


@contextlib.contextmanager
def naming(name: str | None) -> Iterator[None]:
    """In this block, messages about a model name it ``name`` (:func:`model_label`).

    The benchmark runner wraps each model's work in it, so that a line says "model 'tiny-cnn'"
    (the key of ``run({"tiny-cnn": model})``, or the registered name) rather than the module's
    Python class ("Sequential"). Per thread and task, as contextvars are; None changes nothing.
    """
    token = _MODEL_NAME.set(name if name else _MODEL_NAME.get())
    try:
        yield
    finally:
        _MODEL_NAME.reset(token)


def current_model_name() -> str | None:
    """The model name set by the innermost :func:`naming` block, else None."""
    return _MODEL_NAME.get()


def model_label(model: object, name: str | None = None) -> str:
    """How a message names ``model``: ``model 'NAME'`` for ``name`` (else the name set by
    :func:`naming`), else its Python class (``Sequential``) when no name is known."""
    name = name or _MODEL_NAME.get()
    if name:
        return f"model {name!r}"
    return type(model).__name__


def _shown(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_images(x: object, channels: int = 3, name: str = "inputs") -> torch.Tensor:
    """Return ``x`` if it is a float image batch (B, channels, H, W); raise one line otherwise.

    Refused, each with its fix: not a tensor (a NumPy array, a PIL image, a list), a sparse or
    other non-strided layout, another number of dimensions (a single image (C, H, W): add the
    batch dimension), channels last (B, H, W, C), another channel count, an empty side (H or
    W = 0), and a dtype that is not floating point (uint8 0..255 and the other integer dtypes,
    bool, complex). It reads no values (models call it in their forward).
    """
    if not isinstance(x, torch.Tensor):
        kind = type(x).__name__
        fix = ("torch.from_numpy(x) (channels first: (B, H, W, C) arrays need "
               ".permute(0, 3, 1, 2))" if isinstance(x, np.ndarray)
               else "torchvision.transforms.functional.to_tensor(image)[None]"
               if kind.endswith("Image") else "torch.as_tensor(x)")
        raise InputShapeError(f"{name} must be a torch.Tensor of shape (B, {channels}, H, W), "
                              f"got {kind}: convert it with {fix}")
    if x.layout != torch.strided:
        raise InputShapeError(f"{name} must be a dense tensor, got layout {x.layout}: "
                              "use x.to_dense()")
    shape = tuple(x.shape)
    if x.dim() != 4 or shape[1] != channels:
        if x.dim() == 3 and shape[0] == channels:
            hint = ": add a batch dimension with x[None]"
        elif x.dim() == 4 and shape[3] == channels:
            hint = ": channels last? use x.permute(0, 3, 1, 2)"
        else:
            hint = ""
        raise InputShapeError(
            f"{name} must have shape (B, {channels}, H, W) with RGB values in [0, 1], "
            f"got {shape}{hint}"
        )
    if shape[2] == 0 or shape[3] == 0:
        raise InputShapeError(f"{name} must have images of at least 1×1 pixels, got shape "
                              f"{shape}")
    if not x.is_floating_point():
        if x.dtype == torch.bool:
            fix = "x.float() for 0/1 values"
        elif x.is_complex():
            fix = "pass real values (x.real if the imaginary part is zero)"
        else:
            fix = "x.float() / 255 for 0..255 pixel values"
        raise InputShapeError(f"{name} must be floating point in [0, 1], got {x.dtype}: use "
                              f"{fix}")
    return x


def check_finite(x: torch.Tensor, name: str = "inputs") -> torch.Tensor:
    """Return ``x`` (an image batch that passed :func:`check_images`) if every value is finite;
    one line naming the first images with NaN or inf otherwise (or a meta-device tensor, whose
    values do not exist)."""
    if x.device.type == "meta":
        raise InputShapeError(f"{name} are on the meta device (no values): pass real images "
                              "(x.to('cpu') after filling them)")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise InputShapeError(f"{name} contain NaN or inf (images {bad[:5]}): pass finite RGB "
                              "values in [0, 1]")
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


def _integer_scalar(target: object) -> int | None:
    """``target`` as a Python int if it is an integer scalar of any kind (not a bool), else
    None: an ``int``, a NumPy integer, a 0-d integer tensor or NumPy array."""
    if isinstance(target, (bool, np.bool_)):
        return None
    if isinstance(target, (numbers.Integral, np.integer)):
        return int(target)
    if isinstance(target, np.ndarray) and target.ndim == 0 and target.dtype.kind in "iu":
        return int(target.item())
    if (isinstance(target, torch.Tensor) and target.dim() == 0 and not target.is_complex()
            and not target.is_floating_point() and target.dtype != torch.bool
            and target.device.type != "meta"):
        return int(target.item())
    return None


def _refuse_target_kind(target: object, batch: int) -> None:
    """The one line for a target that is not integer class indices (a bool, a float, a list)."""
    expected = f"target must be class indices: an int or an integer tensor of shape ({batch},)"
    if isinstance(target, (bool, np.bool_)):
        raise TargetError(f"{expected}, got the bool {target}: pass the class index as an int")
    if isinstance(target, (numbers.Real, np.floating)):
        raise TargetError(f"{expected}, got the {type(target).__name__} {_shown(target)}: pass "
                          "an int (int(target) if it is a whole number)")
    if isinstance(target, (list, tuple)):
        raise TargetError(f"{expected} (a LongTensor), got a {type(target).__name__}: use "
                          "torch.tensor(target)")
    if isinstance(target, np.ndarray):
        raise TargetError(f"{expected}, got a NumPy array of {target.dtype}: pass integer "
                          "class indices (target.astype(np.int64))")
    if isinstance(target, torch.Tensor):
        if target.device.type == "meta":
            raise TargetError(f"{expected}, got a meta-device tensor (no values)")
        raise TargetError(f"{expected}, got {target.dtype}: use target.long() if the values "
                          "are whole numbers")
    raise TargetError(f"{expected} (a LongTensor), got {type(target).__name__}")


def check_target(target: object, batch: int, classes: int | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``target`` as a LongTensor (``batch``,) of class indices; one :class:`TargetError` line
    otherwise.

    Accepted: an integer scalar of any kind (Python ``int``, NumPy integer, 0-d integer tensor
    or array) — the same class for every image — or an integer tensor or NumPy array of shape
    (``batch``,), any integer dtype. Refused: bools, floats (also whole-number floats: no silent
    conversion), complex, lists and tuples, another shape. With ``classes`` (K), every value must
    lie in [0, K); the comparison is exact (a uint64 or a Python int beyond int64 is refused, not
    wrapped). The result is on ``device`` (default: where the target is; CPU for a scalar).
    """
    scalar = _integer_scalar(target)
    if scalar is not None:
        values: torch.Tensor | np.ndarray | None = None
        low = high = scalar
    elif isinstance(target, np.ndarray) and target.dtype.kind in "iu":
        values = target
    elif (isinstance(target, torch.Tensor) and target.device.type != "meta"
          and not (target.is_floating_point() or target.is_complex()
                   or target.dtype == torch.bool)):
        values = target
    else:
        _refuse_target_kind(target, batch)
        raise AssertionError  # pragma: no cover - _refuse_target_kind always raises
    if values is not None:
        if tuple(values.shape) != (batch,):
            raise TargetError(f"target must have shape ({batch},), one class per image, "
                              f"got {tuple(values.shape)}")
        if batch == 0:
            return torch.zeros(0, dtype=torch.long, device=device or (
                values.device if isinstance(values, torch.Tensor) else None))
        if isinstance(values, torch.Tensor):
            if values.dtype in (torch.uint16, torch.uint32, torch.uint64):  # no min/max on CPU
                array = values.detach().cpu().numpy()
                low, high = int(array.min()), int(array.max())
            else:
                extremes = torch.stack([values.min(), values.max()]).tolist()
                low, high = int(extremes[0]), int(extremes[1])
        else:
            low, high = int(values.min()), int(values.max())
    seen = f"{low}..{high}" if low != high else f"{low}"
    if classes is not None and (low < 0 or high >= classes):
        raise TargetError(f"target values must be class indices in [0, {classes}), got {seen}")
    int64 = torch.iinfo(torch.long)
    if low < int64.min or high > int64.max:  # the form check (no K yet): never wrap around
        raise TargetError(f"target values must be class indices (non-negative ints below the "
                          f"number of classes), got {seen}")
    if values is None:
        return torch.full((batch,), scalar, dtype=torch.long, device=device)
    if isinstance(values, np.ndarray):
        return torch.as_tensor(values.astype(np.int64), device=device)
    return values.detach().to(device=device if device is not None else values.device,
                              dtype=torch.long)
