"""The work folder of a distributed build: what is done, so that a rerun redoes only the rest.

``<out>/.build/<key>/`` where ``key`` digests the input (path, size, modification time) and
every build option: rerunning the same command finds the same folder, a changed input or
option starts a new one. It holds

    state.json         the version being built, its index choice and timings
    template.faiss     the trained empty index (written once, read by every shard worker)
    parts/             the input split per shard (``shards.parts``) and ``parts.json`` when whole
    added/shard-N.json a shard was assembled (its files written, their entry)
    tuning.json        the measured curve and the defaults it resolved
    final/shard-N.json a shard's final files are in the version folder

Nothing here is readable as an index: the version's manifest is written after every shard,
and CURRENT after the manifest. The folder is deleted once the version is published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import pyarrow.fs as pafs

from shards.artefact import shard_name
from shards.build import BuildOptions
from shards.manifest import ShardEntry
from shards.source import VectorSource
from shards.storage import Store

WORK = ".build"
FORMAT = 1


def build_key(source: VectorSource, opts: BuildOptions) -> str:
    """A digest of the input file and the options that shape the artefact."""
    if "://" in source.path:
        fs, inner = pafs.FileSystem.from_uri(source.path)
    else:
        fs, inner = pafs.LocalFileSystem(), os.path.abspath(source.path)
    info = fs.get_file_info(inner)
    stamp = [info.size, info.mtime_ns] if info.type == pafs.FileType.File else []
    options = {k: v for k, v in dataclasses.asdict(opts).items() if k != "progress"}
    described = {
        "format": FORMAT,
        "input": inner,
        "stamp": stamp,
        "columns": [source.vector_column, source.id_column, source.metadata_columns],
        "options": options,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


class WorkFolder:
    """Reads and writes the markers of one build's work folder."""

    def __init__(self, out_uri: str, key: str) -> None:
        self.root = Store(out_uri)
        self.key = key
        self.store = self.root.child(f"{WORK}/{key}")
        self.uri = self.store.uri

    def exists(self) -> bool:
        return self.store.exists("state.json")

    def others(self) -> list[str]:
        """Work folders of other (abandoned or running) builds under the same root."""
        return [k for k in self.root.list_dirs(WORK) if k != self.key]

    def read_json(self, rel: str) -> Any:
        return json.loads(self.store.read_bytes(rel)) if self.store.exists(rel) else None

    def write_json(self, rel: str, value: Any) -> None:
        self.store.write_bytes(rel, json.dumps(value, indent=1, sort_keys=True).encode())

    def entries(self, step: str, num_shards: int) -> dict[int, dict]:
        """Shard number -> marker of every shard ``step`` ("added", "final") has done."""
        done = {}
        for s in range(num_shards):
            marker = self.read_json(f"{step}/{shard_name(s)}.json")
            if marker is not None:
                done[s] = marker
        return done

    def mark(self, step: str, shard: int, marker: dict[str, Any]) -> dict[str, Any]:
        """Record that ``step`` is done for ``shard``; ``marker["entry"]``: its files."""
        ShardEntry.from_dict(marker["entry"])  # a marker always names complete files
        self.write_json(f"{step}/{shard_name(shard)}.json", marker)
        return marker

    def remove(self) -> None:
        """Delete this build's work folder, and ``.build`` itself when no other is left."""
        self.root.delete_dir(f"{WORK}/{self.key}")
        if not self.root.list_dirs(WORK) and not self.root.list_files(WORK):
            self.root.delete_dir(WORK)
