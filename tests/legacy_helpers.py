"""Helpers shared by the DatabaseManager tests (importable by spawned processes too)."""

from __future__ import annotations

import hashlib
import json
import threading
import traceback
from collections.abc import Callable
from typing import Any

from app.legacy import DatabaseManager


def legacy_hash(index: int, timestamp: str, context: str, importance: float, prev_hash: str) -> str:
    """The block hash exactly as the legacy callers computed it (written out, not imported)."""
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


def next_block(
    last: dict[str, Any] | None, context: str = "memory", importance: float = 0.5, **extra: Any
) -> dict[str, Any]:
    """The block the legacy BlockManager built after ``last`` (get_last_block_info())."""
    index = 0 if last is None else last["block_index"] + 1
    prev_hash = "" if last is None else last["hash"]
    timestamp = f"2024-05-01T10:{index // 60 % 60:02d}:{index % 60:02d}.{index:06d}"
    block = {
        "block_index": index,
        "timestamp": timestamp,
        "context": f"{context} {index}",
        "importance": importance,
        "prev_hash": prev_hash,
        "hash": legacy_hash(index, timestamp, f"{context} {index}", importance, prev_hash),
    }
    block.update(extra)
    return block


def chain_is_intact(db: DatabaseManager) -> tuple[int, int | None]:
    """(number of blocks, first bad index or None), read through the facade's own conn."""
    rows = db.conn.execute(
        "SELECT block_index, timestamp, context, importance, hash, prev_hash "
        "FROM blocks ORDER BY block_index"
    ).fetchall()
    previous = ""
    for position, row in enumerate(rows):
        index, timestamp, context, importance, digest, prev_hash = tuple(row)
        if index != position or prev_hash != previous:
            return len(rows), position
        if legacy_hash(index, timestamp, context, importance, prev_hash) != digest:
            return len(rows), index
        previous = digest
    return len(rows), None


def run_threads(count: int, target: Callable[[int], None]) -> list[str]:
    """Run ``target(i)`` in ``count`` threads started together; return their error reports."""
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def body(number: int) -> None:
        try:
            barrier.wait()
            target(number)
        except BaseException:  # noqa: BLE001 - every failure is reported by the test
            with lock:
                failures.append(traceback.format_exc())

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def append_with_transaction(db: DatabaseManager, blocks: int) -> None:
    """The legacy pattern: read the last block, then add the next one, in one transaction."""
    for _ in range(blocks):
        with db.transaction():
            last = db.get_last_block_info()
            db.add_block(next_block(last, keywords=["load"], tags=["t"]))


def process_appender(url: str, threads: int, blocks: int, start: Any, results: Any) -> None:
    """Body of one process of the multi-process test (spawned: module-level, picklable)."""
    db = DatabaseManager(url)
    try:
        start.wait(60)
        failures = run_threads(threads, lambda _: append_with_transaction(db, blocks))
        results.put(failures)
    except BaseException:  # noqa: BLE001 - reported to the parent process
        results.put([traceback.format_exc()])
    finally:
        db.close()


LEGACY_TABLES = (
    "blocks",
    "block_keywords",
    "block_tags",
    "block_metadata",
    "block_embeddings",
    "short_term_memories",
)


def row_counts(db: DatabaseManager) -> dict[str, int]:
    """Rows per legacy table, read through ``db.conn``."""
    return {t: db.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in LEGACY_TABLES}
