"""Per-request search overrides and the per-call faiss ``SearchParameters*`` built from them.

The shared index is never mutated per request (faiss issue 2204): every knob travels in a
parameter object made for that one call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shards._faiss import faiss, faiss_ext
from shards.anatomy import Anatomy
from shards.errors import InvalidQuery

EF_SEARCH_MAX = 4096
ITOPK_MAX = 512  # cuVS CAGRA's largest intermediate list for single-block search
SEARCH_WIDTH_MAX = 64
CAGRA_ITOPK_DEFAULT = 64
HNSW_PARAMS: Any = faiss.SearchParametersHNSW  # type: ignore[attr-defined]  # missing in stubs
K_FACTOR_MAX = 64.0


@dataclass(frozen=True)
class SearchOverrides:
    """Search knobs; ``None`` means 'use the default'."""

    nprobe: int | None = None
    ef_search: int | None = None
    quantizer_ef_search: int | None = None
    k_factor: float | None = None
    itopk_size: int | None = None  # CAGRA: candidate list size (HNSW efSearch on the CPU)
    search_width: int | None = None  # CAGRA on GPU: graph nodes expanded per iteration

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | SearchOverrides | None) -> SearchOverrides:
        """Validate a mapping of overrides (unknown names and bad types raise InvalidQuery)."""
        if raw is None:
            return cls()
        if isinstance(raw, SearchOverrides):
            return raw
        if not isinstance(raw, Mapping):
            raise InvalidQuery(f"search params must be a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidQuery(f"unknown search parameter(s) {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if value is None:
                continue
            if name == "k_factor":
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                if not ok or not math.isfinite(value):
                    raise InvalidQuery(f"k_factor must be a finite number, got {value!r}")
                values[name] = float(value)
            else:
                whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                if isinstance(value, bool) or not whole:
                    raise InvalidQuery(f"{name} must be an integer, got {value!r}")
                values[name] = int(value)
        return cls(**values)

    def over(self, defaults: SearchOverrides) -> SearchOverrides:
        """These overrides laid over ``defaults``."""
        merged = {}
        for name in _FIELDS:  # per request: plain getattr, not dataclasses.asdict (deep copies)
            mine = getattr(self, name)
            merged[name] = mine if mine is not None else getattr(defaults, name)
        return SearchOverrides(**merged)

    def to_dict(self) -> dict[str, Any]:
        """The set knobs only."""
        return {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}


_FIELDS = tuple(f.name for f in fields(SearchOverrides))


@dataclass(frozen=True)
class Knobs:
    """Which overrides an index accepts, with their upper bounds."""

    nlist: int | None = None  # IVF: nprobe in [1, nlist]
    hnsw: bool = False  # ef_search
    quantizer_hnsw: bool = False  # quantizer_ef_search
    refine: bool = False  # k_factor
    cagra: bool = False  # itopk_size, search_width

    @classmethod
    def of(cls, index: faiss.Index) -> Knobs:
        a = Anatomy.of(index)
        return cls(a.nlist, a.hnsw, a.quantizer_hnsw, a.refine is not None, a.cagra)

    def names(self) -> list[str]:
        names = []
        if self.nlist is not None:
            names.append("nprobe")
        if self.hnsw:
            names.append("ef_search")
        if self.quantizer_hnsw:
            names.append("quantizer_ef_search")
        if self.refine:
            names.append("k_factor")
        if self.cagra:
            names += ["itopk_size", "search_width"]
        return names

    def check(self, ov: SearchOverrides, k: int) -> None:
        """Raise InvalidQuery for a knob this index does not have or a value out of range."""
        allowed = set(self.names())
        for name in ov.to_dict():
            if name not in allowed:
                have = ", ".join(sorted(allowed)) or "none"
                raise InvalidQuery(f"{name} does not apply to this index (it accepts: {have})")
        if ov.nprobe is not None and not 1 <= ov.nprobe <= (self.nlist or 0):
            raise InvalidQuery(f"nprobe must be in [1, {self.nlist}], got {ov.nprobe}")
        for name in ("ef_search", "quantizer_ef_search"):
            value = getattr(ov, name)
            if value is not None and not 1 <= value <= EF_SEARCH_MAX:
                raise InvalidQuery(f"{name} must be in [1, {EF_SEARCH_MAX}], got {value}")
        if ov.k_factor is not None and not 1.0 <= ov.k_factor <= K_FACTOR_MAX:
            raise InvalidQuery(f"k_factor must be in [1, {K_FACTOR_MAX:g}], got {ov.k_factor}")
        for name, top in (("itopk_size", ITOPK_MAX), ("search_width", SEARCH_WIDTH_MAX)):
            value = getattr(ov, name)
            if value is not None and not 1 <= value <= top:
                raise InvalidQuery(f"{name} must be in [1, {top}], got {value}")


# Defaults of an index built without tuning (``--no-tune``), instead of faiss's stored ones
# (nprobe 1, efSearch 16, k_factor 1), which give a poor recall without a word. These are the
# usual starting points (the faiss wiki's nprobe ~ nlist / 16); tuning replaces them.
STATIC_NPROBE_FRACTION = 16
STATIC_EF_SEARCH = 64
STATIC_K_FACTOR = 4.0


def static_defaults(knobs: Knobs) -> dict[str, Any]:
    """Stated defaults for an untuned index with ``knobs`` (empty for an exact index)."""
    out: dict[str, Any] = {}
    if knobs.nlist is not None:
        out["nprobe"] = min(knobs.nlist, max(8, knobs.nlist // STATIC_NPROBE_FRACTION))
    if knobs.hnsw:
        out["ef_search"] = STATIC_EF_SEARCH
    if knobs.quantizer_hnsw:
        out["quantizer_ef_search"] = STATIC_EF_SEARCH
    if knobs.refine:
        out["k_factor"] = STATIC_K_FACTOR
    if knobs.cagra:
        out["itopk_size"] = CAGRA_ITOPK_DEFAULT
    return out


# GPU classes exist only in faiss-gpu builds; an empty tuple matches nothing on faiss-cpu
GPU_CAGRA: tuple = tuple(getattr(faiss, n) for n in ("GpuIndexCagra",) if hasattr(faiss, n))
GPU_IVF: tuple = tuple(getattr(faiss, n) for n in ("GpuIndexIVF",) if hasattr(faiss, n))


def make_params(
    index: faiss.Index, ov: SearchOverrides, sel: faiss.IDSelector | None = None, k: int = 1
) -> tuple[faiss.SearchParameters | None, list[Any]]:
    """Build the per-call parameter object for ``index`` (CPU or GPU) and ``k`` results.

    Returns ``(params, keepalive)``: keep ``keepalive`` referenced until the search returns,
    since faiss holds raw pointers to the nested objects.
    """
    keep: list[Any] = []
    params = _params_for(faiss.downcast_index(index), ov, sel, keep, k)
    return params, keep


def _params_for(index, ov: SearchOverrides, sel, keep: list[Any], k: int) -> Any:
    p: Any
    if isinstance(index, GPU_CAGRA):
        # GpuIndexCagra reads its parameters as SearchParametersCagra: always pass one
        p = faiss_ext.SearchParametersCagra()
        itopk = ov.itopk_size if ov.itopk_size is not None else CAGRA_ITOPK_DEFAULT
        p.itopk_size = max(itopk, k)  # cuVS keeps at least k candidates
        p.search_width = ov.search_width if ov.search_width is not None else 1
    elif isinstance(index, faiss.IndexRefine):
        k_base = k * float(ov.k_factor if ov.k_factor is not None else index.k_factor)
        inner = _params_for(faiss.downcast_index(index.base_index), ov, sel, keep, int(k_base))
        p = faiss.IndexRefineSearchParameters()
        p.k_factor = float(ov.k_factor if ov.k_factor is not None else index.k_factor)
        if inner is not None:
            p.base_index_params = inner
    elif isinstance(index, faiss_ext.IndexShards):  # IVF split over GPUs: same params for each
        return _params_for(faiss.downcast_index(index.at(0)), ov, sel, keep, k)
    elif isinstance(index, faiss.IndexPreTransform):
        inner = _params_for(faiss.downcast_index(index.index), ov, sel, keep, k)
        if inner is None:
            return None
        p = faiss.SearchParametersPreTransform()
        p.index_params = inner
    elif isinstance(index, (faiss.IndexIVF, *GPU_IVF)):
        p = faiss.SearchParametersIVF()
        ivf: Any = index  # a CPU or GPU IVF index
        p.nprobe = int(ov.nprobe if ov.nprobe is not None else ivf.nprobe)
        if ov.quantizer_ef_search is not None:
            q = HNSW_PARAMS()
            q.efSearch = ov.quantizer_ef_search
            keep.append(q)
            p.quantizer_params = q
    elif isinstance(index, faiss_ext.IndexHNSWCagra):
        p = HNSW_PARAMS()  # the CPU form of CAGRA: its candidate list is HNSW's efSearch
        itopk = ov.itopk_size if ov.itopk_size is not None else CAGRA_ITOPK_DEFAULT
        p.efSearch = max(itopk, k)
    elif isinstance(index, faiss.IndexHNSW):
        p = HNSW_PARAMS()
        p.efSearch = int(ov.ef_search if ov.ef_search is not None else index.hnsw.efSearch)
    elif sel is not None:
        p = faiss.SearchParameters()
    else:
        return None
    if sel is not None and not isinstance(index, faiss.IndexRefine | faiss.IndexPreTransform):
        p.sel = sel
    keep.append(p)
    return p
