"""Round trip, corruption of every kind gives a typed error naming the file, atomic writes."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from shards import CorruptFile, ManifestMismatch, MissingFile, ShardedIndex
from shards import artefact as artefact_mod
from shards.artefact import list_versions, open_version, verify_version
from tests.shards.helpers import build


@pytest.fixture()
def built(tmp_path, data):
    index = build(tmp_path, data[0][:4000], index="IVF16,Flat", num_shards=2)
    store, manifest = open_version(str(tmp_path / "idx"))
    return tmp_path / "idx", store, manifest, index


def _file(store, manifest, shard=1, role="index"):
    return store.path(manifest.shards[shard].files[role].path)


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip_same_results(built, data, mmap):
    root, _, manifest, index = built
    again = ShardedIndex.open(str(root), mmap=mmap)
    assert again.index_version == manifest.index_version
    assert again.manifest.default_params == manifest.default_params
    for a, b in zip(index.search(data[1], 10), again.search(data[1], 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_open_by_version_folder_and_name(built, data):
    root, store, manifest, _index = built
    by_folder = ShardedIndex.open(store.path())
    by_name = ShardedIndex.open(str(root), manifest.index_version)
    np.testing.assert_array_equal(by_folder.search(data[1], 5)[1], by_name.search(data[1], 5)[1])


@pytest.mark.parametrize("role", ["index", "ids"])
def test_bit_flip_is_corrupt_file(built, role):
    root, store, manifest, _ = built
    path = _file(store, manifest, role=role)
    raw = bytearray(Path(path).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    Path(path).write_bytes(bytes(raw))
    with pytest.raises(CorruptFile, match="sha256") as err:
        ShardedIndex.open(str(root))
    assert err.value.path == path and path in str(err.value)


def test_truncation_is_corrupt_file(built):
    root, store, manifest, _ = built
    path = _file(store, manifest)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(CorruptFile, match="truncated") as err:
        ShardedIndex.open(str(root))
    assert err.value.path == path


def test_missing_file(built):
    root, store, manifest, _ = built
    path = _file(store, manifest, role="ids")
    os.remove(path)
    with pytest.raises(MissingFile) as err:
        ShardedIndex.open(str(root))
    assert err.value.path == path


def test_missing_manifest_and_root(tmp_path, built):
    root, store, _, _ = built
    os.remove(store.path("manifest.json"))
    with pytest.raises(MissingFile, match=r"manifest\.json"):
        ShardedIndex.open(str(root))
    with pytest.raises(MissingFile, match="no index"):
        ShardedIndex.open(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("dim", 31, "dim=31"),
        ("metric", "ip", "metric=ip"),
        ("format_version", 99, "format_version"),
    ],
)
def test_mismatched_manifest(built, field, value, match):
    root, store, _, _ = built
    path = store.path("manifest.json")
    body = json.loads(Path(path).read_text())
    body[field] = value
    Path(path).write_text(json.dumps(body))
    with pytest.raises(ManifestMismatch, match=match) as err:
        ShardedIndex.open(str(root))
    assert err.value.path.endswith(".faiss") or err.value.path == path


def test_garbled_manifest(built):
    root, store, _, _ = built
    Path(store.path("manifest.json")).write_text("{not json")
    with pytest.raises(ManifestMismatch, match="invalid manifest"):
        ShardedIndex.open(str(root))


def test_shard_count_mismatch(built):
    root, store, _, _ = built
    path = store.path("manifest.json")
    body = json.loads(Path(path).read_text())
    body["shards"][0]["ntotal"] += 1
    Path(path).write_text(json.dumps(body))
    with pytest.raises(ManifestMismatch, match="ntotal"):
        ShardedIndex.open(str(root))


def test_verify_names_every_bad_file(built):
    root, store, manifest, _ = built
    assert verify_version(str(root))[1] == []
    bad = _file(store, manifest, shard=0)
    Path(bad).write_bytes(Path(bad).read_bytes() + b"x")
    problems = verify_version(str(root))[1]
    assert len(problems) == 1 and bad in problems[0]


def test_interrupted_write_leaves_no_loadable_version(built, data, monkeypatch):
    root, _, manifest, index = built
    index.delete([0, 1])
    calls = {"n": 0}
    real = artefact_mod.Store.write_bytes

    def dies_on_third_file(self, rel, payload):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("power cut")
        return real(self, rel, payload)

    monkeypatch.setattr(artefact_mod.Store, "write_bytes", dies_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        index.compact()
    monkeypatch.undo()
    assert list_versions(str(root)) == [manifest.index_version]  # the half one has no manifest
    again = ShardedIndex.open(str(root))
    assert again.index_version == manifest.index_version
    assert again.ntotal == manifest.ntotal - 2  # the delete was logged: it outlives the cut
    assert ShardedIndex.open(str(root), log=False).ntotal == manifest.ntotal
    leftovers = [f for _, _, fs in os.walk(root) for f in fs if ".tmp-" in f]
    assert leftovers == []


def test_file_uri_round_trip(tmp_path, data):
    from shards import BuildOptions, VectorSource, build_index

    np.save(tmp_path / "x.npy", data[0][:1000])
    uri = f"file://{tmp_path}/uri-index"
    build_index(
        VectorSource(str(tmp_path / "x.npy")),
        uri,
        BuildOptions(index="Flat", num_shards=2, progress=False),
    )
    index = ShardedIndex.open(uri)
    assert index.ntotal == 1000 and verify_version(uri)[1] == []
    np.testing.assert_array_equal(index.search(data[0][:5], 1)[1][:, 0], np.arange(5))


def test_streamed_index_file_is_faiss_serialisation_and_atomic(tmp_path):
    """Shard indexes are streamed to their file (no second copy in memory): the bytes are
    faiss's serialisation with the manifest's sha256, and a write that fails midway leaves
    no file behind."""
    import hashlib

    import numpy as np

    from shards._faiss import faiss
    from shards.artefact import _put_index
    from shards.storage import Store

    x = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
    index = faiss.index_factory(8, "IVF8,Flat")
    index.train(x)
    index.add(x)
    store = Store(str(tmp_path))
    entry = _put_index(store, "s/index.faiss", index)
    data = (tmp_path / "s" / "index.faiss").read_bytes()
    assert data == faiss.serialize_index(index).tobytes()
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(RuntimeError), store.writer("s/broken.bin") as out:
        out.write(b"half")
        raise RuntimeError("the writer died")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["index.faiss"]
