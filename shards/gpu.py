"""Placing an index on a device: explicit CPU, or GPU clones (cuVS where the build has it).

There is no silent fallback: asking for a GPU without one raises GpuUnavailable, an index
type the GPU cannot serve raises GpuUnsupportedIndex, and a shard that does not fit in free
GPU memory raises GpuOutOfMemory before anything is cloned.

What goes to the GPU: Flat, IVF-Flat, IVF-SQ and IVF-PQ (8-bit codes) through faiss's
cloner; CAGRA from its CPU form (``IndexHNSWCagra``, see ``shards.cagra``); for an
``IndexRefine`` the base index goes to the GPU and the exact vectors stay on the CPU, which
re-ranks the GPU's ``k * k_factor`` candidates (faiss's own hybrid). Several GPUs per
replica either replicate the index (queries split between them) or shard it (IVF only).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shards._faiss import faiss, faiss_ext
from shards.anatomy import Anatomy
from shards.cagra import fill_level0
from shards.cuda import gpu_count, gpu_memory, has_cuvs, parse_device, resources
from shards.errors import GpuUnavailable, GpuUnsupportedIndex, InvalidInput, InvalidQuery
from shards.params import SearchOverrides, make_params
from shards.sizing import check_fits, gpu_bytes

GPU_MAX_K = 2048  # faiss GPU k-selection limit (k, and k * k_factor for a refined index)
MultiGpu = Literal["replicate", "shard"]


@dataclass(frozen=True)
class GpuOptions:
    """How a replica puts its shards on its GPUs."""

    devices: tuple[int, ...] = (0,)
    multi_gpu: MultiGpu = "replicate"  # several devices: full copies, or IVF lists split
    float16: bool = False  # Flat: store vectors in float16; IVF-PQ: float16 lookup tables
    use_cuvs: bool | None = None  # None: cuVS when the faiss build has it
    temp_memory_mb: int | None = None  # scratch memory per GPU; None: faiss's default

    def __post_init__(self) -> None:
        if not self.devices or any(d < 0 for d in self.devices):
            raise InvalidInput(f"GPU devices must be >= 0, got {self.devices}")
        if self.multi_gpu not in ("replicate", "shard"):
            raise InvalidInput(f"multi_gpu must be 'replicate' or 'shard', not {self.multi_gpu!r}")
        if self.temp_memory_mb is not None and self.temp_memory_mb < 0:
            raise InvalidInput("temp_memory_mb must be >= 0")


@dataclass(frozen=True)
class Placement:
    """Where an index lives, for health, stats and metrics."""

    device: str  # "cpu", "cuda:N" or "cuda:N,M" (several GPUs)
    cuvs: bool = False
    float16: bool = False
    multi_gpu: str | None = None
    # device memory the clones took (measured), all devices together; the first clone on a
    # GPU also allocates the process's scratch memory there
    gpu_bytes: int = 0

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"


class Placed:
    """An index on its device(s), searched with per-call parameters.

    On a GPU every clone is searched by one thread at a time (faiss GPU indexes and their
    resources are not thread-safe); with several replicated GPUs a batch of queries is split
    between them and searched in parallel.
    """

    def __init__(self, indexes: list[Any], placement: Placement, keep: list[Any] | None = None):
        self.indexes = indexes
        self.placement = placement
        self.keep = keep or []  # faiss holds raw pointers to these
        self.locks = [threading.Lock() for _ in indexes]
        self._pool = ThreadPoolExecutor(len(indexes)) if len(indexes) > 1 else None

    @property
    def index(self) -> Any:
        return self.indexes[0]

    def search(
        self, xq: np.ndarray, k: int, ov: SearchOverrides, sel: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of prepared queries ``xq`` with overrides ``ov`` and an optional selector."""
        if self.placement.on_gpu:
            self._check_gpu_limits(k, ov)
        if self._pool is None or len(xq) < 2:
            return self._search_one(0, xq, k, ov, sel)
        parts = np.array_split(np.arange(len(xq)), min(len(self.indexes), len(xq)))
        futures = [
            self._pool.submit(self._search_one, i, xq[rows], k, ov, sel)
            for i, rows in enumerate(parts)
        ]
        results = [f.result() for f in futures]
        return np.vstack([r[0] for r in results]), np.vstack([r[1] for r in results])

    def _search_one(self, i: int, xq, k: int, ov: SearchOverrides, sel):
        index = self.indexes[i]
        params, _keep = make_params(index, ov, sel, k)
        if not self.placement.on_gpu:
            return index.search(xq, k, params=params)
        with self.locks[i]:
            return index.search(xq, k, params=params)

    def _check_gpu_limits(self, k: int, ov: SearchOverrides) -> None:
        refine = Anatomy.of(self.index).refine
        if refine is not None:
            k_base = k * (ov.k_factor if ov.k_factor is not None else refine.k_factor)
            if k_base > GPU_MAX_K:
                raise InvalidQuery(
                    f"on a GPU, k * k_factor must be <= {GPU_MAX_K}, got {k} * {ov.k_factor}"
                )
        if ov.nprobe is not None and ov.nprobe > GPU_MAX_K:
            raise InvalidQuery(f"on a GPU, nprobe must be <= {GPU_MAX_K}, got {ov.nprobe}")


def gpu_memory_in_use(placement: Placement) -> int:
    """Bytes in use (by any process) on the GPUs of ``placement``."""
    devices = parse_device(placement.device) or ()
    return sum(total - free for free, total in (gpu_memory(d) for d in set(devices)))


