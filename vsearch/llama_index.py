"""LlamaIndex's vector store over a vsearch document collection (``vsearch.documents``)
with a ``ref_doc_id`` string column, so that ``delete(ref_doc_id)`` finds a document's
nodes: ``python -m shards create --dim D --metadata
text:string,doc_id:string,doc_meta:string,ref_doc_id:string[,more columns]``.

    from vsearch.llama_index import VsearchVectorStore
    store = VsearchVectorStore(url="http://127.0.0.1:8000")
    index = VectorStoreIndex.from_vector_store(store, embed_model=...)

``MetadataFilters`` become the service's operator form over the index's metadata columns
(``==  !=  >  >=  <  <=  in  nin  any  all  contains  is_empty``, with ``and``, ``or`` and
``not``); text matching has no equivalent and is refused, never ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pydantic import PrivateAttr

from vsearch import documents as docs
from vsearch.client import DEFAULT_URL, Client

REF_DOC_ID = "ref_doc_id"
WRITE_BATCH = 512
OPERATORS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.ANY: "$in",  # a list column holding any of the values
    FilterOperator.CONTAINS: "$eq",  # a list column holding the value
}
# on a plain column LlamaIndex reads these as text matching (``value in metadata_value``)
LIST_ONLY = (FilterOperator.ANY, FilterOperator.ALL, FilterOperator.CONTAINS)
# LlamaIndex names a node's document "doc_id" (Pinecone, Qdrant, Redis) and "document_id"
# (Chroma) besides "ref_doc_id"; vsearch's own doc_id column holds the node's id
DOCUMENT_KEYS = {"doc_id": REF_DOC_ID, "document_id": REF_DOC_ID}


def operator_form(
    filters: MetadataFilters | None, columns: dict[str, str]
) -> dict[str, Any] | None:
    """``filters`` in the service's operator form (None for none), with LlamaIndex's
    meaning (``build_metadata_filter_fn``); ``columns``: the collection's metadata columns
    and their Arrow types (``/v1/stats``).

    Raises:
        ValueError: an operator the service has no equivalent of (text matching, and
            ``contains`` / ``any`` / ``all`` on a column that is not a list).
    """
    if filters is None or not filters.filters:
        return None
    parts = [_one(f, columns) for f in filters.filters]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.NOT:  # none of them matches
        return {"$not": parts[0] if len(parts) == 1 else {"$or": parts}}
    if len(parts) == 1:
        return parts[0]
    return {"$or" if condition == FilterCondition.OR else "$and": parts}


def _one(f: MetadataFilter | MetadataFilters, columns: dict[str, str]) -> dict[str, Any]:
    if isinstance(f, MetadataFilters):
        nested = operator_form(f, columns)
        if nested is None:
            raise ValueError("an empty nested MetadataFilters matches nothing in particular")
        return nested
    key = DOCUMENT_KEYS.get(f.key, f.key)
    if key != f.key:
        f = f.model_copy(update={"key": key})
    kind = columns.get(f.key, "")
    if f.operator in LIST_ONLY and not kind.startswith(("list<", "large_list<")):
        raise ValueError(
            f"filter operator {f.operator.value!r} on {f.key!r} ({kind or 'no such column'}): "
            "vsearch supports it on list columns only (on text it would be a substring "
            "match, which vsearch does not do)"
        )
    if f.operator == FilterOperator.IS_EMPTY:  # None, "" or [] in LlamaIndex
        missing = {f.key: {"$exists": False}}  # null, or an empty list
        if kind in ("string", "large_string"):
            return {"$or": [missing, {f.key: {"$eq": ""}}]}
        return missing
    if f.operator == FilterOperator.ALL:
        return {"$and": [{f.key: {"$eq": v}} for v in f.value]}  # type: ignore[union-attr]
    op = OPERATORS.get(f.operator)
    if op is None:
        raise ValueError(f"filter operator {f.operator.value!r} is not supported by vsearch")
    return {f.key: {op: f.value}}


class VsearchVectorStore(BasePydanticVectorStore):
    """A vsearch document collection as a LlamaIndex vector store (it stores the text)."""

    stores_text: bool = True
    flat_metadata: bool = False
    url: str = DEFAULT_URL
    collection: str | None = None
    params: dict[str, Any] | None = None

    _client: Client = PrivateAttr()
    _columns: dict[str, str] = PrivateAttr()
    _metric: str = PrivateAttr(default="cosine")
    _sequence: int = PrivateAttr(default=0)

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        collection: str | None = None,
        params: dict[str, Any] | None = None,
        client: Client | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(stores_text=True, url=url, collection=collection, params=params)
        self._client = client or Client(url, token=token, collection=collection, **client_options)
        stats = self._client.stats()
        self._columns = stats.get("metadata_columns") or {}
        self._metric = stats["metric"]
        docs.check_columns(self._columns)
        if REF_DOC_ID not in self._columns:
            raise ValueError(
                "a LlamaIndex collection needs a ref_doc_id string column too: create it with "
                "--metadata text:string,doc_id:string,doc_meta:string,ref_doc_id:string"
            )

    @classmethod
    def class_name(cls) -> str:
        return "VsearchVectorStore"

    @property
    def client(self) -> Client:
        return self._client

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Upsert ``nodes`` (with their embeddings); their node ids."""
        for s in range(0, len(nodes), WRITE_BATCH):
            batch = nodes[s : s + WRITE_BATCH]
            missing = [n.node_id for n in batch if n.embedding is None]
            if missing:
                raise ValueError(f"nodes {missing[:3]} have no embedding: embed them first")
            metas = []
            for n in batch:
                meta = node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata)
                meta[REF_DOC_ID] = n.ref_doc_id  # None rather than the string "None"
                metas.append(meta)
            ids = [n.node_id for n in batch]
            texts = [n.get_content() for n in batch]
            rows = docs.rows(texts, metas, ids, self._columns)
            out = self._client.upsert(
                [docs.int_id(i) for i in ids], np.asarray([n.embedding for n in batch]), rows
            )
            self._sequence = max(self._sequence, out.sequence)
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of document ``ref_doc_id``."""
        self._delete_matching({REF_DOC_ID: {"$eq": ref_doc_id}})

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete the nodes of ``node_ids`` that match ``filters`` (either may be None)."""
        self._delete_matching(
            self._restrict(operator_form(filters, self._columns), node_ids=node_ids)
        )

    def clear(self) -> None:
        """Delete every node."""
        self._delete_matching(None)

    def _delete_matching(self, filt: dict[str, Any] | None) -> None:
        for rows in self._client.scan(filt, page=docs.ROWS_PER_WRITE, min_sequence=self._sequence):
            self._sequence = max(self._sequence, self._client.delete(rows.ids).sequence)

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """The stored nodes of ``node_ids`` (in that order) and/or matching ``filters``."""
        filt = operator_form(filters, self._columns)
        if node_ids is not None and filt is None:
            out = []
            for keys in docs.chunks([docs.int_id(i) for i in node_ids], docs.IDS_PER_GET):
                found = self._client.get(keys, min_sequence=self._sequence)
                out += [_node(r) for r in found.metadata or []]
            return out
        filt = self._restrict(filt, node_ids=node_ids)
        pages = self._client.scan(filt, page=docs.ROWS_PER_WRITE, min_sequence=self._sequence)
        return [_node(r) for rows in pages for r in rows.metadata or []]

    def _restrict(self, filt, node_ids=None, doc_ids=None) -> dict[str, Any] | None:
        terms = [filt] if filt else []
        if node_ids is not None:
            terms.append({docs.DOC_ID: {"$in": list(node_ids)}})
        if doc_ids is not None:
            terms.append({REF_DOC_ID: {"$in": list(doc_ids)}})
        return None if not terms else terms[0] if len(terms) == 1 else {"$and": terms}

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` nodes nearest ``query.query_embedding`` (or its
        ``query_str``, embedded by the service) that match its filters (and its ``doc_ids`` /
        ``node_ids``, when given)."""
        if kwargs:
            raise TypeError(f"unknown query option(s) {sorted(kwargs)}")
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise ValueError(f"query mode {query.mode.value!r} is not supported: use default")
        if query.output_fields or query.embedding_field:  # never dropped without a word
            raise ValueError(
                "output_fields and embedding_field are not supported: nodes come back whole"
            )
        texts = None
        if query.query_embedding is None:  # the service embeds the text (args.embedding)
            if not query.query_str:
                raise ValueError("give query_embedding, or query_str for the service to embed")
            texts = [query.query_str]
        filt = self._restrict(
            operator_form(query.filters, self._columns),
            node_ids=query.node_ids,
            doc_ids=query.doc_ids,
        )
        result = self._client.search(
            query.query_embedding,
            texts=texts,
            k=query.similarity_top_k,
            filter=filt,
            params=self.params,
            include_metadata=True,
            min_sequence=self._sequence or None,
        )
        hits = result.hits(0)
        nodes = [_node(meta) for _, _, meta in hits]
        return VectorStoreQueryResult(
            nodes=nodes,
            similarities=similarities(self._metric, [s for _, s, _ in hits]),
            ids=[n.node_id for n in nodes],
        )


def similarities(metric: str, scores: list[float]) -> list[float]:
    """The service's scores as LlamaIndex similarities, higher the more similar (what its
    ``similarity_cutoff`` and score fusions assume): inner products and cosines as they
    are; a squared L2 distance d as ``1 - sqrt(d) / sqrt(2)`` (1 for the query itself, 0 at
    the distance of orthogonal unit vectors), as the LangChain store's relevance scores."""
    if metric != "l2":
        return list(scores)
    return [1.0 - math.sqrt(max(d, 0.0)) / math.sqrt(2.0) for d in scores]


def _node(row: dict[str, Any] | None) -> BaseNode:
    text, _, meta = docs.parts(row or {})
    return metadata_dict_to_node(meta, text=text)
