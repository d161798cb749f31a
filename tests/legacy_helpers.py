"""Helpers shared by the DatabaseManager tests (importable by spawned processes too)."""

from __future__ import annotations

import hashlib
import json
import traceback
from pathlib import Path
from typing import Any

from app.legacy import DatabaseManager

from .helpers import run_threads

#: A real database written by the legacy class (copy it before opening).
LEGACY_FIXTURE = Path(__file__).parent / "fixtures" / "greeum-2.1.0-memory.db"

#: The legacy class's DDL, verbatim (Greeum 2.1.0 DatabaseManager._create_schemas).
LEGACY_DDL = [
    """CREATE TABLE IF NOT EXISTS blocks (
        block_index INTEGER PRIMARY KEY,
        timestamp TEXT NOT NULL,
        context TEXT NOT NULL,
        importance REAL NOT NULL,
        hash TEXT NOT NULL,
        prev_hash TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS block_keywords (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        block_index INTEGER NOT NULL,
        keyword TEXT NOT NULL,
        FOREIGN KEY (block_index) REFERENCES blocks(block_index),
        UNIQUE(block_index, keyword)
    )""",
    """CREATE TABLE IF NOT EXISTS block_tags (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        block_index INTEGER NOT NULL,
        tag TEXT NOT NULL,
        FOREIGN KEY (block_index) REFERENCES blocks(block_index),
        UNIQUE(block_index, tag)
    )""",
    """CREATE TABLE IF NOT EXISTS block_metadata (
        block_index INTEGER PRIMARY KEY,
        metadata TEXT NOT NULL,
        FOREIGN KEY (block_index) REFERENCES blocks(block_index)
    )""",
    """CREATE TABLE IF NOT EXISTS block_embeddings (
        block_index INTEGER PRIMARY KEY,
        embedding BLOB NOT NULL,
        embedding_model TEXT,
        embedding_dim INTEGER,
        FOREIGN KEY (block_index) REFERENCES blocks(block_index)
    )""",
    """CREATE TABLE IF NOT EXISTS short_term_memories (
        id TEXT PRIMARY KEY,
        timestamp TEXT NOT NULL,
        content TEXT NOT NULL,
        speaker TEXT,
        metadata TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_blocks_timestamp ON blocks(timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_block_keywords ON block_keywords(keyword)",
    "CREATE INDEX IF NOT EXISTS idx_block_tags ON block_tags(tag)",
    "CREATE INDEX IF NOT EXISTS idx_stm_timestamp ON short_term_memories(timestamp)",
]


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
        assert start.wait(60), "the parent never gave the start"
        failures = run_threads(threads, lambda _: append_with_transaction(db, blocks))
        # Tracebacks as text: an exception object may not survive the trip between processes.
        results.put(["".join(traceback.format_exception(exc)) for exc in failures])
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
