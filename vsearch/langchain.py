"""LangChain's ``VectorStore`` over a vsearch document collection (``vsearch.documents``).

    from vsearch.langchain import VsearchVectorStore
    store = VsearchVectorStore(embeddings, "http://127.0.0.1:8000")
    store.add_texts(["..."], [{"lang": "en"}])
    store.similarity_search("query", k=4, filter={"lang": {"$in": ["en", "de"]}})

Filters take the operator form (``$eq $ne $gt $gte $lt $lte $in $nin $exists $and $or
$not``) over the index's metadata columns; a key that is not a column is a loud error,
never an empty answer. Each store reads its own writes: its searches and gets carry the
sequence of its last write (``min_sequence``). Scores are as the service answers them:
squared L2 distances (lower is closer) or inner-product / cosine similarities.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from vsearch import documents as docs
from vsearch._wire import SearchResult
from vsearch.client import DEFAULT_URL, AsyncClient, Client

WRITE_BATCH = 512  # documents per upsert request (docs.TEXTS_PER_WRITE if the service embeds)


class VsearchVectorStore(VectorStore):
    """A vsearch document collection as a LangChain vector store.

    ``embedding``: turns texts into vectors of the index's dimension (None: the service
    embeds them with its own model, ``args.embedding``); ``url``, ``token``,
    ``collection``: where the service is (or pass a ready ``client``); ``params``: search
    overrides for every query (e.g. ``{"target_recall": 0.99}``)."""

    def __init__(
        self,
        embedding: Embeddings | None = None,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        collection: str | None = None,
        client: Client | None = None,
        params: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> None:
        self._embedding = embedding
        self._options = {"token": token, "collection": collection, **client_options}
        self.client = client or Client(url, **self._options)
        self._url = self.client.url
        self._async: tuple[asyncio.AbstractEventLoop, AsyncClient] | None = None
        self.params = dict(params or {})
        stats = self.client.stats()
        self.columns: dict[str, str] = stats.get("metadata_columns") or {}
        docs.check_columns(self.columns)
        self.metric: str = stats["metric"]
        self.dim: int = stats["dim"]
        self.sequence = 0  # this store's last write: its reads wait for it

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    def _aclient(self) -> AsyncClient:
        """The async client of the running event loop (httpx's belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, AsyncClient(self._url, **self._options))
        return self._async[1]

    # ---- writes ----

    def _batches(self, texts, metadatas, ids) -> tuple[list[str], list[tuple]]:
        """``(ids, batches)``: the ids (made for texts without one) and the upserts, each
        ``(texts, int ids, metadata rows)``."""
        texts = list(texts)
        metadatas = list(metadatas) if metadatas is not None else [None] * len(texts)
        ids = [i if i else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
        if not len(texts) == len(metadatas) == len(ids):
            raise ValueError(
                f"{len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids: "
                "give one of each per text"
            )
        batches = []
        size = docs.TEXTS_PER_WRITE if self._embedding is None else WRITE_BATCH
        for s in range(0, len(texts), size):
            t, m, i = (v[s : s + size] for v in (texts, metadatas, ids))
            batches.append((t, [docs.int_id(x) for x in i], docs.rows(t, m, i, self.columns)))
        return ids, batches

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and upsert ``texts`` (an existing id is replaced); their ids."""
        ids, batches = self._batches(texts, metadatas, ids)
        for t, keys, rows in batches:
            if self._embedding is None:  # the service embeds them
                out = self.client.upsert(keys, None, rows, texts=t)
            else:
                vectors = self._vectors(self._embedding.embed_documents(t), len(t))
                out = self.client.upsert(keys, vectors, rows)
            self.sequence = max(self.sequence, out.sequence)
        return ids

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        ids, batches = self._batches(texts, metadatas, ids)
        for t, keys, rows in batches:
            if self._embedding is None:
                out = await self._aclient().upsert(keys, None, rows, texts=t)
            else:
                vectors = self._vectors(await self._embedding.aembed_documents(t), len(t))
                out = await self._aclient().upsert(keys, vectors, rows)
            self.sequence = max(self.sequence, out.sequence)
        return ids

    def _vectors(self, embedded: Sequence[Sequence[float]], n: int) -> np.ndarray:
        x = np.asarray(embedded, dtype=np.float32).reshape(n, -1)
        if x.shape[1] != self.dim:
            raise ValueError(f"the embeddings have {x.shape[1]} dimensions; the index {self.dim}")
        return x

    def delete(
        self, ids: list[str] | None = None, filter: dict | None = None, **kwargs: Any
    ) -> bool | None:
        """Delete the documents of ``ids``, or those matching ``filter`` (the operator form
        of searches), or every document when neither is given."""
        _only(kwargs, ids, filter)
        pages = (
            (
                r.ids
                for r in self.client.scan(
                    filter, page=docs.ROWS_PER_WRITE, min_sequence=self.sequence
                )
            )
            if ids is None
            else docs.chunks([docs.int_id(i) for i in ids], docs.ROWS_PER_WRITE)
        )
        for keys in pages:
            self.sequence = max(self.sequence, self.client.delete(keys).sequence)
        return True

    async def adelete(
        self, ids: list[str] | None = None, filter: dict | None = None, **kwargs: Any
    ) -> bool | None:
        _only(kwargs, ids, filter)
        client = self._aclient()
        if ids is None:
            scan = client.scan(filter, page=docs.ROWS_PER_WRITE, min_sequence=self.sequence)
            async for rows in scan:
                self.sequence = max(self.sequence, (await client.delete(rows.ids)).sequence)
            return True
        for keys in docs.chunks([docs.int_id(i) for i in ids], docs.ROWS_PER_WRITE):
            self.sequence = max(self.sequence, (await client.delete(keys)).sequence)
        return True

    # ---- reads ----

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents of ``ids`` (missing ones left out), in that order."""
        out = []
        for keys in docs.chunks([docs.int_id(i) for i in ids], docs.IDS_PER_GET):
            rows = self.client.get(keys, min_sequence=self.sequence)
            out += [_document(r) for r in rows.metadata or []]
        return out

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        out = []
        for keys in docs.chunks([docs.int_id(i) for i in ids], docs.IDS_PER_GET):
            rows = await self._aclient().get(keys, min_sequence=self.sequence)
            out += [_document(r) for r in rows.metadata or []]
        return out

    def _search_args(self, k: int, filter: dict[str, Any] | None, kwargs: dict) -> dict:
        """The client's search arguments; an option this store does not know is an error
        (never silently ignored)."""
        kwargs = dict(kwargs)
        params = {**self.params, **(kwargs.pop("params", None) or {})}
        threshold = kwargs.pop("score_threshold", None)
        if kwargs:
            raise TypeError(
                f"unknown search option(s) {sorted(kwargs)}: vsearch takes filter, params "
                "(nprobe, ef_search, k_factor, target_recall...) and score_threshold"
            )
        return {
            "k": k,
            "filter": filter,
            "params": params or None,
            "include_metadata": True,
            "min_sequence": self.sequence or None,
            "score_threshold": threshold,
        }

    def similarity_search_by_vector_with_score(
        self,
        embedding: Sequence[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest ``embedding`` with their scores."""
        result = self.client.search(embedding, **self._search_args(k, filter, kwargs))
        return _scored(result)

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return [
            d
            for d, _ in self.similarity_search_by_vector_with_score(embedding, k, filter, **kwargs)
        ]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        if self._embedding is None:
            args = self._search_args(k, filter, kwargs)
            return _scored(self.client.search(texts=[query], **args))
        vector = self._embedding.embed_query(query)
        return self.similarity_search_by_vector_with_score(vector, k, filter, **kwargs)

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        args = self._search_args(k, filter, kwargs)
        if self._embedding is None:
            return _scored(await self._aclient().search(texts=[query], **args))
        vector = await self._embedding.aembed_query(query)
        return _scored(await self._aclient().search(vector, **args))

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        scored = await self.asimilarity_search_with_score(query, k, filter, **kwargs)
        return [d for d, _ in scored]

    async def asimilarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        result = await self._aclient().search(embedding, **self._search_args(k, filter, kwargs))
        return [d for d, _ in _scored(result)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``fetch_k`` nearest documents, then ``k`` of them chosen for relevance and
        diversity (MMR over their stored vectors)."""
        found = self.similarity_search_by_vector_with_score(embedding, fetch_k, filter, **kwargs)
        if not found:
            return []
        keys = [docs.int_id(d.id or "") for d, _ in found]
        stored = self.client.get(keys, include_vectors=True, min_sequence=self.sequence)
        if stored.vectors is None or len(stored.ids) != len(keys):
            raise RuntimeError("documents changed between the search and reading their vectors")
        picked = maximal_marginal_relevance(
            np.asarray(embedding, np.float32), list(stored.vectors), lambda_mult, k
        )
        return [found[i][0] for i in picked]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        if self._embedding is None:
            raise ValueError("max_marginal_relevance_search needs the store's own embedding")
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, filter, **kwargs
        )

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Scores mapped to [0, 1], 1 the most relevant (unit vectors assumed for l2 and ip)."""
        if self.metric == "l2":
            return lambda d: 1.0 - float(np.sqrt(max(d, 0.0))) / float(np.sqrt(2.0))
        return lambda s: (1.0 + s) / 2.0  # cosine or inner product of unit vectors

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> VsearchVectorStore:
        """A store on the service ``url`` (and the other options of ``__init__``), with
        ``texts`` added."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _document(row: dict[str, Any] | None) -> Document:
    text, doc_id, meta = docs.parts(row or {})
    return Document(page_content=text, metadata=meta, id=doc_id)


def _scored(result: SearchResult) -> list[tuple[Document, float]]:
    return [(_document(meta), score) for _, score, meta in result.hits(0)]


def _only(kwargs: dict[str, Any], ids: Any, filter: Any) -> None:
    """A delete's options: ids or a filter, nothing else (an option dropped here would
    leave ids and filter None: every document deleted)."""
    if kwargs:
        raise TypeError(f"unknown delete option(s) {sorted(kwargs)}: give ids or filter")
    if ids is not None and filter is not None:
        raise ValueError("give ids or a filter to delete, not both")
