"""The CPU twins of the GPU path: placement rules, CAGRA's CPU form, GPU index choice,
CAGRA overrides, and replicated search. They run everywhere; tests/shards/test_gpu.py runs the
GPU side of each on a GPU."""

import numpy as np
import pytest

from shards import InvalidInput, choose_index
from shards._faiss import faiss
from shards.cagra import fill_level0, parse_factory
from shards.choice import GPU_FLAT_MAX, template_index
from shards.cuda import gpu_count, parse_device
from shards.errors import GpuOutOfMemory, GpuUnavailable, GpuUnsupportedIndex, InvalidQuery
from shards.gpu import GpuOptions, Placed, Placement, gpu_kind, place
from shards.params import Knobs, SearchOverrides, make_params
from shards.sizing import check_fits, gpu_bytes
from tests.shards.helpers import brute_force, build, recall


def test_cpu_placement_is_explicit(tmp_path, data):
    index = build(tmp_path, data[0][:500], index="Flat")
    placed = place(index.shards[0].index, "cpu")
    assert placed.index is index.shards[0].index
    assert placed.placement == Placement("cpu") and not placed.placement.on_gpu
    assert index.place("cpu").device == "cpu"


@pytest.mark.skipif(gpu_count() > 0, reason="this machine has a GPU")
def test_gpu_without_gpu_raises(tmp_path, data):
    index = build(tmp_path, data[0][:500], index="Flat")
    with pytest.raises(GpuUnavailable, match="'gpu'"):
        index.place("cuda:0")


def test_fit_check_device_parsing_and_options():
    check_fits(100, 121, "cuda:0")
    with pytest.raises(GpuOutOfMemory, match="cuda:0"):
        check_fits(100, 119, "cuda:0")
    assert parse_device("cuda:1") == (1,) and parse_device("cpu") is None
    assert parse_device("cuda:0,1") == (0, 1) and parse_device("gpu") == (0,)
    for bad in ("tpu:0", "cuda:x", "cuda:0,"):
        with pytest.raises(InvalidInput):
            parse_device(bad)
    with pytest.raises(InvalidInput, match="multi_gpu"):
        GpuOptions(multi_gpu="mirror")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        GpuOptions(devices=())


def test_gpu_kinds_and_clear_refusals():
    d = 16
    assert gpu_kind(faiss.IndexFlatL2(d)) == "flat"
    assert gpu_kind(faiss.index_factory(d, "IVF16,PQ8")) == "ivf"
    assert gpu_kind(faiss.index_factory(d, "IVF16,Flat")) == "ivf"
    assert gpu_kind(template_index("CAGRA32", d)) == "cagra"
    for factory in ("IVF16,PQ16x4fs", "HNSW32,Flat", "IVF16_HNSW32,Flat"):
        with pytest.raises(GpuUnsupportedIndex, match="GPU"):
            gpu_kind(faiss.index_factory(d, factory))


def test_gpu_memory_estimates():
    flat = faiss.IndexFlatL2(8)
    flat.add(np.zeros((1000, 8), np.float32))
    assert gpu_bytes(flat) == 1000 * 8 * 4
    assert gpu_bytes(flat, float16=True) == 1000 * 8 * 2
    graph = template_index("CAGRA16", 8)
    graph.add(np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32))
    assert gpu_bytes(graph) == 300 * 8 * 4 + 300 * 16 * 8


def test_gpu_index_choice():
    assert choose_index(GPU_FLAT_MAX, 96, target="gpu").factory == "Flat"
    big = GPU_FLAT_MAX + 1
    assert choose_index(big, 96, target="gpu", gpu_build=True).factory == "CAGRA64"
    ivfpq = choose_index(big, 96, target="gpu").factory
    assert ivfpq.endswith(",PQ48,RFlat")  # 8-bit codes the GPU can serve, exact re-rank
    assert gpu_kind(faiss.downcast_index(template_index(ivfpq, 96).base_index)) == "ivf"
    tight = choose_index(big, 96, target="gpu", memory_budget=big * 60)
    assert tight.factory.endswith(",PQ48") and tight.estimated_bytes <= big * 60
    with pytest.raises(InvalidInput, match="target"):
        choose_index(big, 96, target="tpu")


def test_cagra_factory_strings():
    assert parse_factory("CAGRA") == 64 and parse_factory("CAGRA32") == 32
    assert parse_factory("IVF16,Flat") is None
    for bad in ("CAGRA7", "CAGRA1024"):
        with pytest.raises(InvalidInput, match="degree"):
            parse_factory(bad)
    assert Knobs.of(template_index("CAGRA", 8)).names() == ["itopk_size", "search_width"]


