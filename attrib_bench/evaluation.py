"""Batched model evaluation: logits over an image set, top-1 accuracy, device selection."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from attrib_bench.data import ImageSet
from attrib_bench.errors import AttribBenchError


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


@torch.inference_mode()
def predict_logits(model: nn.Module, images: ImageSet, batch_size: int = 500,
                   device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
    """Logits (N, K) of ``model`` on every image of ``images``, in dataset order, on the CPU.

    Images travel as uint8 and become float in [0, 1] on ``device``, batch by batch.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    outputs = []
    with tqdm(total=len(images), desc=f"eval {images.name}", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(images), batch_size):
            batch = images.images[start:start + batch_size].to(device, non_blocking=True)
            outputs.append(model(batch.float().div_(255)).float().cpu())
            bar.update(len(batch))
    return torch.cat(outputs)


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of rows whose argmax equals the label."""
    return 100.0 * (logits.argmax(1) == labels.to(logits.device)).double().mean().item()
