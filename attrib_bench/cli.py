"""The ``attrib-bench`` command line (click). Errors a user can cause print one line, exit 1."""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

import click
import torch

from attrib_bench.core.errors import AttribBenchError
from attrib_bench.core.registry import (
    DATASETS,
    METHODS,
    METRICS,
    MODELS,
    Registry,
    load_plugins,
    plugin_hint,
    unknown_name_hint,
)
from attrib_bench.runners.recipes import RECIPES

#: ``OSError`` numbers that the file system, not attrib-bench, decides (a full disk, a quota, a
#: permission, a read-only mount), and the fix the one-line error names.
_FILE_SYSTEM_ERRNOS = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there",
                       errno.EFBIG: "raise the file-size limit (ulimit -f)",
                       errno.EACCES: "check its permissions",
                       errno.EPERM: "check its permissions",
                       errno.EROFS: "remount it read-write or use another folder"}


class _Group(click.Group):
    """Turns every :class:`AttribBenchError` into click's one-line ``Error: …`` (no traceback),
    unless ``--debug`` asked for tracebacks; so too an ``OSError`` that the file system decides
    (:data:`_FILE_SYSTEM_ERRNOS`: a disk that filled up or a folder that became unwritable
    while a command wrote), which names the file and the fix. ``run`` says more (what it
    kept, that re-running resumes: :class:`~attrib_bench.runners.benchmark.OutputWriteError`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as exc:
            if exc.option_name not in ("--plugin", "--debug"):
                raise
            command = ctx.invoked_subcommand or "COMMAND"
            raise click.UsageError(
                f"{exc.option_name} is an option of attrib-bench itself: put it before the "
                f"command (attrib-bench {exc.option_name}"
                f"{' MODULE' if exc.option_name == '--plugin' else ''} {command} ...)",
                ctx) from None
        except AttribBenchError as exc:
            if ctx.meta.get("attrib_bench.debug"):
                raise
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if ctx.meta.get("attrib_bench.debug") or exc.errno not in _FILE_SYSTEM_ERRNOS:
                raise
            raise click.ClickException(
                f"{exc.strerror or exc}: {exc.filename or 'a file'}: "
                f"{_FILE_SYSTEM_ERRNOS[exc.errno]}, then run the command again") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import MODULE first so its @register_* names exist (repeatable): a module "
                   "name (the current folder is importable, as with python -m) or the path of "
                   "a .py file.")
@click.option("--debug", is_flag=True,
              help="Show full tracebacks (of attrib-bench's errors and of failing plugins).")
@click.version_option(package_name="attrib-bench")
@click.pass_context
def cli(ctx: click.Context, plugins: tuple[str, ...], debug: bool) -> None:
    """Benchmark attribution methods on image classifiers (CoDA-Nets and baselines)."""
    from attrib_bench.core.perf import retain_freed_memory

    ctx.meta["attrib_bench.debug"] = debug
    # Every command runs fixed-shape batches: keeping freed memory avoids page faults that cost
    # half of the CPU time here (CoDA-Net evaluation of the test set: 113 s -> 54 s).
    retain_freed_memory()
    loaded = load_plugins(plugins, debug=debug)
    # for this command, an unknown name says how a plugin's names are made known
    ctx.with_resource(unknown_name_hint(plugin_hint(loaded[:len(plugins)])))


def _model_rows(names: list[str]) -> list[tuple[str, ...]]:
    """One row per model: name, parameters (counted on the meta device, no memory), weights."""
    from attrib_bench.core.evaluation import count_parameters

    rows = [("name", "params", "paper", "dataset", "weights", "description")]
    for name in names:
        entry = MODELS.get(name)
        with torch.device("meta"):
            params = count_parameters(entry.factory(pretrained=False))
        paper = entry.metadata.get("paper_params_m")
        cfg = entry.metadata.get("pretrained_cfg")
        weights = f"{cfg.accuracy:.2f} %" if cfg is not None and cfg.accuracy else "-"
        rows.append((name, _parameter_count(params), f"{paper:g} M" if paper else "-",
                     entry.metadata.get("dataset", "-"), weights, entry.description))
    return rows


def _parameter_count(params: int) -> str:
    """``params`` for the listing: millions with two decimals ("1.02 M"), or thousands below
    5 000 parameters, which would read "0.00 M" ("1.4 k")."""
    return f"{params / 1e6:.2f} M" if params >= 5000 else f"{params / 1e3:.1f} k"


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        click.echo("  ".join(cells))


@cli.command("list")
@click.argument("kind", type=click.Choice(["models", "methods", "metrics", "datasets", "all"]),
                default="all")
@click.argument("pattern", default="*")
@click.option("-v", "--verbose", is_flag=True, help="Models: parameter counts, weights, datasets.")
def list_cmd(kind: str, pattern: str, verbose: bool) -> None:
    """List registered names matching PATTERN (fnmatch wildcards, e.g. '*coda*')."""
    registries: dict[str, Registry] = {"models": MODELS, "methods": METHODS, "metrics": METRICS,
                                       "datasets": DATASETS}
    for key, registry in registries.items():
        if kind not in (key, "all"):
            continue
        names = registry.names(pattern)
        click.echo(f"{key} ({len(names)}):")
        if verbose and key == "models" and names:
            _print_table(_model_rows(names))
        elif key in ("methods", "metrics"):  # hyper-parameters from the signatures
            _print_hparams(registry, names)
        elif key == "datasets":
            _print_table(_dataset_rows(names))
        else:
            _print_table([("name", "description")]
                         + [(n, registry.get(n).description) for n in names])
        if key == "models":  # library families: PREFIX:NAME (models/library.py)
            for prefix, entry in registry.prefixes().items():
                click.echo(f"  {prefix}:NAME  {entry.description}")


def _dataset_rows(names: list[str]) -> list[tuple[str, ...]]:
    """One row per dataset: image size and classes (at the default options; "-": as many as
    the folders), evaluation split, options with their defaults, the protocol's metric settings
    (metadata ``protocol``, e.g. TinyImageNet's localisation.num_grids=250), description."""
    from attrib_bench.data import dataset_options

    rows = [("name", "size", "classes", "eval", "options", "protocol", "description")]
    for name in names:
        entry = DATASETS.get(name)
        size = entry.metadata.get("image_size")
        classes = entry.metadata.get("num_classes")
        options = ", ".join(f"{k}={v}" for k, v in dataset_options(name).items())
        protocol = ", ".join(f"{metric}.{key}={value}" for metric, settings in
                             entry.metadata.get("protocol", {}).items()
                             for key, value in settings.items())
        rows.append((name, "x".join(map(str, size)) if size else "-",
                     str(classes) if classes else "-", entry.metadata.get("eval_split", "test"),
                     options or "-", protocol or "-", entry.description))
    return rows


def _print_hparams(registry: Registry, names: list[str]) -> None:
    """Each name with its description, then one line per hyper-parameter: type = default."""
    from attrib_bench.core.hparams import hparams_of

    width = max((len(n) for n in names), default=0)
    for name in names:
        entry = registry.get(name)
        click.echo(f"  {name.ljust(width)}  {entry.description}")
        for spec in hparams_of(entry.factory).values():
            click.echo(f"  {''.ljust(width)}    {spec.name}: {spec.type_name} = "
                       f"{spec.default!r}")


def _check_checkpoint(path: str | None) -> None:
    """``--checkpoint FILE`` exists and can be read, checked before any model is built: one
    :class:`~attrib_bench.core.errors.CheckpointError` line otherwise (a model factory that ignores
    or mishandles the file must never be where a wrong path shows up)."""
    from attrib_bench.core.errors import CheckpointError

    if path is None:
        return
    file = Path(path).expanduser()
    if not file.exists():
        raise CheckpointError(f"--checkpoint {path} does not exist ({file.absolute()}): pass "
                              "the path of a weights file (.safetensors or torch)")
    try:
        with open(file, "rb") as handle:
            empty = not handle.read(1)
    except OSError as exc:
        raise CheckpointError(f"--checkpoint {path} cannot be read ({exc.strerror or exc}): "
                              "check its permissions, or pass another file") from None
    if empty:
        raise CheckpointError(f"--checkpoint {path} is empty: pass a weights file "
                              "(.safetensors or torch)")


def _dataset_flags(command: Any) -> Any:
    """Add ``--dataset NAME`` and the repeatable ``--dataset-option KEY=VALUE`` to a command."""
    command = click.option(
        "--dataset-option", "dataset_option_items", multiple=True, metavar="KEY=VALUE",
        help="A dataset option, e.g. image_size=32 for imagefolder (repeatable; "
             "`attrib-bench list datasets` shows each dataset's).")(command)
    return click.option(
        "--dataset", "dataset", default="cifar10", show_default=True,
        help="Registered dataset (`attrib-bench list datasets`), read from --data-root.")(command)


def _dataset_options(name: str, items: tuple[str, ...]) -> dict[str, Any]:
    """``--dataset-option KEY=VALUE`` items as dataset ``name``'s full options, each value parsed
    to its declared type (:func:`attrib_bench.data.dataset_options`); one line if one is bad."""
    from attrib_bench.core.errors import SettingError
    from attrib_bench.data import dataset_options

    given: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not (eq and key.strip()):
            raise SettingError(f"--dataset-option {item!r}: use KEY=VALUE, e.g. image_size=224")
        given[key.strip()] = value
    return dataset_options(name, given, from_text=True)


_DATA_ROOT_HELP = ("The dataset's folder (default: $ATTRIB_BENCH_DATA, else ../shared/data): "
                   "CIFAR-10's parent, tiny-imagenet-200's parent, an image folder, ImageNet's "
                   "root.")


@cli.command("eval")
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default=None,
              help="Split to evaluate (default: the dataset's evaluation split, test or val).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N images (dataset order).")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@_dataset_flags
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=_DATA_ROOT_HELP)
@click.option("--download", is_flag=True, help="Download the dataset if it is missing.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights file (.safetensors or torch) instead of the zoo's.")
@click.option("--weights-root", type=click.Path(file_okay=False), default=None,
              help="Zoo weights folder (default: $ATTRIB_BENCH_WEIGHTS, else ../shared/weights).")
