"""CAGRA: a graph index built on the GPU with cuVS, persisted and searched on CPU as HNSW.

The persisted form is faiss's ``IndexHNSWCagra``: the CAGRA graph is HNSW level 0 (degree
``graph_degree``) and faiss adds sparse upper levels on the CPU, so one file serves both
devices: a GPU replica clones it back to ``GpuIndexCagra`` (``shards.gpu``), a CPU replica
searches it as an HNSW graph.

Building needs a GPU with cuVS. The CPU twin (no GPU, or tiny shards) builds the same form
with HNSW insertion: level 0 then has up to ``graph_degree`` links per vector; the slots
HNSW leaves empty are filled by ``fill_level0`` before a GPU clone, since CAGRA reads every
slot of a fixed-degree graph.

Factory string: ``CAGRA`` or ``CAGRA<graph_degree>`` (default 64).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from shards._faiss import faiss, faiss_ext
from shards.cuda import resources
from shards.errors import InvalidInput

DEFAULT_DEGREE = 64
MIN_GPU_ROWS = 4096  # below this a GPU graph build is not worth it (and cuVS needs n > degree)
_FACTORY = re.compile(r"CAGRA(\d*)")


def parse_factory(factory: str) -> int | None:
    """The graph degree of a ``CAGRA[<degree>]`` factory string; None for other strings."""
    m = _FACTORY.fullmatch(factory.strip())
    if m is None:
        return None
    degree = int(m.group(1) or DEFAULT_DEGREE)
    if degree < 8 or degree > 512 or degree % 2:
        raise InvalidInput(f"CAGRA graph degree must be even and in [8, 512], got {degree}")
    return degree


def empty(d: int, degree: int, metric_type: int) -> Any:
    """An empty CPU-form index (for knobs and estimates)."""
    return faiss_ext.IndexHNSWCagra(d, degree // 2, metric_type)


def build(x: np.ndarray, degree: int, metric_type: int, *, device: int | None = None) -> Any:
    """CAGRA CPU form of prepared vectors ``x`` (n, d) float32, rows 0..n-1.

    ``device``: GPU number to build the graph with cuVS; None builds the CPU twin.
    """
    n, d = x.shape
    x = np.array(x, dtype=np.float32, order="C")  # a copy: faiss keeps pointers into it
    if device is None or n < max(MIN_GPU_ROWS, 2 * degree):
        index = empty(d, degree, metric_type)
        index.hnsw.efConstruction = max(40, degree)
        index.add(x)
        return index
    config = faiss_ext.GpuIndexCagraConfig()
    config.device = device
    config.graph_degree = degree
    config.intermediate_graph_degree = 2 * degree
    gpu_index = faiss_ext.GpuIndexCagra(resources(device), d, metric_type, config)
    gpu_index.train(x)
    cpu = faiss_ext.IndexHNSWCagra()
    cpu.base_level_only = False  # faiss adds the upper levels on the CPU
    gpu_index.copyTo(cpu)
    return cpu


def fill_level0(index: Any) -> int:
    """Fill the empty level-0 slots of an ``IndexHNSWCagra`` with repeats of its own links.

    A repeated link changes no search result (both searches skip visited vectors); a vector
    without any link gets its successor. Returns how many slots were filled.
    """
    hnsw = index.hnsw
    n, degree = index.ntotal, hnsw.nb_neighbors(0)
    if n == 0:
        return 0
    neighbors = faiss.vector_to_array(hnsw.neighbors)
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    slots = offsets[:n, None] + np.arange(degree)
    graph = neighbors[slots]
    holes = graph < 0
    if not holes.any():
        return 0
    order = np.argsort(holes, axis=1, kind="stable")  # the set links first
    graph = np.take_along_axis(graph, order, axis=1)
    count = degree - holes.sum(axis=1)
    src = np.arange(degree)[None, :] % np.maximum(count, 1)[:, None]
    filled = np.take_along_axis(graph, src, axis=1)
    lonely = count == 0
    filled[lonely] = ((np.flatnonzero(lonely) + 1) % n)[:, None]
    neighbors[slots] = filled
    faiss.copy_array_to_vector(neighbors, hnsw.neighbors)
    return int(holes.sum())
