"""The filtered queries of ``bench.filters`` in other stores, each used as its documentation
shows: Qdrant local (payload filters), LanceDB (``where`` with prefiltering) and Milvus Lite
(boolean expressions). Each gets the same vectors, attributes, queries and oracle.

Needs the ``peers`` extra (``make bench-peers``).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np

from bench.glove import recall_at
from bench.systems import _pad

QDRANT_QUERIES = 10  # its local mode evaluates payload filters in Python, point by point


def run_peers(ds, attrs: dict, xq: np.ndarray, selectivities: dict, truth) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, make in (("milvus lite", Milvus), ("lancedb", Lance), ("qdrant local", Qdrant)):
        try:
            store = make()
            t0 = time.perf_counter()
            store.build(ds.xb, attrs)
            entry: dict[str, Any] = {"build_s": time.perf_counter() - t0, "rows": []}
            queries = xq[:QDRANT_QUERIES] if name == "qdrant local" else xq
            entry["queries"] = len(queries)
            for label, (expr, select) in selectivities.items():
                gt = truth(ds, select(attrs), queries)
                t0 = time.perf_counter()
                I = store.search(queries, 10, expr)
                seconds = time.perf_counter() - t0
                entry["rows"].append(
                    {
                        "selectivity": label,
                        "recall_at_10": recall_at(I, gt),
                        "qps": len(queries) / seconds,
                        "short_rows": int((I < 0).any(axis=1).sum()),
                    }
                )
                print(name, entry["rows"][-1])
            store.close()
            out[name] = entry
        except Exception as exc:  # a peer that cannot run is reported, not fatal
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            print(name, out[name])
    return out


def _one(expr: dict) -> tuple[str, str, Any]:
    """The bench's filters are one field each: ``(field, op, value)``."""
    ((field, cond),) = expr.items()
    if isinstance(cond, dict):
        ((op, value),) = cond.items()
        return field, op, value
    return field, "$eq", cond


class Milvus:
    def build(self, xb: np.ndarray, attrs: dict) -> None:
        from pymilvus import DataType, MilvusClient

        self.client = MilvusClient(os.path.join(tempfile.mkdtemp(prefix="milvus"), "f.db"))
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=xb.shape[1])
        schema.add_field("category", DataType.VARCHAR, max_length=8)
        schema.add_field("year", DataType.INT64)
        schema.add_field(
            "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=4, max_length=8
        )
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": 1024})
        self.client.create_collection("f", schema=schema, index_params=params)
        for s in range(0, len(xb), 20_000):
            rows = [
                {
                    "id": s + i,
                    "vector": v,
                    "category": f"c{attrs['category'][s + i]}",
                    "year": int(attrs["year"][s + i]),
                    "tags": [f"t{t}" for t in attrs["tags"][s + i]],
                }
                for i, v in enumerate(xb[s : s + 20_000].tolist())
            ]
            self.client.insert("f", rows)
        self.client.load_collection("f")

    def search(self, xq: np.ndarray, k: int, expr: dict) -> np.ndarray:
        field, op, value = _one(expr)
        if field == "tags":
            where = f'ARRAY_CONTAINS(tags, "{value}")'
        else:
            sym = {"$eq": "==", "$gte": ">="}[op]
            where = f"{field} {sym} {value!r}".replace("'", '"')
        res = self.client.search(
            "f", data=xq.tolist(), limit=k, filter=where, search_params={"params": {"nprobe": 32}}
        )
        return _pad([[hit["id"] for hit in r] for r in res], k)

    def close(self) -> None:
        self.client.close()
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_all()


class Lance:
    def build(self, xb: np.ndarray, attrs: dict) -> None:
        import lancedb
        import pyarrow as pa

        d = xb.shape[1]
        self.db = lancedb.connect(tempfile.mkdtemp(prefix="lance"))
        table = pa.table(
            {
                "id": pa.array(np.arange(len(xb))),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), d),
                "category": [f"c{c}" for c in attrs["category"]],
                "year": pa.array(attrs["year"], pa.int64()),
                "tags": [[f"t{t}" for t in ts] for ts in attrs["tags"]],
            }
        )
        self.table = self.db.create_table("f", table)
        sub = next(m for m in (d // 2, d // 4, d) if m and d % m == 0)
        self.table.create_index(metric="dot", num_partitions=256, num_sub_vectors=sub)

    def search(self, xq: np.ndarray, k: int, expr: dict) -> np.ndarray:
        field, op, value = _one(expr)
        if field == "tags":
            where = f"array_has(tags, '{value}')"
        else:
            sym = {"$eq": "=", "$gte": ">="}[op]
            where = f"{field} {sym} {value!r}"
        query = self.table.search(xq).metric("dot").where(where, prefilter=True)
        res = query.nprobes(20).refine_factor(10).limit(k).select(["id"]).to_arrow()
        rows: list[list[int]] = [[] for _ in range(len(xq))]
        for qi, i in zip(res["query_index"].to_pylist(), res["id"].to_pylist(), strict=True):
            rows[qi].append(i)
        return _pad(rows, k)

    def close(self) -> None:
        return None


class Qdrant:
    def build(self, xb: np.ndarray, attrs: dict) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(":memory:")
        self.client.create_collection(
            "f", vectors_config=models.VectorParams(size=xb.shape[1], distance=models.Distance.DOT)
        )
        payload = [
            {"category": f"c{c}", "year": int(y), "tags": [f"t{t}" for t in ts]}
            for c, y, ts in zip(attrs["category"], attrs["year"], attrs["tags"], strict=True)
        ]
        self.client.upload_collection(
            "f", vectors=xb, payload=payload, ids=range(len(xb)), batch_size=4096
        )

    def search(self, xq: np.ndarray, k: int, expr: dict) -> np.ndarray:
        m = self.models
        field, op, value = _one(expr)
        if op == "$gte":
            cond = m.FieldCondition(key=field, range=m.Range(gte=value))
        else:
            cond = m.FieldCondition(key=field, match=m.MatchValue(value=value))
        flt = m.Filter(must=[cond])
        requests = [m.QueryRequest(query=q.tolist(), limit=k, filter=flt) for q in xq]
        out = self.client.query_batch_points("f", requests=requests)
        return _pad([[p.id for p in r.points] for r in out], k)

    def close(self) -> None:
        self.client.close()
