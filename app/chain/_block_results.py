"""What :class:`~app.blocks.BlockStore` returns besides blocks: a search's scored blocks and
hits, the chain's head, and what checking the chain found, with the check itself.

They are plain frozen records, as the blocks themselves (``BlockRecord``) are: see
``blocks``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.engine import Connection

from app.chain._block_sql import BlockRecord
from app.chain._block_values import block_hash
from app.models import blocks_table

__all__ = ["ChainCheck", "ChainHead", "ScoredBlock", "SearchHit", "check_chain"]

_STREAM_CHUNK = 4096


class ScoredBlock(NamedTuple):
    block: BlockRecord
    similarity: float


class SearchHit(NamedTuple):
    """A block found by :meth:`~app.blocks.BlockStore.search`, with its fused score and the
    ranks it had in the keyword and the vector list (1 = first; None when it was not in that
    list)."""

    block: BlockRecord
    score: float
    keyword_rank: int | None
    vector_rank: int | None
    similarity: float | None


class ChainHead(NamedTuple):
    block_index: int
    hash: str


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """What :meth:`~app.blocks.BlockStore.verify_chain` found. True when the chain is intact.

    Attributes:
        checked: blocks read: every block when the chain is intact, else the good ones
            before the first bad index and the block where the problem was found.
        first_bad_index: the first index where the chain is wrong, or None when intact.
            A chain broken at block 0 gives 0, so test ``ok`` (or the object itself),
            never this number's truth.
        problem: what is wrong at ``first_bad_index``, in words ('' when intact).
    """

    checked: int
    first_bad_index: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        """True when the chain is intact."""
        return self.first_bad_index is None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"intact ({self.checked:,} blocks)"
        return f"broken at block {self.first_bad_index}: {self.problem}"


def check_chain(connection: Connection, progress: Callable[[int], None] | None) -> ChainCheck:
    """:meth:`~app.blocks.BlockStore.verify_chain` in the connection's snapshot: the chain
    streamed in index order (memory stays bounded), every hash and link recomputed."""
    stmt = select(
        blocks_table.c.block_index,
        blocks_table.c.timestamp,
        blocks_table.c.context,
        blocks_table.c.importance,
        blocks_table.c.hash,
        blocks_table.c.prev_hash,
    ).order_by(blocks_table.c.block_index)
    expected_index, previous = 0, ""
    result = connection.execute(stmt.execution_options(yield_per=_STREAM_CHUNK))
    for chunk in result.partitions():
        for index, timestamp, context, importance, digest, prev_hash in chunk:
            problem = ""
            if index != expected_index:
                problem = f"block {expected_index} is missing (the next block is {index})"
            elif prev_hash != previous:
                problem = (
                    f"block {index}'s prev_hash is not block {index - 1}'s hash"
                    if index
                    else "block 0's prev_hash is not empty, as the first block's must be"
                )
            elif not _hash_matches(digest, index, timestamp, context, importance, prev_hash):
                problem = (
                    f"block {index}'s hash does not match its timestamp, context, "
                    "importance and prev_hash (one of them, or the hash, was changed)"
                )
            if problem:
                return ChainCheck(expected_index + 1, expected_index, problem)
            expected_index, previous = index + 1, digest
        if progress is not None:
            progress(expected_index)
    return ChainCheck(checked=expected_index)


def _hash_matches(
    digest: str, index: int, timestamp: str, context: str, importance: float, prev_hash: str
) -> bool:
    if block_hash(index, timestamp, context, importance, prev_hash) == digest:
        return True
    # A caller of the legacy class may have hashed an integral importance as an int (1)
    # although the REAL column gives it back as 1.0, or hashed -0.0, which SQLite stores as 0.
    if not float(importance).is_integer():
        return False
    if block_hash(index, timestamp, context, int(importance), prev_hash) == digest:
        return True
    return importance == 0 and block_hash(index, timestamp, context, -0.0, prev_hash) == digest
