"""Huge pages under a loaded index: the right arrays advised, the answers unchanged."""

import sys

import numpy as np
import pytest

from shards import hugepages
from shards._faiss import faiss
from tests.conftest import clustered


def _thp_available() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def test_arrays_are_the_vectors_and_the_links_a_search_reads_at_random():
    d, n = 32, 2000
    xb = clustered(n, d, seed=1)
    index = faiss.index_factory(d, "PCA16,HNSW8,Flat,RFlat")
    index.train(xb)
    index.add(xb)
    sizes = sorted(nbytes for _, nbytes in hugepages.arrays(index))
    # the graph's links (int32), the graph's 16-d vectors, the refine's 32-d vectors
    hnsw = faiss.downcast_index(faiss.downcast_index(faiss.downcast_index(index).base_index).index)
    assert sizes == sorted([hnsw.hnsw.neighbors.size() * 4, n * 16 * 4, n * d * 4])
    assert all(address > 0 for address, _ in hugepages.arrays(index))
    ivf = faiss.index_factory(d, "IVF16,PQ8x4fs")  # lists of small arrays: nothing to advise
    ivf.train(xb)
    ivf.add(xb)
    assert list(hugepages.arrays(ivf)) == []


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _thp_available(),
    reason="transparent huge pages are a Linux feature, off here",
)
def test_advised_index_answers_the_same():
    d, n = 64, 50_000  # 12.8 MB of vectors: whole huge pages inside
    xb = clustered(n, d, seed=2)
    xq = clustered(50, d, seed=3)
    index = faiss.IndexFlatL2(d)
    index.add(xb)
    before = index.search(xq, 10)
    advised = hugepages.advise(index, wait=True)
    assert hugepages.MIN_BYTES <= advised <= n * d * 4
    assert advised % hugepages.HUGE_PAGE == 0
    after = index.search(xq, 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    small = faiss.IndexFlatL2(d)
    small.add(xb[:1000])  # 256 KB: fits the TLB anyway
    assert hugepages.advise(small, wait=True) == 0
