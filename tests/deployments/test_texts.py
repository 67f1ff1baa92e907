"""Texts in: an application with an embedding model searches and upserts ``texts``; the
oracle is the same model run in process, then brute force."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import vsearch
from deployments.config import EmbeddingOptions
from deployments.embedder import load_model
from shards import BuildOptions
from shards.create import create_index, parse_columns
from tests.deployments.conftest import deploy
from tests.shards.helpers import assert_same_knn, brute_force

pytestmark = [pytest.mark.ray]
TEXTS = [
    "the king and the queen of the castle",
    "a cheap flight to paris in spring",
    "stock markets fell sharply on monday",
    "the football team won the final match",
    "a recipe for tomato soup with basil",
    "rain and strong winds expected tomorrow",
    "the prince married the princess",
    "new smartphone with a faster processor",
]


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("model", ["glove", "minilm"])
def test_texts_are_embedded_for_upsert_and_search(serve_base, tmp_path, model):
    if model == "minilm" and importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("sentence-transformers is not installed (the embed extra)")
    opts = EmbeddingOptions(model=model)
    local = load_model(opts)
    root = str(tmp_path / model)
    create_index(
        root, local.dim, parse_columns("n:int64"), BuildOptions(num_shards=2, metric="cosine")
    )
    deploy(f"texts-{model}", {"index_uri": root, "embedding": {"model": model}})
    c = vsearch.Client(f"{serve_base}/texts-{model}")
    w = c.upsert(np.arange(len(TEXTS)), texts=TEXTS, metadata=[{"n": i} for i in range(8)])
    queries = ["royal family wedding", "weather forecast", "football"]
    r = c.search(texts=queries, k=3, min_sequence=w.sequence)
    xb, xq = unit(local.encode(TEXTS)), unit(local.encode(queries))
    Dref, Iref = brute_force(xb, xq, 3, "cosine")
    assert_same_knn(Dref, Iref, r.scores, r.ids, 1e-4)
    assert r.ids[0, 0] in (0, 6) and r.ids[1, 0] == 5  # what a reader expects of the words
    f = c.search(texts=["football"], k=2, filter={"n": {"$lt": 3}}, min_sequence=w.sequence)
    assert set(f.ids[0]) <= {0, 1, 2}

    with pytest.raises(vsearch.InvalidQuery, match=r"texts\[1\] must be a non-blank string"):
        c.search(texts=["ok", "  "], k=1)
    if model == "glove":
        with pytest.raises(vsearch.InvalidQuery, match=r"texts\[0\] has no word"):
            c.search(texts=["qzxqzxqzx"], k=1)
    with pytest.raises(vsearch.DeadlineExceeded, match="800 texts were embedded"):
        c.search(texts=TEXTS * 100, k=1, deadline_ms=1)  # the deadline covers the embedding
    with pytest.raises(vsearch.BadRequest, match="exactly one of"):
        c._call("POST", "/v1/upsert", {"ids": [1], "texts": ["a"], "vectors": [[0.0] * local.dim]})


def test_texts_without_a_model_or_with_the_wrong_one_are_loud(serve_base, apps, tmp_path):
    create_index(str(tmp_path / "d12"), 12, opts=BuildOptions(metric="cosine"))
    deploy("texts-wrong", {"index_uri": str(tmp_path / "d12"), "embedding": {"model": "glove"}})
    with pytest.raises(vsearch.EmbeddingMismatch, match="gives 50-d vectors; this index is 12-d"):
        vsearch.Client(f"{serve_base}/texts-wrong").search(texts=["the king"], k=1)
    with pytest.raises(vsearch.UnsupportedOperation, match="no embedding model"):
        vsearch.Client(apps["flat"]).search(texts=["the king"], k=1)