def eval_cmd(model_name: str, split: str | None, limit: int | None, batch_size: int, device: str,
             dataset: str, dataset_option_items: tuple[str, ...], data_root: str | None,
             download: bool, checkpoint: str | None, weights_root: str | None) -> None:
    """Top-1 accuracy of MODEL on a dataset (CIFAR-10's test split by default)."""
    from attrib_bench.core.evaluation import resolve_device, top1_accuracy
    from attrib_bench.core.registry import MODELS, create_model
    from attrib_bench.data import evaluation_split, get_dataset
    from attrib_bench.data.predict import predict_logits
    from attrib_bench.runners.settings import check_model_fits, check_output_classes

    MODELS.get(model_name)  # an unknown name fails first, before any data is read
    _check_checkpoint(checkpoint)  # then a missing weights file, before any model is built
    options = _dataset_options(dataset, dataset_option_items)  # then a bad dataset
    torch_device = resolve_device(device)
    from attrib_bench.models.zoo import checkpoint_kwargs

    images = get_dataset(dataset, split or evaluation_split(dataset), root=data_root,
                         download=download, **options).subset(limit)
    check_model_fits(model_name, MODELS.get(model_name).metadata, images, dataset)
    model = create_model(model_name, pretrained=checkpoint is None, checkpoint=checkpoint,
                         **checkpoint_kwargs(model_name, checkpoint),
                         **({"weights_root": weights_root} if weights_root else {}))
    # one image first: a head of another size stops before the pass
    check_output_classes(model_name, model, images, error=click.UsageError,
                         fix="pass a model (or --checkpoint) with a {n}-class head, or its own "
                             "--dataset")
    start = time.perf_counter()
    logits = predict_logits(model, images, batch_size, torch_device)
    seconds = time.perf_counter() - start
    accuracy = top1_accuracy(logits, images.labels)
    correct = int(round(accuracy * len(images) / 100))
    click.echo(f"{model_name} on {images.name} ({len(images)} images): top-1 {accuracy:.2f} % "
               f"({correct}/{len(images)}) in {seconds:.1f} s on {torch_device}")


