"""Compaction: the next version of an index, with its deletes applied and its delta merged.

The version written keeps the index type, its training and its tuned parameters; it records
the mutation sequence it holds as its base (readers replay the log after it).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from shards import cagra
from shards._faiss import faiss
from shards.artefact import ShardData, new_version_name, write_version
from shards.cuda import graph_device
from shards.errors import UnsupportedOperation
from shards.manifest import Manifest
from shards.shard import Shard


def compact(manifest: Manifest, shards: dict[int, Shard], root_uri: str, sequence: int) -> Manifest:
    """Write the live contents of every shard of ``manifest``'s version, which hold the log
    up to ``sequence``, as a new version under ``root_uri``; its manifest. Unchanged shards
    keep their contents.

    Raises:
        UnsupportedOperation: a shard's index cannot be refilled as the same kind.
        ConcurrentUpdate: another version became CURRENT meanwhile.
    """
    datas = []
    for i in range(manifest.num_shards):
        shard = shards[i]
        if not shard.dirty:
            datas.append(ShardData(shard.index, shard.ids, shard.metadata))
            continue
        x, ids = shard.live_contents()
        refill = refilled(shard.index, manifest.factory, x)
        datas.append(ShardData(refill, ids, shard.live_metadata()))
    nxt = replace(
        manifest,
        base_sequence=sequence,
        index_version=new_version_name(),
        parent_version=manifest.index_version,
        created_at=datetime.now(UTC).isoformat(),
    )
    return write_version(root_uri, nxt, datas, expect_current=manifest.index_version)


def refilled(index: faiss.Index, factory: str, x: np.ndarray) -> faiss.Index:
    """A copy of ``index``'s kind and training holding exactly the prepared vectors ``x``.

    A CAGRA graph is built again (its CPU form is an ``IndexHNSWCagra``, which
    ``faiss.clone_index`` turns into a plain ``IndexHNSW`` that ignores CAGRA's knobs);
    every other index is cloned (same trained quantizer and codebook), emptied and refilled.

    Raises:
        UnsupportedOperation: the copy would not be of the same kind (never published).
    """
    degree = cagra.parse_factory(factory)
    if degree is not None:
        out = cagra.build(x, degree, index.metric_type, device=graph_device())
    else:
        out = faiss.clone_index(index)
        out.reset()
        out.add(x)
    before, after = type(faiss.downcast_index(index)), type(faiss.downcast_index(out))
    if before is not after:
        raise UnsupportedOperation(
            f"compaction would turn a {before.__name__} into {after.__name__}"
        )
    return out
