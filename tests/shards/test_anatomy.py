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
