"""What a run was asked for, checked and resolved before anything is built: names, settings,
sizes and the executor's options, into one :class:`RunSettings` (built by :func:`run_settings`
from a :class:`RunRequest`, the same for ``run()`` and ``attrib-bench run``), whose ``config``
is the :class:`~attrib_bench.runners.jobs.RunConfig`: what the run computes.

Every check here is one :class:`~attrib_bench.core.errors.AttribBenchError` line naming the fix;
hyper-parameters are parsed and checked against their factories' declared types
(:mod:`attrib_bench.core.hparams`), so the config holds each method's and metric's full resolved
configuration (defaults and the run's seed included).
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from attrib_bench.core import hparams
from attrib_bench.core.errors import RunError, SettingError
from attrib_bench.core.hparams import AtLeast, Between
from attrib_bench.core.registry import DATASETS, METHODS, METRICS
from attrib_bench.data import dataset_options as resolve_dataset_options
from attrib_bench.data import evaluation_split
from attrib_bench.data.imageset import BaseImageSet
from attrib_bench.methods.base import Seed
from attrib_bench.runners.jobs import RunConfig
from attrib_bench.runners.storage import Store

if TYPE_CHECKING:
    from torch import nn

#: ``run(executor=...)``: in this process (no Dask import), or Dask tasks.
EXECUTORS = ("local", "dask")

#: The run's own counts: an int in a declared range (:class:`~attrib_bench.core.hparams.Between`),
#: checked by the one converter (:func:`attrib_bench.core.hparams.violation`) as a method's or
#: metric's settings are; None allowed where the flag is optional. The seed's range is the
#: methods' (:data:`~attrib_bench.methods.base.Seed`): their seeds and the metrics' derive from it.
RUN_COUNTS: dict[str, tuple[Between, bool]] = {
    "--n-samples": (AtLeast(1), True),
    "--chunk-size": (AtLeast(1), False),
    "--seed": (Seed.__metadata__[0], False),
    "--workers": (AtLeast(1), True),
}


def _check_count(flag: str, value: Any) -> None:
    """One :class:`RunError` line naming ``flag`` and its range unless ``value`` is an int in
    it (or None where allowed)."""
    between, optional = RUN_COUNTS[flag]
    if optional and value is None:
        return
    if hparams.violation(value, Annotated[int, between]) is not None:
        raise RunError(f"{flag} must be {between.describe(int)}, got {_shown(value)}")


def _shown(value: Any) -> str:
    """``value``'s repr on one line, at most 40 characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def split_names(value: str | Iterable[str] | Mapping[str, Any]) -> list[str]:
    """Names from "a,b" or an iterable, in order, each once (``grad,grad`` is ``grad``)."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(n for n in names if n))


def resolve_method(name: str, given: Mapping[str, Any], seed: int, *,
                   from_text: bool = False) -> dict[str, Any]:
    """Method ``name``'s full configuration (defaults included, types checked); the run's
    ``seed`` where the method has a seed and it is not set."""
    factory = METHODS.get(name).factory
    config = hparams.resolve(f"method {name!r}", factory, given, from_text=from_text)
    if "seed" in hparams.hparams_of(factory) and "seed" not in given:
        config["seed"] = seed
    return config


def image_size_defaults(name: str, image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Method ``name``'s defaults at ``image_size`` (H, W) of one dataset image: its class's
    :meth:`~attrib_bench.methods.base.AttributionMethod.image_size_defaults` applied to its
    factory's defaults (a preset's included), only the values that differ from those defaults
    (so a 32 px run's configuration is exactly the defaults'); {} for an unknown size or a
    method without any."""
    factory = METHODS.get(name).factory
    hook = getattr(hparams.unwrap(factory)[0], "image_size_defaults", None)
    if image_size is None or hook is None:
        return {}
    defaults = hparams.resolve(f"method {name!r}", factory, {})
    sized = hook(defaults, (int(image_size[0]), int(image_size[1])))
    return {key: value for key, value in sized.items() if value != defaults.get(key)}


def protocol_defaults(dataset: str | BaseImageSet, metric: str) -> dict[str, Any]:
    """The dataset's protocol for ``metric``: its registry metadata ``protocol[metric]`` (e.g.
    TinyImageNet's 250 localisation grids); {} for an image set given as is."""
    if isinstance(dataset, BaseImageSet):
        return {}
    return dict(DATASETS.get(str(dataset)).metadata.get("protocol", {}).get(metric, {}))


