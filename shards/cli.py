"""``python -m shards COMMAND``: build, create, search, inspect, verify, export-ids, autotune,
upsert, delete, compact.

User mistakes exit with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Sequence

import numpy as np

from shards.errors import InvalidInput, VsearchError


def main(argv: Sequence[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; a user mistake is one line on stderr and status 2."""
    try:
        return int(args.run(args) or 0)
    except VsearchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        # what the command held (Arrow tables and readers among it) is freed now, while
        # Arrow's thread pools live: freed at interpreter teardown instead, a reader's
        # thread can abort the process after the answer (apache/arrow#34314; seen once as
        # status -6 after a correct one-line error)
        gc.collect()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shards", description=__doc__)
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="build a sharded index from .npy or Parquet")
    add_build_arguments(b)
    b.set_defaults(run=_build)

    c = sub.add_parser("create", help="create an empty index (a collection) to fill by writes")
    c.add_argument("--out", required=True, help="index root folder or pyarrow.fs URI")
    c.add_argument("--dim", type=int, required=True, help="vector dimension")
    c.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
    c.add_argument("--shards", type=int, default=1)
    c.add_argument("--partition", default="hash", choices=["hash", "range"])
    c.add_argument(
        "--metadata",
        default="",
        help="metadata columns as NAME:TYPE, comma-separated (text:string,year:int64)",
    )
    c.set_defaults(run=_create)

    s = sub.add_parser("search", help="search an index with queries from a .npy file or ids")
    s.add_argument("dir")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--queries", help=".npy (nq, d) float queries")
    q.add_argument("--ids", help="comma-separated stored ids to search by ('more like this')")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--nprobe", type=int)
    s.add_argument("--ef-search", type=int)
    s.add_argument("--quantizer-ef-search", type=int)
    s.add_argument("--k-factor", type=float)
    s.add_argument("--itopk-size", type=int, help="CAGRA candidate list size")
    s.add_argument("--search-width", type=int, help="CAGRA (GPU) nodes expanded per step")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda:N or cuda:N,M")
    s.add_argument("--target-recall", type=float)
    s.add_argument(
        "--filter", help='metadata filter as JSON, e.g. \'{"lang": "en", "year": {"$gte": 2000}}\''
    )
    s.add_argument("--version", help="index version (default: CURRENT)")
    s.add_argument("--output", help="write arrays D and I to this .npz")
    s.add_argument(
        "--print",
        dest="show",
        metavar="COLUMNS",
        nargs="?",
        const="",
        help="print results, with these comma-separated metadata columns",
    )
    s.set_defaults(run=_search)

    for name, fn, text in (
        ("inspect", _inspect, "print the manifest summary"),
        ("verify", _verify, "check every file's checksum"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("dir")
        c.add_argument("--version")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.set_defaults(run=fn)

    e = sub.add_parser("export-ids", help="write every id with its shard and row to Parquet")
    e.add_argument("dir")
    e.add_argument("--version")
    e.add_argument("--output", required=True, help="Parquet file to write")
    e.set_defaults(run=_export_ids)

    a = sub.add_parser("autotune", help="re-measure recall/speed and publish a tuned version")
    a.add_argument("dir")
    a.add_argument("--version")
    a.add_argument("--queries", help=".npy held-out queries (default: sampled stored vectors)")
    a.add_argument("--default-recall", type=float, default=0.95)
    a.set_defaults(run=_autotune)

    u = sub.add_parser("upsert", help="insert or replace vectors (durable in the index's log)")
    u.add_argument("dir")
    u.add_argument("--vectors", required=True, help=".npy (n, d) float vectors")
    u.add_argument("--ids", required=True, help=".npy (n,) integer ids, or comma-separated ids")
    u.add_argument("--metadata", help=".jsonl: one object per id (the index's metadata columns)")
    u.set_defaults(run=_upsert)

    d = sub.add_parser("delete", help="delete ids (durable in the index's log)")
    d.add_argument("dir")
    d.add_argument("--ids", required=True, help=".npy (n,) integer ids, or comma-separated ids")
    d.set_defaults(run=_delete)

    c = sub.add_parser("compact", help="publish a version with the log's writes merged in")
    c.add_argument("dir")
    c.set_defaults(run=_compact)
    return p


def add_build_arguments(b: argparse.ArgumentParser) -> None:
    """The flags of ``build``; the distributed build (``python -m jobs build``) takes the same."""
    b.add_argument("input", help=".npy (n, d) float array, or Parquet with a vector column")
    b.add_argument("--out", required=True, help="index root folder or pyarrow.fs URI")
    b.add_argument("--shards", type=int, default=1)
    b.add_argument(
        "--index", default="auto", help="auto (default), hnsw, CAGRA[<degree>] or a faiss factory"
    )
    b.add_argument(
        "--target",
        default="cpu",
        choices=["cpu", "gpu"],
        help="device the index will be served from (the automatic choice depends on it)",
    )
    b.add_argument(
        "--graph-device",
        default="auto",
        help="builds CAGRA graphs: cuda:N, cpu, or auto (GPU 0 when there is one)",
    )
    b.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
    b.add_argument("--partition", default="hash", choices=["hash", "range"])
    b.add_argument("--id-column", help="int64 id column (Parquet); default: row number")
    b.add_argument("--vector-column", default="vector")
    b.add_argument("--metadata-columns", default="", help="comma-separated columns to keep")
    b.add_argument("--memory-budget", type=int, help="bytes per shard for the automatic choice")
    b.add_argument(
        "--traffic",
        default="mixed",
        choices=["mixed", "single", "batch"],
        help="expected queries, for the automatic choice and its tuning: mixed (default), "
        "single (lone queries, small batches: latency) or batch (large batches: throughput)",
    )
    b.add_argument(
        "--ef-construction",
        type=int,
        help="HNSW graphs: candidates kept while inserting (default: 200 for the automatic "
        "choice and --index hnsw, faiss's 40 for a factory string)",
    )
    b.add_argument(
        "--default-recall",
        type=float,
        default=0.95,
        help="tuned defaults are the cheapest parameters reaching this recall@10",
    )
    b.add_argument("--no-tune", action="store_true", help="skip the recall/speed measurement")
    b.add_argument("--chunk-rows", type=int, default=65536)
    b.add_argument("--seed", type=int, default=0)


def build_inputs(args):
    """``(VectorSource, BuildOptions)`` from the flags of ``add_build_arguments``."""
    from shards.build import BuildOptions
    from shards.source import VectorSource

    cols = [c for c in args.metadata_columns.split(",") if c]
    source = VectorSource(
        args.input,
        vector_column=args.vector_column,
        id_column=args.id_column,
        metadata_columns=cols,
    )
    opts = BuildOptions(
        num_shards=args.shards,
        index=args.index,
        metric=args.metric,
        partition=args.partition,
        memory_budget=args.memory_budget,
        chunk_rows=args.chunk_rows,
        tune=not args.no_tune,
        default_recall=args.default_recall,
        seed=args.seed,
        target=args.target,
        graph_device=args.graph_device,
        traffic=args.traffic,
        ef_construction=args.ef_construction,
    )
    return source, opts


def _build(args) -> int:
    from shards.build import build_index

    source, opts = build_inputs(args)
    m = build_index(source, args.out, opts)
    print(describe_build(m))
    print(f"chosen: {why_chosen(m)}")
    return 0


def _create(args) -> int:
    from shards.build import BuildOptions
    from shards.create import create_index, parse_columns

    opts = BuildOptions(num_shards=args.shards, metric=args.metric, partition=args.partition)
    m = create_index(args.out, args.dim, parse_columns(args.metadata), opts)
    print(describe_build(m))
    return 0


def describe_build(m) -> str:
    """The line a build prints when it is done."""
    return (
        f"built {m.index_version}: {m.ntotal:,} vectors x {m.dim} ({m.metric}) in "
        f"{m.num_shards} shard(s), {m.factory}, defaults {m.default_params or '{}'}"
    )


def _search(args) -> int:
    from shards.index import ShardedIndex

    if args.output is None and args.show is None:
        raise InvalidInput("give --output OUT.npz and/or --print")
    index = ShardedIndex.open(args.dir, args.version)
    index.place(args.device)
    params = {
        "nprobe": args.nprobe,
        "ef_search": args.ef_search,
        "quantizer_ef_search": args.quantizer_ef_search,
        "k_factor": args.k_factor,
        "itopk_size": args.itopk_size,
        "search_width": args.search_width,
    }
    filt = None
    if args.filter is not None:
        try:
            filt = json.loads(args.filter)
        except ValueError as exc:
            raise InvalidInput(f"--filter is not valid JSON: {exc}") from None
    target = args.target_recall
    if args.queries:
        D, I = index.search(
            np.load(args.queries), args.k, params, target_recall=target, filter=filt
        )
    else:
        ids = [int(t) for t in args.ids.split(",") if t.strip()]
        D, I = index.search_by_id(ids, args.k, params, target_recall=target, filter=filt)
    if args.output:
        np.savez(args.output, D=D, I=I)
    if args.show is not None:
        _print_results(index, D, I, [c for c in args.show.split(",") if c])
    return 0


def _print_results(index, D: np.ndarray, I: np.ndarray, cols: list[str]) -> None:
    from shards.metadata import lookup_metadata

    for qi in range(len(I)):
        if len(I) > 1:
            print(f"query {qi}:")
        print(f"{'rank':>4}  {'score':>8}  {'id':>10}  " + "  ".join(cols))
        meta = lookup_metadata(index, I[qi], cols).to_pylist()
        for rank, (score, row) in enumerate(zip(D[qi], meta, strict=True)):
            extra = "  ".join(str(row[c]) for c in cols)
            print(f"{rank + 1:>4}  {score:>8.4f}  {row['id']:>10}  {extra}".rstrip())


def _inspect(args) -> int:
    from shards.artefact import open_version

    _, m = open_version(args.dir, args.version)
    if args.json:
        print(m.to_json())
        return 0
    print(f"version   {m.index_version} (parent {m.parent_version}), created {m.created_at}")
    print(f"vectors   {m.ntotal:,} x {m.dim}, metric {m.metric}, factory {m.factory}")
    print(
        f"shards    {m.num_shards} ({m.partition}): " + ", ".join(f"{s.ntotal:,}" for s in m.shards)
    )
    print(f"chosen    {why_chosen(m)}")
    print(f"defaults  {json.dumps(m.default_params)}")
    print(f"log       writes up to sequence {m.base_sequence} included in this version")
    if m.tuning:
        print(f"tuning    {len(m.tuning['curve'])} points, {m.tuning['note']}")
    print(f"build     {json.dumps({k: v for k, v in m.build.items() if k != 'source'})}")
    return 0


def why_chosen(m) -> str:
    """Why this version has its index: the choice's reason, for what traffic and budget."""
    b = m.build
    per_shard = -(-m.ntotal // max(1, m.num_shards))
    parts = [f"{m.factory} for {per_shard:,} vectors per shard x {m.dim}: {b.get('choice', '?')}"]
    if "traffic" in b:
        budget = b.get("memory_budget")
        parts.append(
            f"traffic {b['traffic']}, memory budget "
            + ("none" if budget is None else f"{budget:,} bytes per shard")
        )
    if b.get("estimated_bytes_per_shard"):
        parts.append(f"about {b['estimated_bytes_per_shard'] / 2**20:,.1f} MiB per shard")
    if b.get("ef_construction"):
        parts.append(f"efConstruction {b['ef_construction']}")
    if m.tuning:
        parts.append(
            f"defaults tuned for recall@{m.tuning['k']} {m.tuning['target']}, timed on "
            f"{m.tuning.get('timed', 'batches')}"
        )
    return "; ".join(parts)


def _verify(args) -> int:
    from shards.artefact import verify_version

    m, problems = verify_version(args.dir, args.version)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    files = sum(len(s.files) for s in m.shards)
    if not problems:
        print(f"ok: {m.index_version}, {files} files match the manifest")
    return 1 if problems else 0


def _export_ids(args) -> int:
    from shards.index import ShardedIndex
    from shards.metadata import export_id_map

    n = export_id_map(ShardedIndex.open(args.dir, args.version), args.output)
    print(f"wrote {n:,} ids to {args.output}")
    return 0


def _autotune(args) -> int:
    from shards.tune_existing import autotune_index

    m = autotune_index(args.dir, args.version, queries=args.queries, target=args.default_recall)
    print(f"tuned {m.index_version} (from {m.parent_version}): defaults {m.default_params}")
    return 0


def _ids_arg(text: str) -> np.ndarray:
    if text.endswith(".npy"):
        return np.load(text)
    try:
        return np.array([int(t) for t in text.split(",") if t.strip()], dtype=np.int64)
    except ValueError:
        raise InvalidInput(
            f"--ids must be a .npy file or comma-separated integers: {text!r}"
        ) from None


def _upsert(args) -> int:
    from shards.index import ShardedIndex

    metadata = None
    if args.metadata:
        with open(args.metadata) as f:
            metadata = [json.loads(line) for line in f if line.strip()]
    index = ShardedIndex.open(args.dir)
    n = index.upsert(np.load(args.vectors), _ids_arg(args.ids), metadata)
    print(f"upserted {n:,} vectors at sequence {index.sequence}")
    return 0


def _delete(args) -> int:
    from shards.index import ShardedIndex

    index = ShardedIndex.open(args.dir)
    n = index.delete(_ids_arg(args.ids))
    print(f"deleted {n:,} ids at sequence {index.sequence}")
    return 0


def _compact(args) -> int:
    from shards.index import ShardedIndex

    m = ShardedIndex.open(args.dir).compact()
    print(
        f"published {m.index_version} (from {m.parent_version}): {m.ntotal:,} vectors, "
        f"log included up to sequence {m.base_sequence}"
    )
    return 0
