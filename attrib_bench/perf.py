"""CPU performance switches that change speed, never results."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

#: Environment for a process that should start with these settings (e.g. Dask workers, whose
#: tasks run in threads that get their own malloc arena at their first allocation).
WORKER_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def retain_freed_memory(trim_threshold: int = 1 << 30) -> bool:
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
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return (bool(libc.mallopt(_M_MMAP_MAX, 0))
                and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
                and bool(libc.mallopt(_M_ARENA_MAX, 1)))
    except (OSError, AttributeError):
        return False
