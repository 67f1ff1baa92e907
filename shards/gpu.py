"""Placing an index on a device: explicit CPU, or a GPU clone (cuVS where the build has it).

There is no silent fallback: asking for a GPU without one raises GpuUnavailable, and a
shard that does not fit in free GPU memory raises GpuOutOfMemory before anything is cloned.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from shards._faiss import faiss
from shards.errors import GpuOutOfMemory, GpuUnavailable, InvalidInput

HEADROOM = 1.2  # free memory needed per byte of index (temporary buffers while cloning)


@dataclass(frozen=True)
class Placement:
    """Where an index lives, for health, stats and metrics."""

    device: str  # "cpu" or "cuda:N"
    cuvs: bool = False
    float16: bool = False


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu, or without a driver)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def has_cuvs() -> bool:
    """True when this faiss build has cuVS (faiss-gpu-cuvs)."""
    return hasattr(faiss, "GpuIndexCagra") and "CUVS" in faiss.get_compile_options().upper()


def gpu_memory(device: int) -> tuple[int, int]:
    """(free, total) bytes of GPU ``device``, read through the CUDA runtime."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            cudart = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise GpuUnavailable("cannot load the CUDA runtime (libcudart) to read GPU memory")
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    if cudart.cudaSetDevice(device) != 0 or cudart.cudaMemGetInfo(
        ctypes.byref(free), ctypes.byref(total)
    ):
        raise GpuUnavailable(f"cannot read the memory of GPU {device}")
    return int(free.value), int(total.value)


def check_fits(required: int, free: int, device: str) -> None:
    """Raise GpuOutOfMemory unless ``required`` bytes (with headroom) fit in ``free``."""
    need = int(required * HEADROOM)
    if need > free:
        raise GpuOutOfMemory(
            f"shard needs about {need / 2**20:,.0f} MiB on {device} (index "
            f"{required / 2**20:,.0f} MiB + {HEADROOM - 1:.0%} headroom) but only "
            f"{free / 2**20:,.0f} MiB is free; use more shards, float16 or a smaller index"
        )


def parse_device(device: str) -> int | None:
    """None for "cpu", N for "cuda:N" (or "gpu:N")."""
    if device == "cpu":
        return None
    kind, _, num = device.partition(":")
    if kind in ("cuda", "gpu") and (num or "0").isdigit():
        return int(num or 0)
    raise InvalidInput(f"device must be 'cpu' or 'cuda:N', got {device!r}")


def place(
    index: faiss.Index,
    device: str = "cpu",
    *,
    resources=None,
    float16: bool = False,
    use_cuvs: bool | None = None,
) -> tuple[faiss.Index, Placement]:
    """Return ``index`` on ``device`` with its Placement; "cpu" returns it unchanged."""
    gpu = parse_device(device)
    if gpu is None:
        return index, Placement("cpu")
    return to_gpu(index, gpu, resources=resources, float16=float16, use_cuvs=use_cuvs)


def to_gpu(
    index: faiss.Index,
    device: int = 0,
    *,
    resources=None,
    float16: bool = False,
    use_cuvs: bool | None = None,
) -> tuple[faiss.Index, Placement]:
    """Clone ``index`` to GPU ``device`` after checking it fits.

    Raises:
        GpuUnavailable: no GPU faiss build or no such GPU.
        GpuOutOfMemory: the index does not fit in the GPU's free memory.
    """
    if gpu_count() <= device:
        raise GpuUnavailable(
            f"GPU {device} asked for, but faiss sees {gpu_count()} GPU(s); install the 'gpu' "
            "extra on a CUDA machine, or serve with device 'cpu'"
        )
    free, _ = gpu_memory(device)
    check_fits(faiss.serialize_index(index).nbytes, free, f"cuda:{device}")
    cuvs = has_cuvs() if use_cuvs is None else use_cuvs
    options = faiss.GpuClonerOptions()
    options.useFloat16 = float16
    if hasattr(options, "use_cuvs"):
        options.use_cuvs = cuvs
    res = resources or faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(res, device, index, options)
    gpu_index.referenced_objects = [res]  # type: ignore[attr-defined]  # keeps res alive
    return gpu_index, Placement(f"cuda:{device}", cuvs=cuvs, float16=float16)
