"""Training CoDA-Nets (and any registered model) on CIFAR-10, resumable, reproducible, on budget.

The model family's recipe is the default (:data:`RECIPES`): the CoDA-Nets authors' (Adam 2.5e-4,
batch 16, lr ÷1.5 every 30 epochs, 200 epochs) or the bcos package's for B-cos networks (Adam
1e-3, batch 64, cosine, 100 epochs); both with random flip and 32 px crop with 4 px zero padding
and BCE-with-logits on one-hot targets. The whole
train set lives on the training device as one uint8 tensor; augmentation runs on whole batches
there, with random numbers drawn on that device (no host round trip per step). Every epoch writes
``history.csv`` and an atomic ``checkpoint.pt``; ``resume=True`` continues from it to the same
weights an uninterrupted run would reach: the data order and augmentation of epoch e come from a
generator seeded with (seed, e), not from global state.

For a GPU lent for minutes, ``time_budget`` sizes a cosine schedule (with warm-up) from the
throughput measured in a short probe, so that training *completes* (the learning rate reaches 0)
and the model is evaluated and exported before the budget ends; a guard shortens the remaining
schedule if the steps get slower. ``amp="bf16"`` runs the DAU convolutions under bfloat16
autocast (their norms and scales stay float32), ``channels_last`` and ``compile`` are the usual
PyTorch switches, ``lambda_reg`` adds the paper's λ·mean|W0→L(x)| of the target class.

:func:`train` runs named steps (:class:`_Trainer`: resume, budget probe, one epoch, guard,
evaluation, checkpoint, history). :func:`train_and_export` is one ``attrib-bench train`` call
around it (:class:`TrainJob`: data, run folder, export name, a library model's head size) and
:func:`export` writes the weights with the sidecar in the one form the zoo registers
(:func:`attrib_bench.models.zoo.read_zoo_sidecar`).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from attrib_bench.core.errors import CheckpointError, TrainError
from attrib_bench.core.evaluation import set_tf32, top1_accuracy
from attrib_bench.core.perf import retain_freed_memory
from attrib_bench.core.registry import MODELS, create_model
from attrib_bench.data import BaseImageSet, ImageSet, evaluation_split, get_dataset
from attrib_bench.data.predict import predict_logits
from attrib_bench.models import protocols
from attrib_bench.runners.recipes import RECIPES, Recipe, Schedule, recipe_for  # noqa: F401
from attrib_bench.runners.settings import check_model_fits, check_output_classes
from attrib_bench.runners.storage import slug

Amp = Literal["none", "bf16"]
LrScaling = Literal["none", "sqrt", "linear"]

HISTORY_FIELDS = ("epoch", "step", "planned_steps", "lr", "train_loss", "lambda_penalty",
                  "test_accuracy", "epoch_seconds", "images_per_s")

#: The cosine schedule's warm-up takes at most this share of its length.
WARMUP_SHARE = 0.2

#: Settings that change how long a call may take, not the weights it trains: a resumed run may
#: change them.
#: Settings a resumed run may change: the budget and evaluation cadence of this call, and the
#: execution settings that compute the same steps with other kernels (torch.compile's fused
#: kernels, channels_last's memory layout: the weights differ only in float rounding). The
#: sidecar records the last call's values.
_PER_CALL_FIELDS = ("time_budget", "eval_every", "compile", "channels_last")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (stored in the checkpoint).

    ``lr`` is the learning rate at ``lr_reference_batch``; ``lr_scaling`` scales it to
    ``batch_size``: "sqrt" multiplies by sqrt(batch_size / lr_reference_batch) (the square-root
    rule for Adam, Malladi et al., NeurIPS 2022), "linear" by the ratio itself (Goyal et al.
    2017, for SGD), "none" keeps it. ``time_budget`` (seconds, the whole call: data on the
    device, probe, training, evaluations, export) replaces ``epochs`` as the length of the cosine
    schedule, which then has at most ``epochs`` epochs. ``eval_every``: test evaluation every N
    epochs (0: only after the last).
    """

    model: str = "xs-coda"
    #: CoDA-Net logit temperature T; None: the model's own (registry metadata ``temperature``:
    #: 1000 for XS/S/M, 6400 for XL, 1e5 for L), resolved when the config is made. Other models
    #: have neither T nor a DAU norm: both stay None for them (setting one is a TrainError).
    temperature: float | None = None
    norm: str | None = None  # a CoDA-Net's DAU norm, "sq" (the default) or "l2"
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
    lr_scaling: LrScaling = "none"
    lr_reference_batch: int = 16
    time_budget: float | None = None
    eval_every: int = 1
    amp: Amp = "none"
    tf32: bool = False
    channels_last: bool = False
    compile: bool = False
    lambda_reg: float = 0.0

    @classmethod
    def for_model(cls, model: str, **settings: Any) -> TrainConfig:
        """``model``'s config with its family's :class:`Recipe` where ``settings`` is silent
        (``None`` values count as silent): B-cos networks get the bcos package's CIFAR-10
        recipe, CoDA-Nets and the rest the CoDA-Nets authors'."""
        recipe = recipe_for(model)
        given = {key: value for key, value in settings.items() if value is not None}
        defaults = {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
                    "schedule": "cosine" if given.get("time_budget") else recipe.schedule,
                    "lr_reference_batch": recipe.batch_size}
        return cls(model=model, **{**defaults, **given})

    @property
    def peak_lr(self) -> float:
        """``lr`` scaled to ``batch_size`` by ``lr_scaling``."""
        ratio = self.batch_size / self.lr_reference_batch
        return self.lr * {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[self.lr_scaling]

    def __post_init__(self) -> None:
        if not is_coda(self.model):
            return
        if self.temperature is None:
            own = MODELS.get(self.model).metadata.get("temperature", 1000.0)
            object.__setattr__(self, "temperature", float(own))
        if self.norm is None:
            object.__setattr__(self, "norm", "sq")

    def check(self) -> None:
        """One-line :class:`TrainError` for settings that cannot work together."""
        metadata = MODELS.get(self.model).metadata
        if metadata.get("trained"):
            flags = (f" --temperature {metadata['temperature']:g} --norm {metadata['norm']}"
                     if metadata.get("family") == "coda" else "")
            raise TrainError(f"{self.model} names trained weights; train its architecture from "
                             f"scratch with --model {metadata['architecture']}{flags} (fine-tuning "
                             f"from the zoo's weights is not supported)")
        if not is_coda(self.model) and (self.temperature is not None or self.norm is not None):
            raise TrainError(f"--temperature and --norm set a CoDA-Net's logit temperature and DAU "
                             f"norm; {self.model} is not a CoDA-Net: drop them")
        if self.time_budget is not None and self.schedule != "cosine":
            raise TrainError("--time-budget sizes a cosine schedule: use --schedule cosine")
        if self.time_budget is not None and self.time_budget <= 0:
            raise TrainError(f"--time-budget must be > 0 seconds, not {self.time_budget:g}")
        if self.amp not in ("none", "bf16"):
            raise TrainError(f"--amp must be none or bf16, not {self.amp!r}")
        if self.lr_scaling not in ("none", "sqrt", "linear"):
            raise TrainError(f"--lr-scaling must be none, sqrt or linear, not {self.lr_scaling!r}")
        if self.lambda_reg < 0:
            raise TrainError(f"--lambda must be >= 0, not {self.lambda_reg:g}")
        if self.eval_every < 0:
            raise TrainError(f"--eval-every must be >= 0, not {self.eval_every}")
        if self.lambda_reg > 0 and (self.compile or self.amp != "none"):
            given = " and ".join(f for f, on in (("--compile", self.compile),
                                                 ("--amp bf16", self.amp != "none")) if on)
            raise TrainError(f"--lambda runs eagerly in float32 (torch.compile has no double "
                             f"backward, and the linear map is kept in float32): drop {given}")


def augment(images: torch.Tensor, generator: torch.Generator, padding: int,
            flip: bool) -> torch.Tensor:
    """Random horizontal flip and random crop with zero padding, for a whole uint8 batch.

    (B, C, H, W) → (B, C, H, W), no per-image Python work: one gather with per-image offsets.
    The random numbers come from ``generator`` on its own device (the images' device in
    :func:`train`, so a GPU step waits for no host copy).
    """
    n, _, h, w = images.shape
    device, source = images.device, generator.device
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=source)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=source)
        dy, dx = dy.to(device), dx.to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        chan = torch.arange(images.shape[1], device=device)[None, :, None, None]
        images = padded[batch, chan, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator, device=source) < 0.5).to(device)
        images = torch.where(mirror[:, None, None, None], images.flip(3), images)
    return images


