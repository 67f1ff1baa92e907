"""Print the nearest words of GloVe words through the running service's HTTP API.

python scripts/nearest.py king computer [--url http://127.0.0.1:8000] [-k 8]
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx
import pyarrow.parquet as pq


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("words", nargs="+")
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--data", default="data/glove.parquet", help="written by scripts/demo.py")
    args = ap.parse_args()
    words = pq.read_table(args.data, columns=["word"]).column("word").to_pylist()
    ids = {w: i for i, w in enumerate(words)}
    headers = (
        {"authorization": f"Bearer {os.environ['VSEARCH_TOKEN']}"}
        if os.environ.get("VSEARCH_TOKEN")
        else {}
    )
    with httpx.Client(base_url=args.url, timeout=30, headers=headers) as client:
        for word in args.words:
            if word not in ids:
                print(f"{word!r} is not in the GloVe vocabulary", file=sys.stderr)
                continue
            r = client.post(
                "/v1/search", json={"ids": [ids[word]], "k": args.k, "include_metadata": True}
            )
            if r.status_code != 200:
                print(f"{word}: HTTP {r.status_code} {r.text}", file=sys.stderr)
                return 1
            body = r.json()
            found = [
                f"{m['word']} ({s:.3f})"
                for m, s in zip(body["metadata"][0], body["scores"][0], strict=True)
            ]
            print(f"{word}: " + ", ".join(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