def _recipe_default(field: str) -> str:
    """ "16 for CoDA-Nets and others, 64 for B-cos": ``field`` of each recipe in RECIPES."""
    names = {"coda": "CoDA-Nets and others", "bcos": "B-cos"}
    return ", ".join(f"{getattr(r, field)} for {names.get(family, family)}"
                     for family, r in RECIPES.items())


@cli.command("train")
@click.option("--model", "model_name", default="xs-coda", show_default=True)
@click.option("--temperature", type=float, default=None,
              help="CoDA-Net logit temperature T (default: the model's own: 1000 for XS/S/M, "
                   "6400 for XL, 1e5 for L).")
@click.option("--norm", type=click.Choice(["sq", "l2"]), default=None,
              help="CoDA-Net DAU norm (default: sq).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs (with --time-budget: at most this many) [default: the family's "
                   f"recipe: {_recipe_default('epochs')}].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help=f"[default: the recipe's: {_recipe_default('batch_size')}]")
@click.option("--lr", type=float, default=None,
              help="Peak Adam learning rate at the recipe's batch size (see --lr-scaling) "
                   f"[default: {_recipe_default('lr')}].")
@click.option("--lr-scaling", type=click.Choice(["none", "sqrt", "linear"]), default="none",
              show_default=True,
              help="Scale --lr from the recipe's batch size to --batch-size: sqrt(ratio) "
                   "(Adam's rule) or the ratio.")
@click.option("--schedule", type=click.Choice(["step", "cosine"]), default=None,
              help="step: ÷1.5 every 30 epochs (the CoDA-Nets authors'); cosine: to 0 (the "
                   "bcos package's, and the default with --time-budget) [default: "
                   f"{_recipe_default('schedule')}].")
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True)
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS",
              help="Size the cosine schedule so that training, evaluation and export end "
                   "within SECONDS of this command's start.")
