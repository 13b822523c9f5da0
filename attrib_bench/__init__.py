"""attrib-bench: benchmark attribution methods on image classifiers (CoDA-Nets and baselines).

The public API: the registries (``create_model``, ``list_models``, ``register_model`` and the same
for methods, metrics and datasets), the data helpers, and the errors users may catch.
"""

from attrib_bench.core.errors import AttribBenchError
from attrib_bench.core.registry import (
    create_method,
    create_metric,
    create_model,
    list_datasets,
    list_methods,
    list_metrics,
    list_models,
    load_plugins,
    register_dataset,
    register_method,
    register_metric,
    register_model,
)
from attrib_bench.data import FileImageSet, ImageSet, get_dataset, load_cifar10

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``GridDataset`` on first use: it lives with the localisation metric
    (:mod:`attrib_bench.metrics.grids`), which ``import attrib_bench`` does not load."""
    if name == "GridDataset":
        from attrib_bench.metrics.grids import GridDataset

        return GridDataset
    raise AttributeError(f"module 'attrib_bench' has no attribute {name!r}")


def run(*args, **kwargs):  # noqa: ANN002, ANN003 - the signature is runners.benchmark.run's
    """Run a model × method × metric sweep; see :func:`attrib_bench.runners.benchmark.run`."""
    from attrib_bench.runners.benchmark import run as _run

    return _run(*args, **kwargs)


__all__ = [
    "AttribBenchError",
    "FileImageSet",
    "GridDataset",
    "ImageSet",
    "create_method",
    "create_metric",
    "create_model",
    "get_dataset",
    "list_datasets",
    "list_methods",
    "list_metrics",
    "list_models",
    "load_cifar10",
    "load_plugins",
    "register_dataset",
    "register_method",
    "register_metric",
    "register_model",
    "run",
]
