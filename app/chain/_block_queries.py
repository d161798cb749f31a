"""Which blocks ``BlockStore``'s page, tag and importance searches, and its time windows
compared as text, select: their statements of block indices, built from checked arguments."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, select

from app.chain._block_arguments import sort_column, sort_order
from app.chain._block_sql import index_value
from app.chain._validate import check_index, check_limit, check_number, check_words
from app.models import blocks_table, tags_table


def page_query(
    start: int | None, end: int | None, limit: Any, offset: Any, sort_by: str, order: str
) -> Select[Any]:
    """:meth:`~app.blocks.BlockStore.page`'s blocks."""
    column = sort_column(sort_by)
    direction = sort_order(order)
    query = select(blocks_table.c.block_index)
    if start is not None:
        low = index_value(check_index(start, "start"))
        query = query.where(blocks_table.c.block_index >= low)
    if end is not None:
        high = index_value(check_index(end, "end"))
        query = query.where(blocks_table.c.block_index <= high)
    query = query.order_by(getattr(column, direction)(), blocks_table.c.block_index)
    return query.limit(check_limit(limit)).offset(check_limit(offset, "offset"))


def tags_query(tags: Iterable[str], limit: Any) -> Select[Any] | None:
    """:meth:`~app.blocks.BlockStore.search_tags`'s blocks (None when no tag is asked for)."""
    wanted = check_words(tags, "tags")
    if not wanted:
        return None
    query = (
        select(tags_table.c.block_index)
        .where(tags_table.c.tag.in_(wanted))
        .distinct()
        .order_by(tags_table.c.block_index)
    )
    return query.limit(check_limit(limit))


def importance_query(threshold: Any, limit: Any, sort_by: str, order: str) -> Select[Any]:
    """:meth:`~app.blocks.BlockStore.by_importance`'s blocks."""
    column = sort_column(sort_by)
    query = (
        select(blocks_table.c.block_index)
        .where(blocks_table.c.importance >= check_number(threshold, "threshold"))
        .order_by(getattr(column, sort_order(order))(), blocks_table.c.block_index)
    )
    return query.limit(check_limit(limit))


def text_window_query(low: str, high: str | None, count: int) -> Select[Any]:
    """A time window whose bounds are compared as text with the stored timestamps (a bound
    that is not ISO-8601), newest first."""
    bounds = [blocks_table.c.timestamp >= low]
    if high is not None:
        bounds.append(blocks_table.c.timestamp <= high)
    query = (
        select(blocks_table.c.block_index)
        .where(*bounds)
        .order_by(blocks_table.c.timestamp.desc(), blocks_table.c.block_index.desc())
    )
    return query.limit(count)
