"""The recall monitor's bookkeeping without Ray: sampling, the CPU budget, parts joined into
the service's recall (equal to brute force over the merged answers), the window, drift and
the re-tune it asks for."""

import numpy as np
import pytest

from deployments.config import RecallOptions
from deployments.monitor import RecallMonitor
from deployments.sampler import MAX_ROWS, Budget, pick
from shards.recall import SERVICE, UNFILTERED, Joiner, Part, RecallWindow, query_recall


def part(sample, group, D, I, De, Ie, target=0.95, version="v1", plan=UNFILTERED, xq=None):
    xq = np.zeros((len(D), 4), np.float32) if xq is None else xq
    return Part(sample, group, str(group), version, 0, plan, target, D.shape[1], D, I, De, Ie, xq)


def test_pick_samples_rows_at_the_rate_and_at_most_a_few_per_query():
    rng = np.random.default_rng(0)
    assert pick(rng, 100, 0.0, 0.9) is None
    every = pick(rng, 100, 1.0, 0.9)
    assert every is not None and every.rows == tuple(range(MAX_ROWS)) and every.target == 0.9
    singles = [pick(rng, 1, 0.01, None) for _ in range(20_000)]
    hits = sum(s is not None for s in singles)
    assert 140 <= hits <= 260  # 200 expected
    assert len({s.id for s in singles if s is not None}) == hits  # ids do not collide


def test_budget_bounds_the_exact_reruns_to_a_share_of_the_search_time():
    b = Budget(0.02, start_s=0.0, burst_s=0.1)
    assert not b.allows()  # nothing searched, nothing earned
    searched = spent = 0.0
    for _ in range(10_000):  # 10 ms searches, each offering a 5 ms exact re-run
        b.earn(0.01)
        searched += 0.01
        if b.allows():
            b.spend(0.005)
            spent += 0.005
    assert spent <= 0.02 * searched + 0.005  # the share (and one re-run's overrun)
    assert spent >= 0.02 * searched * 0.9
    b.earn(1000.0)
    assert b.left == 0.1  # an idle spell does not bank more than the burst


def _answers(rng, nq=6, k=5, groups=2, miss=0.3):
    """Per group: an exact top-k and an ANN answer that misses about ``miss`` of it."""
    out = []
    for g in range(groups):
        De = np.sort(rng.random((nq, k)).astype(np.float32), axis=1)
        Ie = (np.arange(nq * k).reshape(nq, k) + 1000 * g).astype(np.int64)
        lost = rng.random((nq, k)) < miss
        I = np.where(lost, Ie + 500, Ie)  # other ids, worse scores
        D = np.where(lost, De + 1.0, De).astype(np.float32)
        order = np.argsort(D, axis=1)
        out.append((np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1), De, Ie))
    return out


def test_joined_parts_give_each_shards_and_the_services_recall():
    rng = np.random.default_rng(1)
    answers = _answers(rng)
    j = Joiner(groups=2, keep_max=False)
    first = j.add(part(7, 0, *answers[0]))
    assert {f.shard for f in first} == {"0"}  # the service figure waits for every group
    second = j.add(part(7, 1, *answers[1]))
    service = [f.recall for f in second if f.shard == SERVICE]
    # the oracle: brute force merge of both groups, answered and exact, by hand
    D = np.hstack([a[0] for a in answers])
    I = np.hstack([a[1] for a in answers])
    De = np.hstack([a[2] for a in answers])
    Ie = np.hstack([a[3] for a in answers])
    top = np.argsort(D, axis=1, kind="stable")[:, :5]
    etop = np.argsort(De, axis=1, kind="stable")[:, :5]
    want = query_recall(
        np.take_along_axis(D, top, 1),
        np.take_along_axis(I, top, 1),
        np.take_along_axis(De, etop, 1),
        np.take_along_axis(Ie, etop, 1),
    )
    assert service == pytest.approx(want.tolist())
    assert 0.3 < np.mean(service) < 0.95
    shard1 = [f.recall for f in second if f.shard == "1"]
    assert shard1 == pytest.approx(query_recall(*answers[1]).tolist())
    assert not j.waiting


def test_a_sample_missing_a_shard_expires_and_is_counted():
    rng = np.random.default_rng(2)
    a = _answers(rng)[0]
    j = Joiner(groups=2, keep_max=False, ttl_s=10)
    j.add(part(1, 0, *a), now=0.0)
    j.add(part(2, 0, *a), now=20.0)  # sample 1 waited longer than 10 s
    assert j.expired == 1 and list(j.waiting) == [2]


