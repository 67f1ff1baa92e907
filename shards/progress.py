"""Progress bars for long steps (tqdm on stderr; silent when disabled or not a terminal)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", enabled: bool = True
) -> Iterator[T]:
    """Wrap ``items`` in a progress bar; VSEARCH_PROGRESS=0 turns every bar off."""
    off = not enabled or os.environ.get("VSEARCH_PROGRESS") == "0"
    yield from tqdm(
        items,
        desc=desc,
        total=total,
        unit=unit,
        disable=True if off else None,
        dynamic_ncols=True,
        leave=False,
    )