@click.option("--eval-every", type=click.IntRange(min=0), default=1, show_default=True,
              help="Evaluate on the test set every N epochs (0: only after the last).")
@click.option("--amp", type=click.Choice(["none", "bf16"]), default="none", show_default=True,
              help="bf16: DAU convolutions under bfloat16 autocast; norms, scales, loss float32.")
@click.option("--tf32/--no-tf32", default=False, show_default=True,
              help="CUDA: TF32 matrix products and convolutions (off: IEEE float32).")
@click.option("--channels-last", is_flag=True, help="channels_last memory format.")
@click.option("--compile", "compile", is_flag=True, help="torch.compile the training step.")
@click.option("--lambda", "lambda_reg", type=click.FloatRange(min=0), default=0.0,
              show_default=True,
              help="Add λ·mean|W0→L(x)| of the target class to the loss (paper, Sec. 3.3).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run folder (default: runs/train/MODEL-NORM-tT).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs in this call (resume later).")
@_dataset_flags
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help=_DATA_ROOT_HELP[:-1] + "; for CIFAR-10 also a folder packed by `python -m "
                   "attrib_bench.data.packed`.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Train on the first N training images only (smoke tests).")
@click.option("--test-limit", type=click.IntRange(min=1), default=None,
              help="Evaluate on the first N test images only (smoke tests).")
@click.option("--quiet", is_flag=True, help="No progress bars (one line per epoch).")
def train_cmd(model_name: str, device: str, out_dir: str | None, resume: bool,
              stop_after: int | None, dataset: str, dataset_option_items: tuple[str, ...],
              data_root: str | None, limit: int | None, test_limit: int | None, quiet: bool,
              **settings: Any) -> None:
    """Train MODEL on a dataset's train split, evaluating on its evaluation split (CIFAR-10 and
    the model family's published recipe by default); export safetensors + sidecar."""
    # ``settings``: the TrainConfig fields given by --temperature … --lambda (None: the recipe's)
    from attrib_bench.core.evaluation import resolve_device
    from attrib_bench.runners.train import (
        TrainConfig,
        TrainData,
        TrainJob,
        is_coda,
        train_and_export,
    )

    # the budget counts from the process's start (from the command's if invoked in-process)
    started_at = time.monotonic() if _PROCESS_STARTED_AT is None else _PROCESS_STARTED_AT
    MODELS.get(model_name)  # unknown names fail here, before any data is read
    if settings["lambda_reg"] > 0 and not is_coda(model_name):
        raise click.UsageError(f"--lambda needs a CoDA-Net (a model with a linear map "
                               f"W0→L(x)); {model_name} is not one")
    options = _dataset_options(dataset, dataset_option_items)  # and bad datasets here
    torch_device = resolve_device(device)
    config = TrainConfig.for_model(model_name, **settings)
    config.check()
    job = TrainJob(config, TrainData(dataset, options, data_root, limit, test_limit),
                   torch_device, out_dir, resume, stop_after, bars=not quiet)
    if job.starts_afresh:
        click.echo(f"--resume: {job.run_dir} has no checkpoint.pt yet; starting a new run",
                   err=True)
    outcome = train_and_export(job, started_at)
    status, sidecar = outcome.status, outcome.sidecar
    if sidecar is None:
        click.echo(f"stopped after epoch {status['epochs']} (step {status['step']}/"
                   f"{status['planned_steps']}); continue with --resume --out {job.run_dir}")
        return
    seconds = time.monotonic() - started_at
    accuracy = status["test_accuracy"]
    shown = "-" if accuracy is None else f"{accuracy:.2f} %"
    click.echo(f"{job.name}: test top-1 {shown} after {sidecar['epochs_trained']:g} epochs "
               f"({status['step']} steps) in {seconds:.1f} s; weights {outcome.weights} "
               f"(sha256 {sidecar['sha256'][:12]}…)")


