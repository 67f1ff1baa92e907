"""GPU tests (marker ``gpu``; skipped without a CUDA GPU and faiss-gpu-cuvs).

Each has a CPU twin in test_gpu_twins.py. Brute force on the CPU is the oracle.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shards._faiss import faiss
from shards.cuda import gpu_memory, has_cuvs
from shards.errors import GpuOutOfMemory, InvalidQuery
from shards.gpu import GpuOptions, to_gpu
from shards.params import SearchOverrides
from tests.shards.helpers import brute_force, build, recall

pytestmark = pytest.mark.gpu


def test_gpu_flat_equals_cpu_flat(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="Flat", num_shards=2)
    Dc, Ic = index.search(xq, 10)
    where = index.place("cuda:0")
    assert where.on_gpu and where.device == "cuda:0" and where.gpu_bytes > 0
    assert where.cuvs == has_cuvs()
    Dg, Ig = index.search(xq, 10)
    np.testing.assert_allclose(Dg, Dc, rtol=1e-4, atol=1e-3)
    assert (Ig == Ic).mean() > 0.99  # ties may order differently
    _, gt = brute_force(xb, xq, 10, "l2")
    assert recall(Ig, gt) > 0.99


def test_gpu_float16_flat_is_close(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="Flat")
    index.place(GpuOptions(float16=True))
    _, gt = brute_force(xb, xq, 10, "l2")
    assert recall(index.search(xq, 10)[1], gt) > 0.97


def test_gpu_ivfpq_with_cpu_rerank_meets_its_recall(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="IVF64,PQ16,RFlat")  # 8-bit PQ: the GPU form
    index.place("cuda:0")
    _, gt = brute_force(xb, xq, 10, "l2")
    assert recall(index.search(xq, 10, {"nprobe": 16, "k_factor": 8})[1], gt) >= 0.95
    coarse = recall(index.search(xq, 10, {"nprobe": 1, "k_factor": 1})[1], gt)
    assert coarse < 0.95  # the overrides reach the GPU index
    with pytest.raises(InvalidQuery, match="k_factor"):
        index.search(xq, 1024, {"k_factor": 4})  # 4,096 candidates: over the GPU's 2,048


def test_gpu_cagra_built_on_gpu_meets_recall(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="CAGRA32", graph_device="cuda:0")
    assert isinstance(faiss.downcast_index(index.shards[0].index), faiss.IndexHNSWCagra)
    _, gt = brute_force(xb, xq, 10, "l2")
    cpu = recall(index.search(xq, 10, {"itopk_size": 64})[1], gt)
    index.place("cuda:0")
    gpu = recall(index.search(xq, 10, {"itopk_size": 64})[1], gt)
    assert gpu >= 0.95 and cpu >= 0.9
    low = recall(index.search(xq, 10, {"itopk_size": 16})[1], gt)
    wide = recall(index.search(xq, 10, {"itopk_size": 128, "search_width": 4})[1], gt)
    assert wide >= low and wide >= 0.98


def test_gpu_cagra_from_cpu_twin(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="CAGRA32", graph_device="cpu", tune=False)
    index.place("cuda:0")
    _, gt = brute_force(xb, xq, 10, "l2")
    assert recall(index.search(xq, 10, {"itopk_size": 64})[1], gt) >= 0.95


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        ("Flat", {}),
        ("IVF64,Flat", {"nprobe": 16}),
        ("IVF64,PQ16,RFlat", {"nprobe": 16, "k_factor": 8}),  # GPU base, CPU re-rank
        ("CAGRA32", {"itopk_size": 128}),
    ],
)
def test_gpu_deletes_are_filtered(tmp_path, data, factory, params):
    """Every GPU class must honour the delete selector, not only Flat."""
    xb, xq = data
    index = build(tmp_path, xb, index=factory, tune=False)
    _, I = index.search(xq, 10, params)
    gone = np.unique(I[:, :3])
    index.delete(gone)
    index.place("cuda:0")
    _, I2 = index.search(xq, 10, params)
    assert not np.isin(I2, gone).any()
    live = np.setdiff1d(np.arange(len(xb)), gone)
    _, gt = brute_force(xb[live], xq, 10, "l2", ids=live)
    assert recall(I2, gt) >= 0.9


def test_gpu_prepare_refused_when_two_clones_do_not_fit(tmp_path, data):
    """A replica holds the active clone while it prepares the next one: the free-memory
    check sees the first clone's memory as used and refuses the second before copying."""
    free, _ = gpu_memory(0)
    first = faiss.IndexFlatL2(64)
    first.add(np.zeros((2**31 // 256, 64), np.float32))  # 2 GiB, really cloned
    active = to_gpu(first, GpuOptions())
    nxt = faiss.IndexFlatL2(64)  # claims what fits alone but not beside the active clone
    nxt.ntotal = int((free - 2**30) / 1.2) // 256  # nothing is copied
    with pytest.raises(GpuOutOfMemory, match="MiB is free"):
        to_gpu(nxt, GpuOptions())
    assert active.search(np.zeros((1, 64), np.float32), 1, SearchOverrides())[1][0, 0] >= 0


def test_gpu_refuses_what_does_not_fit_before_cloning():
    free, _ = gpu_memory(0)
    huge = faiss.IndexFlatL2(64)
    huge.ntotal = free // (64 * 4) * 2  # claims twice the free memory; nothing is copied
    with pytest.raises(GpuOutOfMemory, match="MiB is free"):
        to_gpu(huge, GpuOptions())
    assert gpu_memory(0)[0] >= free * 0.95


def test_gpu_concurrent_requests_on_one_index(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="IVF64,PQ16,RFlat")
    index.place("cuda:0")
    settings = [{"nprobe": p, "k_factor": kf} for p in (1, 4, 16, 64) for kf in (1, 4)]
    expected = [index.search(xq, 10, s) for s in settings]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda s: index.search(xq, 10, s), settings * 4))
    for i, (_, I) in enumerate(got):
        np.testing.assert_array_equal(I, expected[i % len(settings)][1])


def test_gpu_two_replicas_equal_one(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="Flat")
    one = to_gpu(index.shards[0].index, GpuOptions())
    two = to_gpu(index.shards[0].index, GpuOptions(devices=(0, 0)))  # two clones, one card
    assert len(two.indexes) == 2
    from shards.params import SearchOverrides

    D1, I1 = one.search(xq, 10, SearchOverrides())
    D2, I2 = two.search(xq, 10, SearchOverrides())
    assert (I1 == I2).mean() > 0.99
    np.testing.assert_allclose(D1, D2, rtol=1e-4, atol=1e-3)


def test_gpu_ivf_sharded_over_two_clones_equals_one(tmp_path, data):
    from shards.params import SearchOverrides

    xb, xq = data
    index = build(tmp_path, xb, index="IVF64,Flat", tune=False)
    cpu = index.shards[0].index
    one = to_gpu(cpu, GpuOptions())
    two = to_gpu(cpu, GpuOptions(devices=(0, 0), multi_gpu="shard"))  # IVF lists split in two
    assert two.placement.multi_gpu == "shard" and two.placement.device == "cuda:0,0"
    ov = SearchOverrides(nprobe=8)
    D1, I1 = one.search(xq, 10, ov)
    D2, I2 = two.search(xq, 10, ov)
    assert (I1 == I2).mean() > 0.99
    np.testing.assert_allclose(D1, D2, rtol=1e-4, atol=1e-3)


def test_gpu_trained_template_matches_the_cpu_one(tmp_path, data):
    """The distributed build's training task runs the IVF k-means on a GPU when it has one
    (``train_template(gpu=0)``): the template works as the CPU-trained one does, and holds
    no GPU index afterwards (it is serialised and shipped to every shard)."""
    from shards import BuildOptions, VectorSource
    from shards.build import train_template
    from shards.metric import Metric

    xb, xq = data
    np.save(tmp_path / "xb.npy", xb)
    source, opts = VectorSource(str(tmp_path / "xb.npy")), BuildOptions()
    _, gt = brute_force(xb, xq, 10, "l2")
    recalls = []
    for gpu in (None, 0):
        template = train_template(source, "IVF64,Flat", Metric.parse("l2"), opts, gpu=gpu)
        index = faiss.deserialize_index(faiss.serialize_index(template))
        index.add(xb)
        index.nprobe = 8
        recalls.append(recall(index.search(xq, 10)[1], gt))
    assert abs(recalls[0] - recalls[1]) < 0.03 and recalls[1] > 0.8


def test_lone_queries_follow_the_shards_onto_the_gpu(tmp_path, data):
    """A lone query planned on the CPU searches the GPU clone once the shards are placed
    there (the plan is dropped): the same answer as the full path on the GPU."""
    xb, xq = data[0][:5000], data[1][:5]
    index = build(tmp_path, xb, index="Flat")
    for i in range(5):
        index.search(xq[i : i + 1], 10)  # plans made on the CPU
    assert index.lone._plans
    assert index.place("cuda:0").on_gpu
    assert not index.lone._plans
    for i in range(5):
        lone = index.search(xq[i : i + 1], 10)
        full = index.search(np.repeat(xq[i : i + 1], 2, axis=0), 10)  # two rows: the full path
        np.testing.assert_array_equal(lone[1][0], full[1][0])
    assert not index.lone._plans  # none is made for a shard on a GPU
