"""The benchmark's unit of work: the same blocks for every strategy, the legacy hash, and the
checks that run after a case (chain intact, counter exact)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from app.operations.stress import StressBlock, make_block, now, percentiles

__all__ = ["BenchBlock", "make_block", "now", "percentiles"]

# The blocks are those of ``app stress``: the same shape as a real memory block.
KEYWORDS_PER_BLOCK = 3
TAGS_PER_BLOCK = 2
BenchBlock = StressBlock


def legacy_hash(index: int, timestamp: str, context: str, importance: float, prev_hash: str) -> str:
    """The block hash as the legacy callers computed it (kept separate from the library's)."""
    payload = {
        "block_index": index,
        "timestamp": timestamp,
        "context": context,
        "importance": importance,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()


def legacy_block(
    block: BenchBlock, last: tuple[int, str] | None, timestamp: str | None = None
) -> dict[str, Any]:
    """The dict a legacy caller passes to ``add_block``, chained onto ``last`` (index, hash)."""
    index, prev_hash = (last[0] + 1, last[1]) if last is not None else (0, "")
    stamp = timestamp or now()
    return {
        "block_index": index,
        "timestamp": stamp,
        "context": block.context,
        "keywords": list(block.keywords),
        "tags": list(block.tags),
        "importance": block.importance,
        "metadata": block.metadata,
        "embedding": block.embedding,
        "embedding_model": "default",
        "hash": legacy_hash(index, stamp, block.context, block.importance, prev_hash),
        "prev_hash": prev_hash,
    }


@dataclass(frozen=True)
class Verdict:
    """The outcome of the after-run check: ``intact`` and, when not, what is wrong."""

    intact: bool
    problem: str = ""


def check_chain(path: str, appended: int) -> Verdict:
    """Indices 0..n-1 without gaps, every hash and link right (legacy formula), ``appended``
    blocks stored, and each block's keywords, tags, metadata and embedding present."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT block_index, timestamp, context, importance, hash, prev_hash "
            "FROM blocks ORDER BY block_index"
        )
        expected, previous, count = 0, "", 0
        for index, timestamp, context, importance, digest, prev_hash in rows:
            if index != expected:
                return Verdict(False, f"index {index} where {expected} was expected (gap)")
            if prev_hash != previous:
                return Verdict(False, f"block {index} does not link to block {index - 1}")
            if legacy_hash(index, timestamp, context, importance, prev_hash) != digest:
                return Verdict(False, f"block {index} has a wrong hash")
            expected, previous, count = index + 1, digest, count + 1
        if count != appended:
            return Verdict(False, f"{count} blocks stored but {appended} appends succeeded")
        children = {
            "block_keywords": KEYWORDS_PER_BLOCK * count,
            "block_tags": TAGS_PER_BLOCK * count,
            "block_metadata": count,
            "block_embeddings": count,
        }
        for table, want in children.items():
            (got,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            if got != want:
                return Verdict(False, f"{table} has {got} rows, expected {want} (partial blocks)")
        return Verdict(True)
    finally:
        conn.close()


COUNTER_DDL = "CREATE TABLE IF NOT EXISTS bench_counter (id INTEGER PRIMARY KEY, value INTEGER)"


def check_counter(path: str, units: int) -> Verdict:
    """The counter equals the number of units that reported success (no lost update)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM bench_counter WHERE id = 1").fetchone()
    finally:
        conn.close()
    value = row[0] if row else 0
    if value != units:
        return Verdict(False, f"counter is {value} after {units} successful increments")
    return Verdict(True)