def test_window_keeps_only_recent_figures_and_groups_them():
    rng = np.random.default_rng(3)
    answers = _answers(rng, groups=1)
    w = RecallWindow(window_s=60)
    w.add(Joiner(1, False).add(part(1, 0, *answers[0]), now=0.0))
    w.add(Joiner(1, False).add(part(2, 0, *answers[0], target=0.9), now=50.0))
    s = w.summary("v1", now=55.0)
    assert s["samples"] == 12 and set(s["by_target"]) == {"0.95", "0.9"}
    assert s["by_shard"]["0"]["samples"] == 12
    assert w.summary("v1", now=100.0)["samples"] == 6  # the first six left the window
    assert w.summary("v2", now=55.0)["samples"] == 0


def _monitor(**opts):
    started = []

    def retune(queries, target, why):
        started.append((queries, target, why))
        return True

    m = RecallMonitor(RecallOptions(min_samples=20, margin=0.02, **opts), 1, False)
    m.check_every_s = 0.0  # every check compares (the coordinator's run once a second)
    return m, started, retune


def _feed(m, rng, n, miss, version="v1", plan=UNFILTERED):
    for _ in range(n):
        D, I, De, Ie = _answers(rng, nq=1, k=10, groups=1, miss=miss)[0]
        xq = rng.standard_normal((1, 4)).astype(np.float32)
        m.add([part(rng.integers(2**40), 0, D, I, De, Ie, version=version, xq=xq, plan=plan)])


def test_drift_below_the_target_asks_for_one_retune_on_live_queries():
    rng = np.random.default_rng(4)
    m, started, retune = _monitor(auto_retune=True, retune_queries=60)
    _feed(m, rng, 60, miss=0.0)
    assert m.check("v1", 0.95, retune) is None and not started  # recall 1.0: no drift
    _feed(m, rng, 200, miss=0.3)  # recall about 0.7 now dominates the window
    drift = m.check("v1", 0.95, retune)
    assert drift is not None and drift["target"] == 0.95 and drift["recall"] < 0.93
    assert not started  # it waits for 60 queries of the drifted traffic
    assert m.summary("v1")["retune"]["state"] == "waiting"
    _feed(m, rng, 59, miss=0.3)
    m.check("v1", 0.95, retune)
    assert not started
    _feed(m, rng, 1, miss=0.3)
    m.check("v1", 0.95, retune)
    assert len(started) == 1
    queries, target, why = started[0]
    assert queries.shape == (60, 4) and target == 0.95 and "below target" in why
    m.check("v1", 0.95, retune)
    assert len(started) == 1  # one re-tune per version and cooldown
    assert m.summary("v1")["retune"]["state"] == "started"
    assert m.summary("v1")["retune"]["from"] == "v1"


def test_a_retune_is_not_asked_for_when_it_cannot_help_and_retried_when_it_failed():
    rng = np.random.default_rng(6)
    m, started, retune = _monitor(auto_retune=True, retune_queries=60, retune_cooldown_s=0)
    _feed(m, rng, 100, miss=0.0)
    _feed(m, rng, 200, miss=0.4, plan="ann")  # only filtered answers drift
    assert m.check("v1", 0.95, retune) is not None
    _feed(m, rng, 100, miss=0.0)
    m.check("v1", 0.95, retune)
    assert not started and m.retune["state"] == "not_needed"

    _feed(m, rng, 200, miss=0.3, version="v2")  # unfiltered drift on v2: re-tuned
    m.check("v2", 0.95, retune)
    _feed(m, rng, 60, miss=0.3, version="v2")
    m.check("v2", 0.95, retune)
    assert len(started) == 1 and m.retune["from"] == "v2"
    m.retune["state"] = "failed"  # the task failed: tried again for the same version
    m.check("v2", 0.95, retune)
    assert len(started) == 2
    m.retune["state"] = "active"  # it made v3, which is no better: no third re-tune
    _feed(m, rng, 200, miss=0.35, version="v3")
    m.check("v3", 0.95, retune)
    _feed(m, rng, 60, miss=0.35, version="v3")
    m.check("v3", 0.95, retune)
    assert len(started) == 2 and m.retune["state"] == "no_gain"


def test_drift_is_reported_but_not_acted_on_by_default_nor_under_min_samples():
    rng = np.random.default_rng(5)
    m, started, retune = _monitor()
    _feed(m, rng, 10, miss=0.5)
    assert m.check("v1", 0.95, retune) is None  # 10 < min_samples
    _feed(m, rng, 30, miss=0.5)
    assert m.check("v1", 0.95, retune) is not None
    assert not started and m.summary("v1")["drift"]["samples"] == 40
    assert m.check("v2", 0.95, retune) is None  # another version: its own window


