"""``GET /metrics``: every node's Ray metrics export, merged into one Prometheus text page.

Each Ray node exports the metrics of the replicas on it on its own metrics export port; the
router fetches them all, keeps vsearch's and Serve's families, and merges samples of the same
family so that one scrape of ``/metrics`` sees every replica. Samples of applications Serve no
longer runs are left out: Ray keeps exporting them after an app is deleted (each app of
Serve's adds about 1,400 samples, 0.6 MB of text).
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


def merge_exposition(
    texts: list[str], prefixes: tuple[str, ...] = PREFIXES, apps: set[str] | None = None
) -> bytes:
    """One Prometheus text page holding the families of ``texts`` whose names match; with
    ``apps``, without the samples labelled with another application."""
    families: dict[str, object] = {}
    keep = None if apps is None else apps | {""}  # "": a sample of no application's
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(prefixes):
                continue
            if keep is not None:
                family.samples = [
                    s for s in family.samples if s.labels.get("application", "") in keep
                ]
                if not family.samples:
                    continue
            if family.name in families:
                families[family.name].samples.extend(family.samples)  # type: ignore[attr-defined]
            else:
                families[family.name] = family
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


def live_apps() -> set[str] | None:
    """The applications Serve runs now; None when its controller does not say (then nothing
    is left out)."""
    from ray import serve

    try:
        return set(serve.status().applications)
    except Exception:
        return None


async def scrape_cluster(timeout_s: float = 5.0) -> bytes:
    """Fetch and merge every node's metrics (nodes that do not answer are skipped), without
    the samples of applications that are gone."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        answers, apps = await asyncio.gather(
            asyncio.gather(
                *(client.get(url) for url in node_metric_urls()), return_exceptions=True
            ),
            asyncio.to_thread(live_apps),
        )
    texts = [a.text for a in answers if isinstance(a, httpx.Response) and a.status_code == 200]
    return merge_exposition(texts, apps=apps)
