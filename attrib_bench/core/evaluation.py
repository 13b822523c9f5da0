"""Running a model: device selection, the float32 precision every map and metric is computed in
on a GPU (:func:`ieee_float32`), eval mode, forward hooks, top-1 accuracy. A model's logits over a
whole image set are :func:`attrib_bench.data.predict.predict_logits` (the data layer)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from attrib_bench.core.errors import AttribBenchError


def resolve_device(name: str = "cpu") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` → a usable device, or one clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AttribBenchError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AttribBenchError("CUDA is not available on this machine: use --device cpu")
    return device


#: True: :func:`ieee_float32` makes CUDA convolutions and matrix products IEEE float32 while
#: attrib-bench computes maps, logits and metrics. PyTorch lets cuDNN convolutions use TF32 by
#: default (10 mantissa bits: ~1e-3 relative error on Ampere and later GPUs, an H100/H200
#: included), which would make a GPU run's maps and scores differ from the CPU's by far more than
#: float32 rounding and move pixel rankings. Set False to trade that for speed.
IEEE_FLOAT32 = True

_precision_lock = threading.Lock()
_precision_users = 0
_precision_saved: tuple[str, Any, Any] | None = None


def _read_tf32() -> tuple[str, Any, Any]:
    """(api, matmul setting, cuDNN conv setting), in the API this torch has (never both: torch
    >= 2.9 raises on reading a legacy flag after the new per-operator one was set)."""
    backends = torch.backends
    try:
        return ("fp32_precision", backends.cuda.matmul.fp32_precision,
                backends.cudnn.conv.fp32_precision)
    except AttributeError:  # torch < 2.9: the older boolean flags
        return ("allow_tf32", backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32)


def _write_tf32(api: str, matmul: Any, conv: Any) -> None:
    if api == "fp32_precision":
        torch.backends.cuda.matmul.fp32_precision = matmul
        torch.backends.cudnn.conv.fp32_precision = conv
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


def set_tf32(enabled: bool) -> None:
    """TF32 in CUDA matrix products and cuDNN convolutions on or off, process-wide (training's
    ``--tf32``; PyTorch allows TF32 in cuDNN convolutions by default)."""
    api = _read_tf32()[0]
    if api == "fp32_precision":
        value = "tf32" if enabled else "ieee"
        _write_tf32(api, value, value)
    else:
        _write_tf32(api, enabled, enabled)


@contextlib.contextmanager
def ieee_float32(device: torch.device | str | None) -> Iterator[None]:
    """IEEE float32 (no TF32) in CUDA matrix products and cuDNN convolutions inside the block.

    Does nothing unless ``device`` is a CUDA device and :data:`IEEE_FLOAT32` is True, so CPU runs
    are untouched. Reentrant and thread-safe (Dask runs chunks in threads): the first block
    entered saves the process-wide settings, the last one left restores them.
    """
    global _precision_users, _precision_saved
    if not IEEE_FLOAT32 or device is None or torch.device(device).type != "cuda":
        yield
        return
    with _precision_lock:
        if _precision_users == 0:
            _precision_saved = _read_tf32()
            api = _precision_saved[0]
            _write_tf32(api, *(("ieee", "ieee") if api == "fp32_precision" else (False, False)))
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0 and _precision_saved is not None:
                _write_tf32(*_precision_saved)
                _precision_saved = None


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows whose argmax equals the label."""
    return 100.0 * (logits.argmax(1) == labels.to(logits.device)).double().mean().item()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode for the block, then restore every module's training flag.

    Batch norm or dropout in training mode would make a map depend on the rest of the batch.
    """
    if not isinstance(model, nn.Module):
        yield model
        return
    before = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in before:
            module.training = training


def count_parameters(model: nn.Module) -> int:
    """The number of parameters (elements) of ``model``; works on the meta device."""
    return sum(p.numel() for p in model.parameters())


def forward_with_hooks(model: nn.Module, inputs: torch.Tensor,
                       hooks: Iterable[tuple[nn.Module, Callable[..., Any]]]) -> None:
    """One forward of ``inputs`` in eval mode, without gradients, with forward ``hooks``
    ((module, hook) pairs) registered for that forward only: how a method or metric inspects
    which modules a model calls and what they output."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with eval_mode(model), torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
