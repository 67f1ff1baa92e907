"""The manifest of one index version: what was built, how, and a checksum for every file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from shards.errors import ManifestMismatch
from shards.metric import Metric

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FileEntry:
    """One file of a shard, relative to the version folder."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ShardEntry:
    """One shard: its vector count and files."""

    name: str
    ntotal: int
    files: dict[str, FileEntry]  # role ("index", "ids", "metadata") -> file


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to load and check one index version."""

    index_version: str
    dim: int
    metric: str
    factory: str
    partition: str
    shards: list[ShardEntry]
    created_at: str
    build: dict[str, Any] = field(default_factory=dict)
    default_params: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] | None = None
    metadata_columns: list[str] = field(default_factory=list)
    parent_version: str | None = None
    format_version: int = FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def to_json(self) -> str:
        body = asdict(self)
        body["num_shards"] = self.num_shards
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        """Parse and validate a manifest; ``where`` names the file in errors."""
        try:
            body = json.loads(text)
            if body.get("format_version") != FORMAT_VERSION:
                raise ManifestMismatch(
                    f"{where}: format_version {body.get('format_version')!r} is not "
                    f"{FORMAT_VERSION}; this vsearch cannot read it",
                    where,
                )
            body.pop("num_shards", None)
            shards = [
                ShardEntry(
                    name=s["name"],
                    ntotal=int(s["ntotal"]),
                    files={role: FileEntry(**f) for role, f in s["files"].items()},
                )
                for s in body.pop("shards")
            ]
            manifest = cls(shards=shards, **body)
            Metric.parse(manifest.metric)
        except ManifestMismatch:
            raise
        except Exception as exc:  # any malformation of the JSON document
            raise ManifestMismatch(f"{where}: invalid manifest ({exc})", where) from None
        if manifest.dim <= 0 or not manifest.shards:
            raise ManifestMismatch(f"{where}: invalid manifest (dim or shards)", where)
        return manifest
