"""Shared plumbing of the benchmark entry points: arguments and result files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

RESULTS = os.path.join(os.path.dirname(__file__), "results")
CACHE = os.path.join(os.path.dirname(__file__), "cache")


def parser(doc: str | None, workdir: str = "idx") -> argparse.ArgumentParser:
    """--quick, --out (results folder) and --workdir (cache of built indexes)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small run (the CI smoke test)")
    ap.add_argument("--out", default=RESULTS, help="folder for the .json and .md results")
    ap.add_argument("--workdir", default=os.path.join(CACHE, workdir))
    return ap


SERVE_ENV = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")


def command(module: str) -> str:
    """The command line that ran ``module`` now, with the Serve settings it ran under."""
    env = " ".join(f"{k}={os.environ[k]}" for k in SERVE_ENV if os.environ.get(k))
    return f"{env} python -m {module} {' '.join(sys.argv[1:])}".strip()


def write(out_dir: str, name: str, result: dict, markdown: Callable[[dict], str]) -> str:
    """Write ``name``.json and ``name``.md under ``out_dir``; returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    text = markdown(result)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(text)
    return text


def line_plot(path: str, x: list, series: dict[str, list], xlabel: str, ylabel: str) -> None:
    """A small PNG: ``series`` (label -> y values) against ``x`` on a log2 axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in series.items():
        ax.plot(x, ys, "-o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
