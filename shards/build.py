"""Build a sharded index from a ``.npy`` or Parquet file, streaming it in chunks.

Train once on a sample, clone the trained empty index for every shard (so all shards
share one quantizer and codebook), add each chunk's vectors to their shards, tune, write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from shards import autotune, cagra, memory
from shards._faiss import BLAS_MIN_QUERIES, faiss, faiss_ext, use_blas_from
from shards.anatomy import Anatomy
from shards.artefact import ShardData, new_version_name, write_version
from shards.choice import (
    HNSW_EF_CONSTRUCTION,
    TRAFFIC,
    choose_index,
    estimate_bytes,
    template_index,
)
from shards.cuda import gpu_count, graph_device, has_cuvs, parse_device, resources
from shards.errors import GpuUnavailable, InvalidInput
from shards.index import ShardedIndex
from shards.manifest import Manifest
from shards.metric import Metric, prepare_vectors
from shards.params import Knobs
from shards.partition import SCHEMES, assign_shards
from shards.progress import progress
from shards.shard import Shard
from shards.source import VectorSource
from shards.tuning import HELD_OUT, TUNE_K, TUNE_QUERIES, timing_of, untuned, with_tuning

log = logging.getLogger("shards")


@dataclass
class BuildOptions:
    """How to build; every default here is the one documented in the CLI help."""

    num_shards: int = 1
    index: str = "auto"  # "auto", "hnsw" or a faiss factory string
    metric: str = "l2"
    partition: str = "hash"
    memory_budget: int | None = None  # bytes per shard, for the automatic choice
    chunk_rows: int = 65536
    train_size: int | None = None  # default: 64 vectors per IVF list, at least 20,000
    tune: bool = True
    default_recall: float = 0.95  # the tuned defaults are the cheapest meeting this
    seed: int = 0
    progress: bool = True
    target: str = "cpu"  # "gpu": the automatic choice picks indexes a GPU serves
    graph_device: str = "auto"  # builds CAGRA graphs: "cuda:N", "cpu", or "auto" (GPU 0 if any)
    # the expected queries, for the automatic choice and its tuning: "mixed", "single" (lone
    # queries and small batches: latency) or "batch" (large batches: throughput)
    traffic: str = "mixed"
    # HNSW graphs: candidates kept while inserting (None: the automatic choice's, else faiss's)
    ef_construction: int | None = None


def build_index(source: VectorSource, out_uri: str, opts: BuildOptions) -> Manifest:
    """Build, tune and write a new index version under ``out_uri``; returns its manifest."""
    metric = check_options(opts)
    t0 = time.perf_counter()
    factory, reason = choose_factory(source.n, source.d, opts, metric)
    template = train_template(source, factory, metric, opts)
    t_train = time.perf_counter() - t0
    knobs = knobs_of(template, factory, source.d)
    held = tuning_queries(source, metric, opts) if opts.tune and knobs.names() else None
    datas, held_rows = _add_all(source, template, metric, opts, held)
    degree = cagra.parse_factory(factory)
    if degree is not None:
        device = graph_device_of(opts)
        where = "CPU (no GPU with cuVS)" if device is None else f"GPU {device}"
        for data in progress(datas, f"CAGRA graphs on {where}", len(datas), "shard", opts.progress):
            data.index = cagra_graph(data.index, degree, metric, device)
    t_add = time.perf_counter() - t0 - t_train
    manifest = new_manifest(source, opts, factory, reason, metric, t_train, t_add)
    if held is not None:
        manifest = tune_manifest(manifest, datas, source, opts, held)
    elif knobs.names():
        manifest = untuned(manifest, knobs)
    append_rows(datas, held_rows)
    check_unique(d.ids for d in datas)
    manifest.build["total_seconds"] = round(time.perf_counter() - t0, 3)
    try:
        return write_version(out_uri, manifest, datas)
    finally:
        del datas, template
        memory.release()  # what the build's threads freed goes back to the system


def check_options(opts: BuildOptions) -> Metric:
    """The metric of ``opts``; raises InvalidInput for options no build can take."""
    if opts.num_shards < 1:
        raise InvalidInput(f"--shards must be >= 1, got {opts.num_shards}")
    if opts.partition not in SCHEMES:
        raise InvalidInput(f"unknown partition {opts.partition!r}; expected one of {SCHEMES}")
    if opts.traffic not in TRAFFIC:
        raise InvalidInput(f"unknown traffic {opts.traffic!r}; expected one of {TRAFFIC}")
    ef = opts.ef_construction
    if ef is not None and (isinstance(ef, bool) or not isinstance(ef, int) or not 1 <= ef <= 4096):
        raise InvalidInput(f"--ef-construction must be an integer in [1, 4096], got {ef!r}")
    return Metric.parse(opts.metric)


def ef_construction_of(opts: BuildOptions) -> int | None:
    """efConstruction for HNSW graphs: the option, else the automatic choice's (None: faiss's
    default, for an explicit factory string)."""
    if opts.ef_construction is not None:
        return opts.ef_construction
    return HNSW_EF_CONSTRUCTION if opts.index in ("auto", "hnsw") else None


def new_manifest(
    source: VectorSource,
    opts: BuildOptions,
    factory: str,
    reason: str,
    metric: Metric,
    t_train: float,
    t_add: float,
) -> Manifest:
    """The manifest of a new version, before its shards and tuning are filled in."""
    return Manifest(
        index_version=new_version_name(),
        dim=source.d,
        metric=metric.value,
        factory=factory,
        partition=opts.partition,
        shards=[],
        created_at=datetime.now(UTC).isoformat(),
        metadata_columns=list(source.metadata_columns),
        build={
            "source": source.path,
            "n": source.n,
            "choice": reason,
            "traffic": opts.traffic,
            "memory_budget": opts.memory_budget,
            "ef_construction": ef_construction_of(opts) if "HNSW" in factory else None,
            "seed": opts.seed,
            "train_seconds": round(t_train, 3),
            "add_seconds": round(t_add, 3),
            "faiss_version": faiss.__version__,
            "estimated_bytes_per_shard": estimate_bytes(
                factory, -(-source.n // opts.num_shards), source.d
            ),
        },
    )


def knobs_of(template, factory: str, d: int) -> Knobs:
    """The search knobs of the index ``factory`` builds from ``template``."""
    degree = cagra.parse_factory(factory)
    return Knobs.of(template if degree is None else cagra.empty(d, degree, 0))


def choose_factory(n: int, d: int, opts: BuildOptions, metric: Metric) -> tuple[str, str]:
    """``(factory, reason)`` for ``n`` vectors of dimension ``d`` split as ``opts`` says."""
    if d <= 0:
        raise InvalidInput(f"the dimension must be positive, got {d}")
    if n == 0 and opts.index == "auto":  # an empty collection: every write goes to the delta
        return "Flat", "empty input: Flat (writes are searched exactly until a rebuild)"
    if opts.index not in ("auto", "hnsw"):
        estimate_bytes(opts.index, 1, d)  # validates the factory string
        per_shard = -(-n // opts.num_shards)
        need = estimate_bytes(opts.index, per_shard, d)
        if opts.memory_budget is not None and need > opts.memory_budget:
            raise InvalidInput(
                f"{opts.index} holding {per_shard:,} vectors per shard needs about "
                f"{need:,} bytes, over the memory budget of {opts.memory_budget:,}: more "
                "shards, a smaller index, or the automatic choice (which keeps to it)"
            )
        return opts.index, "explicit factory string"
    choice = choose_index(
        -(-n // opts.num_shards),
        d,
        metric,
        num_shards=opts.num_shards,
        memory_budget=opts.memory_budget,
        prefer_hnsw=opts.index == "hnsw",
        traffic=opts.traffic,
        target=opts.target,
        gpu_build=opts.target == "gpu" and graph_device_of(opts) is not None,
    )
    return choice.factory, choice.reason


def graph_device_of(opts: BuildOptions) -> int | None:
    """The GPU that builds CAGRA graphs, or None (the CPU twin)."""
    if opts.graph_device == "auto":
        return graph_device()
    gpus = parse_device(opts.graph_device)
    if gpus is None:
        return None
    if len(gpus) != 1 or gpus[0] >= gpu_count() or not has_cuvs():
        raise GpuUnavailable(
            f"graph device {opts.graph_device!r} asked for, but faiss sees {gpu_count()} GPU(s)"
            f"{'' if has_cuvs() else ' and no cuVS'}; use 'cpu' or install the 'gpu' extra"
        )
    return gpus[0]


def cagra_graph(flat, degree: int, metric: Metric, device: int | None):
    """The CAGRA graph of the vectors an IndexFlat collected (on GPU ``device``, or the CPU
    twin when None)."""
    x = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    return cagra.build(x, degree, metric.faiss_metric, device=device)


def train_template(
    source: VectorSource,
    factory: str,
    metric: Metric,
    opts: BuildOptions,
    gpu: int | None = None,
):
    """The trained empty index every shard starts from (an IndexFlat collector for CAGRA).

    ``gpu``: run the IVF k-means on that GPU (faiss's ``clustering_index``); the CPU when
    None, or when faiss sees no GPU.
    """
    if cagra.parse_factory(factory) is not None:
        _no_graph_for(opts, factory)
        return faiss.IndexFlat(source.d, metric.faiss_metric)  # collects; graphs come later
    template = template_index(factory, source.d, metric.faiss_metric)
    ef = ef_construction_of(opts)
    graphs = [i for i in (Anatomy.of(template).core, Anatomy.of(template).quantizer) if i]
    graphs = [g for g in graphs if isinstance(g, faiss.IndexHNSW)]
    if not graphs:
        _no_graph_for(opts, factory)
    for graph in graphs if ef is not None else []:  # before training: an HNSW quantizer
        graph.hnsw.efConstruction = ef  # is built by it; read by every add, saved with it
    if not template.is_trained and source.n == 0:
        raise InvalidInput(f"{factory} must be trained on vectors; an empty input can be Flat")
    if not template.is_trained:
        ivf = faiss.try_extract_index_ivf(template)
        size = opts.train_size or max(20_000, 64 * (ivf.nlist if ivf is not None else 256))
        xt, _ = source.sample(size, seed=opts.seed)
        kmeans_on = ivf if gpu is not None and ivf is not None and gpu < gpu_count() else None
        if kmeans_on is not None and gpu is not None:
            flat = faiss.IndexFlat(source.d, metric.faiss_metric)
            kmeans_on.clustering_index = faiss_ext.index_cpu_to_gpu(resources(gpu), gpu, flat)
        template.train(prepare_vectors(xt, source.d, metric, what="training vectors"))
        if kmeans_on is not None:
            kmeans_on.clustering_index = None  # type: ignore[assignment]  # not with the template
    anatomy = Anatomy.of(template)
    if metric.keep_max:
        for transform in anatomy.transforms:
            if isinstance(transform, faiss.PCAMatrix):
                uncentre(transform)
    return template


def _no_graph_for(opts: BuildOptions, factory: str) -> None:
    """--ef-construction given for a factory without an HNSW graph: refused, not ignored
    (for the automatic choice it applies when the choice has one, and is recorded then)."""
    if opts.ef_construction is not None and opts.index not in ("auto", "hnsw"):
        raise InvalidInput(
            f"--ef-construction applies to HNSW graphs (an HNSW index or an IVF's HNSW "
            f"quantizer); {factory} has none"
        )


def uncentre(pca: faiss.PCAMatrix) -> None:
    """Project without subtracting the training mean. Inner products are kept (up to the
    dimensions dropped) only by a projection through the origin: after centring, a vector's
    product with the mean would shift its score, and the graph would rank by that."""
    faiss.copy_array_to_vector(np.zeros(pca.d_in, dtype=np.float32), pca.mean)
    pca.prepare_Ab()


def tuning_queries(source: VectorSource, metric: Metric, opts: BuildOptions):
    """A sample of the input, kept out of the index until tuning is done: real held-out queries.

    Returns ``(xq, ids)``: prepared (m, d) float32 vectors and their sorted int64 ids.
    """
    xq, ids = source.sample(TUNE_QUERIES, seed=opts.seed + 1)
    order = np.argsort(ids)
    return prepare_vectors(xq[order], source.d, metric), ids[order]


def _add_all(source: VectorSource, template, metric: Metric, opts: BuildOptions, held=None):
    """Add every input vector to its shard, except the ``held`` tuning rows.

    Returns ``(datas, held_rows)``; ``held_rows[s]`` lists the held rows of shard ``s`` as
    ``(vectors, ids, metadata)`` to add once tuning is done.
    """
    indexes = [faiss.clone_index(template) for _ in range(opts.num_shards)]
    ids: list[list[np.ndarray]] = [[] for _ in indexes]
    metas: list[list[pa.Table]] = [[] for _ in indexes]
    held_rows: list[list[tuple]] = [[] for _ in indexes]
    held_ids = held[1] if held is not None else np.empty(0, np.int64)
    total = -(-source.n // opts.chunk_rows)
    for chunk in progress(source.chunks(opts.chunk_rows), "adding", total, "chunk", opts.progress):
        x = prepare_vectors(chunk.vectors, source.d, metric, what=f"vectors near row {chunk.start}")
        rows = np.arange(chunk.start, chunk.start + len(x))
        owner = assign_shards(chunk.ids, rows, opts.num_shards, opts.partition, source.n)
        is_held = np.isin(chunk.ids, held_ids)
        for s in np.unique(owner):
            for hold in (False, True):
                mask = (owner == s) & (is_held == hold)
                if not mask.any():
                    continue
                meta = None
                if chunk.metadata is not None:
                    meta = with_id(chunk.metadata.filter(pa.array(mask)), chunk.ids[mask])
                if hold:
                    held_rows[s].append((x[mask], chunk.ids[mask], meta))
                    continue
                indexes[s].add(x[mask])
                ids[s].append(chunk.ids[mask])
                if meta is not None:
                    metas[s].append(meta)
    datas = []
    for index, id_parts, meta_parts in zip(indexes, ids, metas, strict=True):
        shard_ids = np.concatenate(id_parts) if id_parts else np.empty(0, np.int64)
        meta = pa.concat_tables(meta_parts) if meta_parts else empty_metadata(source)
        datas.append(ShardData(index, shard_ids, meta))
    return datas, held_rows


def empty_metadata(source: VectorSource) -> pa.Table | None:
    """The metadata table of a shard no input row went to: no rows, the input's columns
    (so that every shard, and so the version, knows the metadata schema)."""
    if not source.metadata_columns:
        return None
    return with_id(source.metadata_schema.empty_table(), np.empty(0, np.int64))


def append_rows(datas: list[ShardData], held_rows: list[list[tuple]]) -> None:
    """Add the held-out tuning rows to their shards (after tuning)."""
    for data, rows in zip(datas, held_rows, strict=True):
        for x, ids, meta in rows:
            data.index.add(x)
            data.ids = np.concatenate([data.ids, ids])
            if meta is not None:
                data.metadata = (
                    meta if data.metadata is None else pa.concat_tables([data.metadata, meta])
                )


def with_id(table: pa.Table, ids: np.ndarray) -> pa.Table:
    if "id" in table.column_names:
        table = table.drop_columns(["id"])
    return table.add_column(0, "id", pa.array(ids, pa.int64()))


def check_unique(ids: Iterable[np.ndarray]) -> None:
    """Raise InvalidInput if an id occurs twice in ``ids`` (the ids of every shard)."""
    all_ids = np.concatenate(list(ids))
    uniq, counts = np.unique(all_ids, return_counts=True)
    if (counts > 1).any():
        raise InvalidInput(f"duplicate id {int(uniq[counts > 1][0])} in the input")


def tune_manifest(
    manifest: Manifest, datas: list[ShardData], source: VectorSource, opts: BuildOptions, held
) -> Manifest:
    """Measure the recall/speed curve with the held-out rows as queries; store it and the
    tuned defaults in the manifest."""
    metric = Metric.parse(manifest.metric)
    use_blas_from(BLAS_MIN_QUERIES, source.d)
    xq, qids = held
    blocks = (
        (prepare_vectors(c.vectors, source.d, metric)[keep], c.ids[keep])
        for c in source.chunks()
        for keep in [~np.isin(c.ids, qids)]
    )
    gt = autotune.ground_truth(xq, blocks, TUNE_K + 1, metric.faiss_metric)
    index = ShardedIndex(manifest, {i: Shard(d, metric.keep_max) for i, d in enumerate(datas)}, "")
    no_self = np.full(len(xq), -1, dtype=np.int64)  # the queries are not in the index
    return with_tuning(
        manifest,
        index.search_prepared,
        index.knobs,
        xq,
        no_self,
        gt,
        opts.default_recall,
        HELD_OUT,
        opts.progress,
        **timing_of(opts.traffic),
    )
