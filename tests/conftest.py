"""Shared fixtures: the real data and weights in ../shared are optional; tests needing them skip.

Under pytest-xdist (``-n``, see pyproject's addopts) each worker process computes with one torch
thread, and so do the processes the tests start (``OMP_NUM_THREADS=1``): two workers on two
cores, not two workers × two threads.

Tiny data shared by the training tests (``test_train.py``, ``test_cuda.py``,
``test_device_run.py``): ``signal_set(n, size, seed)``, an ImageSet of random images whose red
channel encodes the label (a class signal a few steps can learn), and ``packed_signal_sets(root,
n_train, n_test)``, a packed dataset of two of them with CIFAR-10's class names (what
``--data-root`` reads).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from attrib_bench.core.checkpoints import resolve_weights_root
from attrib_bench.data import ImageSet, resolve_data_root

#: Workers when the whole suite runs (``python -m pytest`` without paths) and pytest-xdist is
#: installed: "auto" (one per CPU; PYTEST_XDIST_AUTO_NUM_WORKERS overrides), tests handed out
#: to whichever worker is free (``loadgroup``: the documentation's command cases, marked
#: ``xdist_group("readme")``, all on one worker, whose session runner starts their commands
#: once), the slow ones first (see
#: :func:`pytest_collection_modifyitems`). ``-n 0`` runs in this process; ``pytest
#: tests/test_x.py`` too (the device call's smoke stage runs test_cuda.py so).
XDIST_WORKERS = "auto"


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Spread the whole suite over the CPUs (see :data:`XDIST_WORKERS`)."""
    option = config.option
    if (config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput")
            and config.args_source == pytest.Config.ArgsSource.TESTPATHS
            and getattr(option, "numprocesses", 0) is None and option.dist == "no"
            and not option.collectonly and not config.getoption("usepdb", False)):
        option.numprocesses = XDIST_WORKERS
        option.dist = "loadgroup"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first, then those on the ``real`` data, then the rest, each group
    in file order: on several workers the longest tests start first and run side by side
    instead of one of them ending the run alone. Only on xdist's workers: a run in one process
    keeps pytest's order."""
    if not hasattr(config, "workerinput"):
        return

    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("real") else 2

    items[:] = sorted(items, key=rank)  # stable: file order within a group


if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # the subprocesses a test starts
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (torch allows it once, before any parallel work)
        pass

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

#: A 5-layer CoDA-Net (``create_model("xs-coda", **TINY_CODA_PLAN)``): the XS plan shortened
#: (32 px → 8×8 in the last layer), for tests whose cost grows with the layers (torch.compile's
#: tracing, the CPU reference of the device tests).
TINY_CODA_PLAN = {"out_channels": (8, 8, 16, 16, 10), "ranks": (8, 8, 16, 16, 16),
                  "kernels": (3, 3, 3, 3, 1), "strides": (1, 2, 1, 2, 1),
                  "paddings": (1, 1, 1, 1, 0)}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _plugin_modules():
    """Each test starts with the plugin modules the process had: a plugin a test loaded (and
    removed from sys.modules) is not shipped to the Dask workers of a later test."""
    from attrib_bench.core.registry import PLUGIN_MODULES

    before = list(PLUGIN_MODULES)
    yield
    PLUGIN_MODULES[:] = before


@pytest.fixture(scope="session")
def data_root():
    root = resolve_data_root()
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"real CIFAR-10 not found under {root} (set ATTRIB_BENCH_DATA)")
    return root


@pytest.fixture(scope="session")
def weights_root():
    root = resolve_weights_root()
    if not (root / "resnet56-4bfd9763.th").is_file():
        pytest.skip(f"shared weights not found under {root} (set ATTRIB_BENCH_WEIGHTS)")
    return root


def make_signal_set(n: int = 32, size: int = 16, seed: int = 0, *,
                    names: tuple[str, ...] | None = None, name: str = "tiny") -> ImageSet:
    """``n`` random uint8 images of ``size`` px, labels 0..9 in turn, the red channel = 25 ×
    label (a learnable class signal); class names "0".."9" unless ``names``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    images[:, 0] = (labels * 25).to(torch.uint8)[:, None, None]
    return ImageSet(images, labels, names or tuple(str(i) for i in range(10)), name)


def make_packed_signal_sets(root: str | Path, n_train: int = 256, n_test: int = 64,
                            size: int = 32) -> Path:
    """A packed dataset (``attrib_bench.data.packed``) at ``root``: a train and a test split of
    signal sets with CIFAR-10's class names, readable with ``--data-root root``."""
    from attrib_bench.data.packed import pack_image_sets

    train = make_signal_set(n_train, size, 0, names=CIFAR10_CLASSES)
    test = make_signal_set(n_test, size, 1, names=CIFAR10_CLASSES)
    pack_image_sets(train, test, root, batch_size=256, tiles_per_row=16, webp_method=0)
    return Path(root)


@pytest.fixture(scope="session")
def signal_set():
    """:func:`make_signal_set`."""
    return make_signal_set


@pytest.fixture(scope="session")
def packed_signal_sets():
    """:func:`make_packed_signal_sets`."""
    return make_packed_signal_sets


def assert_one_line(error: BaseException | pytest.ExceptionInfo, *fragments: str,
                    limit: int = 300) -> str:
    """The message of ``error`` (an exception or ``pytest.raises``' info): one non-empty line of
    fewer than ``limit`` characters holding every fragment. Returns it."""
    message = str(error.value if isinstance(error, pytest.ExceptionInfo) else error)
    assert message and "\n" not in message, message
    assert len(message) < limit, (len(message), message)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.fixture(scope="session")
def one_line():
    """:func:`assert_one_line`: an error the user sees is one line naming what to fix."""
    return assert_one_line


@pytest.fixture(scope="session")
def tiny_coda_plan() -> dict:
    """:data:`TINY_CODA_PLAN` (a copy)."""
    return dict(TINY_CODA_PLAN)
