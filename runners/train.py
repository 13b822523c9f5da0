"""Training CoDA-Nets (and any registered model) on CIFAR-10, resumable and reproducible.

The authors' recipe is the default (Adam 2.5e-4, batch 16, lr ÷1.5 every 30 epochs, random flip
and 32 px crop with 4 px zero padding, BCE-with-logits on one-hot targets, 200 epochs). The whole
train set lives on the training device as one uint8 tensor; augmentation runs on whole batches
there. Every epoch writes ``history.csv`` and an atomic ``checkpoint.pt``; ``resume=True`` continues
from it to the same weights an uninterrupted run would reach: the data order and augmentation of
epoch e come from a generator seeded with (seed, e), not from global state.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from attrib_bench.data import ImageSet
from attrib_bench.errors import CheckpointError
from attrib_bench.evaluation import predict_logits, top1_accuracy
from attrib_bench.perf import retain_freed_memory

Schedule = Literal["step", "cosine"]

HISTORY_FIELDS = ("epoch", "lr", "train_loss", "test_accuracy", "epoch_seconds", "images_per_s")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (stored in the checkpoint)."""

    model: str = "xs-coda"
    temperature: float = 1000.0
    norm: str = "sq"
    epochs: int = 200
    batch_size: int = 16
    lr: float = 2.5e-4
    schedule: Schedule = "step"  # "step": ÷lr_decay every lr_step epochs; "cosine": to 0 per step
    lr_decay: float = 1.5
    lr_step: int = 30
    warmup_epochs: float = 0.0  # linear warm-up (cosine schedule only)
    crop_padding: int = 4
    flip: bool = True
    seed: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def augment(images: torch.Tensor, generator: torch.Generator, padding: int,
            flip: bool) -> torch.Tensor:
    """Random horizontal flip and random crop with zero padding, for a whole uint8 batch.

    (B, C, H, W) → (B, C, H, W), no per-image Python work: one gather with per-image offsets.
    """
    n, _, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        chan = torch.arange(images.shape[1], device=device)[None, :, None, None]
        images = padded[batch, chan, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(device)[:, None, None, None]
        images = torch.where(mirror, images.flip(3), images)
    return images


def learning_rate(config: TrainConfig, epoch_progress: float) -> float:
    """The learning rate at a fractional epoch (0 ≤ epoch_progress < epochs)."""
    if config.schedule == "step":
        return config.lr / config.lr_decay ** int(epoch_progress // config.lr_step)
    if epoch_progress < config.warmup_epochs:
        return config.lr * (epoch_progress + 1e-3) / config.warmup_epochs
    span = max(config.epochs - config.warmup_epochs, 1e-9)
    done = (epoch_progress - config.warmup_epochs) / span
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(done, 1.0)))


def bce_one_hot(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The CoDA-Net loss: binary cross-entropy with logits against one-hot targets."""
    target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _append_history(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Drop history rows of epochs after the checkpoint (a kill between the two writes)."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= epochs_done]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def build_model(config: TrainConfig) -> nn.Module:
    """A fresh, seeded model for ``config`` (CoDA-Nets get T and the norm)."""
    from attrib_bench.registry import MODELS, create_model

    torch.manual_seed(config.seed)
    kwargs = dict(config.model_kwargs)
    if MODELS.get(config.model).metadata.get("family") == "coda":
        kwargs.update(temperature=config.temperature, norm=config.norm)
    return create_model(config.model, pretrained=False, **kwargs)


def train(config: TrainConfig, train_set: ImageSet, test_set: ImageSet | None, out_dir: str | Path,
          device: str | torch.device = "cpu", resume: bool = False, progress: bool = True,
          stop_after_epochs: int | None = None) -> nn.Module:
    """Train ``config.model`` on ``train_set``; evaluate on ``test_set`` after each epoch.

    Writes ``out_dir/checkpoint.pt`` (atomic, every epoch) and ``out_dir/history.csv``.
    ``stop_after_epochs`` ends the call early (as a kill would) — for tests and time-boxed runs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    checkpoint_path, history_path = out_dir / "checkpoint.pt", out_dir / "history.csv"
    model = build_model(config).to(device).train()
    for layer in model.modules():  # training wants speed over activation memory
        if hasattr(layer, "keep_projection"):
            layer.keep_projection = True
    if device.type == "cpu":
        retain_freed_memory()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start_epoch = 0
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state["config"] != _config_dict(config):
            raise CheckpointError(
                f"{checkpoint_path} was made with another config: "
                "use a new --out, or the options it was started with"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        _truncate_history(history_path, start_epoch)
    elif not resume and history_path.exists():
        history_path.unlink()

    images = train_set.images.to(device)
    labels = train_set.labels.to(device)
    steps = len(images) // config.batch_size  # drop the last partial batch
    last_epoch = config.epochs if stop_after_epochs is None else min(
        config.epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, last_epoch):
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(images), generator=generator).to(device)
        model.train()
        started, total_loss = time.perf_counter(), 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=not progress, dynamic_ncols=True, leave=False)
        for step in bar:
            lr = learning_rate(config, epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            batch = augment(images[idx], generator, config.crop_padding, config.flip)
            loss = bce_one_hot(model(batch.float().div_(255)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            if step % 20 == 0:
                rate = (step + 1) * config.batch_size / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{total_loss / (step + 1):.4f}", img_s=f"{rate:.0f}")
        bar.close()
        seconds = time.perf_counter() - started
        accuracy = float("nan")
        if test_set is not None:
            logits = predict_logits(model, test_set, 500, device, progress=False)
            accuracy = top1_accuracy(logits, test_set.labels)
        _atomic_torch_save({"config": _config_dict(config), "epoch": epoch + 1,
                            "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                           checkpoint_path)
        row = {"epoch": epoch + 1, "lr": f"{lr:.6g}", "train_loss": f"{total_loss / steps:.6f}",
               "test_accuracy": f"{accuracy:.2f}", "epoch_seconds": f"{seconds:.1f}",
               "images_per_s": f"{steps * config.batch_size / seconds:.1f}"}
        _append_history(history_path, row)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {row['train_loss']}, test top-1 {accuracy:.2f} %, "
                       f"{seconds:.0f} s ({row['images_per_s']} img/s)")
    return model.eval()


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))


def export(model: nn.Module, config: TrainConfig, out_path: str | Path, *,
           dataset: str, test_accuracy: float | None, epochs_done: int,
           dtype: torch.dtype = torch.float16,
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the weights as safetensors (``dtype`` storage) and a JSON sidecar; return the sidecar.

    The sidecar records the config, T, norm, epochs, data, test accuracy, the file's sha256 and
    the command line that produced it.
    """
    from safetensors.torch import save_file

    from attrib_bench.checkpoints import sha256_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    tmp = out_path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, out_path)
    sidecar = {
        "file": out_path.name,
        "sha256": sha256_file(out_path),
        "storage_dtype": str(dtype).removeprefix("torch."),
        "config": _config_dict(config),
        "epochs": epochs_done,
        "dataset": dataset,
        "test_accuracy": test_accuracy,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **(extra or {}),
    }
    out_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar
