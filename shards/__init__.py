"""vsearch's core: build, persist, load, search and merge FAISS shards (never imports Ray)."""

from shards._faiss import faiss  # first: one clear error when no faiss build is installed
from shards.build import BuildOptions, build_index
from shards.choice import Choice, choose_index, estimate_bytes
from shards.errors import (
    CorruptFile,
    IndexLoadError,
    InvalidInput,
    InvalidQuery,
    ManifestMismatch,
    MissingFile,
    TargetUnreachable,
    UnknownId,
    UnsupportedOperation,
    VsearchError,
)
from shards.index import ShardedIndex
from shards.merge import merge_results
from shards.metric import Metric
from shards.params import SearchOverrides
from shards.planner import MAX_K, MAX_QUERIES, QueryPlanner
from shards.source import VectorSource

__all__ = [
    "MAX_K",
    "MAX_QUERIES",
    "BuildOptions",
    "Choice",
    "CorruptFile",
    "IndexLoadError",
    "InvalidInput",
    "InvalidQuery",
    "ManifestMismatch",
    "QueryPlanner",
    "Metric",
    "MissingFile",
    "SearchOverrides",
    "ShardedIndex",
    "TargetUnreachable",
    "UnknownId",
    "UnsupportedOperation",
    "VectorSource",
    "VsearchError",
    "build_index",
    "choose_index",
    "estimate_bytes",
    "faiss",
    "merge_results",
]