def dataset_image_size(dataset: str | BaseImageSet, options: Mapping[str, Any]
                       ) -> tuple[int, int] | None:
    """(H, W) of one image of ``dataset`` before it is loaded: an image set's own size, else
    the ``image_size`` option (imagefolder, imagenet), else the registry's ``image_size``
    metadata; None if the dataset declares none (its methods keep their 32 px defaults)."""
    if isinstance(dataset, BaseImageSet):
        return dataset.image_size
    size = options.get("image_size", DATASETS.get(str(dataset)).metadata.get("image_size"))
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_model_fits(name: str, metadata: Mapping[str, Any], images: BaseImageSet,
                     dataset: str, *, needs_weights: bool = False) -> None:
    """One :class:`RunError` line unless the model's declared class count and input size
    (registry metadata ``num_classes``, ``image_size``; e.g. xl-coda: 200 classes at 64 px) are
    those of ``images``; a model that declares neither (a library model, a user's module) passes.
    The line names the model's own dataset when it declares one, and with ``needs_weights``
    (a run of a model without weights and without ``--checkpoint``) the checkpoint to pass or
    the command that trains one."""
    classes, size = metadata.get("num_classes"), metadata.get("image_size")
    height, width = images.image_size
    fits = ((classes is None or classes == images.num_classes)
            and (size is None or (height, width) == (size, size)))
    if not fits:
        own = metadata.get("dataset")
        fix = (f"pass --dataset {own} --data-root DIR (its own data)" if own and own != dataset
               else "pick a model built for this data")
        if needs_weights and own and own != dataset:
            fix = (f"pass --dataset {own} --data-root DIR --checkpoint FILE (its own data; it "
                   f"has no weights: `attrib-bench train --model {name} --dataset {own} "
                   "--data-root DIR` trains one)")
        raise RunError(f"{name} is built for {classes} classes at {size} px, {dataset} has "
                       f"{images.num_classes} classes at {height}x{width} px: {fix}")


def resolve_metric(name: str, given: Mapping[str, Any], *, from_text: bool = False
                   ) -> dict[str, Any]:
    """Metric ``name``'s full configuration (defaults included, types checked)."""
    return hparams.resolve(f"metric {name!r}", METRICS.get(name).factory, given,
                           from_text=from_text)


def sample_count_key(metric: str) -> str | None:
    """The hyper-parameter of registered metric ``metric`` that ``--n-samples`` sets (its
    ``sample_count``, e.g. "num_grids"), or None: ``n_samples`` then reaches its ``select``."""
    return getattr(METRICS.get(metric).factory, "sample_count", None)


