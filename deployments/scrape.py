"""``GET /metrics``: every node's Ray metrics export, merged into one Prometheus text page.

Each Ray node exports the metrics of the replicas on it on its own metrics export port; the
router fetches them all, keeps vsearch's and Serve's families, and merges samples of the same
family so that one scrape of ``/metrics`` sees every replica.
"""

from __future__ import annotations

import asyncio

import httpx
import ray
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

PREFIXES = ("ray_vsearch_", "vsearch_", "ray_serve_")


class _Families:
    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return self.families


def node_metric_urls() -> list[str]:
    """The metrics export endpoint of every live Ray node."""
    return [
        f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in ray.nodes()
        if n.get("Alive") and n.get("MetricsExportPort")
    ]


def merge_exposition(texts: list[str], prefixes: tuple[str, ...] = PREFIXES) -> bytes:
    """One Prometheus text page holding the families of ``texts`` whose names match."""
    families: dict[str, object] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(prefixes):
                continue
            if family.name in families:
                families[family.name].samples.extend(family.samples)  # type: ignore[attr-defined]
            else:
                families[family.name] = family
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


async def scrape_cluster(timeout_s: float = 5.0) -> bytes:
    """Fetch and merge every node's metrics (nodes that do not answer are skipped)."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        answers = await asyncio.gather(
            *(client.get(url) for url in node_metric_urls()), return_exceptions=True
        )
    texts = [a.text for a in answers if isinstance(a, httpx.Response) and a.status_code == 200]
    return merge_exposition(texts)
