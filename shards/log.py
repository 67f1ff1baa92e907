"""The mutation log: every upsert and delete of an index, in order, durable when acknowledged.

``<root>/log/<first sequence, 20 digits>.mlog``: a segment holds one or more mutations with
consecutive sequence numbers (a writer commits the mutations that arrived together as one
segment). A segment is an Arrow IPC stream of one row per id (``sequence``, ``op``, ``id``,
``vector``, ``key`` when a write has an idempotency key, and ``metadata``, a struct of
the index's metadata columns) followed by its sha256 and a magic trailer: a
truncated or altered segment fails the check and is named (``CorruptLogSegment``).

Durability: a segment is written to a temporary name, fsynced, then linked to its name
(local disks; the link fails when the name exists), or put whole (object stores publish an
object only when its upload completes). Ordering: one writer at a time. Locally a second
writer cannot take a sequence already written (every segment starts right after the last
one its writer knows, and names are created exclusively: it gets ``ConcurrentUpdate``); on
object stores nothing checks it, so the service has exactly one writer (its coordinator).

A version's manifest records ``base_sequence``, the last mutation its files include; a
reader applies what follows. Segments wholly at or below every live version's base are
retired by ``retire``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from shards.errors import ConcurrentUpdate, CorruptLogSegment, InvalidInput, LogRetired
from shards.storage import Store, fsync_dir

LOG_DIR = "log"
SUFFIX = ".mlog"
MAGIC = b"VSMLOG01"
TRAILER = 32 + len(MAGIC)  # sha256 of the stream, then the magic
OPS = {"upsert": 0, "delete": 1}
LOG_COLUMNS = ("sequence", "op", "id", "vector")  # the first format: the rest is metadata
FORMAT_KEY, FORMAT = b"vsearch.log", b"2"  # 2: metadata in one struct column, keys
Op = Literal["upsert", "delete"]


@dataclass(frozen=True, eq=False)
class Mutation:
    """One write: an upsert of rows or a delete of ids, at ``sequence`` (0: not logged yet).

    ``ids`` (n,) int64; for an upsert ``x`` (n, d) float32 as indexed (normalised for
    cosine) and ``metadata`` (n rows of the index's metadata columns, or None). ``key``:
    the client's idempotency key, logged with it (a retry under the same key is answered
    with this mutation's sequence instead of being applied again).
    """

    op: Op
    ids: np.ndarray
    x: np.ndarray | None = None
    metadata: pa.Table | None = None
    sequence: int = 0
    key: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def at(self, sequence: int) -> Mutation:
        return Mutation(self.op, self.ids, self.x, self.metadata, sequence, self.key)

    def fingerprint(self) -> bytes:
        """A digest of what the mutation does (op, ids, vectors, metadata values): the same
        write retried has the same one."""
        h = hashlib.sha256(self.op.encode())
        h.update(np.ascontiguousarray(self.ids, np.int64).tobytes())
        if self.x is not None:
            h.update(np.ascontiguousarray(self.x, np.float32).tobytes())
        meta = self.metadata
        if meta is not None and any(c.null_count < len(c) for c in meta.columns):
            # by value (buffers differ with slicing and chunking); all null = none given
            h.update(repr(meta.to_pydict()).encode())
        return h.digest()


def segment_name(first: int) -> str:
    return f"{first:020d}{SUFFIX}"


class MutationLog:
    """The log of the index at ``root_uri`` for vectors of dimension ``dim``.

    ``schema``: the index's metadata columns (without ``id``), or None when it has none.
    """

    def __init__(self, root_uri: str, dim: int, schema: pa.Schema | None = None) -> None:
        self.store = Store(root_uri).child(LOG_DIR)
        self.dim = dim
        self.schema = schema
        self._last: int | None = None  # the last sequence this writer knows is durable

    # ---- reading ----

    def segments(self) -> list[tuple[int, str]]:
        """``(first sequence, name)`` of every segment, in order."""
        sel = pafs.FileSelector(self.store.root, allow_not_found=True)
        names = [i.base_name for i in self.store.fs.get_file_info(sel)]
        out = [(int(n[: -len(SUFFIX)]), n) for n in names if _is_segment(n)]
        return sorted(out)

    def read(self, after: int = 0) -> Iterator[Mutation]:
        """The mutations with a sequence above ``after``, in order.

        Raises:
            CorruptLogSegment: a segment fails its check; the mutations before it were given.
        """
        segs = self.segments()
        if segs and segs[0][0] > after + 1:
            raise LogRetired(
                f"the mutation log at {self.store.root} starts at sequence {segs[0][0]}: the "
                f"mutations after {after} that a reader needs were retired after a compaction "
                "included them; open a version whose base sequence is at least "
                f"{segs[0][0] - 1}",
                self.store.root,
            )
        for i, (_, name) in enumerate(segs):
            nxt = segs[i + 1][0] if i + 1 < len(segs) else None
            if nxt is not None and nxt <= after + 1:
                continue  # wholly at or below ``after``
            for m in self._decode(name):
                if m.sequence > after:
                    yield m

    def last_sequence(self, floor: int = 0) -> int:
        """The last durable sequence (at least ``floor``: the base of the current version,
        whose segments may have been retired)."""
        segs = self.segments()
        last = floor
        if segs:
            mutations = self._decode(segs[-1][1])
            last = max(last, mutations[-1].sequence if mutations else segs[-1][0] - 1)
        return last

    def _decode(self, name: str) -> list[Mutation]:
        path = self.store.path(name)
        raw = self.store.read_bytes(name)
        body, digest, magic = raw[:-TRAILER], raw[-TRAILER : -len(MAGIC)], raw[-len(MAGIC) :]
        if len(raw) < TRAILER or magic != MAGIC or hashlib.sha256(body).digest() != digest:
            raise CorruptLogSegment(
                f"mutation log segment {path} is truncated or corrupt (checksum mismatch); "
                "mutations after it are not applied and writes are refused until it is "
                "restored from a copy (removing it would reuse its sequence numbers)",
                path,
            )
        try:
            table = pa.ipc.open_stream(body).read_all()
            return _mutations(table, self.dim)
        except Exception as exc:
            msg = f"mutation log segment {path} cannot be read: {exc}"
            raise CorruptLogSegment(msg, path) from None

    # ---- writing (one writer) ----

    def append(self, batch: list[Mutation], after: int | None = None) -> list[Mutation]:
        """Write ``batch`` as one durable segment, numbered after the last sequence (or
        right after ``after``: what the caller has applied); returns the mutations with
        their sequences.

        Raises:
            ConcurrentUpdate: another writer wrote that sequence first (locally detected);
                this writer re-reads the log's end before its next append.
        """
        if after is not None:
            self._last = after
        if self._last is None:
            self.find_end()
        assert self._last is not None
        first = self._last + 1
        logged = [m.at(first + i) for i, m in enumerate(batch)]
        data = self._encode(logged)
        try:
            self._put_new(segment_name(first), data)
        except FileExistsError:
            self._last = None
            raise ConcurrentUpdate(
                f"sequence {first} of the mutation log was written by another writer"
            ) from None
        self._last = logged[-1].sequence
        return logged

    def start(self, floor: int = 0) -> int:
        """Become the writer: find the last durable sequence, checking every segment above
        ``floor`` (a corrupt one refuses writes loudly). Returns it."""
        for _ in self.read(floor):
            pass
        return self.find_end(floor)

    def find_end(self, floor: int = 0) -> int:
        """Append after the log's last durable sequence (read from its newest segment)."""
        self._last = self.last_sequence(floor)
        return self._last

    def retire(self, upto: int) -> int:
        """Delete the segments whose mutations are all at or below ``upto`` (the lowest base
        sequence of every version still served); returns how many. The newest segment is
        kept (it tells a new writer where the log ends). A reader that needs a retired
        mutation gets ``LogRetired``, never a silently incomplete state."""
        segs = self.segments()
        gone = 0
        for (_, name), (nxt, _) in itertools.pairwise(segs):
            if nxt - 1 <= upto:
                self.store.fs.delete_file(self.store.path(name))
                gone += 1
        return gone

    def _encode(self, mutations: list[Mutation]) -> bytes:
        table = _table(mutations, self.dim, self.schema)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        body = sink.getvalue().to_pybytes()
        return body + hashlib.sha256(body).digest() + MAGIC

    def _put_new(self, name: str, data: bytes) -> None:
        path = self.store.path(name)
        self.store.fs.create_dir(self.store.root, recursive=True)
        if not self.store.local:
            with self.store.fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # FileExistsError when another writer has this name
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        fsync_dir(os.path.dirname(path))


def _is_segment(name: str) -> bool:
    return name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit()


def _table(mutations: list[Mutation], dim: int, schema: pa.Schema | None) -> pa.Table:
    n = sum(len(m) for m in mutations)
    seq = np.concatenate([np.full(len(m), m.sequence, np.int64) for m in mutations])
    op = np.concatenate([np.full(len(m), OPS[m.op], np.int8) for m in mutations])
    ids = np.concatenate([m.ids for m in mutations]).astype(np.int64)
    x = np.zeros((n, dim), np.float32)
    has_x = np.zeros(n, bool)
    start = 0
    for m in mutations:
        if m.x is not None:
            x[start : start + len(m)] = m.x
            has_x[start : start + len(m)] = True
        start += len(m)
    vectors = pa.FixedSizeListArray.from_arrays(
        pa.array(x.ravel(), pa.float32()), dim, mask=pa.array(~has_x)
    )
    columns = {"sequence": seq, "op": op, "id": ids, "vector": vectors}
    if any(m.key is not None for m in mutations):  # on each mutation's first row
        keys: list[str | None] = [None] * n
        start = 0
        for m in mutations:
            if len(m):
                keys[start] = m.key
            start += len(m)
        columns["key"] = pa.array(keys, pa.string())
    if schema is not None and len(schema):  # one struct column: names never collide
        meta = pa.concat_tables([_metadata_of(m, schema) for m in mutations])
        columns["metadata"] = meta.to_struct_array().combine_chunks()
    return pa.table(columns).replace_schema_metadata({FORMAT_KEY: FORMAT})


def _metadata_of(m: Mutation, schema: pa.Schema) -> pa.Table:
    if m.metadata is not None:
        extra = sorted(set(m.metadata.column_names) - set(schema.names))
        if extra:  # never dropped: the write would be acknowledged without them
            raise InvalidInput(f"metadata column(s) {extra} are not in the log's columns")
        return m.metadata.select(schema.names).cast(schema)
    return pa.table({f.name: pa.nulls(len(m), f.type) for f in schema})


def _mutations(table: pa.Table, dim: int) -> list[Mutation]:
    seq = table["sequence"].to_numpy()
    if len(seq) == 0:
        return []
    op = table["op"].to_numpy()
    ids = table["id"].to_numpy()
    vec = table["vector"].combine_chunks()
    values = vec.values.slice(vec.offset * dim, len(vec) * dim)  # nulls included: not flatten()
    flat = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    keys = table["key"].to_pylist() if "key" in table.column_names else None
    if (table.schema.metadata or {}).get(FORMAT_KEY) == FORMAT:
        meta_all = table["metadata"].combine_chunks() if "metadata" in table.column_names else None
        meta_table = None if meta_all is None else pa.Table.from_struct_array(meta_all)
    else:  # the first format: metadata columns beside the log's own
        names = [n for n in table.column_names if n not in LOG_COLUMNS]
        meta_table = table.select(names) if names else None
    cuts = np.flatnonzero(np.diff(seq)) + 1
    out = []
    for rows in np.split(np.arange(len(seq)), cuts):
        a, b = int(rows[0]), int(rows[-1]) + 1
        kind: Op = "upsert" if op[a] == OPS["upsert"] else "delete"
        x = np.ascontiguousarray(flat[a:b], np.float32) if kind == "upsert" else None
        meta = None
        if meta_table is not None and kind == "upsert":
            meta = meta_table.slice(a, b - a)
        key = None if keys is None else keys[a]
        out.append(Mutation(kind, ids[a:b].copy(), x, meta, int(seq[a]), key))
    return out
