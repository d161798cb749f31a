"""Exact top-k of one state of the vector cache (``_vector_cache``): the float32 rows
through ``_vector_scores``, the compact tier's through ``_vector_quant``; both refuse a
query whose dimension differs from an embedding's in its snapshot, as the full scan does."""

from __future__ import annotations

import numpy as np
from sqlalchemy.engine import Connection

from app.search import _vector_changes, _vector_quant, _vector_scores
from app.search._vector_arrays import View
from app.search._vector_scores import Array


def search_view(
    connection: Connection,
    view: View,
    count: int,
    query: Array,
    k: int,
    floor: float | None,
    model: str | None,
    excluded: Array | None = None,
) -> list[tuple[int, float | None]]:
    """Exact top-k of the view's first ``count`` rows, leaving out the blocks ``excluded``
    (ascending: those the overlay holds)."""
    dimension = query.size
    code: int | None = None
    if model is not None:
        code = view.models.index(model) if model in view.models else -1
    if count == 0:
        return []
    present = view.quant.dims if view.quant is not None else frozenset(view.segments)
    if present != {dimension}:
        # Any embedding of another size in this snapshot (and model) makes the query
        # invalid, as it does for the full scan.
        other = view.dimension[:count] != dimension
        if code is not None:
            other &= view.model[:count] == code
        if excluded is not None:
            gone = _vector_changes.left_out(view.index[:count], excluded)
            if gone is not None:
                other &= ~gone
        if other.any():
            at = int(np.argmax(other))
            stored_model = view.models[int(view.model[at])]
            raise _vector_scores.mismatch(
                dimension, int(view.index[at]), int(view.dimension[at]), stored_model
            )
    if k == 0:
        return []
    if view.quant is not None:
        return _search_quant(connection, view, count, query, k, floor, model, code, excluded)
    found = view.segments.get(dimension)
    if found is None:
        return []
    segment, filled, zeros = found
    last = view.index[count - 1]
    rows = (
        filled
        if segment.index[filled - 1] <= last
        else int(np.searchsorted(segment.index[:filled], last, "right"))
    )
    ruled_out = ~segment.usable[:rows] if zeros else None
    if code is not None:
        other_model = segment.model[:rows] != code
        ruled_out = other_model if ruled_out is None else ruled_out | other_model
    if excluded is not None:
        gone = _vector_changes.left_out(segment.index[:rows], excluded)
        if gone is not None:
            ruled_out = gone if ruled_out is None else ruled_out | gone
    unit, indices = segment.unit[:rows], segment.index[:rows]
    return _vector_scores.unit_top_k(connection, unit, indices, ruled_out, query, k, floor, model)


def _search_quant(
    connection: Connection,
    view: View,
    count: int,
    query: Array,
    k: int,
    floor: float | None,
    model: str | None,
    code: int | None,
    excluded: Array | None,
) -> list[tuple[int, float | None]]:
    ruled_out = None
    if code is not None:
        ruled_out = view.model[:count] != code
    if excluded is not None:
        gone = _vector_changes.left_out(view.index[:count], excluded)
        if gone is not None:
            ruled_out = gone if ruled_out is None else ruled_out | gone
    return _vector_quant.search(connection, view, count, query, k, floor, model, ruled_out)
