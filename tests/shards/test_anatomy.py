"""Anatomy.of: the layers of every index kind the project builds, found once."""

import pytest

from shards._faiss import faiss
from shards.anatomy import Anatomy
from shards.choice import template_index
from shards.params import Knobs

D = 32
CASES = {
    # factory: (nlist, hnsw, cagra, refine_exact, lossless, preassignable, fast_scan, transforms)
    "Flat": (None, False, False, False, True, False, False, 0),
    "IVF16,Flat": (16, False, False, False, True, True, False, 0),
    "IVF16,PQ8x4fs,RFlat": (16, False, False, True, True, True, True, 0),
    "IVF16,PQ8": (16, False, False, False, False, True, False, 0),
    "OPQ8,IVF16,PQ8": (16, False, False, False, False, False, False, 1),
    "HNSW16": (None, True, False, False, True, False, False, 0),
    "HNSW16,SQ8": (None, True, False, False, False, False, False, 0),
    "IVF16_HNSW8,Flat": (16, False, False, False, True, True, False, 0),
    "CAGRA32": (None, False, True, False, True, False, False, 0),
}


@pytest.mark.parametrize("factory", sorted(CASES))
def test_layers_of_each_kind(factory):
    a = Anatomy.of(template_index(factory, D))
    got = (
        a.nlist,
        a.hnsw,
        a.cagra,
        a.refine_exact,
        a.lossless,
        a.preassignable,
        a.fast_scan,
        len(a.transforms),
    )
    assert got == CASES[factory]
    assert a.quantizer_hnsw == ("_HNSW" in factory)
    assert (a.refine is not None) == factory.endswith("RFlat")


def test_knobs_read_the_anatomy():
    assert Knobs.of(template_index("IVF16_HNSW8,PQ8x4fs,RFlat", D)).names() == [
        "nprobe",
        "quantizer_ef_search",
        "k_factor",
    ]
    assert Knobs.of(template_index("OPQ8,IVF16,PQ8", D)).names() == ["nprobe"]


def test_refine_with_a_lossy_re_rank_is_not_lossless():
    base = faiss.index_factory(D, "IVF16,PQ8")
    refine = faiss.IndexRefine(base, faiss.index_factory(D, "SQ8"))
    a = Anatomy.of(refine)
    assert a.refine is not None and not a.refine_exact and not a.lossless and not a.preassignable


CRASH = """
import faiss, numpy as np
x = np.random.default_rng(0).random((2000, 16), dtype=np.float32)
index = faiss.index_factory(16, "IVF16,PQ8x4fs")
index.train(x)
index.add(x)
faiss.write_index(index, "{path}")
index = faiss.read_index("{path}")
faiss.extract_index_ivf(index).make_direct_map()
index.reconstruct(5)
"""


def test_fast_scan_ivf_read_from_a_file_cannot_reconstruct_and_is_refused(tmp_path):
    """faiss kills the process reconstructing a row of a fast-scan IVF read from a file (a
    replica's health probe or a search by id did: a crash loop); vsearch refuses instead."""
    import subprocess
    import sys

    import numpy as np

    from shards.errors import UnsupportedOperation
    from tests.conftest import clustered
    from tests.shards.helpers import build

    code = CRASH.format(path=tmp_path / "fs.faiss")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert child.returncode != 0, "faiss reconstructs fast-scan IVF now: drop the guard"
    assert not Anatomy.of(faiss.index_factory(16, "IVF16,PQ8x4fs")).reconstructable
    assert Anatomy.of(faiss.index_factory(16, "IVF16,PQ8x4fs,RFlat")).reconstructable
    x = clustered(3000, 16, seed=1)
    bare = build(tmp_path, x, name="bare", index="IVF16,PQ8x4fs", tune=False)
    with pytest.raises(UnsupportedOperation, match="refine"):
        bare.search_by_id([5], 3)
    refined = build(tmp_path, x, name="refined", index="IVF16,PQ8x4fs,RFlat", tune=False)
    np.testing.assert_array_equal(refined.reconstruct([5])[0], x[5])
