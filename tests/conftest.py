"""Shared fixtures: the real data and weights in ../shared are optional; tests needing them skip."""

from __future__ import annotations

import pytest
import torch

from attrib_bench.checkpoints import resolve_weights_root
from attrib_bench.data import resolve_data_root


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


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