def test_a_shard_sampler_reruns_sampled_rows_exactly_in_one_batch_within_its_budget(
    tmp_path, monkeypatch
):
    import asyncio

    import deployments.sampler as sampler_mod
    from deployments.sampler import ShardSampler
    from shards.query import Query, Sample
    from tests.conftest import clustered
    from tests.shards.helpers import brute_force, build

    xb = clustered(3000, 8, seed=1)
    index = build(tmp_path, xb, index="IVF16,Flat", num_shards=2, tune=False)
    calls = []
    real = sampler_mod.exact_over

    def counted(*args):
        calls.append(len(args[1]))
        return real(*args)

    monkeypatch.setattr(sampler_mod, "exact_over", counted)
    xq = clustered(12, 8, seed=2)
    states = index.applied.states()
    ov = index.resolve({"nprobe": 1})

    async def run(sampler):
        for i in range(3):  # three requests of 4 rows, rows 0 and 2 sampled
            q = Query(5, ov, sample=Sample(i + 1, (0, 2), 0.9))
            part = xq[4 * i : 4 * i + 4]
            D, I = index.search_query(part, q)
            sampler.offer(index, part, q, D, I, states, {})
        await sampler._worker
        return sampler.drain()

    s = ShardSampler(0, "0-1", cpu_share=0.02)
    parts = asyncio.run(run(s))
    assert calls == [6]  # the six rows of three requests over one state: one exact search
    assert [p.sample for p in parts] == [1, 2, 3] and s.measured == 3
    sampled = xq[[0, 2, 4, 6, 8, 10]]
    _, Iref = brute_force(xb, sampled, 5, "l2")
    assert (np.vstack([p.Ie for p in parts]) == Iref).all()
    assert all(p.target == 0.9 and p.plan == UNFILTERED for p in parts)

    broke = ShardSampler(0, "0-1", cpu_share=0.02)
    broke.budget.left = 0.0  # spent: sampled rows are skipped and counted, never queued
    assert asyncio.run(_offer_only(broke, index, xq, ov, states)) == 0
    assert broke.skipped == {"budget": 1}


async def _offer_only(sampler, index, xq, ov, states):
    from shards.query import Query, Sample

    q = Query(5, ov, sample=Sample(9, (0,), None))
    D, I = index.search_query(xq[:1], q)
    sampler.offer(index, xq[:1], q, D, I, states, {})
    return len(sampler.jobs)


def test_filtered_samples_are_rerun_over_the_filtered_rows_and_name_their_plan(tmp_path):
    import asyncio

    import pyarrow as pa
    import pyarrow.parquet as pq

    from deployments.sampler import ShardSampler
    from shards import BuildOptions, ShardedIndex, VectorSource, build_index
    from shards.query import Query, Sample
    from tests.conftest import clustered
    from tests.shards.helpers import brute_force

    xb = clustered(4000, 8, seed=1)
    ids = np.arange(4000, dtype=np.int64) * 2
    band = np.arange(4000) % 10
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), 8)
    pq.write_table(pa.table({"id": ids, "vector": vectors, "band": band}), tmp_path / "in.pq")
    src = VectorSource(str(tmp_path / "in.pq"), id_column="id", metadata_columns=["band"])
    opts = BuildOptions(num_shards=2, index="IVF16,Flat", progress=False, tune=False)
    build_index(src, str(tmp_path / "idx"), opts)
    index = ShardedIndex.open(str(tmp_path / "idx"))
    filt = index.parse_filter({"band": 3})
    xq = clustered(4, 8, seed=2)
    q = Query(5, index.resolve({"nprobe": 2}), filter=filt, sample=Sample(1, (0, 1, 2, 3)))
    states = index.applied.states()
    D, I, plans = index.search_query_planned(xq, q, states)

    async def run():
        s = ShardSampler(0, "0-1", cpu_share=0.02)
        s.offer(index, xq, q, D, I, states, plans)
        await s._worker
        return s.drain()

    (part,) = asyncio.run(run())
    keep = band == 3
    _, Iref = brute_force(xb[keep], xq, 5, "l2", ids[keep])
    assert (part.Ie == Iref).all() and part.plan == next(iter(set(plans.values())))
    assert part.plan in {"exact", "ann"} and np.isin(part.I, ids[keep]).all()


def test_the_budget_earns_from_search_cpu_not_from_waiting():
    """A search that waits (for the cores, behind concurrent ones) earns nothing for it:
    the budget counted wall time once, and re-runs took 10% of the CPU instead of 2%."""
    import time
    from types import SimpleNamespace

    from deployments.held import LoadedShards

    def loaded(search):  # a LoadedShards whose search is ``search``
        held = LoadedShards.__new__(LoadedShards)
        held.index = SimpleNamespace(snapshot=lambda: (0, []))
        held.search = search
        return held

    def waits(*args):
        time.sleep(0.2)
        return None, None, {}

    def works(*args):
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.1:
            pass
        return None, None, {}

    assert loaded(waits).timed(None, None, None)[5] < 0.05
    assert loaded(works).timed(None, None, None)[5] >= 0.1
