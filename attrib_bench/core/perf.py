"""CPU performance switches that change speed, never results."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys
from typing import Any

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 1 << 30

#: Environment for a process that should start with these settings (e.g. Dask workers, whose
#: tasks run in threads that get their own malloc arena at their first allocation).
WORKER_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD)}


@functools.cache
def _libc() -> Any:
    """glibc, looked up once per process (``find_library`` runs ``ldconfig``); None if absent."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name is not None else None
    except OSError:
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def retain_freed_memory(trim_threshold: int = _TRIM_THRESHOLD) -> bool:
    """Ask glibc's malloc to keep freed memory instead of returning it to the kernel.

    A training step frees and re-allocates the same large activation tensors every step; by
    default glibc serves them with fresh mmaps, so each step pays page faults on all of them
    (measured here: half of a step's CPU time in the kernel, a 1.3–1.7× slower step). Threads
    started afterwards share the main arena (``M_ARENA_MAX`` 1): a thread's own arena is carved
    from 64 MB heaps that are mapped and unmapped again (measured: a pixel-removal chunk 2.5×
    slower in a thread than in the main thread, the same speed with one arena; Dask runs tasks
    in threads). Safe for fixed-shape loops; the process keeps its peak memory. Returns False
    where it does not apply (not Linux/glibc).
    """
    if not sys.platform.startswith("linux") or (libc := _libc()) is None:
        return False
    try:
        return (bool(libc.mallopt(_M_MMAP_MAX, 0))
                and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
                and bool(libc.mallopt(_M_ARENA_MAX, 1)))
    except AttributeError:
        return False
