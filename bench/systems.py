"""The systems compared by ``bench.compare``, each behind one small adapter.

Every adapter builds an index of ``xb`` (rows are the ids 0..n-1; vectors L2-normalised, so
inner product, cosine and L2 rank alike), lists its settings from cheapest to most accurate,
and searches a batch of queries at one setting. Peers are used the way their documentation
shows, with their own defaults where the docs give none.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from shards._faiss import faiss

K = 10


class System:
    """Base adapter: ``build`` once, then ``search`` at each of ``settings``."""

    name = "?"
    kind = "library"  # "library" (in process), "service" (a server or embedded engine)

    def build(self, xb: np.ndarray) -> None:
        raise NotImplementedError

    def settings(self) -> list[dict[str, Any]]:
        return [{}]

    def search(self, xq: np.ndarray, k: int, setting: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def describe(self, setting: dict[str, Any]) -> str | None:
        """What ``setting`` resolves to, for the results (None: the setting says it all)."""
        return None

    def close(self) -> None:
        return None


class FaissIndex(System):
    def __init__(self, factory: str, knob: str | None = None, values: tuple = ()) -> None:
        self.factory, self.knob, self.values = factory, knob, values
        self.name = f"faiss {factory}"

    def build(self, xb):
        self.index = faiss.index_factory(xb.shape[1], self.factory, faiss.METRIC_INNER_PRODUCT)
        if not self.index.is_trained:
            self.index.train(xb[np.random.default_rng(0).choice(len(xb), 50_000, False)])
        self.index.add(xb)

    def settings(self):
        return [{self.knob: v} for v in self.values] if self.knob else [{}]

    def search(self, xq, k, setting):
        params = None
        if self.knob == "nprobe":
            params = faiss.SearchParametersIVF(nprobe=setting["nprobe"])
        elif self.knob == "efSearch":
            params = faiss.SearchParametersHNSW(efSearch=setting["efSearch"])
        return self.index.search(xq, k, params=params)[1]


class Hnswlib(System):
    """hnswlib at its README's settings (M 16, ef_construction 200), or another ``M``."""

    def __init__(self, m: int = 16) -> None:
        self.m = m
        self.name = "hnswlib" if m == 16 else f"hnswlib M{m}"

    def build(self, xb):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=xb.shape[1])
        self.index.init_index(max_elements=len(xb), M=self.m, ef_construction=200, random_seed=0)
        self.index.add_items(xb, np.arange(len(xb)))

    def settings(self):
        # as fine as vsearch's efSearch steps (and its target_recall sweep) near recall 0.95
        return [{"ef": ef} for ef in (16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256)]

    def search(self, xq, k, setting):
        self.index.set_ef(max(setting["ef"], k))
        return self.index.knn_query(xq, k=k, num_threads=-1 if len(xq) > 1 else 1)[0]


class Usearch(System):
    name = "usearch"

    def build(self, xb):
        from usearch.index import Index

        self.index = Index(ndim=xb.shape[1], metric="ip", connectivity=16, expansion_add=128)
        self.index.add(np.arange(len(xb)), xb)

    def settings(self):
        return [{"expansion_search": e} for e in (16, 32, 64, 128, 256)]

    def search(self, xq, k, setting):
        self.index.expansion_search = setting["expansion_search"]
        threads = 0 if len(xq) > 1 else 1  # 0: all cores
        return np.asarray(self.index.search(xq, k, threads=threads).keys).reshape(len(xq), k)


class QdrantLocal(System):
    """qdrant-client's local mode (in process, no server): exact search over numpy."""

    name = "qdrant local"
    kind = "service"

    def __init__(self, path: str | None = None) -> None:
        self.path = path  # a folder to persist to (bench.cold_start); in memory when None

    def build(self, xb):
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=self.path) if self.path else QdrantClient(":memory:")
        self.client.create_collection(
            "bench",
            vectors_config=models.VectorParams(size=xb.shape[1], distance=models.Distance.DOT),
        )
        self.client.upload_collection("bench", vectors=xb, ids=range(len(xb)), batch_size=4096)

    def search(self, xq, k, setting):
        requests = [
            self.models.QueryRequest(query=q.tolist(), limit=k, with_payload=False) for q in xq
        ]
        out = self.client.query_batch_points("bench", requests=requests)
        return _pad([[p.id for p in r.points] for r in out], k)

    def close(self):
        self.client.close()  # releases the folder's lock for the next process


