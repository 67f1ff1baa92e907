"""The report of a ``bench.compare`` run: its markdown table, plots, and the summary of
vsearch's ratios to hnswlib over several datasets (``--dataset glove,minilm``)."""

from __future__ import annotations

import json

import numpy as np

BATCH = 256
CONCURRENCY = 8


def best_at(rows: list[dict], system: str, key: str, floor: float = 0.95) -> dict | None:
    ok = [r for r in rows if r["system"] == system and r.get("recall", 0) >= floor]
    return max(ok, key=lambda r: r[key]) if ok else None


def markdown(r: dict) -> str:
    systems = list(dict.fromkeys(x["system"] for x in r["rows"]))
    lines = [
        f"# vsearch against its peers: `{r['command']}`",
        "",
        f"{r['dataset']} (normalised vectors, {r.get('metric', 'ip')} for vsearch), "
        f"{r['queries']:,} held-out queries (batches of {BATCH}), "
        f"{r['singles']} single queries from {CONCURRENCY} concurrent callers; {r['cpus']} CPUs, "
        f"every system in the same run{_passes(r)}. Best QPS among each system's settings with "
        "recall@10 >= 0.95. `vsearch HTTP` is the main port, served by "
        f"{r.get('http_front', 'Serve proxy')}; `HTTP direct` is the router replica's own port"
        f"{'; both send and get binary frames, as the client does' if r.get('wire') else ''}:",
        "",
        "| system | batched QPS | recall | setting | single-query QPS (c8) | recall | p50 ms | "
        "p99 ms | build s | build RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in systems:
        errors = [x["error"] for x in r["rows"] if x["system"] == name and "error" in x]
        b = best_at(r["rows"], name, "qps_batch")
        s = best_at(r["rows"], name, "qps_single_c8")
        if b is None or s is None:
            why = errors[0] if errors else "no setting reached recall 0.95"
            lines.append(f"| {name} | - | - | - | - | - | - | - | - | {why} |")
            continue
        lines.append(
            f"| {name} | {b['qps_batch']:,.0f} | {b['recall']:.3f} | {b['setting'] or '-'} | "
            f"{s['qps_single_c8']:,.0f} | {s['recall']:.3f} | {s['p50_ms']:.2f} | "
            f"{s['p99_ms']:.2f} | {b['build_s']:.1f} | {b['build_rss_mib']:,.0f} |"
        )
    resolved = []
    for name in systems:
        b = best_at(r["rows"], name, "qps_batch")
        s = best_at(r["rows"], name, "qps_single_c8")
        if b and s and b.get("resolved"):
            resolved.append(f"- {name}: batched {b['resolved']}, single {s['resolved']}")
    if resolved:
        lines += ["", "What vsearch's best settings resolved to (index, search parameters):"]
        lines += ["", *resolved]
    png = r.get("plot", "compare.png")
    if r["dataset"].startswith("minilm"):
        lines += [
            "",
            "MiniLM: real sentences (6-40 words) from the docstrings of the installed Python "
            "packages, embedded offline with all-MiniLM-L6-v2 (384-d, normalised; "
            "bench/minilm.py); the texts are cached beside the vectors.",
        ]
    lines += ["", f"![recall against QPS]({png})", ""]
    lines += [f"![latency by system]({png[: -len('.png')]}-latency.png)", ""]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, title in (
        (axes[0], "qps_batch", f"batches of {BATCH}"),
        (axes[1], "qps_single_c8", f"single queries, {CONCURRENCY} callers"),
    ):
        names = list(dict.fromkeys(x["system"] for x in r["rows"]))
        for i, name in enumerate(names):
            pts = sorted(
                (x["recall"], x[key]) for x in r["rows"] if x["system"] == name and key in x
            )
            if pts:
                style = "-o" if name.startswith("vsearch") else "--."
                color = plt.cm.tab20(i / max(1, len(names) - 1))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=name)
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second")
        ax.set_yscale("log")
        ax.axvline(0.95, color="grey", lw=0.5)
        ax.set_title(f"{r['dataset']}: {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def latency_plot(r: dict, path: str) -> None:
    """Single-query latency p50 and p99 per system, at its fastest setting with recall >= 0.95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, p50, p99 = [], [], []
    for name in dict.fromkeys(x["system"] for x in r["rows"]):
        best = best_at(r["rows"], name, "qps_single_c8")
        if best is not None:
            names.append(name)
            p50.append(best["p50_ms"])
            p99.append(best["p99_ms"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y - 0.2, p50, height=0.4, label="p50")
    ax.barh(y + 0.2, p99, height=0.4, label="p99")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds per single query (8 concurrent callers)")
    ax.set_title(f"{r['dataset']}: latency at recall@10 >= 0.95")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plots(r: dict, base: str) -> None:
    """Both plots of a result: ``base``.png (recall against QPS), ``base``-latency.png."""
    plot(r, base + ".png")
    latency_plot(r, base + "-latency.png")


def replot(json_path: str) -> None:
    """Redraw a results file's plots (``bench.compare_report.replot(path)``)."""
    with open(json_path) as f:
        plots(json.load(f), json_path[: -len(".json")])


PEER = ("hnswlib", "hnswlib M32")
# The ratio to the best hnswlib each shape aims at, for vsearch built for that shape
GOAL = {"qps_batch": ("batch", 1.3), "qps_single_c8": ("single", 1.0)}


def ratios(r: dict) -> list[dict]:
    """vsearch in process (each traffic shape) against the best hnswlib, at recall >= 0.95."""
    out = []
    for key in ("qps_batch", "qps_single_c8"):
        peer = [b for p in PEER if (b := best_at(r["rows"], p, key))]
        top = max(peer, key=lambda b: b[key]) if peer else None
        for name in dict.fromkeys(x["system"] for x in r["rows"]):
            if not name.startswith("vsearch in-process"):
                continue
            mine = best_at(r["rows"], name, key)
            if mine and top:
                out.append(
                    {
                        "shape": "batched" if key == "qps_batch" else "single (8 callers)",
                        "system": name,
                        "qps": mine[key],
                        "recall": mine["recall"],
                        "peer": top["system"],
                        "peer_qps": top[key],
                        "peer_recall": top["recall"],
                        "ratio": mine[key] / top[key],
                        "goal": _goal(name, key),
                    }
                )
    return out


def _goal(system: str, key: str) -> float | None:
    """The ratio vsearch built for this shape aims at (None: built for another shape)."""
    traffic, goal = GOAL[key]
    return goal if system.endswith(f"(traffic {traffic})") else None


def summary(s: dict) -> str:
    lines = [
        f"# vsearch in process against hnswlib: `{s['results'][0]['command']}`",
        "",
        f"One run, 2 CPUs{_passes(s['results'][0])}; best QPS of each system's settings at "
        "recall@10 >= 0.95; the peer is "
        "the faster of hnswlib M 16 and M 32 (ef_construction 200) for each shape. `goal`: the "
        "ratio vsearch built for that traffic shape aims at (`--traffic batch` for batches, "
        "`single` for single queries); the default build (mixed) serves both.",
        "",
        "| dataset | shape | vsearch | QPS | recall | peer | peer QPS | peer recall | ratio | "
        "goal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in s["results"]:
        for x in ratios(r):
            lines.append(
                f"| {r['dataset']} | {x['shape']} | {x['system']} | {x['qps']:,.0f} | "
                f"{x['recall']:.3f} | {x['peer']} | {x['peer_qps']:,.0f} | "
                f"{x['peer_recall']:.3f} | {x['ratio']:.2f}x | {_met(x.get('goal'), x['ratio'])} |"
            )
    return "\n".join(lines) + "\n"


def _passes(r: dict) -> str:
    n = r.get("passes", 1)
    return f", each figure the best of {n} passes taken in turn over all systems" if n > 1 else ""


def _met(goal: float | None, ratio: float) -> str:
    if goal is None:
        return "-"
    return f">= {goal:.1f}x: {'met' if ratio >= goal else 'not met'}"
