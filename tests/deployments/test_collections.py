"""Collections: two indexes served side by side in one cluster (one application each),
each with its own writes, beside the default collection at /v1."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

import vsearch
from deployments.collections import config_problems
from shards import BuildOptions
from shards.create import create_index, parse_columns
from tests.conftest import clustered
from tests.deployments.conftest import deploy
from tests.shards.helpers import assert_same_knn, brute_force, float_tolerance

pytestmark = [pytest.mark.ray]


def test_two_collections_side_by_side_with_their_own_writes(serve_base, apps, indexes, tmp_path):
    from deployments.local import undeploy

    specs = {"a": (12, "l2"), "b": (6, "cosine")}
    t0 = time.perf_counter()
    for name, (dim, metric) in specs.items():
        opts = BuildOptions(num_shards=2, metric=metric, progress=False)
        create_index(str(tmp_path / name), dim, parse_columns("lang:string"), opts)
        deploy(f"col-{name}", {"index_uri": str(tmp_path / name), "collection": name})
    print(f"two collections deployed in {time.perf_counter() - t0:.1f} s")
    deploy("default", {"index_uri": str(indexes["root"] / "tiny")}, route_prefix="/")
    try:
        written = {}
        for seed, (name, (dim, metric)) in enumerate(specs.items()):
            c = vsearch.Client(serve_base, collection=name)
            x, ids = clustered(200, dim, seed=seed), np.arange(200) + 1000 * (seed + 1)
            w = c.upsert(ids, x, [{"lang": ["en", "de"][i % 2]} for i in range(200)])
            written[name] = (c, x, ids, w.sequence, metric)
        for name, (c, x, ids, seq, metric) in written.items():
            xq = clustered(5, x.shape[1], seed=9)
            keep = np.arange(200) % 2 == 0
            r = c.search(xq, k=10, filter={"lang": "en"}, min_sequence=seq)
            Dref, Iref = brute_force(x[keep], xq, 10, metric, ids[keep])
            assert_same_knn(Dref, Iref, r.scores, r.ids, float_tolerance(x[keep], xq, metric))
            assert c.stats()["dim"] == x.shape[1]
            other = written["b" if name == "a" else "a"][2]
            assert c.get(other[:5].tolist()).ids.size == 0  # the other collection's ids
            assert sum(len(p.ids) for p in c.scan()) == 200

        default = vsearch.Client(serve_base)  # the un-prefixed routes: the default collection
        xb = indexes["xb"][:500]
        r = default.search(xb[:3], k=1)
        assert r.ids[:, 0].tolist() == [0, 1, 2]
        listed = httpx.get(f"{serve_base}/v1/collections").json()["collections"]
        by_app = {e["application"]: e for e in listed}
        assert by_app["col-a"]["name"] == "a" and by_app["col-a"]["status"] == "RUNNING"
        assert by_app["col-a"]["routes"] == "/v1/collections/a"
        assert by_app["default"]["name"] is None and by_app["default"]["routes"] == "/v1"
        assert by_app["flat"]["routes"] == "/flat/v1"  # the default routes of an app at /flat
        assert not any("error" in e for e in listed)
        with pytest.raises(vsearch.NotFound):
            vsearch.Client(serve_base, collection="nope").search(xb[:1], k=1)
    finally:
        undeploy("default")


def test_serve_configs_name_their_collections_right():
    ok = {"import_path": "deployments.app:build_app"}
    good = {
        "applications": [
            {**ok, "name": "main", "route_prefix": "/", "args": {"index_uri": "x"}},
            {
                **ok,
                "name": "docs",
                "route_prefix": "/v1/collections/docs",
                "args": {"index_uri": "y", "collection": "docs"},
            },
        ]
    }
    assert config_problems(good) == []
    bad = {
        "applications": [
            {**ok, "name": "d1", "route_prefix": "/docs", "args": {"collection": "docs"}},
            {
                **ok,
                "name": "d2",
                "route_prefix": "/v1/collections/docs",
                "args": {"collection": "docs"},
            },
            {**ok, "name": "e", "route_prefix": "/v1/collections/e", "args": {}},
        ]
    }
    problems = config_problems(bad)
    assert any(
        "d1: collection 'docs' needs route_prefix /v1/collections/docs" in p for p in problems
    )
    assert any("served by two applications" in p for p in problems)
    assert any("e: route_prefix /v1/collections/e is a collection's" in p for p in problems)