class MilvusLite(System):
    """Milvus Lite (pymilvus with a local .db file; the engine runs in a child process)."""

    name = "milvus lite"
    kind = "service"

    def __init__(self, path: str | None = None) -> None:
        self.path = path  # the .db file (bench.cold_start); a temporary one when None

    def build(self, xb):
        from pymilvus import MilvusClient

        path = self.path or os.path.join(tempfile.mkdtemp(prefix="milvus"), "bench.db")
        self.client = MilvusClient(path)
        self.client.create_collection("bench", dimension=xb.shape[1], metric_type="IP")
        for s in range(0, len(xb), 20_000):
            rows = [{"id": s + i, "vector": v} for i, v in enumerate(xb[s : s + 20_000].tolist())]
            self.client.insert("bench", rows)
        params = self.client.prepare_index_params()
        self.client.release_collection("bench")
        self.client.drop_index("bench", "vector")
        params.add_index("vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": 1024})
        self.client.create_index("bench", params)
        self.client.load_collection("bench")

    def settings(self):
        return [{"nprobe": p} for p in (8, 16, 32, 64, 128)]

    def search(self, xq, k, setting):
        res = self.client.search(
            "bench", data=xq.tolist(), limit=k, search_params={"params": dict(setting)}
        )
        return _pad([[hit["id"] for hit in r] for r in res], k)

    def close(self):
        self.client.close()
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_all()  # the engine process holds the file until then


class LanceDB(System):
    """LanceDB (embedded, a local folder): IVF-PQ with exact re-ranking (`refine_factor`)."""

    name = "lancedb"
    kind = "service"

    def __init__(self, path: str | None = None) -> None:
        self.path = path  # the database folder (bench.cold_start); a temporary one when None

    def build(self, xb):
        import lancedb
        import pyarrow as pa

        d = xb.shape[1]
        self.db = lancedb.connect(self.path or tempfile.mkdtemp(prefix="lance"))
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), d)
        self.table = self.db.create_table(
            "bench", pa.table({"id": pa.array(np.arange(len(xb))), "vector": vectors})
        )
        sub = next(m for m in (d // 2, d // 4, d) if m and d % m == 0)
        self.table.create_index(metric="dot", num_partitions=256, num_sub_vectors=sub)

    def settings(self):
        pairs = ((10, 5), (20, 10), (40, 10), (80, 20))
        return [{"nprobes": p, "refine_factor": r} for p, r in pairs]

    def search(self, xq, k, setting):
        query = self.table.search(xq if len(xq) > 1 else xq[0]).metric("dot")
        query = query.nprobes(setting["nprobes"]).refine_factor(setting["refine_factor"])
        res = query.limit(k).select(["id"]).to_arrow()
        if "query_index" not in res.column_names:
            return _pad([res["id"].to_pylist()], k)
        rows: list[list[int]] = [[] for _ in range(len(xq))]
        for qi, i in zip(res["query_index"].to_pylist(), res["id"].to_pylist(), strict=True):
            rows[qi].append(i)
        return _pad(rows, k)


def _pad(rows: list[list[int]], k: int) -> np.ndarray:
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r[:k])] = r[:k]
    return out


def peers(nlist: int) -> list[System]:
    """FAISS used directly, and the libraries and engines users pick instead."""
    return [
        FaissIndex("Flat"),
        FaissIndex(f"IVF{nlist},Flat", "nprobe", (8, 16, 32, 64, 128, 256)),
        FaissIndex("HNSW32,Flat", "efSearch", (16, 32, 64, 128, 256)),
        Hnswlib(),
        Hnswlib(32),
        Usearch(),
        QdrantLocal(),
        MilvusLite(),
        LanceDB(),
    ]
