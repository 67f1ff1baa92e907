"""Write and read index versions: the on-disk layout of DESIGN.md section 2.

<root>/CURRENT                        name of the version readers open by default
<root>/<version>/manifest.json        written last: a version without it does not exist
<root>/<version>/shard-00000/index.faiss, ids.parquet[, metadata.parquet]
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards._faiss import faiss, faiss_ext
from shards.errors import ConcurrentUpdate, CorruptFile, ManifestMismatch, MissingFile
from shards.manifest import MANIFEST, FileEntry, Manifest, ShardEntry
from shards.metric import Metric
from shards.storage import Store

CURRENT = "CURRENT"


@dataclass
class ShardData:
    """The in-memory contents of one shard."""

    index: faiss.Index
    ids: np.ndarray  # (ntotal,) int64: row -> external id
    metadata: pa.Table | None = None  # keyed by an "id" column


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def new_version_name() -> str:
    """A unique, time-sortable version name."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def write_version(
    root_uri: str,
    manifest: Manifest,
    shards: list[ShardData],
    *,
    expect_current: str | None = None,
) -> Manifest:
    """Write a new version under ``root_uri`` and point CURRENT at it; returns its manifest.

    ``manifest.shards`` is filled in here; the manifest is written after every shard file,
    and CURRENT after the manifest, so readers never see a half-written version.
    ``expect_current``: the version this one was made from (compact, autotune); CURRENT is
    moved only if it still names it (see ``publish_current``).

    Raises:
        ConcurrentUpdate: CURRENT moved meanwhile; the new version is written but not current.
    """
    root = Store(root_uri)
    vstore = root.child(manifest.index_version)
    entries = [write_shard(vstore, i, shard) for i, shard in enumerate(shards)]
    return publish_version(root, manifest, entries, expect_current)


def write_shard(vstore: Store, i: int, shard: ShardData) -> ShardEntry:
    """Write shard ``i``'s files into the version folder ``vstore``; returns its entry.

    A shard's files mean nothing until a manifest names them (``publish_version``), so
    parallel builders may each write their own shards.
    """
    name = shard_name(i)
    files = {"index": _put_index(vstore, f"{name}/index.faiss", shard.index)}
    files["ids"] = _put(vstore, f"{name}/ids.parquet", _parquet({"id": shard.ids}))
    if shard.metadata is not None:
        files["metadata"] = _put(vstore, f"{name}/metadata.parquet", _parquet(shard.metadata))
    return ShardEntry(name=name, ntotal=int(shard.index.ntotal), files=files)


def publish_version(
    root: Store, manifest: Manifest, entries: list[ShardEntry], expect_current: str | None = None
) -> Manifest:
    """Write the manifest of a version whose shard files are written, then move CURRENT."""
    manifest = replace(manifest, shards=entries)
    root.child(manifest.index_version).write_bytes(MANIFEST, manifest.to_json().encode())
    publish_current(root, manifest.index_version, expect_current)
    return manifest


LOCK_WAIT_S = 10.0
LOCK_STALE_S = 60.0  # a lock file older than this was left by a writer that died


def publish_current(root: Store, version: str, expect: str | None = None) -> None:
    """Point CURRENT at ``version``; with ``expect``, only if CURRENT still names ``expect``.

    Compare-and-swap: on a local filesystem the compare and the move happen under a lock
    file (``CURRENT.lock``, created exclusively), so of two writers that started from the
    same version exactly one publishes. ``pyarrow.fs`` has no conditional put for object
    stores: there the check narrows the race to the moment between read and write, and the
    rule is one writer (build, compact or autotune) per index root at a time.

    Raises:
        ConcurrentUpdate: CURRENT names another version than ``expect``.
    """
    with _current_lock(root):
        if expect is not None:
            now = root.read_bytes(CURRENT).decode().strip() if root.exists(CURRENT) else None
            if now != expect:
                raise ConcurrentUpdate(
                    f"CURRENT of {root.uri} moved from {expect} to {now} while {version} was "
                    f"written from {expect}; {version} is complete but not current: open it by "
                    "name, or redo the operation from the new CURRENT"
                )
        root.write_bytes(CURRENT, version.encode())


@contextlib.contextmanager
def _current_lock(root: Store) -> Iterator[None]:
    if not root.local:
        yield
        return
    path = root.path(f"{CURRENT}.lock")
    os.makedirs(root.path(), exist_ok=True)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.path.getmtime(path) > LOCK_STALE_S:
                    os.unlink(path)
                    continue
            if time.monotonic() > deadline:
                raise ConcurrentUpdate(f"{path} is held by another writer") from None
            time.sleep(0.01)
    try:
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
        os.unlink(path)


def _put_index(store: Store, rel: str, index: faiss.Index) -> FileEntry:
    """Write ``index`` as faiss serialises it, streamed to the file (never a second copy of
    the index in memory: a shard's worker holds one shard, not two)."""
    with store.writer(rel) as out:
        stream = faiss_ext.PyCallbackIOWriter(out.write, 1 << 22)
        faiss.write_index(index, stream)
        del stream  # flushes its last block
    return FileEntry(path=rel, size=out.size, sha256=out.sha256)


