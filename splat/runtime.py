"""Process-level settings for long fits: glibc's allocator.

Each optimiser step allocates and frees dozens of 0.3-2 MB tensors. With its
default settings glibc serves blocks that large with fresh mmap'd pages and
returns them on free, so every step page-faults its working set back in; on the
2-core machine of `benchmarks/speed.py` that costs about 10 % of a step. Keeping
freed memory in the heap (raised mmap and trim thresholds) avoids it.

This changes the whole process, so the library never calls it on its own: the
CLI does, and so can a program that embeds `splat.fit`.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: Largest mmap threshold glibc accepts on 64-bit systems (32 MiB).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024
TOP_PAD_BYTES = 64 * 1024 * 1024


def tune_allocator() -> bool:
    """Keep freed tensor memory in the heap for reuse. Returns False where glibc is absent."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (_M_TOP_PAD, TOP_PAD_BYTES),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
