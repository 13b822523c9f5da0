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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from attrib_bench.data import BaseImageSet, ImageSet
from attrib_bench.errors import CheckpointError, TrainError
from attrib_bench.evaluation import predict_logits, set_tf32, top1_accuracy
from attrib_bench.models import protocols
from attrib_bench.perf import retain_freed_memory
from attrib_bench.runners.recipes import RECIPES, Recipe, Schedule, recipe_for  # noqa: F401
from attrib_bench.runners.settings import check_output_classes

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
            from attrib_bench.registry import MODELS

            own = MODELS.get(self.model).metadata.get("temperature", 1000.0)
            object.__setattr__(self, "temperature", float(own))
        if self.norm is None:
            object.__setattr__(self, "norm", "sq")

    def check(self) -> None:
        """One-line :class:`TrainError` for settings that cannot work together."""
        from attrib_bench.registry import MODELS

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
    from attrib_bench.registry import MODELS

    return MODELS.get(model).metadata.get("family") == "coda"


def build_model(config: TrainConfig) -> nn.Module:
    """A fresh, seeded model for ``config`` (CoDA-Nets get T and the norm)."""
    from attrib_bench.registry import create_model

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
    ``model.forward_with_linear_map`` (float32, eager: the λ term needs a double backward), and
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
            logits, linear_map = model.forward_with_linear_map(x, labels)
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
    for layer in model.modules():
        if hasattr(layer, "keep_projection"):
            layer.keep_projection = True
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
    ``progress``: a line per epoch, and with ``bars`` a progress bar. The returned model is in
    eval mode, float32, contiguous.
    """
    started_at = time.monotonic() if started_at is None else started_at
    config.check()
    deadline = None if config.time_budget is None else started_at + config.time_budget
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    checkpoint_path, history_path = out_dir / "checkpoint.pt", out_dir / "history.csv"
    plan_path = out_dir / "plan.json"
    if device.type == "cuda":
        set_tf32(config.tf32)
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each convolution once
    model = training_model(config, device)
    check_output_classes(config.model, model, train_set, error=TrainError, device=device,
                         fix="build it with num_classes={n} (torchvision:/timm: models get it "
                             "from `train` itself) or train on a dataset with as many classes")
    if device.type == "cpu":
        retain_freed_memory()
    step_fn = make_train_step(model, config, device)
    images = training_images(train_set, device)
    labels = train_set.labels.to(device)
    steps_per_epoch = len(images) // config.batch_size  # drop the last partial batch
    if steps_per_epoch < 1:
        raise TrainError(f"--batch-size {config.batch_size} is larger than the train set "
                         f"({len(images)} images): use a smaller batch")

    start_epoch, step, planned, plan = 0, 0, config.epochs * steps_per_epoch, None
    state = None
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        saved = {**_config_dict(TrainConfig()), **state["config"]}  # older runs: defaults
        if _result_fields(saved) != _result_fields(_config_dict(config)):
            raise CheckpointError(
                f"{checkpoint_path} was made with another config: "
                "use a new --out, or the options it was started with"
            )
        model.load_state_dict(state["model"])
        start_epoch = int(state["epoch"])
        step = int(state.get("step", start_epoch * steps_per_epoch))
        planned = int(state.get("planned_steps", planned))
        _truncate_history(history_path, start_epoch)
        if plan_path.exists():
            plan = BudgetPlan(**json.loads(plan_path.read_text()))
    elif not resume:
        history_path.unlink(missing_ok=True)
        plan_path.unlink(missing_ok=True)

    optimizer = make_optimizer(model, config, device)
    if deadline is not None:
        probe_s = min(3.0, 0.03 * config.time_budget)
        step_s, probe_steps, checkpoint_s = _probe_step_seconds(
            model, config, device, step_fn, images, labels, probe_s, out_dir)
        eval_s = _time_eval(model, test_set, device)
        if state is None:
            plan = plan_budget(config, steps_per_epoch, step_s, eval_s, checkpoint_s,
                               time.monotonic() - started_at, probe_steps)
            planned = plan.planned_steps
        elif plan is None:
            plan = BudgetPlan(config.time_budget, 0.0, probe_steps, step_s, eval_s, checkpoint_s,
                              max(0.5, 0.01 * config.time_budget), planned,
                              planned / steps_per_epoch)
        _write_json(plan_path, asdict(plan))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    calls_epochs = 0
    train_seconds, steps_this_call = 0.0, 0
    guard_every = max(1, min(25, planned // 20))  # short plans are checked every step
    epoch = start_epoch
    while step < planned and (stop_after_epochs is None or calls_epochs < stop_after_epochs):
        generator = torch.Generator(device).manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(images), generator=generator, device=device)
        model.train()
        started = time.monotonic()
        total_loss, total_penalty = torch.zeros((), device=device), torch.zeros((), device=device)
        first_step = step
        bar = tqdm(total=min(steps_per_epoch, planned - step), unit="batch", leave=False,
                   desc=f"epoch {epoch + 1}/{math.ceil(planned / steps_per_epoch)}",
                   disable=not (progress and bars), dynamic_ncols=True)
        for index in range(steps_per_epoch):
            if step >= planned:
                break
            total_epochs = planned / steps_per_epoch if deadline is not None else None
            lr = learning_rate(config, epoch + index / steps_per_epoch, total_epochs)
            idx = order[index * config.batch_size:(index + 1) * config.batch_size]
            batch = augment(images[idx], generator, config.crop_padding, config.flip)
            loss, penalty = step_fn(optimizer, batch, labels[idx], lr)
            total_loss += loss
            total_penalty += penalty
            step += 1
            steps_this_call += 1
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{total_loss.item() / (step - first_step):.4f}")
            if plan is not None and step % guard_every == 0:  # shorten if steps got slower
                _sync(device)
                now = time.monotonic()
                rate = (train_seconds + now - started) / steps_this_call
                planned = _guard(plan, step, planned, rate, now, deadline, steps_per_epoch,
                                 config, epoch)
        bar.close()
        _sync(device)
        seconds = time.monotonic() - started
        train_seconds += seconds
        done_steps = step - first_step
        epoch += 1
        calls_epochs += 1
        finished = step >= planned
        accuracy = float("nan")
        due = finished or (config.eval_every and epoch % config.eval_every == 0)
        if test_set is not None and due:
            logits = predict_logits(model, test_set, 500, device, progress=False)
            accuracy = top1_accuracy(logits, test_set.labels)
        _atomic_torch_save({"config": _config_dict(config), "epoch": epoch, "step": step,
                            "planned_steps": planned, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict()}, checkpoint_path)
        row = {"epoch": epoch, "step": step, "planned_steps": planned, "lr": f"{lr:.6g}",
               "train_loss": f"{total_loss.item() / max(done_steps, 1):.6f}",
               "lambda_penalty": f"{total_penalty.item() / max(done_steps, 1):.6g}",
               "test_accuracy": f"{accuracy:.2f}", "epoch_seconds": f"{seconds:.1f}",
               "images_per_s": f"{done_steps * config.batch_size / seconds:.1f}"}
        _append_history(history_path, row)
        if plan is not None:
            _write_json(plan_path, asdict(plan))
        if progress:
            tqdm.write(f"epoch {epoch}: step {step}/{planned}, loss {row['train_loss']}, test "
                       f"top-1 {accuracy:.2f} %, {seconds:.0f} s ({row['images_per_s']} img/s)")
    model = model.to(memory_format=torch.contiguous_format)
    return model.eval()


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
    the command line that produced it.
    """
    from safetensors.torch import save_file

    from attrib_bench.checkpoints import sha256_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # floating tensors in ``dtype``; integer buffers (batch norm's num_batches_tracked) as they are
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    tmp = out_path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.chmod(tmp, 0o644)  # safetensors writes 0600; weights are for sharing
    os.replace(tmp, out_path)
    sidecar = {
        "file": out_path.name,
        "sha256": sha256_file(out_path),
        "storage_dtype": str(dtype).removeprefix("torch."),
        "config": _config_dict(config),
        "epochs": epochs_done,
        "dataset": dataset,
        "test_accuracy": test_accuracy,
        "command": shlex.join([_program(), *sys.argv[1:]]),
        **(extra or {}),
    }
    out_path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar
