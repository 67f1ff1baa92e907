"""What a faiss index is made of, found once: the layers a search passes through.

Every index this project builds is, from the outside in: an optional exact re-rank
(``IndexRefine``), an optional chain of vector transforms (``IndexPreTransform``), and a
core (IVF, HNSW, CAGRA's CPU form, or flat codes). ``Anatomy.of(index)`` walks that once;
the search knobs (``shards.params``), the GPU cloner (``shards.gpu``), the size estimates
(``shards.sizing``), shared coarse quantization (``shards.coarse``) and compaction
(``shards.shard``) read it instead of each walking the index again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shards._faiss import faiss, faiss_ext


@dataclass(frozen=True)
class Anatomy:
    """The layers of one index, as (downcast) views of its sub-indexes."""

    owner: Any  # the index as given: its Python object owns the C++ index the views point into
    top: Any  # the index itself, downcast
    refine: Any  # the IndexRefine, or None
    transforms: tuple[Any, ...]  # the pre-transform chain (outermost first), or ()
    core: Any  # the innermost index: IVF, HNSW (or CAGRA), flat codes

    @classmethod
    def of(cls, index: faiss.Index) -> Anatomy:
        top = faiss.downcast_index(index)
        node, refine = top, None
        transforms: tuple[Any, ...] = ()
        if isinstance(node, faiss.IndexRefine):
            refine, node = node, faiss.downcast_index(node.base_index)
        if isinstance(node, faiss.IndexPreTransform):
            chain = node.chain  # a SWIG vector (the stub calls it a list)
            transforms = tuple(
                faiss.downcast_VectorTransform(chain.at(i))  # type: ignore[attr-defined]
                for i in range(chain.size())  # type: ignore[attr-defined]
            )
            node = faiss.downcast_index(node.index)
        return cls(index, top, refine, transforms, node)

    @property
    def ivf(self) -> Any:
        """The IVF core, or None."""
        return self.core if isinstance(self.core, faiss.IndexIVF) else None

    @property
    def nlist(self) -> int | None:
        return int(self.core.nlist) if self.ivf is not None else None

    @property
    def quantizer(self) -> Any:
        """The IVF coarse quantizer (downcast), or None."""
        return faiss.downcast_index(self.core.quantizer) if self.ivf is not None else None

    @property
    def quantizer_hnsw(self) -> bool:
        return isinstance(self.quantizer, faiss.IndexHNSW)

    @property
    def fast_scan(self) -> bool:
        return isinstance(self.core, faiss_ext.IndexIVFFastScan)

    @property
    def cagra(self) -> bool:
        return isinstance(self.core, faiss_ext.IndexHNSWCagra)

    @property
    def hnsw(self) -> bool:
        """An HNSW graph searched with efSearch (CAGRA's CPU form is counted as CAGRA)."""
        return isinstance(self.core, faiss.IndexHNSW) and not self.cagra

    @property
    def flat(self) -> bool:
        return isinstance(self.core, faiss.IndexFlat)

    @property
    def refine_exact(self) -> bool:
        """The re-rank holds exact float32 vectors (``IndexRefineFlat``'s kind)."""
        return self.refine is not None and isinstance(
            faiss.downcast_index(self.refine.refine_index), faiss.IndexFlat
        )

    @property
    def lossless(self) -> bool:
        """``reconstruct`` returns the exact stored vectors (what compaction needs)."""
        if self.refine is not None:
            return self.refine_exact
        if self.transforms:
            return False
        core = self.core
        if isinstance(core, faiss.IndexHNSW):
            core = faiss.downcast_index(core.storage)
        return isinstance(core, faiss.IndexFlat | faiss.IndexIVFFlat)

    @property
    def distances_exact(self) -> bool:
        """Every distance a search reports is computed in float32 from the whole query and
        stored exact vectors, so a NaN or an infinity anywhere in the query makes each of
        them non-finite (a transform, quantized codes or lookup tables could hide it)."""
        return self.lossless

    @property
    def reconstructable(self) -> bool:
        """``reconstruct`` is safe: faiss 1.15's fast-scan IVF (without a refine index,
        which reconstructs instead) crashes the process reconstructing a row once it has
        been read from a file (``tests/shards/test_anatomy.py`` shows it in a child)."""
        return self.refine is not None or not self.fast_scan

    @property
    def preassignable(self) -> bool:
        """IVF, or IVF re-ranked exactly: searchable with a shared coarse assignment."""
        return (
            self.ivf is not None
            and not self.transforms
            and (self.refine is None or self.refine_exact)
        )
