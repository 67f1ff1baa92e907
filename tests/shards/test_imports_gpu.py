"""Import rules, and the GPU placement's CPU twin (the GPU tests skip without a GPU)."""

import subprocess
import sys

import numpy as np
import pytest

from shards import ShardedIndex
from shards.errors import GpuOutOfMemory, GpuUnavailable, InvalidInput
from shards.gpu import check_fits, gpu_count, parse_device, place, to_gpu
from tests.shards.helpers import build


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_importing_shards_never_imports_ray():
    proc = run_python(
        "import sys, shards, shards.cli, shards.metadata, shards.gpu, "
        "shards.tune_existing; print('ray' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_missing_faiss_names_the_extra():
    proc = run_python("import sys; sys.modules['faiss'] = None; import shards")
    assert proc.returncode != 0
    assert "'cpu' extra" in proc.stderr and "'gpu' extra" in proc.stderr


def test_cpu_placement_is_explicit(tmp_path, data):
    index = build(tmp_path, data[0][:500], index="Flat")
    shard = index.shards[0].index
    same, where = place(shard, "cpu")
    assert same is shard and where.device == "cpu" and not where.cuvs


@pytest.mark.skipif(gpu_count() > 0, reason="this machine has a GPU")
def test_gpu_without_gpu_raises(tmp_path, data):
    index = build(tmp_path, data[0][:500], index="Flat")
    with pytest.raises(GpuUnavailable, match="'gpu'"):
        place(index.shards[0].index, "cuda:0")


def test_fit_check_and_device_parsing():
    check_fits(100, 1_000, "cuda:0")
    with pytest.raises(GpuOutOfMemory, match="only 0 MiB is free"):
        check_fits(2**30, 2**10, "cuda:0")
    assert parse_device("cuda:1") == 1 and parse_device("cpu") is None
    with pytest.raises(InvalidInput):
        parse_device("tpu:0")


@pytest.mark.gpu
def test_gpu_flat_equals_cpu(tmp_path, data):
    index: ShardedIndex = build(tmp_path, data[0], index="Flat")
    cpu = index.shards[0].index
    gpu, where = to_gpu(cpu, 0)
    assert where.device == "cuda:0"
    Dc, Ic = cpu.search(data[1], 10)
    Dg, Ig = gpu.search(data[1], 10)
    np.testing.assert_allclose(Dg, Dc, rtol=1e-4)
    assert (Ig == Ic).mean() > 0.99


@pytest.mark.gpu
def test_gpu_refuses_what_does_not_fit(tmp_path, data):
    from shards.gpu import gpu_memory

    free, _ = gpu_memory(0)
    with pytest.raises(GpuOutOfMemory):
        check_fits(free * 2, free, "cuda:0")