def _put(store: Store, rel: str, data) -> FileEntry:
    """Write ``data`` (bytes, or a uint8 array such as ``faiss.serialize_index``'s, written
    from its own buffer: an index is not copied again on its way to the file)."""
    view = memoryview(data).cast("B")
    return FileEntry(path=rel, size=view.nbytes, sha256=store.write_bytes(rel, view))


def _parquet(columns) -> bytes:
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def open_version(uri: str, version: str | None = None) -> tuple[Store, Manifest]:
    """Find a version (a version folder, a root's CURRENT, or a named one); read its manifest."""
    store = Store(uri)
    if version is None and not store.exists(MANIFEST):
        if not store.exists(CURRENT):
            where = store.path(CURRENT)
            raise MissingFile(f"no index at {uri}: neither {MANIFEST} nor {where} exists", where)
        version = store.read_bytes(CURRENT).decode().strip()
    vstore = store.child(version) if version else store
    where = vstore.path(MANIFEST)
    manifest = Manifest.from_json(vstore.read_bytes(MANIFEST), where)
    if version and manifest.index_version != version:
        msg = f"{where}: index_version {manifest.index_version!r} != folder {version!r}"
        raise ManifestMismatch(msg, where)
    return vstore, manifest


def list_versions(uri: str) -> list[str]:
    """Complete versions under a root, oldest first."""
    root = Store(uri)
    return [v for v in root.list_dirs() if root.exists(f"{v}/{MANIFEST}")]


def check_file(store: Store, entry: FileEntry, data: bytes | None = None) -> None:
    """Raise MissingFile/CorruptFile unless the file matches its manifest entry."""
    path = store.path(entry.path)
    size = len(data) if data is not None else store.size(entry.path)
    if size != entry.size:
        raise CorruptFile(f"{path}: size {size} != {entry.size} in the manifest (truncated?)", path)
    digest = hashlib.sha256(data).hexdigest() if data is not None else store.sha256(entry.path)
    if digest != entry.sha256:
        raise CorruptFile(f"{path}: sha256 mismatch with the manifest (corrupted)", path)


def read_shard(
    store: Store, manifest: Manifest, i: int, *, verify: bool = True, mmap: bool = False
) -> ShardData:
    """Load shard ``i``, checking every file against the manifest.

    ``mmap`` maps the index file instead of reading it (local folders only).
    """
    entry = manifest.shards[i]
    index = _read_index(store, entry.files["index"], verify=verify, mmap=mmap)
    where = store.path(entry.files["index"].path)
    metric = Metric.parse(manifest.metric)
    if index.d != manifest.dim or index.metric_type != metric.faiss_metric:
        raise ManifestMismatch(
            f"{where}: index has d={index.d}, metric_type={index.metric_type}; the manifest "
            f"says dim={manifest.dim}, metric={manifest.metric}",
            where,
        )
    if index.ntotal != entry.ntotal:
        raise ManifestMismatch(f"{where}: ntotal {index.ntotal} != {entry.ntotal}", where)
    ids = _read_table(store, entry.files["ids"], verify)["id"].to_numpy().astype(np.int64)
    if len(ids) != entry.ntotal:
        raise ManifestMismatch(f"{store.path(entry.files['ids'].path)}: {len(ids)} ids", where)
    meta = entry.files.get("metadata")
    return ShardData(index, ids, _read_table(store, meta, verify) if meta else None)


def _read_index(store: Store, entry: FileEntry, *, verify: bool, mmap: bool) -> faiss.Index:
    path = store.path(entry.path)
    try:
        if mmap and store.local:
            if verify:
                check_file(store, entry)
            return faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        data = store.read_bytes(entry.path)
        if verify:
            check_file(store, entry, data)
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise CorruptFile(
            f"{path}: faiss cannot read it ({str(exc).splitlines()[0]})", path
        ) from None


def _read_table(store: Store, entry: FileEntry, verify: bool) -> pa.Table:
    data = store.read_bytes(entry.path)
    if verify:
        check_file(store, entry, data)
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        path = store.path(entry.path)
        raise CorruptFile(f"{path}: not a readable parquet file ({exc})", path) from None


def verify_version(uri: str, version: str | None = None) -> tuple[Manifest, list[str]]:
    """Check every file of a version; returns the manifest and one message per bad file."""
    store, manifest = open_version(uri, version)
    problems = []
    for shard in manifest.shards:
        for entry in shard.files.values():
            try:
                check_file(store, entry)
            except (MissingFile, CorruptFile) as exc:
                problems.append(exc.message)
    return manifest, problems


def metadata_schema_of(store: Store, manifest: Manifest) -> pa.Schema | None:
    """The metadata columns of a version (without ``id``), from one shard's Parquet footer;
    None when it has none."""
    from shards.writes import metadata_schema

    entry = manifest.shards[0].files.get("metadata")
    if entry is None:
        return None
    return metadata_schema(pq.read_schema(pa.BufferReader(store.read_bytes(entry.path))))


def descends_from(uri: str, version: str, ancestor: str | None, depth: int = 32) -> bool:
    """True when ``version`` was made from ``ancestor`` (through compactions or re-tunes:
    its ``parent_version`` chain reaches it), or is it."""
    current: str | None = version
    for _ in range(depth):
        if current is None:
            return False
        if current == ancestor:
            return True
        try:
            current = open_version(uri, current)[1].parent_version
        except Exception:  # a parent that is gone ends the chain
            return False
    return False