def test_cagra_cpu_twin_build_recall_and_tuning(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="CAGRA32")
    assert isinstance(faiss.downcast_index(index.shards[0].index), faiss.IndexHNSWCagra)
    measured = [p["params"]["itopk_size"] for p in index.manifest.tuning["curve"]]
    assert index.manifest.default_params["itopk_size"] in measured  # tuned over itopk_size
    _, gt = brute_force(xb, xq, 10, "l2")
    low = recall(index.search(xq, 10, {"itopk_size": 16})[1], gt)
    high = recall(index.search(xq, 10, {"itopk_size": 128})[1], gt)
    assert high >= 0.98 and high >= low
    with pytest.raises(InvalidQuery, match="itopk_size"):
        index.search(xq, 10, {"itopk_size": 0})
    with pytest.raises(InvalidQuery, match="does not apply"):
        index.search(xq, 10, {"nprobe": 4})


def test_cagra_cpu_form_maps_itopk_to_ef_search():
    index = template_index("CAGRA16", 8)
    params, _ = make_params(index, SearchOverrides(itopk_size=40), None, k=10)
    assert params.efSearch == 40
    params, _ = make_params(index, SearchOverrides(itopk_size=16), None, k=50)
    assert params.efSearch == 50  # never fewer candidates than results


def test_fill_level0_sets_every_slot_and_keeps_results(data):
    xb, xq = data
    index = template_index("CAGRA32", xb.shape[1])
    index.add(xb[:3000])
    hnsw = index.hnsw
    offsets = faiss.vector_to_array(hnsw.offsets)[:3000].astype(np.int64)
    slots = offsets[:, None] + np.arange(32)
    neighbors = faiss.vector_to_array(hnsw.neighbors)
    assert fill_level0(index) == 0 or (neighbors[slots] >= 0).all()
    # empty slots, as HNSW pruning or an added vector leaves them: the tails of some lists
    neighbors[slots[::7, 20:]] = -1
    neighbors[slots[5]] = -1  # one vector without links at all
    faiss.copy_array_to_vector(neighbors, hnsw.neighbors)
    before = index.search(xq, 10)
    assert fill_level0(index) == len(range(0, 3000, 7)) * 12 + 32 - 12 * (5 % 7 == 0)
    graph = faiss.vector_to_array(hnsw.neighbors)[slots]
    assert (graph >= 0).all() and (graph < 3000).all()
    assert set(graph[7]) == set(neighbors[slots[7, :20]])  # repeats of its own links
    np.testing.assert_array_equal(index.search(xq, 10)[1], before[1])
    assert fill_level0(index) == 0


def test_replicated_search_splits_queries_and_equals_one_copy(data):
    xb, xq = data
    one = faiss.IndexFlatL2(xb.shape[1])
    one.add(xb)
    two = Placed([one, faiss.clone_index(one)], Placement("cpu"))
    D, I = two.search(xq, 10, SearchOverrides())
    halves = [one.search(part, 10) for part in np.array_split(xq, 2)]  # the same code path
    D1, I1 = np.vstack([h[0] for h in halves]), np.vstack([h[1] for h in halves])
    np.testing.assert_array_equal(I, I1)
    np.testing.assert_allclose(D, D1)
    assert two.search(xq[:1], 10, SearchOverrides())[1].shape == (1, 10)


def test_twin_template_trained_for_a_gpu_without_one_is_the_cpu_one(tmp_path):
    """``train_template(gpu=0)`` where faiss sees no GPU trains on the CPU: the same
    template, byte for byte, as without the argument (the training task asks for GPU 0
    whenever the cluster has GPUs, whatever node it lands on)."""
    import numpy as np

    from shards import BuildOptions, VectorSource
    from shards.build import train_template
    from shards.cuda import gpu_count
    from shards.metric import Metric
    from tests.conftest import clustered

    if gpu_count() > 0:
        pytest.skip("the twin of tests/shards/test_gpu.py: this machine has a GPU")
    np.save(tmp_path / "xb.npy", clustered(5_000, 16, seed=2))
    source, opts = VectorSource(str(tmp_path / "xb.npy")), BuildOptions()
    cpu, asked = (
        faiss.serialize_index(train_template(source, "IVF32,Flat", Metric.parse("l2"), opts, gpu))
        for gpu in (None, 0)
    )
    assert cpu.tobytes() == asked.tobytes()
