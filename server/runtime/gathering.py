"""A list output made one tensor, as a pipeline output declares with `gather = "concat" | "stack"`
(docs/CONFIG.md, "Fan-out"). Apart from fanout_io.py: jobs.py uses it, and fanout_io.py reads
jobs.py's Job type, so one module would make an import cycle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["gather_list"]


Array = NDArray[Any]


def gather_list(items: Sequence[Array], how: str, pad: float, dtype: Any, declared: tuple[int, ...]) -> Array:
    """A list output made one tensor (a pipeline output declared gather = ...): its elements, each
    padded at the end of every dim to the largest element's size with `pad`, joined on their first
    dim ("concat") or stacked on a new one ("stack"). An empty list: the declared shape with no rows
    (its dynamic dims 0)."""
    if not items:
        return np.zeros(tuple(max(d, 0) for d in declared), dtype=dtype)
    largest = tuple(max(dims) for dims in zip(*(a.shape for a in items), strict=True))
    padded = []
    for a in items:
        want = largest if how == "stack" else (a.shape[0], *largest[1:])
        if a.shape != want:
            a = np.pad(a, [(0, w - s) for s, w in zip(a.shape, want, strict=True)], constant_values=pad)
        padded.append(a)
    return np.concatenate(padded, axis=0) if how == "concat" else np.stack(padded)