@cli.command("run")
@click.option("--model", "models", required=True,
              help="Model name(s), comma-separated (see `attrib-bench list models`).")
@click.option("--method", "methods", default="all", show_default=True,
              help="Method name(s), comma-separated, or all (those that apply to each model).")
@click.option("--metric", "metrics", default="all", show_default=True,
              help="Metric name(s), comma-separated, or all.")
@click.option("--n-samples", type=click.IntRange(min=1), default=None,
              help="Samples per metric (grids, images) instead of the paper's number.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Samples per chunk, the unit that is written, resumed and distributed "
                   "(default 32; not a forward batch: methods batch their own work).")
@click.option("--batch-size", "old_batch_size", type=click.IntRange(min=1), default=None,
              hidden=True, help="Deprecated name of --chunk-size.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--out", "out_dir", default="runs/bench", show_default=True,
              help="Output folder or fsspec URL (s3://…, gs://…, memory://…); re-running the "
                   "same command resumes.")
@click.option("--cache", "cache_dir", default=None,
              help="Cache folder or URL for attribution maps and sample-selection logits "
                   "(default: OUT/cache); runs that share one reuse each other's work.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of every stochastic method and of the bootstrap.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights file for the (single) model instead of the zoo's.")
@click.option("--set", "settings", multiple=True, metavar="NAME.KEY=VALUE",
              help="A method or metric hyper-parameter, e.g. rise.n_masks=500 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace a run with another config in --out.")
@_dataset_flags
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=_DATA_ROOT_HELP)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--dry-run", is_flag=True,
              help="Build and check every model, method, metric and setting, print the plan, "
                   "and stop: nothing is computed or written.")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local",
              show_default=True,
              help="local: this process; dask: one Dask task per (model, method, metric, chunk).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="With --executor dask: an existing cluster's scheduler, e.g. tcp://host:8786.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="With --executor dask: start a LocalCluster of N worker processes "
                   "(default 1).")
def run_cmd(models: str, methods: str, metrics: str, n_samples: int | None,
            chunk_size: int | None, old_batch_size: int | None, device: str, out_dir: str,
            cache_dir: str | None, seed: int, checkpoint: str | None,
            settings: tuple[str, ...], overwrite: bool, dataset: str,
            dataset_option_items: tuple[str, ...], data_root: str | None,
            quiet: bool, dry_run: bool, executor: str, scheduler: str | None,
            workers: int | None) -> None:
    """Benchmark METHODs on MODELs under METRICs on a dataset's evaluation split (CIFAR-10's
    test by default); writes tidy tables to OUT."""
    from attrib_bench.runners.benchmark import sweep
    from attrib_bench.runners.settings import ExecutorOptions, RunRequest, run_settings

    _check_checkpoint(checkpoint)  # before any model is built
    if old_batch_size is not None:
        if chunk_size is not None and chunk_size != old_batch_size:
            raise click.UsageError("--batch-size is the old name of --chunk-size: pass one")
        click.echo("warning: --batch-size is now --chunk-size (samples per chunk); the old "
                   "name will be removed in the next release", err=True)
        chunk_size = old_batch_size
    request = RunRequest(models, methods, metrics, n_samples=n_samples,
                         chunk_size=chunk_size or 32, seed=seed, dataset=dataset,
                         checkpoint=checkpoint, settings=settings,
                         dataset_options=_dataset_options(dataset, dataset_option_items))
    started = time.perf_counter()
    checked = run_settings(request, ExecutorOptions(executor, scheduler, workers),
                           out=out_dir, cache=cache_dir, device=device, data_root=data_root,
                           overwrite=overwrite, dry_run=dry_run, progress=not quiet)
    outcome = sweep(checked, started)
    if dry_run:
        _echo_plan(outcome.plan, out_dir, cache_dir)
    else:
        _echo_run(out_dir, seed)


