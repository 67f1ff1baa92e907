"""What this process can see of CUDA: GPUs, cuVS, free memory, and one GPU resource per device.

A leaf module (faiss only): ``shards.cagra`` builds graphs and ``shards.gpu`` clones indexes
with the same per-device ``StandardGpuResources``, and neither imports the other for it.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from shards._faiss import faiss, faiss_ext
from shards.errors import GpuUnavailable, InvalidInput


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu, or without a driver)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def has_cuvs() -> bool:
    """True when this faiss build has cuVS (faiss-gpu-cuvs)."""
    return hasattr(faiss, "GpuIndexCagra") and "CUVS" in faiss.get_compile_options().upper()


def graph_device() -> int | None:
    """The GPU to build CAGRA graphs on (0 when there is one with cuVS), else None (CPU)."""
    return 0 if gpu_count() > 0 and has_cuvs() else None


_CUDART: Any = None


def _cudart() -> Any:
    global _CUDART
    if _CUDART is None:
        for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
            try:
                _CUDART = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise GpuUnavailable("cannot load the CUDA runtime (libcudart) to read GPU memory")
    return _CUDART


def gpu_memory(device: int) -> tuple[int, int]:
    """(free, total) bytes of GPU ``device``, read through the CUDA runtime."""
    cudart = _cudart()
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    if cudart.cudaSetDevice(device) != 0 or cudart.cudaMemGetInfo(
        ctypes.byref(free), ctypes.byref(total)
    ):
        raise GpuUnavailable(f"cannot read the memory of GPU {device}")
    return int(free.value), int(total.value)


def parse_device(device: str) -> tuple[int, ...] | None:
    """None for "cpu"; the GPU numbers of "cuda:N", "cuda:N,M" (or "gpu:N")."""
    if device == "cpu":
        return None
    kind, _, nums = device.partition(":")
    parts = (nums or "0").split(",")
    if kind in ("cuda", "gpu") and all(p.strip().isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    raise InvalidInput(f"device must be 'cpu', 'cuda:N' or 'cuda:N,M', got {device!r}")


_RESOURCES: dict[tuple[int, int], Any] = {}
_RESOURCES_LOCK = threading.Lock()


def resources(device: int, temp_memory_mb: int | None = None, slot: int = 0) -> Any:
    """The process's ``StandardGpuResources`` for GPU ``device`` (one per device and slot).

    Created on first use with ``temp_memory_mb`` of scratch memory; every shard a replica
    places on that device shares it (its streams and scratch memory are per device).
    """
    with _RESOURCES_LOCK:
        res = _RESOURCES.get((device, slot))
        if res is None:
            res = faiss_ext.StandardGpuResources()
            if temp_memory_mb is not None:
                res.setTempMemory(temp_memory_mb * 2**20)
            _RESOURCES[(device, slot)] = res
        return res
