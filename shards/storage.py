"""Byte-level storage of index artefacts on a local path or any ``pyarrow.fs`` URI.

Writes are atomic on local disks (a temporary name, fsync, rename, fsync of the folder) and on
object stores that publish an object only when its upload completes (S3, GCS, Azure). Other
``pyarrow.fs`` filesystems (HDFS...) give no such promise: there a reader can see a partial
file, which the manifest's sizes and sha256 then refuse. CURRENT moves by compare-and-swap
(``artefact.publish_current``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs

from shards.errors import MissingFile


class Store:
    """A folder on a filesystem, addressed by paths relative to it."""

    def __init__(self, uri: str) -> None:
        uri = str(uri)
        if "://" in uri:
            self.fs, root = pafs.FileSystem.from_uri(uri)
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs, root, self.local = pafs.LocalFileSystem(), os.path.abspath(uri), True
        self.uri = uri
        self.root = root.rstrip("/") or "/"

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def child(self, rel: str) -> Store:
        """A store rooted at ``rel`` inside this one."""
        sub = Store.__new__(Store)
        sub.fs, sub.local, sub.uri = self.fs, self.local, f"{self.uri.rstrip('/')}/{rel}"
        sub.root = self.path(rel)
        return sub

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def size(self, rel: str) -> int:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.NotFound:
            raise MissingFile(f"missing file {self.path(rel)}", self.path(rel))
        return int(info.size)

    def list_dirs(self, rel: str = "") -> list[str]:
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(
            i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory
        )

    def list_files(self, rel: str = "") -> list[str]:
        """Names of the files directly in folder ``rel`` (none when it does not exist)."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(
            i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File
        )

    def read_bytes(self, rel: str) -> bytes:
        path = self.path(rel)
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise MissingFile(f"missing file {path}", path) from None

    def write_bytes(self, rel: str, data: bytes | memoryview) -> str:
        """Write ``data`` atomically to ``rel``; returns its sha256 hex digest."""
        with self.writer(rel) as out:
            out.write(data)
        return out.sha256

    @contextlib.contextmanager
    def writer(self, rel: str) -> Iterator[AtomicWriter]:
        """A file written piece by piece (``write``), published atomically at the end of the
        ``with`` block, never when it raised; ``.sha256`` and ``.size`` are known then."""
        path = self.path(rel)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if self.local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as f:
                    out = AtomicWriter(f.write)
                    yield out
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            fsync_dir(os.path.dirname(path))
        else:  # object stores publish an object when its upload completes
            with self.fs.open_output_stream(path) as f:
                out = AtomicWriter(f.write)
                yield out

    def sha256(self, rel: str, chunk: int = 1 << 22) -> str:
        """Stream a file's sha256 without holding it in memory."""
        path = self.path(rel)
        h = hashlib.sha256()
        try:
            with self.fs.open_input_stream(path) as f:
                while block := f.read(chunk):
                    h.update(block)
        except FileNotFoundError:
            raise MissingFile(f"missing file {path}", path) from None
        return h.hexdigest()

    def delete_dir(self, rel: str) -> None:
        self.fs.delete_dir(self.path(rel))


class AtomicWriter:
    """The writing end of ``Store.writer``: counts and hashes what it writes."""

    def __init__(self, write) -> None:
        self._write, self._hash, self.size = write, hashlib.sha256(), 0

    def write(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self._write(data)
        self.size += memoryview(data).nbytes

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