def _echo_plan(plan: Any, out_dir: str, cache_dir: str | None) -> None:
    """A dry run's parts, one line each (samples, method and metric configuration), and what
    it checked (a :class:`~attrib_bench.runners.benchmark.Plan`)."""
    import json

    for job in plan.jobs:
        click.echo(f"{job.part.model} · {job.part.method} · {job.part.metric}: "
                   f"{len(job.samples)} samples; method {json.dumps(job.method_config)}; "
                   f"metric {json.dumps(job.metric_config, default=str)}")
    kept = f"; the selection's pool logits are cached in {cache_dir}" if cache_dir else ""
    click.echo(f"dry run: {len(plan.jobs)} parts checked, {len(plan.skipped)} skipped; "
               f"nothing was computed or written to {out_dir}{kept}")


def _echo_run(out_dir: str, seed: int) -> None:
    """A finished run's verdict (its summary for a URL), its skipped parts and its files."""
    import json

    import pandas as pd

    manifest = json.loads(Path(out_dir, "manifest.json").read_text()) \
        if "://" not in out_dir else {"skipped": []}
    if "://" in out_dir:
        summary = pd.read_csv(f"{out_dir}/summary.csv", keep_default_na=False)
        click.echo(summary[["model", "method", "metric", "variant", "stat", "mean", "ci_low",
                            "ci_high", "n", "direction"]].to_string(index=False))
    else:
        _echo_verdict(out_dir, seed)
    for item in manifest.get("skipped", []):
        click.echo(f"skipped: {item['model']} · {item['method']} · {item['metric']}: "
                   f"{item['reason']}")
    click.echo(f"rows: {out_dir}/results.parquet (+ .csv); summary: {out_dir}/summary.csv; "
               f"manifest: {out_dir}/manifest.json")


def _echo_verdict(out_dir: str, seed: int) -> None:
    """The run's ranking per metric (groups and rank CIs), or its summary if nothing ranks."""
    import pandas as pd

    from attrib_bench.compare import compare_runs

    _, ranks, lines, summary = compare_runs(out_dir, seed=seed)  # labels as recorded
    if lines:
        click.echo("Ranking (paired on shared samples; a letter = a group the Holm-adjusted "
                   "paired tests do not separate; rank [95 % CI]):")
        click.echo("\n".join(lines))
    ranked = {tuple(k) for k in ranks[["model", "method", "metric"]].to_numpy().tolist()} \
        if len(ranks) else set()
    rest = summary[[tuple(k) not in ranked for k in
                    summary[["model", "method", "metric"]].to_numpy().tolist()]]
    if len(rest):  # single methods and checks such as randomisation: their summary rows
        with pd.option_context("display.width", 140, "display.max_rows", 200,
                               "display.float_format", "{:.4f}".format):
            click.echo(rest[["model", "method", "metric", "variant", "stat", "mean", "ci_low",
                             "ci_high", "n", "direction"]].to_string(index=False))


@cli.command("compare")
@click.option("--results", "results_dirs", required=True, multiple=True,
              type=click.Path(file_okay=False),
              help="A run folder or results store (repeatable).")
@click.option("--metric", default=None, help="Only this metric's families.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="CSV of every method pair (default: print the rankings only).")
@click.option("--ranks", "ranks_file", type=click.Path(dir_okay=False), default=None,
              help="CSV of every family's ranks, groups and P(first).")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def compare_cmd(results_dirs: tuple[str, ...], metric: str | None, out_file: str | None,
                ranks_file: str | None, seed: int) -> None:
    """Compare methods on the samples they share: paired bootstrap CIs, Wilcoxon with Holm,
    effect sizes, ranks with CIs and letter groups, per (model, metric, variant, stat)."""
    from attrib_bench.compare import compare_runs
    from attrib_bench.runners.storage import atomic_write

    pairs, ranks, lines, _ = compare_runs(results_dirs, metric, seed)
    if pairs.empty:
        raise click.ClickException(f"no family with two or more ranked methods in "
                                   f"{', '.join(results_dirs)}"
                                   + (f" for metric {metric!r}" if metric else ""))
    for path, table in ((out_file, pairs), (ranks_file, ranks)):
        if path:
            atomic_write(Path(path), lambda tmp, t=table: t.to_csv(tmp, index=False))
            click.echo(f"wrote {path}")
    click.echo("\n".join(lines))
    separated = int((pairs["better"] != "none").sum())
    families = len(ranks.groupby(["model", "metric", "variant", "stat"]))
    click.echo(f"{len(pairs)} pairs in {families} families: {separated} separated, "
               f"{len(pairs) - separated} not (above: the families of the probability; logit "
               "AUCs and every pair are in --out and --ranks)")


@cli.command("plot")
@click.option("--results", "results_dirs", required=True, multiple=True,
              type=click.Path(file_okay=False),
              help="A run folder (attrib-bench run --out), or a folder of run folders; "
              "repeat to draw several runs together.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Figure folder (default: RESULTS/figures).")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png",
              show_default=True)
