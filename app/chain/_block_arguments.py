"""The arguments of :class:`~app.blocks.BlockStore`'s pages and searches that are more than
one checked value (see ``_validate``): sort columns and orders, a similarity query, fusion
weights. Each is refused with :class:`~app.errors.InvalidInputError` naming it."""

from __future__ import annotations

from typing import Any

import numpy as np

from app import errors
from app.chain._block_values import encode_embedding
from app.chain._validate import check_limit, check_number, check_text
from app.models import blocks_table

#: Columns a page of blocks may be sorted by (never taken from the caller as SQL).
SORT_COLUMNS = {
    "block_index": blocks_table.c.block_index,
    "timestamp": blocks_table.c.timestamp,
    "importance": blocks_table.c.importance,
}
_ORDERS = ("asc", "desc")


def similarity_arguments(
    query_embedding: Any, top_k: Any, min_similarity: Any, model: Any
) -> tuple[np.ndarray[Any, Any], int, float | None, str | None]:
    """The checked query (float32), k, floor and model of a similarity search."""
    raw, _ = encode_embedding(query_embedding, "query embedding")
    query = np.frombuffer(raw, dtype=np.float32)
    if not query.any():
        raise errors.InvalidInputError("query embedding has length zero")
    k = check_limit(top_k, "top_k")
    floor = None if min_similarity is None else check_number(min_similarity, "min_similarity")
    wanted = None if model is None else check_text(model, "model")
    return query, k, floor, wanted


def fusion_weights(weights: Any) -> tuple[float, float]:
    if not isinstance(weights, tuple | list) or len(weights) != 2:
        raise errors.InvalidInputError(
            f"weights must be a pair (keyword, vector) of numbers, got {weights!r}"
        )
    keyword, vector = (check_number(w, "weights") for w in weights)
    if keyword < 0 or vector < 0 or keyword + vector == 0:
        raise errors.InvalidInputError(
            f"weights must be >= 0 and not both 0, got ({keyword}, {vector})"
        )
    return keyword, vector


def sort_column(sort_by: str) -> Any:
    try:
        return SORT_COLUMNS[sort_by]
    except (KeyError, TypeError):
        raise errors.InvalidInputError(
            f"sort_by must be one of {', '.join(SORT_COLUMNS)}; got {sort_by!r}"
        ) from None


def sort_order(order: str) -> str:
    if not isinstance(order, str) or order.lower() not in _ORDERS:
        raise errors.InvalidInputError(f"order must be 'asc' or 'desc'; got {order!r}")
    return order.lower()
