"""A model's logits over a whole image set: how a run selects its samples, how a model is
evaluated."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from attrib_bench.core.evaluation import ieee_float32
from attrib_bench.data.imageset import BaseImageSet

#: Images per forward when a whole dataset is classified (evaluation, sample selection): a large
#: inference batch, independent of a run's chunk size.
INFERENCE_BATCH = 500


@torch.inference_mode()
def predict_logits(model: nn.Module, images: BaseImageSet, batch_size: int = INFERENCE_BATCH,
                   device: str | torch.device = "cpu", progress: bool = True,
                   workers: int | None = None) -> torch.Tensor:
    """Logits (N, K) of ``model`` on every image of ``images``, in dataset order, on the CPU.

    Images travel as uint8 (:meth:`~attrib_bench.data.imageset.BaseImageSet.batches`) and become
    float in [0, 1] on ``device``, batch by batch; the logits stay there until the end (one
    transfer, no host sync per batch). On a GPU in IEEE float32 (:func:`ieee_float32`).
    ``workers``: processes decoding a file-backed set (None:
    :func:`~attrib_bench.data.imageset.default_decode_workers`); an in-memory set ignores it.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    outputs = []
    with ieee_float32(device), tqdm(total=len(images), desc=f"eval {images.name}", unit="img",
                                    disable=not progress, dynamic_ncols=True) as bar:
        for batch, _ in images.batches(batch_size, workers):
            batch = batch.to(device, non_blocking=True)
            outputs.append(model(batch.float().div_(255)).float())
            bar.update(len(batch))
    return torch.cat(outputs).cpu()


@torch.inference_mode()
def max_logit_difference(model: nn.Module, images: BaseImageSet, index: torch.Tensor,
                         expected: torch.Tensor, device: str | torch.device = "cpu") -> float:
    """Largest |logit − expected| when ``model`` classifies images ``index`` (one batch, as
    :func:`predict_logits` would: uint8 → float in [0, 1] on ``device``, IEEE float32 on a GPU);
    ``expected`` (len(index), K). NaN if a logit is not finite: how a run checks logits it did
    not compute (shipped with a zoo entry) against a few images it classifies again."""
    device = torch.device(device)
    model = model.to(device).eval()
    with ieee_float32(device):
        batch = images.uint8(index).to(device)
        logits = model(batch.float().div_(255)).float().cpu()
    if logits.shape != expected.shape:
        return float("nan")
    diff = (logits - expected.float()).abs()
    return float("nan") if not torch.isfinite(diff).all() else float(diff.max())