def plot_cmd(results_dirs: tuple[str, ...], out_dir: str | None, fmt: str) -> None:
    """Draw every figure the runs' tables support (Fig. 6 style, T series, sanity check)."""
    from attrib_bench.plots import plot_results

    for path in plot_results(results_dirs, out_dir, fmt):
        click.echo(str(path))


@cli.command("report")
@click.option("--results", "results_dirs", required=True, multiple=True,
              type=click.Path(file_okay=False),
              help="A run folder, or a folder of run folders (repeatable), as for plot.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="HTML file (default: RESULTS/report.html).")
def report_cmd(results_dirs: tuple[str, ...], out_file: str | None) -> None:
    """Write one self-contained HTML page: figures, summary, models, manifest."""
    from attrib_bench.report import write_report

    click.echo(str(write_report(results_dirs, out_file)))


@cli.command("store")
@click.option("--into", "into", required=True, type=click.Path(file_okay=False),
              help="The results store (one per dataset), e.g. results/cifar10; made if missing.")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
def store_cmd(into: str, runs: tuple[str, ...]) -> None:
    """Add finished run folders to a results store: per-sample values, mean curves, summary and
    every part's provenance. A part (model, method, metric) the store holds is replaced by the
    run's (a re-run at a larger n) and listed as superseded; later RUNS replace earlier ones."""
    from attrib_bench.store import add_runs

    parts = add_runs(into, runs)
    click.echo(f"{into}: {len(parts)} parts from {len(runs)} run folder"
               f"{'s' if len(runs) != 1 else ''}")


@cli.command("examples")
@click.option("--model", "model_name", required=True, help="Model name (one).")
@click.option("--method", "methods", default="all", show_default=True,
              help="Method name(s), comma-separated, or all (those that apply to the model).")
@click.option("--results", "results_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder or results store; writes RESULTS/examples/<model>.safetensors.")
@click.option("--count", type=click.IntRange(min=1, max=10), default=6, show_default=True,
              help="Images in the method sheet (one per class).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights file instead of the zoo's.")
@_dataset_flags
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help=_DATA_ROOT_HELP)
def examples_cmd(model_name: str, methods: str, results_dir: str, count: int, seed: int,
                 device: str, checkpoint: str | None, dataset: str,
                 dataset_option_items: tuple[str, ...], data_root: str | None) -> None:
    """Compute the maps of the qualitative sheets (Fig. 7, Fig. 8) for one model, on a
    dataset's evaluation split (CIFAR-10's test by default)."""
    from attrib_bench.core.evaluation import resolve_device
    from attrib_bench.core.registry import create_model
    from attrib_bench.data import evaluation_split, get_dataset
    from attrib_bench.runners.examples import compute_examples, examples_file, save_examples

    _check_checkpoint(checkpoint)  # before any model is built
    options = _dataset_options(dataset, dataset_option_items)
    model = create_model(model_name, pretrained=checkpoint is None, checkpoint=checkpoint)
    images = get_dataset(dataset, evaluation_split(dataset), root=data_root, **options)
    examples = compute_examples(model, model_name, images,
                                [m.strip() for m in methods.split(",") if m.strip()], count,
                                seed=seed, device=resolve_device(device))
    click.echo(str(save_examples(examples, examples_file(results_dir, model_name))))


#: When the process running the command started (set by :func:`main`, the console entry point):
#: `train --time-budget` counts from there. Commands invoked in-process (tests, click's
#: CliRunner) count from their own start.
_PROCESS_STARTED_AT: float | None = None


def main() -> None:
    global _PROCESS_STARTED_AT
    from attrib_bench.runners.train import process_started_at

    _PROCESS_STARTED_AT = process_started_at()
    cli(prog_name="attrib-bench")


if __name__ == "__main__":
    main()
