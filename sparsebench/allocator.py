"""The memory allocator setting of a process that trains or times layers.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with fresh pages from the
kernel and hands them back on free. A training step allocates its activations and gradients anew
each time, so every step page-faults them in again and the kernel zeroes them: for a layer's
multi-MB output that costs as much as the sparse product itself, and it hides what a kernel saves.
``keep_freed_memory()`` asks glibc to serve large blocks from its heap and keep freed memory for
reuse, which is what tcmalloc and jemalloc (the allocators PyTorch's CPU tuning guides recommend) do
anyway. The harness applies it to every process that trains or times, dense and sparse alike, and
every result records it (``env.allocator``). memray's peak counts live allocations, so peak memory
figures do not change with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # keep up to 2 GiB of freed heap for reuse (mallopt takes an int)

_state = "default"


def keep_freed_memory() -> str:
    """Apply the setting (once per process; glibc on Linux only) and return ``state()``."""
    global _state
    if _state != "default" or not sys.platform.startswith("linux"):
        return _state
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        ok = False
    if ok:
        _state = f"glibc mallopt: mmap_threshold={MMAP_THRESHOLD}, trim_threshold={TRIM_THRESHOLD}"
    return _state


def state() -> str:
    """What this process runs with: the setting applied, or 'default'."""
    return _state
