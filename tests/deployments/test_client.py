"""The ``vsearch`` client and ``POST /v1/get`` against a real local service over an empty
collection (``shards create``) filled by writes; brute force over the expected live set is
the oracle."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import numpy as np
import pytest

import vsearch
from shards import BuildOptions
from shards.create import create_index, parse_columns
from tests.conftest import clustered
from tests.deployments.conftest import deploy
from tests.shards.helpers import assert_same_knn, brute_force, float_tolerance

pytestmark = [pytest.mark.ray]
D = 12
COLUMNS = "text:string,doc_id:string,doc_meta:string,ref_doc_id:string,lang:string,year:int64"


def collection(
    serve_base, root, name: str, shards: int = 2, metric: str = "cosine", dim: int = D
) -> str:
    """Deploy app ``name`` over a new empty document collection; its base URL."""
    opts = BuildOptions(num_shards=shards, metric=metric, progress=False)
    create_index(str(root / name), dim, parse_columns(COLUMNS), opts)
    deploy(name, {"index_uri": str(root / name)})
    return f"{serve_base}/{name}"


@pytest.fixture(scope="module")
def empty_app(serve_base, tmp_path_factory):
    from deployments.local import undeploy

    url = collection(serve_base, tmp_path_factory.mktemp("client"), "clientcol", metric="l2")
    yield url
    undeploy("clientcol")


def test_client_writes_reads_and_searches_equal_brute_force(empty_app):
    c = vsearch.Client(empty_app)
    xq = clustered(8, D, seed=5)
    empty = c.search(xq, k=3)
    assert empty.ids.shape == (8, 3) and (empty.ids == -1).all() and np.isnan(empty.scores).all()
    assert c.get(filter={"lang": "en"}).ids.size == 0

    x, ids = clustered(300, D, seed=4), np.arange(10, 310)
    langs = np.array(["en", "de", "fr"])[ids % 3]
    meta = [
        {"lang": str(lang), "year": int(1990 + i % 30)} for lang, i in zip(langs, ids, strict=True)
    ]
    w = c.upsert(ids, x, meta)
    assert w.count == 300 and w.sequence >= 1
    gone = c.delete(np.concatenate([ids[::4], [99_999]]))
    assert gone.count == 75
    live = np.ones(300, bool)
    live[::4] = False

    for filt, keep in [(None, live), ({"lang": {"$in": ["en", "fr"]}}, live & (langs != "de"))]:
        r = c.search(xq, k=10, filter=filt, min_sequence=gone.sequence)
        Dref, Iref = brute_force(x[keep], xq, 10, "l2", ids[keep])
        assert_same_knn(Dref, Iref, r.scores, r.ids, float_tolerance(x[keep], xq, "l2"))

    # by id: the live ones, in the order asked, with stored vectors
    rows = c.get([13, 10, 11, 99_999, 14], include_vectors=True, min_sequence=gone.sequence)
    assert rows.ids.tolist() == [13, 11]  # 10 and 14 deleted, 99,999 never written
    np.testing.assert_array_equal(rows.vectors, x[[3, 1]])
    assert [m["lang"] for m in rows.metadata] == [langs[3], langs[1]]

    # a filter, page by page, equals the expected set in id order
    want = ids[live & (langs == "de")]
    pages = list(c.scan({"lang": "de", "year": {"$gte": 1990}}, page=17))
    got = np.concatenate([p.ids for p in pages])
    assert got.tolist() == sorted(want.tolist()) and len(pages) == -(-len(want) // 17)
    assert np.concatenate([p.ids for p in c.scan(page=100)]).tolist() == ids[live].tolist()
    assert c.stats()["metadata_columns"]["year"] == "int64"
    assert c.ready()


def test_async_client_and_typed_errors(empty_app):
    async def main():
        async with vsearch.AsyncClient(empty_app) as c:
            w = await c.upsert([1, 2], clustered(2, D, seed=8) + 100)  # far from the rest
            hits = await c.search(ids=[1], k=2, min_sequence=w.sequence)
            assert hits.ids[0].tolist()[0] == 2  # itself excluded
            rows = await c.get([2, 1], min_sequence=w.sequence)
            assert rows.ids.tolist() == [2, 1]
            with pytest.raises(vsearch.UnknownId, match="not in the index"):
                await c.search(ids=[123_456_789], k=2)
            await c.delete([1, 2])

    asyncio.run(main())
    c = vsearch.Client(empty_app)
    with pytest.raises(vsearch.InvalidQuery) as bad:
        c.search(np.full((1, D), np.nan), k=2)
    assert bad.value.status == 400 and bad.value.code == "invalid_query"
    with pytest.raises(vsearch.InvalidQuery, match="dimension 13, the index has dimension 12"):
        c.search(np.ones((1, D + 1)), k=2)
    with pytest.raises(vsearch.InvalidQuery, match="unknown"):
        c.get(filter={"nope": 1})
    with pytest.raises(vsearch.InvalidInput, match="int64"):
        c.upsert([5], np.ones((1, D)), [{"year": "not a year"}])
    with pytest.raises(vsearch.InvalidQuery, match="not both"):
        c.get([1], filter={"lang": "en"}, after=3)
    with pytest.raises(vsearch.NotFound):
        vsearch.Client(empty_app + "/nothing-here")._call("GET", "/v1/stats")


class Flaky(httpx.BaseTransport):
    """Answers like an overloaded service ``fails`` times (429 with Retry-After, or a
    dropped connection), then passes requests to the real service."""

    def __init__(self, fails: int, kind: str) -> None:
        self.fails, self.kind, self.seen = fails, kind, []
        self.real = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.read())
        if self.fails > 0:
            self.fails -= 1
            if self.kind == "drop":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(429, headers={"Retry-After": "0.05"}, text="busy")
        return self.real.handle_request(request)


def test_retries_honour_retry_after_and_resend_the_same_write(empty_app):
    t = Flaky(2, "429")
    c = vsearch.Client(empty_app, transport=t, retries=3)
    w = c.upsert([77], clustered(1, D, seed=9))
    assert len(t.seen) == 3 and t.seen[0] == t.seen[2]  # the same idempotency key each time
    assert c.get([77], min_sequence=w.sequence).ids.tolist() == [77]

    t = Flaky(5, "429")
    with pytest.raises(vsearch.Overloaded) as over:
        vsearch.Client(empty_app, transport=t, retries=2).search(np.ones(D), k=1)
    assert over.value.retry_after == 0.05 and len(t.seen) == 3  # 1 try + 2 retries

    t = Flaky(1, "drop")
    assert vsearch.Client(empty_app, transport=t).get([77]).ids.tolist() == [77]
    with pytest.raises(vsearch.ConnectionFailed):
        vsearch.Client("http://127.0.0.1:9", retries=1, timeout=2).stats()


def test_the_client_imports_neither_ray_nor_faiss():
    code = (
        "import sys, vsearch, vsearch.langchain, vsearch.llama_index; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'ray', 'faiss', 'shards', 'deployments', 'pyarrow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_service_error_has_its_client_class():
    import deployments.errors
    import shards.errors

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    service = set(subclasses(shards.errors.VsearchError))
    assert len(service) > 20
    for cls in service:
        mine = getattr(vsearch.errors, cls.__name__, None)
        assert mine is not None, f"vsearch.errors has no {cls.__name__}"
        assert (mine.code, mine.status_code) == (cls.code, cls.status_code), cls.__name__
    assert deployments.errors.ShardsUnavailable in service


def test_binary_frames_answer_what_json_answers(empty_app):
    """A search sent as a binary frame and answered as one (what ``Client.search`` does with
    vectors) gives the JSON answer bit for bit; a bad frame gets a JSON error."""
    from vsearch import _wire, frames

    c = vsearch.Client(empty_app)
    x, ids = clustered(50, D, seed=21), np.arange(5000, 5050)
    w = c.upsert(ids, x, [{"lang": "en", "year": 2000 + i % 3} for i in range(50)])
    xq = clustered(6, D, seed=22)
    opts = {"min_sequence": w.sequence, "include_metadata": True}
    filt = {"year": {"$gte": 2001}}
    plain = httpx.post(
        empty_app + "/v1/search", json={"vectors": xq.tolist(), "k": 4, "filter": filt, **opts}
    ).json()
    send = next(_wire.search_requests(xq, None, None, 4, None, filt, **opts))
    r = httpx.post(empty_app + "/v1/search", content=send["content"], headers=send["headers"])
    assert r.status_code == 200 and r.headers["content-type"] == frames.MEDIA_TYPE
    got = _wire.search_result(r.content)
    assert got.ids.tolist() == plain["ids"] and (got.ids >= 0).sum() == 24
    want = np.array(plain["scores"], dtype=np.float32)
    np.testing.assert_array_equal(got.scores, want)
    assert got.metadata == plain["metadata"] and got.index_version == plain["index_version"]
    assert got.sequence == plain["sequence"] >= w.sequence
    via_client = c.search(xq, 4, filter=filt, min_sequence=w.sequence)
    assert via_client.ids.tolist() == plain["ids"]

    bad = frames.encode(frames.REQUEST, {"k": 4}, xq[:, :5])
    headers = {"content-type": frames.MEDIA_TYPE, "accept": frames.MEDIA_TYPE}
    r = httpx.post(empty_app + "/v1/search", content=bad, headers=headers)
    assert r.status_code == 400 and "dimension 5" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "invalid_query"  # as for the same queries in JSON
    del headers["accept"]  # a frame asked for no frame: a JSON answer
    r = httpx.post(empty_app + "/v1/search", content=send["content"], headers=headers)
    assert r.headers["content-type"] == "application/json" and r.json()["ids"] == plain["ids"]
    assert r.json()["plan"] == plain["plan"] == "exact" and got.plan == "exact"
    c.delete(ids)
