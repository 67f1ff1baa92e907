"""Texts in: texts/s of the embedding deployment through the service against the same
model in process, in one run.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 python -m bench.texts [--quick]

Texts: real sentences (the docstring sentences of ``bench.minilm``). For each model (the
bundled all-MiniLM-L6-v2 when sentence-transformers is installed, and the GloVe mean), in
process: ``encode`` in batches of 64 on this machine's cores. Through the service (an empty
collection of the model's dimension with ``args.embedding``, one shard, HTTP on a local
Ray): upserts of 64 texts from 2 callers, searches of one text from 8 callers and of 32
texts from 2 callers. Writes bench/results/texts.json and texts.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.results import CACHE, command, parser, write
from bench.serving import drive


def texts(n: int) -> list[str]:
    cached = os.path.join(CACHE, "minilm-40000-texts.txt")
    if os.path.exists(cached):
        with open(cached, encoding="utf-8") as f:
            pool = [line.strip() for line in f if line.strip()]
    else:
        from bench.minilm import sentences

        pool = sentences(n)
    return pool[:n]


def in_process(model, pool: list[str]) -> dict:
    model.encode(pool[:64])  # warm
    t0 = time.perf_counter()
    for s in range(0, len(pool), 64):
        model.encode(pool[s : s + 64])
    seconds = time.perf_counter() - t0
    return {"texts": len(pool), "seconds": seconds, "texts_per_s": len(pool) / seconds}


def through_service(name: str, dim: int, pool: list[str], root: str, url: str) -> list[dict]:
    import httpx

    from deployments.local import deploy, undeploy
    from shards import BuildOptions
    from shards.create import create_index

    create_index(os.path.join(root, name), dim, opts=BuildOptions(metric="cosine", progress=False))
    deploy(f"texts-{name}", {"index_uri": os.path.join(root, name), "embedding": {"model": name}})
    http = httpx.Client(base_url=f"{url}/texts-{name}", timeout=120)
    rows = []
    batches = [(s, pool[s : s + 64]) for s in range(0, len(pool), 64)]

    def upsert(b):
        ids = list(range(b[0], b[0] + len(b[1])))
        r = http.post("/v1/upsert", json={"ids": ids, "texts": b[1], "deadline_ms": 60_000})
        assert r.status_code == 200, r.text

    def search(t):
        r = http.post("/v1/search", json={"texts": t, "k": 10, "deadline_ms": 60_000})
        assert r.status_code == 200, r.text

    upsert(batches[0])
    for what, call, payloads, conc, per in (
        ("upsert 64 texts", upsert, batches, 2, None),
        ("search 1 text", search, [[t] for t in pool[: len(pool) // 2]], 8, 1),
        ("search 32 texts", search, [pool[s : s + 32] for s in range(0, len(pool), 32)], 2, 32),
    ):
        stats = drive(call, payloads, conc)
        n = sum(len(b[1]) for b in batches) if per is None else per * len(payloads)
        row = {"model": name, "what": what, "concurrency": conc, **stats}
        row["texts_per_s"] = n / stats["seconds"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    undeploy(f"texts-{name}")
    return rows


def run(quick: bool) -> dict:
    import ray

    from deployments.config import EmbeddingOptions
    from deployments.embedder import load_model
    from deployments.local import start_local

    models = ["glove"]
    if importlib.util.find_spec("sentence_transformers") is not None:
        models.insert(0, "minilm")
    pool = texts(128 if quick else 1024)
    local = {}
    for name in models:
        model = load_model(EmbeddingOptions(model=name))
        local[name] = {"dim": model.dim, **in_process(model, pool)}
        print(json.dumps({name: local[name]}), file=sys.stderr)
        del model
    url = start_local()
    served = []
    with tempfile.TemporaryDirectory(prefix="vsearch-texts-") as root:
        for name in models:
            served += through_service(name, local[name]["dim"], pool, root, url)
    ray.shutdown()
    return {
        "command": command("bench.texts"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "texts": len(pool),
        "mean_words": float(np.mean([len(t.split()) for t in pool])),
        "in_process": local,
        "served": served,
    }


def markdown(r: dict) -> str:
    lines = [
        "# Texts in: the embedding deployment",
        "",
        f"`{r['command']}` on {r['machine']['cpus']} cores; {r['texts']:,} real sentences "
        f"({r['mean_words']:.1f} words on average). In process: the model's `encode` in "
        "batches of 64; through the service: HTTP to an application with `args.embedding` "
        "(one embedder replica, one shard), measured in the same run.",
        "",
        "| model | path | callers | requests/s | texts/s | vs in process | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, loc in r["in_process"].items():
        lines.append(
            f"| {name} ({loc['dim']}-d) | in process, encode 64 | 1 | | "
            f"{loc['texts_per_s']:,.0f} | 1.00x | | |"
        )
        for row in (x for x in r["served"] if x["model"] == name):
            lines.append(
                f"| {name} | {row['what']} | {row['concurrency']} | "
                f"{row['requests_per_s']:,.1f} | {row['texts_per_s']:,.0f} | "
                f"{row['texts_per_s'] / loc['texts_per_s']:.2f}x | {row['p50_ms']:.1f} | "
                f"{row['p99_ms']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parser(__doc__).parse_args()
    print(write(args.out, "texts", run(args.quick), markdown))


if __name__ == "__main__":
    main()
