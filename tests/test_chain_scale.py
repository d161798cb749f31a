"""verify_chain and the embedding search stream: memory stays flat as the chain grows (for
the search: with its in-memory cache off, or over its limit)."""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from app import BlockStore, Database
from app.chain._block_values import block_hash


def _write_chain(path: Path, count: int) -> None:
    """Fill a database quickly with a valid chain (straight through sqlite3)."""
    Database(f"sqlite:///{path}").dispose()
    connection = sqlite3.connect(path)
    previous, rows, vectors = "", [], []
    vector = np.arange(32, dtype=np.float32).tobytes()
    for index in range(count):
        timestamp = f"2026-01-01T00:00:{index % 60:02d}.{index:06d}"
        context = f"block {index} " + "x" * 100
        digest = block_hash(index, timestamp, context, 0.5, previous)
        rows.append((index, timestamp, context, 0.5, digest, previous))
        vectors.append((index, vector, "m", 32))
        previous = digest
    connection.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)", rows)
    connection.executemany("INSERT INTO block_embeddings VALUES (?, ?, ?, ?)", vectors)
    connection.commit()
    connection.close()


def _peak_bytes(path: Path, call: str) -> int:
    # A cache limit below the small chain's embeddings: the search streams them (a limit
    # of 0 turns the cache off, which streams them too).
    db = Database(f"sqlite:///{path}", vector_cache_limit=1_000_000 if call == "similar" else 0)
    store = BlockStore(db)
    tracemalloc.start()
    try:
        if call == "verify":
            assert store.verify_chain().ok
        else:
            assert len(store.similar(np.ones(32), top_k=5)) == 5
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("call", ["verify", "similar"])
def test_memory_does_not_grow_with_the_chain(tmp_path: Path, call: str) -> None:
    small, large = tmp_path / "small.db", tmp_path / "large.db"
    _write_chain(small, 20_000)
    _write_chain(large, 200_000)
    small_peak = _peak_bytes(small, call)
    large_peak = _peak_bytes(large, call)
    # Ten times the blocks, (nearly) the same memory: the work streams in chunks.
    assert large_peak < small_peak * 1.5 + 1_000_000, (small_peak, large_peak)
