"""The LangChain and LlamaIndex stores against a real local service: langchain-tests'
standard vector-store suite, and LlamaIndex's add / query with ``MetadataFilters`` /
delete checked against brute force over what was written."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from tests.conftest import clustered
from tests.deployments.test_client import collection
from tests.shards.helpers import brute_force
from vsearch.langchain import VsearchVectorStore
from vsearch.llama_index import VsearchVectorStore as LlamaStore
from vsearch.llama_index import operator_form

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def docs_url(serve_base, tmp_path_factory):
    """An empty document collection of 6-d vectors (langchain-tests' fake embeddings)."""
    from deployments.local import undeploy

    yield collection(serve_base, tmp_path_factory.mktemp("docs"), "docs", dim=6)
    undeploy("docs")


class TestLangChainStandard(VectorStoreIntegrationTests):
    """langchain-tests' standard suite, sync and async, unchanged."""

    @pytest.fixture
    def vectorstore(self, docs_url):
        store = VsearchVectorStore(self.get_embeddings(), docs_url)
        store.delete()  # every document: each test starts empty
        try:
            yield store
        finally:
            store.delete()


def test_langchain_filters_scores_and_mmr(docs_url):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    emb = DeterministicFakeEmbedding(size=6)
    store = VsearchVectorStore.from_texts(
        [f"text {i}" for i in range(40)],
        emb,
        [
            {"lang": ["en", "de"][i % 2], "year": 2000 + i, "note": {"any": "json"}}
            for i in range(40)
        ],
        url=docs_url,
    )
    try:
        q = emb.embed_query("query")
        x = np.asarray(emb.embed_documents([f"text {i}" for i in range(40)]), np.float32)
        keep = np.array([i % 2 == 1 and 2000 + i >= 2010 for i in range(40)])
        _, Iref = brute_force(
            x[keep], np.asarray([q], np.float32), 5, "cosine", np.flatnonzero(keep)
        )
        found = store.similarity_search_by_vector_with_score(
            q, k=5, filter={"$and": [{"lang": "de"}, {"year": {"$gte": 2010}}]}
        )
        assert [d.page_content for d, _ in found] == [f"text {i}" for i in Iref[0]]
        assert all(d.metadata["note"] == {"any": "json"} for d, _ in found)  # kept as written
        scores = [s for _, s in found]
        assert scores == sorted(scores, reverse=True)  # cosine similarities, best first
        with pytest.raises(Exception, match="unknown metadata column"):
            store.similarity_search("q", filter={"note": "json"})  # not a column: loud
        with pytest.raises(TypeError, match=r"unknown search option\(s\) \['where'\]"):
            store.similarity_search("q", where={"lang": "de"})  # Chroma's knob: not ignored
        mmr = store.max_marginal_relevance_search("query", k=3, fetch_k=10)
        assert len(mmr) == 3 and len({d.id for d in mmr}) == 3
        rel = store.similarity_search_with_relevance_scores("text 3", k=1)
        assert rel[0][0].page_content == "text 3" and rel[0][1] == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(TypeError, match=r"unknown delete option\(s\) \['where'\]"):
            store.delete(where={"lang": "de"})  # was dropped: every document deleted
        store.delete(filter={"lang": "de"})  # the documents that match, no others
        left = store.similarity_search("query", k=40)
        assert sorted(d.page_content for d in left) == sorted(f"text {i}" for i in range(0, 40, 2))
    finally:
        store.delete()
        assert store.similarity_search("query", k=1) == []


def test_llama_index_add_query_filters_and_delete(docs_url):
    store = LlamaStore(url=docs_url)
    store.clear()
    x = clustered(60, 6, seed=11)
    nodes = [
        TextNode(
            text=f"chunk {i}",
            id_=f"node-{i}",
            embedding=x[i].tolist(),
            metadata={"lang": ["en", "de", "fr"][i % 3], "year": 1990 + i},
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc-{i // 10}")},
        )
        for i in range(60)
    ]
    assert store.add(nodes) == [n.node_id for n in nodes]
    q = clustered(1, 6, seed=12)
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="lang", value=["en", "fr"], operator=FilterOperator.IN),
            MetadataFilter(key="year", value=2030, operator=FilterOperator.LT),
        ],
        condition=FilterCondition.AND,
    )
    keep = np.array([i % 3 != 1 and 1990 + i < 2030 for i in range(60)])
    _, Iref = brute_force(x[keep], q, 7, "cosine", np.flatnonzero(keep))
    got = store.query(
        VectorStoreQuery(query_embedding=q[0].tolist(), similarity_top_k=7, filters=filters)
    )
    assert got.ids == [f"node-{i}" for i in Iref[0]]
    assert got.nodes[0].get_content() == f"chunk {Iref[0][0]}"
    assert got.nodes[0].ref_doc_id == f"doc-{Iref[0][0] // 10}"
    assert got.similarities == sorted(got.similarities, reverse=True)
    for dropped in ({"output_fields": ["lang"]}, {"embedding_field": "vector"}):
        with pytest.raises(ValueError, match="not supported"):  # they were dropped
            store.query(VectorStoreQuery(query_embedding=q[0].tolist(), **dropped))

    store.delete("doc-0")  # the nodes of document 0: node-0 .. node-9
    live = np.arange(10, 60)
    _, Iref = brute_force(x[live], q, 5, "cosine", live)
    got = store.query(VectorStoreQuery(query_embedding=q[0].tolist(), similarity_top_k=5))
    assert got.ids == [f"node-{i}" for i in Iref[0]]
    assert [n.node_id for n in store.get_nodes(["node-3", "node-12"])] == ["node-12"]
    only = store.query(
        VectorStoreQuery(query_embedding=q[0].tolist(), similarity_top_k=60, doc_ids=["doc-2"])
    )
    assert sorted(only.ids) == sorted(f"node-{i}" for i in range(20, 30))
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="lang", value="de")]))
    left = store.get_nodes()  # every node, in id order
    assert sorted(n.node_id for n in left) == sorted(f"node-{i}" for i in live if i % 3 != 1)
    de = MetadataFilters(filters=[MetadataFilter(key="lang", value="de")])
    assert store.get_nodes(filters=de) == []
    with pytest.raises(ValueError, match="not supported"):
        operator_form(
            MetadataFilters(
                filters=[MetadataFilter(key="text", value="x", operator=FilterOperator.TEXT_MATCH)]
            ),
            {"text": "string"},
        )
    store.clear()
    assert (
        store.query(VectorStoreQuery(query_embedding=q[0].tolist(), similarity_top_k=3)).ids == []
    )


def test_stores_split_what_one_request_cannot_hold(docs_url):
    """5,000 documents: more than a write (4,096 rows) or a get (1,024 ids) may carry; the
    delete of every document scanned 5,000 at a time and was refused before."""
    from langchain_core.embeddings import DeterministicFakeEmbedding

    store = VsearchVectorStore(DeterministicFakeEmbedding(size=6), docs_url)
    ids = store.add_texts([f"t{i}" for i in range(5000)], ids=[f"d{i}" for i in range(5000)])
    got = store.get_by_ids(ids[::-1][:2500])
    assert [d.id for d in got] == ids[::-1][:2500]
    store.delete(ids[:4500])
    assert sorted(d.id for d in store.get_by_ids(ids)) == sorted(ids[4500:])
    store.delete()
    assert store.get_by_ids(ids[4500:]) == [] and store.similarity_search("t1", k=1) == []