def learning_rate(config: TrainConfig, epoch_progress: float,
                  total_epochs: float | None = None) -> float:
    """The learning rate at a fractional epoch (0 ≤ epoch_progress < total_epochs).

    ``total_epochs`` is the schedule's length (default ``config.epochs``; a time-budgeted run
    passes its planned steps / steps per epoch). The peak is :attr:`TrainConfig.peak_lr`. The
    cosine's linear warm-up lasts ``warmup_epochs``, at most :data:`WARMUP_SHARE` of the
    schedule (a budget that allows few steps still decays to 0).
    """
    peak = config.peak_lr
    if config.schedule == "step":
        return peak / config.lr_decay ** int(epoch_progress // config.lr_step)
    total = config.epochs if total_epochs is None else total_epochs
    warmup = min(config.warmup_epochs, WARMUP_SHARE * total)
    if epoch_progress < warmup:
        return peak * min(1.0, (epoch_progress + 1e-3) / warmup)
    span = max(total - warmup, 1e-9)
    done = (epoch_progress - warmup) / span
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(done, 1.0)))


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


def is_coda(model: str) -> bool:
    """Whether registered model ``model`` is a CoDA-Net (has a temperature and DAU norms)."""
    return MODELS.get(model).metadata.get("family") == "coda"


def build_model(config: TrainConfig) -> nn.Module:
    """A fresh, seeded model for ``config`` (CoDA-Nets get T and the norm)."""
    torch.manual_seed(config.seed)
    kwargs = dict(config.model_kwargs)
    if is_coda(config.model):
        kwargs.update(temperature=config.temperature, norm=config.norm)
    return create_model(config.model, pretrained=False, **kwargs)


