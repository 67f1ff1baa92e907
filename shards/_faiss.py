"""Import faiss once, with one clear message when neither faiss build is installed."""

from __future__ import annotations

try:
    import faiss
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "vsearch needs faiss: install the 'cpu' extra (pip install 'vsearch[cpu]', faiss-cpu) "
        "or, on a CUDA machine, the 'gpu' extra (pip install 'vsearch[gpu]', faiss-gpu-cuvs); "
        "never both, they install the same module"
    ) from exc

__all__ = ["faiss"]
