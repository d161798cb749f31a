"""Strategies on the bare ``sqlite3`` module: the floor, and the usual hand-made fixes.

Every strategy here runs the statements of the legacy ``add_block`` (one row in ``blocks``,
``INSERT OR IGNORE`` per keyword and tag, metadata JSON, float32 embedding) with the same
pragmas as the layer (WAL, synchronous=NORMAL, foreign_keys, busy_timeout 5 s), so only the
way threads share connections and transactions differs.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from typing import Any

import numpy as np

from ._target import Target
from ._workload import BenchBlock, legacy_block

BUSY_TIMEOUT = 5.0
HEAD_SQL = "SELECT block_index, hash FROM blocks ORDER BY block_index DESC LIMIT 1"


def connect(path: str, *, autocommit: bool, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection with the layer's pragmas; ``autocommit`` leaves BEGIN to the caller."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=check_same_thread)
    if autocommit:
        conn.isolation_level = None
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def insert_block(cursor: sqlite3.Cursor | sqlite3.Connection, data: dict[str, Any]) -> None:
    """The legacy ``add_block`` statements, verbatim in effect."""
    index = data["block_index"]
    cursor.execute(
        "INSERT INTO blocks (block_index, timestamp, context, importance, hash, prev_hash) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            index,
            data["timestamp"],
            data["context"],
            data["importance"],
            data["hash"],
            data["prev_hash"],
        ),
    )
    for keyword in data["keywords"]:
        cursor.execute(
            "INSERT OR IGNORE INTO block_keywords (block_index, keyword) VALUES (?, ?)",
            (index, keyword),
        )
    for tag in data["tags"]:
        cursor.execute(
            "INSERT OR IGNORE INTO block_tags (block_index, tag) VALUES (?, ?)", (index, tag)
        )
    if data["metadata"]:
        cursor.execute(
            "INSERT INTO block_metadata (block_index, metadata) VALUES (?, ?)",
            (index, json.dumps(data["metadata"])),
        )
    vector = np.array(data["embedding"], dtype=np.float32)
    cursor.execute(
        "INSERT INTO block_embeddings (block_index, embedding, embedding_model, embedding_dim) "
        "VALUES (?, ?, ?, ?)",
        (index, vector.tobytes(), data["embedding_model"], len(vector)),
    )


def append_immediate(conn: sqlite3.Connection, block: BenchBlock) -> None:
    """Read the head and insert the next block in one ``BEGIN IMMEDIATE`` transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        last = conn.execute(HEAD_SQL).fetchone()
        insert_block(conn, legacy_block(block, last))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class _Locked(Target):
    def __init__(self, path: str) -> None:
        self.conn = connect(path, autocommit=True, check_same_thread=False)
        self.lock = threading.Lock()

    def unit(self, block: BenchBlock) -> None:
        with self.lock:
            append_immediate(self.conn, block)

    def close(self) -> None:
        self.conn.close()


def sqlite3_lock(path: str) -> Target:
    """sqlite3: one shared connection behind a threading.Lock"""
    return _Locked(path)


class _ThreadLocal(Target):
    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is None:
            # sqlite3's default transaction handling: BEGIN (DEFERRED) just before the
            # first INSERT; the head is read outside that transaction.
            conn = self.local.conn = connect(self.path, autocommit=False)
        return conn

    def unit(self, block: BenchBlock) -> None:
        conn = self._conn()
        try:
            last = conn.execute(HEAD_SQL).fetchone()
            insert_block(conn, legacy_block(block, last))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def thread_done(self) -> None:
        # sqlite3 refuses to close a connection from another thread than its own.
        conn: sqlite3.Connection | None = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None


def sqlite3_thread_local(path: str) -> Target:
    """sqlite3: a connection per thread, DEFERRED transactions, busy_timeout"""
    return _ThreadLocal(path)


POOL_SIZE = 5


class _Pooled(Target):
    def __init__(self, path: str) -> None:
        self.pool: queue.Queue[sqlite3.Connection] = queue.Queue()
        self.all = [
            connect(path, autocommit=True, check_same_thread=False) for _ in range(POOL_SIZE)
        ]
        for conn in self.all:
            self.pool.put(conn)

    def unit(self, block: BenchBlock) -> None:
        conn = self.pool.get()
        try:
            append_immediate(conn, block)
        finally:
            self.pool.put(conn)

    def close(self) -> None:
        for conn in self.all:
            conn.close()


def sqlite3_pool(path: str) -> Target:
    """sqlite3: a queue.Queue pool of 5 connections, BEGIN IMMEDIATE, busy_timeout"""
    return _Pooled(path)


#: Appends per transaction of the ceiling.
CEILING_BATCH = 1000


class _Ceiling(Target):
    """Appends written ``CEILING_BATCH`` to a transaction on one connection, the head kept
    in memory between them: what bare sqlite3 can do with the layer's schema, triggers and
    rows when nothing is shared. Meant for one thread; the lock only keeps it correct
    when more call it (the harness's tests run every strategy at several threads)."""

    def __init__(self, path: str) -> None:
        self.conn = connect(path, autocommit=True, check_same_thread=False)
        self.lock = threading.Lock()
        self.head: tuple[int, str] | None = None
        self.pending = 0  # appends in the open transaction

    def unit(self, block: BenchBlock) -> None:
        with self.lock:
            conn = self.conn
            if not self.pending:
                conn.execute("BEGIN IMMEDIATE")
                self.head = conn.execute(HEAD_SQL).fetchone()
            try:
                data = legacy_block(block, self.head)
                insert_block(conn, data)
            except BaseException:
                self.pending = 0
                conn.execute("ROLLBACK")  # the appends of this transaction are lost:
                raise  # the chain check reports them (a ceiling has no retries)
            self.head = (data["block_index"], data["hash"])
            self.pending += 1
            if self.pending >= CEILING_BATCH:
                self._commit()

    def _commit(self) -> None:
        if self.pending:
            self.pending = 0
            self.conn.execute("COMMIT")

    def thread_done(self) -> None:
        # Each thread's last appends are committed before it counts as finished, so the
        # commit of the last partial transaction is inside the measured time.
        with self.lock:
            self._commit()

    def close(self) -> None:
        with self.lock:
            self._commit()
        self.conn.close()


def sqlite3_ceiling(path: str) -> Target:
    """sqlite3 ceiling: one connection, 1,000 appends per BEGIN IMMEDIATE transaction, the
    head kept in memory (the layer's schema and triggers; run at one thread)"""
    return _Ceiling(path)