def make_optimizer(model: nn.Module, config: TrainConfig,
                   device: torch.device) -> torch.optim.Optimizer:
    """Adam at the scaled peak learning rate (fused kernels on CUDA)."""
    return torch.optim.Adam(model.parameters(), lr=config.peak_lr, fused=device.type == "cuda")


def make_train_step(model: nn.Module, config: TrainConfig, device: torch.device):
    """A function ``step(optimizer, images_uint8, labels, lr) -> (bce, penalty)`` for ``model``.

    One step: uint8 (B, 3, H, W) → float in [0, 1] (channels_last if asked), forward under
    bfloat16 autocast if ``config.amp == "bf16"`` (compiled if ``config.compile``), BCE on
    one-hot targets in float32, backward, Adam. With ``lambda_reg`` > 0 the forward is
    the model's linear map (:func:`protocols.linear_map`; float32, eager: the λ term needs a
    double backward), and
    the loss adds ``lambda_reg`` · mean|W0→L(x)_target|. Both returned losses are detached device
    scalars (no host sync).
    """
    forward = torch.compile(model) if config.compile else model
    autocast = config.amp == "bf16"
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    if config.lambda_reg > 0 and not protocols.has(model, "linear_map"):
        raise TrainError(f"--lambda needs a model with a linear map W0→L(x) (a CoDA-Net); "
                         f"{config.model} has none")
    zero = torch.zeros((), device=device)

    def step(optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
             lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = images.float().div_(255).contiguous(memory_format=memory)
        penalty = zero
        if config.lambda_reg > 0:
            logits, linear_map = protocols.linear_map(model, x, labels)
            penalty = linear_map.abs().mean()
            loss = bce_one_hot(logits, labels)
            total = loss + config.lambda_reg * penalty
        else:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = forward(x)
            loss = total = bce_one_hot(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return loss.detach(), penalty.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(one: Callable[[], Any], device: torch.device,
               seconds: float) -> tuple[float, int, float]:
    """(seconds per call of ``one``, calls timed, seconds of two untimed warm-up calls).

    The warm-up takes compilation and cuDNN autotuning; then at least 3 calls and ``seconds``
    are timed, with the device synchronised before the clock is read.
    """
    start = time.perf_counter()
    for _ in range(2):
        one()
    _sync(device)
    warm = time.perf_counter() - start
    timed, start = 0, time.perf_counter()
    while timed < 3 or time.perf_counter() - start < seconds:
        one()
        timed += 1
        if timed % 5 == 0:
            _sync(device)
    _sync(device)
    return (time.perf_counter() - start) / timed, timed, warm


def training_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """:func:`build_model` on ``device`` in train mode, set up as training runs it: DAU layers
    keep A_oᵀp for the backward (speed over activation memory), channels_last if asked."""
    model = build_model(config).to(device).train()
    protocols.keep_projections(model)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class BudgetPlan:
    """How a time budget was spent before training and what schedule it allowed (seconds)."""

    budget_s: float
    setup_s: float  # from the call's start to the end of the probe
    probe_steps: int
    step_s: float  # one training step, measured in the probe after two warm-up steps
    eval_s: float  # one evaluation of the test set, measured on part of it
    checkpoint_s: float  # one checkpoint write (an export costs about as much)
    margin_s: float
    planned_steps: int
    epochs: float
    replans: list[dict[str, Any]] = field(default_factory=list)

    def reserve(self, evals: int, checkpoints: int) -> float:
        """Seconds kept for ``evals`` evaluations, ``checkpoints`` writes, the export, margin."""
        return evals * self.eval_s + (checkpoints + 1) * self.checkpoint_s + self.margin_s


def _probe_step_seconds(model: nn.Module, config: TrainConfig, device: torch.device, step,
                        images: torch.Tensor | _DecodedBatches, labels: torch.Tensor,
                        seconds: float, out_dir: Path) -> tuple[float, int, float]:
    """(seconds per step, steps run, seconds per checkpoint): two warm-up steps (compilation,
    cuDNN autotuning), then at least 3 timed steps and ``seconds``; then one checkpoint written
    and deleted. The model's weights are restored afterwards."""
    snapshot = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model, config, device)
    generator = torch.Generator(device).manual_seed(config.seed + 7)
    idx = torch.randperm(len(images), generator=generator, device=device)[:config.batch_size]

    def one() -> None:
        batch = augment(images[idx], generator, config.crop_padding, config.flip)
        step(optimizer, batch, labels[idx], config.peak_lr * 1e-3)

    per_step, timed, _ = time_steps(one, device, seconds)
    path, start = out_dir / ".probe-checkpoint.pt", time.monotonic()
    _atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    checkpoint_s = time.monotonic() - start
    path.unlink(missing_ok=True)
    model.load_state_dict(snapshot)
    return per_step, timed + 2, checkpoint_s


class _DecodedBatches:
    """``images[idx]`` of a file-backed training set: the files ``idx`` selects, decoded in this
    process and moved to ``device`` (no prefetch: slower than an in-memory set, but memory holds
    one batch, not the set)."""

    def __init__(self, train_set: BaseImageSet, device: torch.device) -> None:
        self.train_set, self.device = train_set, device

    def __len__(self) -> int:
        return len(self.train_set)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.train_set.uint8(idx.cpu()).to(self.device)


def training_images(train_set: BaseImageSet, device: torch.device
                    ) -> torch.Tensor | _DecodedBatches:
    """What the training loop indexes with a batch's indices: an in-memory set's uint8
    (N, C, H, W) moved to ``device`` once, else a :class:`_DecodedBatches` view of the files."""
    if isinstance(train_set, ImageSet):
        return train_set.images.to(device)
    return _DecodedBatches(train_set, device)


def _time_eval(model: nn.Module, test_set: BaseImageSet | None, device: torch.device) -> float:
    """Seconds for one evaluation of ``test_set``, extrapolated from its first images."""
    if test_set is None:
        return 0.0
    part = test_set.subset(min(len(test_set), 1000 if device.type == "cuda" else 200))
    start = time.monotonic()
    predict_logits(model, part, 500, device, progress=False)
    _sync(device)
    model.train()
    return (time.monotonic() - start) * len(test_set) / len(part)


def plan_budget(config: TrainConfig, steps_per_epoch: int, step_s: float, eval_s: float,
                checkpoint_s: float, elapsed_s: float, probe_steps: int) -> BudgetPlan:
    """The longest schedule (≤ ``config.epochs`` epochs) that, with its evaluations, checkpoints
    and the export, ends ``margin`` before ``config.time_budget``; one line if none fits."""
    budget = float(config.time_budget or 0.0)
    margin = max(0.5, 0.01 * budget)
    plan = BudgetPlan(budget, elapsed_s, probe_steps, step_s, eval_s, checkpoint_s, margin, 0, 0.0)
    steps = 0
    # each epoch count e brings its own evaluations and checkpoints; the schedule is the most steps
    # any e allows that really need e epochs (the cost only grows with the steps, so this is the
    # longest schedule that fits; a fixed-point iteration on the steps can oscillate)
    for epochs in range(1, config.epochs + 1):
        evals = 1 + ((epochs - 1) // config.eval_every if config.eval_every else 0)
        available = budget - elapsed_s - plan.reserve(evals if eval_s else 0, epochs)
        fits = min(int(available // step_s), epochs * steps_per_epoch)
        if fits <= (epochs - 1) * steps_per_epoch:
            break  # e epochs do not fit; more epochs cost more
        steps = fits
    if steps < 1:
        needed = elapsed_s + plan.reserve(1 if eval_s else 0, 1) + 20 * step_s
        raise TrainError(
            f"--time-budget {budget:g} s leaves no time to train: {elapsed_s:.1f} s went to "
            f"setup and the probe, a step takes {step_s:.2f} s, the final evaluation "
            f"{eval_s:.1f} s; give at least {math.ceil(needed)} s (for 20 steps), or evaluate "
            "on fewer images (--test-limit)")
    plan.planned_steps, plan.epochs = steps, steps / steps_per_epoch
    return plan


@dataclass(frozen=True)
class CallOptions:
    """How one :func:`train` call runs, as opposed to what it trains (:class:`TrainConfig`):
    none of it is in the checkpoint."""

    resume: bool = False  # continue from ``checkpoint.pt`` if there is one
    progress: bool = True  # a line per epoch
    bars: bool = True  # with ``progress``: a progress bar per epoch too
    stop_after_epochs: int | None = None  # end the call after this many epochs (as a kill would)
    started_at: float | None = None  # ``time.monotonic()`` when the time budget began (None: now)


@dataclass
class _EpochStats:
    """One epoch's steps: the last learning rate, the losses summed on the device (no host sync
    per step), the steps run and their wall-clock seconds."""

    lr: float
    loss: torch.Tensor
    penalty: torch.Tensor
    steps: int
    seconds: float


def _set_up_device(config: TrainConfig, device: torch.device) -> None:
    if device.type == "cuda":
        set_tf32(config.tf32)
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each convolution once


class _Trainer:
    """One :func:`train` call: the model, data, optimizer and counters its named steps share.

    The steps: :meth:`resume`, :meth:`probe_budget`, :meth:`one_epoch` (with :meth:`guard`),
    :meth:`evaluate`, :meth:`save_checkpoint`, :meth:`record_history`; :meth:`start` and
    :meth:`run` put them in order.
    """

    def __init__(self, config: TrainConfig, train_set: BaseImageSet,
                 test_set: BaseImageSet | None, out_dir: Path, device: torch.device,
                 options: CallOptions) -> None:
        self.config, self.test_set, self.device, self.options = config, test_set, device, options
        self.started_at = time.monotonic() if options.started_at is None else options.started_at
        self.deadline = (None if config.time_budget is None
                         else self.started_at + config.time_budget)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.checkpoint_path = out_dir, out_dir / "checkpoint.pt"
        self.history_path, self.plan_path = out_dir / "history.csv", out_dir / "plan.json"
        _set_up_device(config, device)
        self.model = training_model(config, device)
        check_output_classes(config.model, self.model, train_set, error=TrainError,
                             device=device,
                             fix="build it with num_classes={n} (torchvision:/timm: models get "
                                 "it from `train` itself) or train on a dataset with as many "
                                 "classes")
        if device.type == "cpu":
            retain_freed_memory()
        self.step_fn = make_train_step(self.model, config, device)
        self.images = training_images(train_set, device)
        self.labels = train_set.labels.to(device)
        self.steps_per_epoch = len(self.images) // config.batch_size  # drop the last partial batch
        if self.steps_per_epoch < 1:
            raise TrainError(f"--batch-size {config.batch_size} is larger than the train set "
                             f"({len(self.images)} images): use a smaller batch")
        self.epoch, self.step, self.planned = 0, 0, config.epochs * self.steps_per_epoch
        self.plan: BudgetPlan | None = None
        self.train_seconds, self.steps_this_call, self.epochs_this_call = 0.0, 0, 0
        self.guard_every = 1

    def resume(self) -> dict[str, Any] | None:
        """With ``resume``: the model, epoch, step and planned steps from ``checkpoint.pt`` (if
        there is one; made with the same result fields, else one :class:`CheckpointError`
        line), history rows after it dropped, the budget plan re-read. Without: the history and
        plan of an earlier run removed. Returns the checkpoint (None: a fresh start)."""
        if not self.options.resume:
            self.history_path.unlink(missing_ok=True)
            self.plan_path.unlink(missing_ok=True)
            return None
        if not self.checkpoint_path.exists():
            return None
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        saved = {**_config_dict(TrainConfig()), **state["config"]}  # older runs: defaults
        if _result_fields(saved) != _result_fields(_config_dict(self.config)):
            raise CheckpointError(
                f"{self.checkpoint_path} was made with another config: "
                "use a new --out, or the options it was started with"
            )
        self.model.load_state_dict(state["model"])
        self.epoch = int(state["epoch"])
        self.step = int(state.get("step", self.epoch * self.steps_per_epoch))
        self.planned = int(state.get("planned_steps", self.planned))
        _truncate_history(self.history_path, self.epoch)
        if self.plan_path.exists():
            self.plan = BudgetPlan(**json.loads(self.plan_path.read_text()))
        return state

    def probe_budget(self, fresh: bool) -> None:
        """The time budget's probe: seconds per step, per evaluation and per checkpoint, then
        the plan (:func:`plan_budget`) of a ``fresh`` run, or the checkpoint's planned steps of
        a resumed one; written to ``plan.json``."""
        config, budget = self.config, self.config.time_budget
        step_s, probe_steps, checkpoint_s = _probe_step_seconds(
            self.model, config, self.device, self.step_fn, self.images, self.labels,
            min(3.0, 0.03 * budget), self.out_dir)
        eval_s = _time_eval(self.model, self.test_set, self.device)
        if fresh:
            self.plan = plan_budget(config, self.steps_per_epoch, step_s, eval_s, checkpoint_s,
                                    time.monotonic() - self.started_at, probe_steps)
            self.planned = self.plan.planned_steps
        elif self.plan is None:
            self.plan = BudgetPlan(budget, 0.0, probe_steps, step_s, eval_s, checkpoint_s,
                                   max(0.5, 0.01 * budget), self.planned,
                                   self.planned / self.steps_per_epoch)
        _write_json(self.plan_path, asdict(self.plan))

    def start(self) -> None:
        """Resume (or start afresh), probe the budget if there is one, restore the optimizer."""
        state = self.resume()
        self.optimizer = make_optimizer(self.model, self.config, self.device)
        if self.deadline is not None:
            self.probe_budget(fresh=state is None)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.guard_every = max(1, min(25, self.planned // 20))  # short plans: every step

    def one_epoch(self) -> _EpochStats:
        """The steps of epoch ``self.epoch`` (fewer where the plan ends inside it): data order
        and augmentation from a generator seeded with (seed, epoch), so a resumed run repeats
        them; the :meth:`guard` every ``guard_every`` steps of a budgeted run."""
        config, device = self.config, self.device
        generator = torch.Generator(device).manual_seed(config.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.images), generator=generator, device=device)
        self.model.train()
        started, first_step, lr = time.monotonic(), self.step, float("nan")
        loss, penalty = torch.zeros((), device=device), torch.zeros((), device=device)
        bar = self._progress_bar()
        for index in range(self.steps_per_epoch):
            if self.step >= self.planned:
                break
            # a run planned under a budget keeps the plan's cosine, also resumed without one
            total_epochs = (self.planned / self.steps_per_epoch if self.plan is not None
                            else None)
            lr = learning_rate(config, self.epoch + index / self.steps_per_epoch, total_epochs)
            idx = order[index * config.batch_size:(index + 1) * config.batch_size]
            batch = augment(self.images[idx], generator, config.crop_padding, config.flip)
            step_loss, step_penalty = self.step_fn(self.optimizer, batch, self.labels[idx], lr)
            loss += step_loss
            penalty += step_penalty
            self.step += 1
            self.steps_this_call += 1
            bar.update(1)
            if self.step % 25 == 0:
                bar.set_postfix(loss=f"{loss.item() / (self.step - first_step):.4f}")
            if self.deadline is not None and self.step % self.guard_every == 0:
                self.guard(started)
        bar.close()
        _sync(device)
        seconds = time.monotonic() - started
        self.train_seconds += seconds
        return _EpochStats(lr, loss, penalty, self.step - first_step, seconds)

    def _progress_bar(self) -> tqdm:
        epochs = math.ceil(self.planned / self.steps_per_epoch)
        return tqdm(total=min(self.steps_per_epoch, self.planned - self.step), unit="batch",
                    leave=False, desc=f"epoch {self.epoch + 1}/{epochs}",
                    disable=not (self.options.progress and self.options.bars),
                    dynamic_ncols=True)

    def guard(self, epoch_started: float) -> None:
        """Shorten the planned steps (:func:`_guard`) if this call's steps got slower than the
        plan allows before the deadline."""
        _sync(self.device)
        now = time.monotonic()
        rate = (self.train_seconds + now - epoch_started) / self.steps_this_call
        self.planned = _guard(self.plan, self.step, self.planned, rate, now, self.deadline,
                              self.steps_per_epoch, self.config, self.epoch)

    def evaluate(self) -> float:
        """Test top-1 (%) after the last step and every ``eval_every`` epochs, else NaN."""
        finished = self.step >= self.planned
        due = finished or (self.config.eval_every and self.epoch % self.config.eval_every == 0)
        if self.test_set is None or not due:
            return float("nan")
        logits = predict_logits(self.model, self.test_set, 500, self.device, progress=False)
        return top1_accuracy(logits, self.test_set.labels)

    def save_checkpoint(self) -> None:
        """``checkpoint.pt``, atomically: config, epoch, step, planned steps, model, optimizer."""
        _atomic_torch_save({"config": _config_dict(self.config), "epoch": self.epoch,
                            "step": self.step, "planned_steps": self.planned,
                            "model": self.model.state_dict(),
                            "optimizer": self.optimizer.state_dict()}, self.checkpoint_path)

    def record_history(self, stats: _EpochStats, accuracy: float) -> dict[str, Any]:
        """Append the epoch's row to ``history.csv`` (and rewrite ``plan.json``, whose replans
        may have grown); returns the row."""
        steps = max(stats.steps, 1)
        row = {"epoch": self.epoch, "step": self.step, "planned_steps": self.planned,
               "lr": f"{stats.lr:.6g}", "train_loss": f"{stats.loss.item() / steps:.6f}",
               "lambda_penalty": f"{stats.penalty.item() / steps:.6g}",
               "test_accuracy": f"{accuracy:.2f}", "epoch_seconds": f"{stats.seconds:.1f}",
               "images_per_s": f"{stats.steps * self.config.batch_size / stats.seconds:.1f}"}
        _append_history(self.history_path, row)
        if self.plan is not None:
            _write_json(self.plan_path, asdict(self.plan))
        return row

    def run(self) -> nn.Module:
        """Epochs until the plan's last step (or ``stop_after_epochs``), each evaluated (when
        due), checkpointed and recorded; the model in eval mode, contiguous."""
        stop = self.options.stop_after_epochs
        while self.step < self.planned and (stop is None or self.epochs_this_call < stop):
            stats = self.one_epoch()
            self.epoch += 1
            self.epochs_this_call += 1
            accuracy = self.evaluate()
            self.save_checkpoint()
            row = self.record_history(stats, accuracy)
            if self.options.progress:
                tqdm.write(f"epoch {self.epoch}: step {self.step}/{self.planned}, loss "
                           f"{row['train_loss']}, test top-1 {accuracy:.2f} %, "
                           f"{stats.seconds:.0f} s ({row['images_per_s']} img/s)")
        return self.model.to(memory_format=torch.contiguous_format).eval()


def train(config: TrainConfig, train_set: BaseImageSet, test_set: BaseImageSet | None,
          out_dir: str | Path, device: str | torch.device = "cpu", resume: bool = False,
          progress: bool = True,
          stop_after_epochs: int | None = None, started_at: float | None = None,
          bars: bool = True) -> nn.Module:
    """Train ``config.model`` on ``train_set``; evaluate on ``test_set`` every ``eval_every`` epochs
    and after the last.

    Writes ``out_dir/checkpoint.pt`` (atomic, every epoch), ``out_dir/history.csv`` (one row per
    epoch: global step, planned steps, lr, losses, accuracy, speed) and, with a time budget,
    ``out_dir/plan.json`` (:class:`BudgetPlan`). ``started_at`` (``time.monotonic()``) is when the
    budget began (default: now; the CLI passes its own start, so reading the data counts).
    ``stop_after_epochs`` ends the call early (as a kill would) — for tests and time-boxed runs.
    ``progress``: a line per epoch, and with ``bars`` a progress bar (:class:`CallOptions`). The
    returned model is in eval mode, float32, contiguous. Raises :class:`TrainError` (settings,
    budget) and :class:`CheckpointError` (a resume with another config), one line each.
    """
    options = CallOptions(resume, progress, bars, stop_after_epochs,
                          time.monotonic() if started_at is None else started_at)
    config.check()
    trainer = _Trainer(config, train_set, test_set, Path(out_dir), torch.device(device), options)
    trainer.start()
    return trainer.run()


def _guard(plan: BudgetPlan, step: int, planned: int, step_s: float, now: float, deadline: float,
           steps_per_epoch: int, config: TrainConfig, epoch: int) -> int:
    """The planned steps, shortened if the rest at ``step_s`` per step would pass the deadline.

    The cosine schedule is a function of step / planned steps, so a shorter plan still ends at
    learning rate 0. Every change is recorded in ``plan.replans``.
    """
    epochs_left = math.ceil(planned / steps_per_epoch) - epoch
    evals_left = 1 + ((epochs_left - 1) // config.eval_every if config.eval_every else 0)
    reserve = plan.reserve(evals_left if plan.eval_s else 0, epochs_left)
    if now + (planned - step) * step_s + reserve <= deadline:
        return planned
    shorter = step + max(0, int((deadline - now - reserve) // step_s))
    if shorter < planned:
        plan.replans.append({"at_step": step, "planned_steps": shorter,
                             "seconds_per_step": round(step_s, 5)})
        plan.planned_steps, plan.epochs = shorter, shorter / steps_per_epoch
        return shorter
    return planned


def process_started_at() -> float:
    """``time.monotonic()`` at this process's start (Linux ``/proc/self/stat``; else now), so
    that a command's time budget includes starting Python and importing torch."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        age = (time.clock_gettime(time.CLOCK_BOOTTIME)
               - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: starttime in ticks
        return time.monotonic() - min(max(0.0, age), 600.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()


def training_status(out_dir: str | Path) -> dict[str, Any]:
    """``{"epochs", "step", "planned_steps", "finished", "test_accuracy"}`` from ``history.csv``."""
    path = Path(out_dir) / "history.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    if not rows:
        return {"epochs": 0, "step": 0, "planned_steps": None, "finished": False,
                "test_accuracy": None}
    last = rows[-1]
    step = int(last.get("step") or 0)
    planned = int(last.get("planned_steps") or 0)
    accuracy = [float(r["test_accuracy"]) for r in rows if r["test_accuracy"] not in ("", "nan")]
    return {"epochs": int(last["epoch"]), "step": step, "planned_steps": planned,
            "finished": planned > 0 and step >= planned,
            "test_accuracy": accuracy[-1] if accuracy else None}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _result_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the per-call settings (a resumed run may change those), and without T
    and the norm for models other than CoDA-Nets (runs before 2026-11-30 recorded the CoDA-Net
    defaults there, which meant nothing)."""
    unused = () if is_coda(config["model"]) else ("temperature", "norm")
    return {k: v for k, v in config.items() if k not in _PER_CALL_FIELDS and k not in unused}


def _program() -> str:
    """The command's name as a user types it (``python -m attrib_bench`` shows __main__.py)."""
    name = Path(sys.argv[0]).name
    return "attrib-bench" if name in ("__main__.py", "cli.py") else name


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))


def export(model: nn.Module, config: TrainConfig, out_path: str | Path, *,
           dataset: str, test_accuracy: float | None, epochs_done: int,
           dtype: torch.dtype = torch.float16,
           extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the weights as safetensors (``dtype`` storage) and a JSON sidecar; return the sidecar.

    The sidecar records the config, T, norm, epochs, data, test accuracy, the file's sha256 and
    the command line that produced it, ``extra`` (``attrib-bench train`` adds the run's steps,
    data and ``registered_dataset``), and a ``"zoo"`` section
    (:func:`attrib_bench.models.zoo.zoo_section`: name ``out_path``'s stem, accuracy not yet
    measured on the stored file): the one form in which the zoo registers weights, so the
    export folder is a zoo folder (``$ATTRIB_BENCH_ZOO``), and ``zoo_sidecar`` renames it.
    """
    from safetensors.torch import save_file

    from attrib_bench.core.checkpoints import sha256_file
    from attrib_bench.models.zoo import zoo_section

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # floating tensors in ``dtype``; integer buffers (batch norm's num_batches_tracked) as they are
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    tmp = out_path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.chmod(tmp, 0o644)  # safetensors writes 0600; weights are for sharing
    os.replace(tmp, out_path)
    command = shlex.join([_program(), *sys.argv[1:]])
    sidecar = {
        "file": out_path.name,
        "sha256": sha256_file(out_path),
        "storage_dtype": str(dtype).removeprefix("torch."),
        "config": _config_dict(config),
        "epochs": epochs_done,
        "dataset": dataset,
        "test_accuracy": test_accuracy,
        "command": command,
        **(extra or {}),
    }
    sidecar.setdefault("zoo", zoo_section(out_path.stem, accuracy=None,
                                          provenance=f"trained here: {command}"))
    out_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


# ----------------------------------------------------------------- one `attrib-bench train` call
# train_and_export is everything the command does between parsing its options and printing:
# read the dataset's train and evaluation splits, give a library model a head of the dataset's
# classes, train and, once the schedule has completed, export NAME.safetensors with the sidecar
# NAME.json in the one form the zoo registers (attrib_bench.models.zoo.read_zoo_sidecar).


@dataclass(frozen=True)
class TrainData:
    """The data a training run reads: registered dataset ``dataset`` (its ``"train"`` split,
    and its evaluation split for the test accuracy) with its ``options``, under ``root``;
    ``limit`` / ``test_limit``: only the first N images of each (smoke tests)."""

    dataset: str = "cifar10"
    options: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    limit: int | None = None
    test_limit: int | None = None

    def splits(self) -> tuple[BaseImageSet, BaseImageSet]:
        """(train set, test set); an unreadable root is the dataset's own one-line error."""
        train_set = get_dataset(self.dataset, "train", root=self.root,
                                **self.options).subset(self.limit)
        test_set = get_dataset(self.dataset, evaluation_split(self.dataset), root=self.root,
                               **self.options).subset(self.test_limit)
        return train_set, test_set


def export_name(config: TrainConfig) -> str:
    """The name a run exports (and registers) its weights under: a CoDA-Net's names its norm
    and T (``xs-coda-sq-t1000``; T the model's own when not given), other models' are their
    name without ":" (``torchvision:resnet18`` → ``torchvision_resnet18``)."""
    if is_coda(config.model):
        return f"{config.model}-{config.norm}-t{config.temperature:g}"
    return slug(config.model)


@dataclass(frozen=True)
class TrainJob:
    """One ``train`` call: what to train (``config``), on which ``data``, on which ``device``,
    in which run folder (``out_dir``; None: ``runs/train/NAME``), whether it continues the
    folder's checkpoint (``resume``), stops after ``stop_after`` epochs of this call, and shows
    progress bars (``bars``)."""

    config: TrainConfig
    data: TrainData
    device: torch.device = torch.device("cpu")
    out_dir: str | Path | None = None
    resume: bool = False
    stop_after: int | None = None
    bars: bool = True

    @property
    def name(self) -> str:
        """:func:`export_name` of the config."""
        return export_name(self.config)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/train/{self.name}")

    @property
    def starts_afresh(self) -> bool:
        """``resume`` was asked for, but the run folder has no ``checkpoint.pt`` yet."""
        return self.resume and not (self.run_dir / "checkpoint.pt").exists()


@dataclass(frozen=True)
class TrainOutcome:
    """What a ``train`` call left in ``run_dir``: :func:`training_status` (epochs, steps,
    planned steps, finished, last test accuracy) and, once the schedule completed, the
    exported weights' sidecar (None: stopped early; ``--resume`` continues)."""

    name: str
    run_dir: Path
    status: dict[str, Any]
    sidecar: dict[str, Any] | None

    @property
    def weights(self) -> Path | None:
        return None if self.sidecar is None else self.run_dir / self.sidecar["file"]


def with_dataset_head(config: TrainConfig, train_set: BaseImageSet) -> TrainConfig:
    """``config`` with ``num_classes`` of ``train_set`` for a library model (torchvision:,
    timm:; its head is initialised at random, as the rest) unless the config sets one; other
    models' configs unchanged (their class count is checked against the data instead)."""
    if (MODELS.get(config.model).metadata.get("family") != "library"
            or "num_classes" in config.model_kwargs):
        return config
    return replace(config, model_kwargs={**config.model_kwargs,
                                                     "num_classes": train_set.num_classes})


def run_record(job: TrainJob, config: TrainConfig, train_set: BaseImageSet,
               test_set: BaseImageSet, status: dict[str, Any]) -> dict[str, Any]:
    """What the export's sidecar adds about the run: steps, the registered dataset (the zoo
    entry's), train and test data and sizes, epochs trained (steps / steps per epoch), the
    device and the time budget's plan (``plan.json``; None without a budget)."""
    plan_path = job.run_dir / "plan.json"
    steps_per_epoch = len(train_set) // config.batch_size
    device = job.device
    return {"steps": status["step"], "registered_dataset": job.data.dataset,
            "train_data": train_set.name, "test_data": test_set.name,
            "train_images": len(train_set), "test_images": len(test_set),
            "epochs_trained": round(status["step"] / steps_per_epoch, 3),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "plan": json.loads(plan_path.read_text()) if plan_path.exists() else None}


def train_and_export(job: TrainJob, started_at: float | None = None) -> TrainOutcome:
    """Train ``job`` and, once its schedule completed, export ``run_dir/NAME.safetensors``
    (float16) with its sidecar ``NAME.json`` (:func:`run_record`, and the ``"zoo"`` section).

    ``started_at`` (``time.monotonic()``) is when a time budget began (None: now). Raises
    :class:`~attrib_bench.core.errors.RunError` for a model whose classes or input size do not fit
    the data, and what :func:`~attrib_bench.runners.train.train` raises, one line each.
    """
    train_set, test_set = job.data.splits()
    model_name = job.config.model
    check_model_fits(model_name, MODELS.get(model_name).metadata, train_set, job.data.dataset)
    config = with_dataset_head(job.config, train_set)
    model = train(config, train_set, test_set, job.run_dir, job.device, resume=job.resume,
                  stop_after_epochs=job.stop_after, started_at=started_at, bars=job.bars)
    status = training_status(job.run_dir)
    if not status["finished"]:
        return TrainOutcome(job.name, job.run_dir, status, None)
    sidecar = export(model, config, job.run_dir / f"{job.name}.safetensors",
                     dataset=train_set.name, test_accuracy=status["test_accuracy"],
                     epochs_done=status["epochs"],
                     extra=run_record(job, config, train_set, test_set, status))
    return TrainOutcome(job.name, job.run_dir, status, sidecar)
