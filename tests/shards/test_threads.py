"""Single queries run with one OpenMP thread in their own thread only, and answer the same."""

import threading

import numpy as np
import pytest

from shards._faiss import faiss, one_omp_thread
from tests.shards.helpers import build


def test_one_omp_thread_is_per_calling_thread_and_restored():
    default: list[int] = []
    probe = threading.Thread(target=lambda: default.append(faiss.omp_get_max_threads()))
    probe.start()
    probe.join()
    if default[0] == 1:
        pytest.skip("faiss runs one OpenMP thread here already")
    inside, other = [], []
    entered, checked = threading.Event(), threading.Event()

    def single():
        with one_omp_thread():
            inside.append(faiss.omp_get_max_threads())
            entered.set()
            checked.wait(10)
        inside.append(faiss.omp_get_max_threads())

    def bystander():  # searches at the same time in another thread
        entered.wait(10)
        other.append(faiss.omp_get_max_threads())
        checked.set()

    threads = [threading.Thread(target=single), threading.Thread(target=bystander)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inside == [1, default[0]]  # one thread inside, restored after
    assert other == default  # the other caller kept its threads meanwhile


def test_single_queries_equal_the_batch(tmp_path, data):
    xb, xq = data[0][:4000], data[1][:40]
    index = build(tmp_path, xb, index="IVF32,Flat", num_shards=2, tune=False)
    D, I = index.search(xq, 10, {"nprobe": 8})
    for i in range(len(xq)):
        Di, Ii = index.search(xq[i : i + 1], 10, {"nprobe": 8})
        np.testing.assert_array_equal(Ii[0], I[i])
        np.testing.assert_allclose(Di[0], D[i], rtol=1e-5, atol=1e-5)
