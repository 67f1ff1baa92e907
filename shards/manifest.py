"""The manifest of one index version: what was built, how, and a checksum for every file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from shards.errors import ManifestMismatch
from shards.metric import Metric

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# what the deployments of a running service are wired for (one per shard, the partition
# the router routes ids by, the vectors it checks, the metadata columns its log's writer
# keeps): a live swap must keep them all
LAYOUT_FIELDS = ("num_shards", "partition", "dim", "metric", "metadata_columns")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, s: dict[str, Any]) -> ShardEntry:
        files = {role: FileEntry(**f) for role, f in s["files"].items()}
        return cls(name=s["name"], ntotal=int(s["ntotal"]), files=files)


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
    # the last mutation log sequence this version's files include (0: none); readers apply
    # the log's mutations after it
    base_sequence: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def layout(self) -> dict[str, Any]:
        """What a running service is wired for: a version that differs here needs a redeploy."""
        return {name: getattr(self, name) for name in LAYOUT_FIELDS}

    def layout_change(self, new: Manifest) -> str | None:
        """None when ``new`` can replace this version live, else what differs, for people."""
        old_l, new_l = self.layout(), new.layout()
        diff = [f"{n} {old_l[n]!r} -> {new_l[n]!r}" for n in LAYOUT_FIELDS if old_l[n] != new_l[n]]
        if not diff:
            return None
        return (
            f"version {new.index_version} has another layout than {self.index_version} "
            f"({', '.join(diff)}): it cannot be swapped in live, deploy it as a new application"
        )

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
            shards = [ShardEntry.from_dict(s) for s in body.pop("shards")]
            manifest = cls(shards=shards, **body)
            Metric.parse(manifest.metric)
        except ManifestMismatch:
            raise
        except Exception as exc:  # any malformation of the JSON document
            raise ManifestMismatch(f"{where}: invalid manifest ({exc})", where) from None
        if manifest.dim <= 0 or not manifest.shards:
            raise ManifestMismatch(f"{where}: invalid manifest (dim or shards)", where)
        return manifest