def place(index: faiss.Index, device: str | GpuOptions = "cpu", **options: Any) -> Placed:
    """``index`` on ``device``: as it is for "cpu", else GPU clones (see ``to_gpu``)."""
    if isinstance(device, GpuOptions):
        return to_gpu(index, device)
    gpus = parse_device(device)
    if gpus is None:
        return Placed([index], Placement("cpu"))
    return to_gpu(index, GpuOptions(devices=gpus, **options))


def to_gpu(index: faiss.Index, opts: GpuOptions) -> Placed:
    """Clone ``index`` to the GPUs of ``opts`` after checking the type and free memory.

    Raises:
        GpuUnavailable: no GPU faiss build, or a device that does not exist.
        GpuUnsupportedIndex: an index type the GPU cannot serve, or cuVS needed and missing.
        GpuOutOfMemory: the index does not fit in a GPU's free memory.
    """
    n = gpu_count()
    if max(opts.devices) >= n:
        raise GpuUnavailable(
            f"GPU(s) {list(opts.devices)} asked for, but faiss sees {n} GPU(s); install the "
            "'gpu' extra on a CUDA machine, or serve with device 'cpu'"
        )
    a = Anatomy.of(index)
    index, refine = a.top, a.refine
    base = faiss.downcast_index(refine.base_index) if refine is not None else index
    kind = gpu_kind(base)
    cuvs = has_cuvs() if opts.use_cuvs is None else opts.use_cuvs
    if kind == "cagra" and not cuvs:
        raise GpuUnsupportedIndex("a CAGRA shard needs faiss-gpu-cuvs with cuVS enabled")
    shard_mode = len(opts.devices) > 1 and opts.multi_gpu == "shard"
    if shard_mode and kind != "ivf":
        raise GpuUnsupportedIndex(
            f"multi_gpu 'shard' splits IVF lists; this {kind} index needs 'replicate'"
        )
    if kind == "cagra":
        fill_level0(base)  # CAGRA reads every slot of its fixed-degree graph
    per_copy = gpu_bytes(base, opts.float16)
    if shard_mode:
        per_copy = -(-per_copy // len(opts.devices))
    before = {}
    for dev in sorted(set(opts.devices)):
        free, _ = gpu_memory(dev)
        check_fits(per_copy * opts.devices.count(dev), free, f"cuda:{dev}")
        before[dev] = free
    keep: list[Any] = [index, base]  # GPU CAGRA reads the CPU form's vectors: keep it alive
    if shard_mode:
        clones = [_clone_sharded(base, opts, cuvs)]
    else:
        clones = [_clone_one(base, opts, cuvs, dev, slot) for slot, dev in enumerate(opts.devices)]
    used = sum(max(0, free - gpu_memory(dev)[0]) for dev, free in before.items())
    keep += clones
    if refine is not None:
        # faiss's hybrid: the GPU finds k * k_factor candidates, the CPU re-ranks them exactly
        clones = [_refined(clone, refine) for clone in clones]
    placement = Placement(
        "cuda:" + ",".join(str(d) for d in opts.devices),
        cuvs=cuvs,
        float16=opts.float16,
        multi_gpu=opts.multi_gpu if len(opts.devices) > 1 else None,
        gpu_bytes=used,
    )
    return Placed(clones, placement, keep)


def _refined(gpu_base: Any, refine: Any) -> Any:
    out = faiss_ext.IndexRefine(gpu_base, refine.refine_index)
    out.k_factor = refine.k_factor
    out.referenced_objects = [gpu_base, refine]
    return out


def gpu_kind(index: faiss.Index) -> str:
    if isinstance(index, faiss_ext.IndexHNSWCagra):
        return "cagra"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    fast = isinstance(index, faiss_ext.IndexIVFFastScan)
    if isinstance(index, faiss.IndexIVFFlat | faiss.IndexIVFScalarQuantizer) or (
        isinstance(index, faiss.IndexIVFPQ) and not fast
    ):
        quantizer = faiss.downcast_index(index.quantizer)
        if not isinstance(quantizer, faiss.IndexFlat):
            raise GpuUnsupportedIndex(
                f"the GPU needs a flat IVF quantizer, this index has {type(quantizer).__name__}"
            )
        return "ivf"
    raise GpuUnsupportedIndex(
        f"{type(index).__name__} has no GPU form (fast-scan PQ and HNSW are CPU indexes); "
        "rebuild the index for the GPU: `python -m shards build --target gpu` "
        "(Flat, IVF-PQ with exact refine, or CAGRA)"
    )


def _clone_sharded(index: faiss.Index, opts: GpuOptions, cuvs: bool) -> Any:
    co = faiss_ext.GpuMultipleClonerOptions()
    _set_options(co, opts, cuvs)
    co.shard = True  # IVF lists split by id modulo the GPU count; ids stay the same
    res = [resources(dev, opts.temp_memory_mb, slot) for slot, dev in enumerate(opts.devices)]
    sharded = faiss_ext.index_cpu_to_gpu_multiple_py(res, index, co, list(opts.devices))
    sharded.referenced_objects = [res, index]
    return sharded


def _clone_one(index: faiss.Index, opts: GpuOptions, cuvs: bool, device: int, slot: int) -> Any:
    co = faiss_ext.GpuClonerOptions()
    _set_options(co, opts, cuvs)
    res = resources(device, opts.temp_memory_mb, slot)
    gpu_index = faiss_ext.index_cpu_to_gpu(res, device, index, co)
    gpu_index.referenced_objects = [res, index]
    return gpu_index


def _set_options(co: Any, opts: GpuOptions, cuvs: bool) -> None:
    co.useFloat16 = opts.float16
    if hasattr(co, "use_cuvs"):
        co.use_cuvs = cuvs