def parse_settings(settings: Iterable[str], methods: list[str], metrics: list[str]
                   ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """``["rise.n_masks=500", "pixel-removal.baseline=road"]`` → (method, metric) settings as
    text, split by the selected ``methods`` and ``metrics``; a NAME that is neither, or an item
    not of the form NAME.KEY=VALUE, is one :class:`SettingError` line with the close matches.

    The item splits at its first ``=`` (the VALUE may hold more) and NAME.KEY at its last dot;
    whitespace around NAME and KEY is ignored, the VALUE is left to its declared type's parser
    (:mod:`attrib_bench.core.hparams`: numbers ignore surrounding whitespace, a ``str`` keeps it).
    A KEY set twice keeps the last VALUE, as command-line options do."""
    method_settings: dict[str, dict[str, str]] = {}
    metric_settings: dict[str, dict[str, str]] = {}
    for item in settings:
        if not isinstance(item, str):
            raise SettingError(f"--set takes NAME.KEY=VALUE text, got {type(item).__name__}: "
                               "pass a list of strings, e.g. ['rise.n_masks=500']")
        name, eq, text = item.partition("=")
        name, dot, key = name.rpartition(".")
        name, key = name.strip(), key.strip()
        if not (dot and eq and name and key):
            raise SettingError(f"--set {item!r}: use NAME.KEY=VALUE, e.g. rise.n_masks=500")
        if name in metrics:
            metric_settings.setdefault(name, {})[key] = text
        elif name in methods:
            method_settings.setdefault(name, {})[key] = text
        else:
            raise SettingError(not_selected(name, methods, metrics, f"--set {item!r}"))
    return method_settings, metric_settings


def not_selected(name: str, methods: list[str], metrics: list[str], what: str) -> str:
    """The one line for a setting whose NAME is not a selected method or metric."""
    selected = [*methods, *metrics]
    close = [n for n in selected if n.lower() == name.lower()] or difflib.get_close_matches(
        name, selected, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else (
        f"this run has {', '.join(selected)}")
    registered = name in METHODS or name in METRICS
    why = "is not selected in this run (add it to --method/--metric)" if registered else \
        "is not a selected method or metric"
    return f"{what}: {name!r} {why}: {hint}"


def check_executor(executor: str, scheduler: str | None, workers: int | None,
                   client: Any) -> None:
    """The executor options make sense together (one line naming the fix if not)."""
    if executor not in EXECUTORS:
        raise RunError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if executor == "local" and (scheduler is not None or workers is not None
                                or client is not None):
        raise RunError("--scheduler and --workers need --executor dask")
    if scheduler is not None and workers is not None:
        raise RunError("--scheduler uses an existing cluster and --workers starts a local one: "
                       "pass one of them")
    _check_count("--workers", workers)


def resolve_dataset(dataset: str | BaseImageSet, options: Mapping[str, Any] | None = None
                    ) -> tuple[str, str, dict[str, Any]]:
    """(name, split, full options) of a run's dataset.

    A registered name: its evaluation split (metadata ``eval_split``: CIFAR-10's test,
    TinyImageNet's val) and its options resolved against the factory
    (:func:`attrib_bench.data.dataset_options`; an unknown name or option is one line). An image
    set given as is: its ``name``, split "test" and no options (it is already built).
    """
    if isinstance(dataset, BaseImageSet):
        if options:
            raise RunError(f"dataset options {sorted(options)} apply to a dataset given by name, "
                           f"not to the image set {dataset.name!r}: build the set with them")
        return dataset.name, "test", {}
    name = str(dataset)
    return name, evaluation_split(name), resolve_dataset_options(name, options)


def run_config(models: list[str], methods: str | Iterable[str], metrics: str | Iterable[str],
               *, n_samples: int | None, chunk_size: int, seed: int,
               dataset: str | BaseImageSet, checkpoint: str | None,
               method_hparams: Mapping[str, Mapping[str, Any]] | None,
               metric_hparams: Mapping[str, Mapping[str, Any]] | None,
               settings: Iterable[str],
               dataset_options: Mapping[str, Any] | None = None,
               image_size: tuple[int, int] | None = None) -> RunConfig:
    """The run's :class:`RunConfig`: names checked (unknown ones with close matches), sizes
    checked, every selected method's and metric's configuration resolved (``*_hparams`` as
    Python values, ``settings`` as NAME.KEY=VALUE text, the latter parsed to declared types),
    and the dataset's name, evaluation split and options (:func:`resolve_dataset`).

    Where the run sets nothing, two defaults come from the data: a method's size-dependent
    hyper-parameters at the dataset's image size (``image_size``, else
    :func:`dataset_image_size`; :func:`image_size_defaults`: occlusion patches, LIME's
    quickshift kernel), and a metric's settings from the dataset's protocol
    (:func:`protocol_defaults`: TinyImageNet's 250 grids). Both are recorded in
    ``defaults_from_data``."""
    dataset_name, split, options = resolve_dataset(dataset, dataset_options)
    if image_size is None:
        image_size = dataset_image_size(dataset, options)
    metric_names, all_metrics = _metric_names(metrics)
    method_names, all_methods = _method_names(methods)
    if checkpoint is not None and len(models) != 1:
        raise RunError("--checkpoint applies to one model: run one --model per checkpoint")
    _check_counts(n_samples, chunk_size, seed)
    n_samples = None if n_samples is None else int(n_samples)
    chunk_size, seed = int(chunk_size), int(seed)
    text_methods, text_metrics = parse_settings(settings, method_names, metric_names)
    _check_given(method_hparams, metric_hparams, method_names, metric_names)
    from_data: dict[str, Any] = {"image_size": list(image_size) if image_size else None,
                                 "methods": {}, "metrics": {}}
    method_configs = _configs(method_names, method_hparams, text_methods,
                              lambda name: image_size_defaults(name, image_size),
                              functools.partial(resolve_method, seed=seed), from_data["methods"])
    metric_configs = _configs(metric_names, metric_hparams, text_metrics,
                              lambda name: protocol_defaults(dataset, name), resolve_metric,
                              from_data["metrics"])
    if n_samples is not None:
        _set_sample_counts(n_samples, metric_configs, metric_hparams, text_metrics,
                           from_data["metrics"])
    return RunConfig(models, method_names, metric_names, n_samples, chunk_size, seed,
                     dataset_name, split, checkpoint, method_configs, metric_configs,
                     all_methods, all_metrics, options, from_data)


def _metric_names(metrics: str | Iterable[str]) -> tuple[list[str], bool]:
    """The selected metrics (every registered one for "all") and whether they were "all";
    an unknown name is one line with its close matches."""
    names = split_names(metrics)
    every = names == ["all"]
    if every:
        names = METRICS.names()
    for name in names:
        METRICS.get(name)  # unknown names fail here, with close matches
    return names, every


def _method_names(methods: str | Iterable[str]) -> tuple[list[str], bool]:
    """The selected methods (every registered one for "all") and whether they were "all";
    an unknown name is one line with its close matches."""
    names = split_names(methods)
    every = names == ["all"]
    for name in names:
        if name != "all":
            METHODS.get(name)
    return (METHODS.names() if every else names), every


def _check_counts(n_samples: Any, chunk_size: Any, seed: Any) -> None:
    """``--n-samples`` (None or an int >= 1), ``--chunk-size`` (an int >= 1) and ``--seed``
    (an int in [0, :data:`~attrib_bench.methods.base.MAX_SEED`]), each one line naming the fix
    if not (:data:`RUN_COUNTS`)."""
    _check_count("--n-samples", n_samples)
    _check_count("--chunk-size", chunk_size)
    _check_count("--seed", seed)


def _check_given(method_hparams: Mapping[str, Any] | None,
                 metric_hparams: Mapping[str, Any] | None, methods: list[str],
                 metrics: list[str]) -> None:
    """Every name in ``method_hparams``/``metric_hparams`` is a selected method/metric (one
    :class:`SettingError` line with the close matches if not)."""
    for kind, given, names in (("method_hparams", method_hparams, methods),
                               ("metric_hparams", metric_hparams, metrics)):
        for name in given or {}:
            if name not in names:
                raise SettingError(not_selected(name, methods, metrics, kind))


#: ``resolve(name, values, from_text=False)``: a method's or metric's full configuration.
Resolver = Callable[..., dict[str, Any]]


def _layered(name: str, values: Mapping[str, Any], text: Mapping[str, str],
             defaults: Mapping[str, Any], resolve: Resolver
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``name``'s configuration, data ``defaults`` < Python ``values`` < ``--set`` ``text``
    (parsed to the declared types), and the data defaults it took (those the run left unset)."""
    from_data = {key: value for key, value in defaults.items()
                 if key not in values and key not in text}
    config = resolve(name, {**from_data, **values})
    if text:
        parsed = resolve(name, text, from_text=True)
        config = {**config, **{key: parsed[key] for key in text}}
    return config, from_data


def _configs(names: list[str], given: Mapping[str, Mapping[str, Any]] | None,
             text: Mapping[str, Mapping[str, str]],
             data_defaults: Callable[[str], Mapping[str, Any]],
             resolve: Resolver, record: dict[str, Any]
             ) -> dict[str, dict[str, Any]]:
    """Each method's or metric's configuration (:func:`_layered`): its ``data_defaults`` (a
    method's at the images' size, :func:`image_size_defaults`; a metric's from the dataset's
    protocol, :func:`protocol_defaults`) under the values given, those recorded in ``record``
    by name."""
    configs = {}
    for name in names:
        configs[name], from_data = _layered(name, dict((given or {}).get(name, {})),
                                            text.get(name, {}), data_defaults(name), resolve)
        if from_data:
            record[name] = from_data
    return configs


def _set_sample_counts(n_samples: int, configs: dict[str, dict[str, Any]],
                       given: Mapping[str, Mapping[str, Any]] | None,
                       text: Mapping[str, Mapping[str, str]], record: dict[str, Any]) -> None:
    """``--n-samples`` into each metric's ``sample_count`` setting (:func:`sample_count_key`)
    in ``configs``; a data default it replaces leaves ``record``. Setting the count both ways
    is one :class:`SettingError` line."""
    for name, config in configs.items():
        key = sample_count_key(name)
        if key is None:
            continue
        if key in text.get(name, {}) or key in (given or {}).get(name, {}):
            raise SettingError(f"--n-samples {n_samples} and {name}.{key} both set the "
                               f"number of samples of metric {name!r}: pass one")
        config[key] = n_samples
        recorded = record.get(name, {})
        recorded.pop(key, None)  # a data default --n-samples replaced is not recorded
        if not recorded:
            record.pop(name, None)


@dataclass(frozen=True)
class RunRequest:
    """What a run is asked to compute, as the caller gave it (``run()``'s keywords, the CLI's
    options), before any check: :func:`run_settings` checks it, :meth:`config` resolves it.

    ``models``: registered names ("a,b" or a list) or a mapping name → ``nn.Module``;
    ``methods``/``metrics``: names or "all"; ``settings``: ``NAME.KEY=VALUE`` text (``--set``);
    the rest as :func:`~attrib_bench.runners.benchmark.run` documents them. A list or other
    iterable is kept as a tuple, so that the request can be resolved again (:meth:`config`)."""

    models: str | Iterable[str] | Mapping[str, nn.Module]
    methods: str | Iterable[str] = "all"
    metrics: str | Iterable[str] = "all"
    n_samples: int | None = None
    chunk_size: int = 32
    seed: int = 0
    dataset: str | BaseImageSet = "cifar10"
    checkpoint: str | None = None
    dataset_options: Mapping[str, Any] | None = None
    method_hparams: Mapping[str, Mapping[str, Any]] | None = None
    metric_hparams: Mapping[str, Mapping[str, Any]] | None = None
    settings: Iterable[str] = ()

    def __post_init__(self) -> None:
        for name in ("models", "methods", "metrics", "settings"):
            value = getattr(self, name)
            if not isinstance(value, (str, Mapping)):
                object.__setattr__(self, name, tuple(value))

    def modules(self) -> dict[str, nn.Module]:
        """The modules given by name (``models`` a mapping); {} for registered names."""
        return dict(self.models) if isinstance(self.models, Mapping) else {}

    def config(self, image_size: tuple[int, int] | None = None) -> RunConfig:
        """The checked and resolved :class:`RunConfig` (:func:`run_config`), the methods'
        size-dependent defaults at ``image_size`` (H, W; None: the dataset's declared size)."""
        return run_config(split_names(self.models), self.methods, self.metrics,
                          n_samples=self.n_samples, chunk_size=self.chunk_size, seed=self.seed,
                          dataset=self.dataset, checkpoint=self.checkpoint,
                          method_hparams=self.method_hparams, metric_hparams=self.metric_hparams,
                          settings=self.settings, dataset_options=self.dataset_options,
                          image_size=image_size)


@dataclass(frozen=True)
class ExecutorOptions:
    """Where a run's chunks are evaluated: ``name`` "local" (this process) or "dask" (on
    ``client``, a ``distributed.Client``; on the cluster at ``scheduler``, "tcp://host:8786";
    or on a new ``LocalCluster`` of ``workers`` processes)."""

    name: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    client: Any = None

    def check(self) -> None:
        """The options make sense together (:func:`check_executor`; one line if not)."""
        check_executor(self.name, self.scheduler, self.workers, self.client)


@dataclass(frozen=True)
class RunSettings:
    """A run's options, checked once before anything is loaded or written
    (:func:`run_settings`): what :func:`~attrib_bench.runners.benchmark.sweep` executes.

    ``config``: what the run computes, at the dataset's declared image size (the runner takes
    :meth:`at_image_size` of the loaded images); ``modules``: the ``nn.Module`` s given by name
    ({} for registered names); ``out``/``cache``: the checked run and cache folders (None: a
    temporary folder, and ``out/cache``); ``device``: "cpu", "cuda", "cuda:N" or "auto";
    ``data_root``: the dataset's folder (None: the default); ``dry_run``: plan and check only."""

    request: RunRequest
    config: RunConfig
    modules: Mapping[str, nn.Module] = field(default_factory=dict)
    executor: ExecutorOptions = ExecutorOptions()
    out: Store | None = None
    cache: Store | None = None
    device: str = "cpu"
    data_root: str | Path | None = None
    overwrite: bool = False
    dry_run: bool = False
    progress: bool = True

    def at_image_size(self, image_size: tuple[int, int]) -> RunSettings:
        """These settings with ``config`` resolved at ``image_size`` (H, W) of the loaded
        images, where the dataset's metadata did not say it (or said otherwise)."""
        if self.config.defaults_from_data["image_size"] == list(image_size):
            return self
        return replace(self, config=self.request.config(image_size))


def run_settings(request: RunRequest, executor: ExecutorOptions | None = None, *,
                 out: str | Path | None = None, cache: str | Path | None = None,
                 device: str = "cpu", data_root: str | Path | None = None,
                 overwrite: bool = False, dry_run: bool = False,
                 progress: bool = True) -> RunSettings:
    """``request`` and the run's options as checked :class:`RunSettings`, in this order: the
    executor's options (None: local), a checkpoint against modules given by name, the request
    (:func:`run_config`), then ``out`` and ``cache`` (:func:`check_store`). Each mistake is
    one :class:`~attrib_bench.core.errors.AttribBenchError` line naming the fix; nothing is loaded
    or written."""
    executor = executor or ExecutorOptions()
    executor.check()
    modules = request.modules()
    if request.checkpoint is not None and modules:
        raise RunError(f"checkpoint={str(request.checkpoint)[:120]!r} cannot be loaded into a "
                       f"module given to run() ({', '.join(map(repr, modules))[:80]}): load it "
                       "yourself (model.load_state_dict(...)) or pass the registered model name")
    config = request.config()
    return RunSettings(request, config, modules, executor, out=check_store(out),
                       cache=check_store(cache, "--cache", "cache"), device=device,
                       data_root=data_root, overwrite=overwrite, dry_run=dry_run,
                       progress=progress)


def check_store(folder: str | Path | None, flag: str = "--out", kind: str = "output"
                ) -> Store | None:
    """The run's (or cache's) folder as a :class:`~attrib_bench.runners.storage.Store`,
    checked before any work: a local folder must be creatable (one :class:`RunError` line
    naming ``flag`` otherwise); None for None. A local folder is made absolute, so that
    workers in another directory find it too."""
    if folder is None:
        return None
    try:
        store = Store(folder)
    except (ValueError, ImportError) as exc:
        raise RunError(f"{flag} {str(folder)[:200]!r} is not a folder or fsspec URL that can be "
                       f"used here ({exc}): pass a local folder") from None
    if store.local:
        path = Path(store.root)
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            what = "is not a folder" if not path.is_dir() else "is not writable"
            raise RunError(f"cannot create the {kind} folder {str(folder)[:200]!r}: "
                           f"{path} {what}; pass {flag} a folder you can write")
        store = Store(store.root)
    return store


def output_classes(model: Any, images: BaseImageSet, device: Any = "cpu") -> int:
    """K of the model's (1, K) output on the first image of ``images`` (eval mode, no grad; the
    model's mode is restored)."""
    import torch

    from attrib_bench.core.evaluation import eval_mode
    from attrib_bench.models.protocols import check_logits

    x = images.float_images(slice(0, 1)).to(device)
    with torch.inference_mode(), eval_mode(model):
        return int(check_logits(model(x), 1, model).shape[1])


def check_output_classes(name: str, model: Any, images: BaseImageSet, *, fix: str,
                         error: type[Exception] = RunError, device: Any = "cpu") -> None:
    """One ``error`` line unless ``model`` outputs one logit per class of ``images``, checked on
    one image before any work: a target index would name another class (a 1000-class ImageNet
    head on CIFAR-10), a BCE loss would train against the wrong one-hot targets. ``fix`` ends
    the line, the caller's remedy ({n} and {k} are filled in)."""
    k, n = output_classes(model, images, device), images.num_classes
    if k != n:
        raise error(f"{name} outputs {k} classes, {images.name} has {n}: "
                    + fix.format(n=n, k=k))
