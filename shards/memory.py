"""Give freed heap memory back to the system after a long build step.

glibc's malloc keeps what the build's OpenMP threads freed in per-thread arenas: a process
that built an index stays that much larger although nothing holds the memory
(``bench/results/build_memory.md`` measures it). ``malloc_trim(0)`` returns the free pages
of every arena. Other C libraries (musl, macOS) have no such call: ``release`` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, or None where ctypes cannot find or load it."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _malloc_trim():
    return getattr(libc(), "malloc_trim", None)


def release(collect: bool = True) -> None:
    """Collect garbage (``collect``), then return free heap pages to the system (glibc
    only). Between the searches of a tuning sweep it keeps the heap from growing with each
    new shape of temporary buffers: 2.6 GB peak for a 40k x 384 build, 0.3 GB with it."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
