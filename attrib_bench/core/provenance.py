"""Where a number came from: the hardware and the code version, for manifests and benchmarks."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def describe_hardware(device: torch.device | str = "cpu") -> str:
    """One line: CPU model, CPU count, torch threads, GPU (if cuda), torch and Python versions."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f" | {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu} | {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads{gpu} | "
            f"torch {torch.__version__} | python {platform.python_version()} | device {device}")


def git_commit(short: bool = False) -> str | None:
    """The checkout's commit, with " (uncommitted changes)" if tracked files differ; None outside
    a git checkout (e.g. an installed wheel)."""
    here = Path(__file__).resolve().parent
    command = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        commit = subprocess.run(command, cwd=here, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" (uncommitted changes)" if dirty.strip() else "")
