"""What a run was asked for, checked and resolved before anything is built: names, settings,
sizes and the executor's options, into one :class:`~attrib_bench.runners.jobs.RunConfig`.

Every check here is one :class:`~attrib_bench.errors.AttribBenchError` line naming the fix;
hyper-parameters are parsed and checked against their factories' declared types
(:mod:`attrib_bench.hparams`), so the config holds each method's and metric's full resolved
configuration (defaults and the run's seed included).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from attrib_bench import hparams
from attrib_bench.data import dataset_options as resolve_dataset_options
from attrib_bench.data import evaluation_split
from attrib_bench.errors import RunError, SettingError
from attrib_bench.imageset import BaseImageSet
from attrib_bench.registry import DATASETS, METHODS, METRICS
from attrib_bench.runners.jobs import RunConfig

#: ``run(executor=...)``: in this process (no Dask import), or Dask tasks.
EXECUTORS = ("local", "dask")

#: The largest seed a run takes, as the methods do (skimage's quickshift seeds LIME's
#: superpixels with a C int); the methods' and metrics' seeds derive from it.
MAX_SEED = 2**31 - 1


def _is_int(value: Any) -> bool:
    """An int of any kind (Python's, NumPy's), not a bool."""
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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
    (:mod:`attrib_bench.hparams`: numbers ignore surrounding whitespace, a ``str`` keeps it).
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


def _merge_text(resolver: Any, name: str, config: dict[str, Any], text: Mapping[str, str],
                *args: Any) -> dict[str, Any]:
    """``config`` with the ``--set`` values in ``text`` parsed to their declared types."""
    if not text:
        return config
    parsed = resolver(name, text, *args, from_text=True)
    return {**config, **{key: parsed[key] for key in text}}


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
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise RunError(f"--workers must be an int >= 1, got {_shown(workers)}")


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
    metric_names = split_names(metrics)
    all_metrics = metric_names == ["all"]
    if all_metrics:
        metric_names = METRICS.names()
    for name in metric_names:
        METRICS.get(name)  # unknown names fail here, with close matches
    method_names = split_names(methods)
    all_methods = method_names == ["all"]
    for name in method_names:
        if name != "all":
            METHODS.get(name)
    if checkpoint is not None and len(models) != 1:
        raise RunError("--checkpoint applies to one model: run one --model per checkpoint")
    if n_samples is not None and (not _is_int(n_samples) or n_samples < 1):
        raise RunError(f"--n-samples must be an int >= 1, got {_shown(n_samples)}")
    if not _is_int(chunk_size) or chunk_size < 1:
        raise RunError(f"--chunk-size must be an int >= 1, got {_shown(chunk_size)}")
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise RunError(f"--seed must be an int in [0, 2**31 - 1] (a seed every library here "
                       f"takes), got {_shown(seed)}")
    n_samples = None if n_samples is None else int(n_samples)
    chunk_size, seed = int(chunk_size), int(seed)
    selected_methods = METHODS.names() if all_methods else method_names
    text_methods, text_metrics = parse_settings(settings, selected_methods, metric_names)
    for kind, given, names in (("method_hparams", method_hparams, selected_methods),
                               ("metric_hparams", metric_hparams, metric_names)):
        for name in given or {}:
            if name not in names:
                raise SettingError(not_selected(name, selected_methods, metric_names, kind))
    from_data: dict[str, Any] = {"image_size": list(image_size) if image_size else None,
                                 "methods": {}, "metrics": {}}

    def configure(names: list[str], given: Mapping[str, Mapping[str, Any]] | None,
                  text: Mapping[str, Mapping[str, str]], defaults: Any, resolver: Any,
                  record: dict[str, Any], *args: Any) -> dict[str, dict[str, Any]]:
        """Each name's config: data defaults (recorded) < Python values < ``--set`` text."""
        configs = {}
        for name in names:
            values = dict((given or {}).get(name, {}))
            from_dataset = {key: value for key, value in defaults(name).items()
                            if key not in values and key not in text.get(name, {})}
            if from_dataset:
                record[name] = from_dataset
            configs[name] = _merge_text(resolver, name, resolver(
                name, {**from_dataset, **values}, *args), text.get(name, {}), *args)
        return configs

    method_configs = configure(selected_methods, method_hparams, text_methods,
                               lambda name: image_size_defaults(name, image_size),
                               resolve_method, from_data["methods"], seed)
    metric_configs = configure(metric_names, metric_hparams, text_metrics,
                               lambda name: protocol_defaults(dataset, name), resolve_metric,
                               from_data["metrics"])
    if n_samples is not None:
        for name in metric_names:
            key = sample_count_key(name)
            if key is None:
                continue
            if key in text_metrics.get(name, {}) or key in (metric_hparams or {}).get(name, {}):
                raise SettingError(f"--n-samples {n_samples} and {name}.{key} both set the "
                                   f"number of samples of metric {name!r}: pass one")
            metric_configs[name][key] = n_samples
            recorded = from_data["metrics"].get(name, {})
            recorded.pop(key, None)  # a data default --n-samples replaced is not recorded
            if not recorded:
                from_data["metrics"].pop(name, None)
    return RunConfig(models, selected_methods, metric_names, n_samples, chunk_size, seed,
                     dataset_name, split, checkpoint, method_configs, metric_configs,
                     all_methods, all_metrics, options, from_data)


def output_classes(model: Any, images: BaseImageSet, device: Any = "cpu") -> int:
    """K of the model's (1, K) output on the first image of ``images`` (eval mode, no grad; the
    model's mode is restored)."""
    import torch

    from attrib_bench.evaluation import eval_mode
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
