"""The fault harness: a disk that fills up (a page limit on every connection), a file or
directory made unwritable, a writer in another process, and the checks that a fault left
nothing half written behind.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app import BlockStore, Database

from .helpers import JOIN_TIMEOUT, assert_chain_intact, in_thread, run_threads

CHAIN_TABLES = ("blocks", "block_keywords", "block_tags", "block_metadata", "block_embeddings")
#: Far above any database a test builds: "no limit" for ``PRAGMA max_page_count``.
NO_PAGE_LIMIT = 1 << 30


def big_block(tag: str, seq: int) -> dict[str, Any]:
    """Append arguments filling every chain table, large enough to need new pages often."""
    return {
        "context": f"{tag}#{seq} " + "lorem ipsum dolor " * (60 + seq % 50),
        "keywords": [f"{tag}-k{seq}-{j}" for j in range(seq % 9)],
        "tags": [f"t{seq % 5}", tag],
        "metadata": {"writer": tag, "seq": seq, "pad": "m" * (seq % 300)},
        "embedding": [((seq + j) % 17) / 17.0 + 0.01 for j in range(96)],
    }


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def page_count(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(text("PRAGMA page_count")).scalar_one())


def quick_check(db: Database) -> str:
    with db.read() as session:
        return str(session.execute(text("PRAGMA quick_check")).scalar_one())


def rows_from(db: Database, first_index: int) -> dict[str, int]:
    """Rows at or after ``first_index`` in every chain table."""
    with db.read() as session:
        return {
            table: int(
                session.execute(
                    text(f"SELECT count(*) FROM {table} WHERE block_index >= :first"),
                    {"first": first_index},
                ).scalar_one()
            )
            for table in CHAIN_TABLES
        }


def orphan_rows(db: Database) -> dict[str, int]:
    """Rows of the side tables whose block is not in ``blocks`` (a half-written block)."""
    with db.read() as session:
        return {
            table: int(
                session.execute(
                    text(
                        f"SELECT count(*) FROM {table} "
                        "WHERE block_index NOT IN (SELECT block_index FROM blocks)"
                    )
                ).scalar_one()
            )
            for table in CHAIN_TABLES[1:]
        }


def assert_chain_whole(db: Database, count: int) -> None:
    """The chain is intact with exactly ``count`` blocks (see ``assert_chain_intact``), no
    side-table row lacks its block, and SQLite finds the file sound."""
    assert_chain_intact(db, count)
    assert orphan_rows(db) == dict.fromkeys(CHAIN_TABLES[1:], 0)
    if db.settings.is_sqlite:
        assert quick_check(db) == "ok"


def outcome(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    """Store under ``name`` what ``fn()`` returned, or the exception it raised."""
    try:
        results[name] = fn()
    except BaseException as exc:  # noqa: BLE001 - checked by the caller
        results[name] = exc


def assert_nothing_from(db: Database, first_index: int) -> None:
    """No chain table has a row at or after ``first_index``."""
    assert rows_from(db, first_index) == dict.fromkeys(CHAIN_TABLES, 0)


class PageLimit:
    """A disk that fills up: ``PRAGMA max_page_count`` on every connection the pool hands out.

    The pragma belongs to one connection, and the pool holds several, opened at different
    times; setting it at each checkout puts every unit (reads, writes, the group committer's
    batches) under the current limit.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.limit = NO_PAGE_LIMIT
        event.listen(db.engine, "checkout", self._apply)

    def _apply(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {int(self.limit)}")

    def leave(self, pages: int) -> None:
        """Allow only ``pages`` more pages than the database has now."""
        self.limit = NO_PAGE_LIMIT
        self.limit = page_count(self.db) + pages

    def lift(self) -> None:
        """Space is freed."""
        self.limit = NO_PAGE_LIMIT


@dataclass
class Outcomes:
    """What each of several threads got: its records, or the exception it met."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    records: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def record(self, value: Any) -> None:
        with self.lock:
            self.records.append(value)

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)


def timed_append(db: Database, context: str) -> tuple[float, int]:
    """Seconds a write unit took to append one block in this thread, and its index."""
    started = time.monotonic()
    with db.unit_of_work():
        record = BlockStore(db).append(context)
    return time.monotonic() - started, record.block_index


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make ``path`` (a file or a directory) unwritable while the database is open, even
    for root (who ignores permission bits): chmod for a normal user, the immutable
    attribute for root."""
    if os.geteuid() != 0:
        before = path.stat().st_mode
        path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            path.chmod(before)
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(
            "running as root on a file system without chattr +i: cannot make the "
            "file read-only for root"
        )
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def checkpointed_bytes(db: Database, path: Path) -> bytes:
    """The file's bytes with every page in it (none left in the WAL)."""
    db.checkpoint("truncate")
    return path.read_bytes()


def fill_from_threads(db: Database, store: BlockStore, threads: int, inside_unit: bool) -> Outcomes:
    """``threads`` threads, started together, each append until their first error (every
    one must meet one): what each got, records and errors."""
    outcomes = Outcomes()

    def append_until_full(worker: int) -> None:
        for seq in range(1000):
            block = big_block(f"w{worker}", seq)
            try:
                if inside_unit:
                    with db.unit_of_work():
                        record = store.append(**block)
                else:
                    record = store.append(**block)
            except Exception as exc:  # noqa: BLE001 - checked by the test
                outcomes.error(exc)
                return
            outcomes.record(record)
        outcomes.error(AssertionError(f"worker {worker} never met a full disk"))

    assert run_threads(threads, append_until_full) == []
    return outcomes


# -- another process -------------------------------------------------------------------------

_WRITER = r"""
import json, sys, time
from app import BlockStore, Database

for line in sys.stdin:
    request = json.loads(line)
    try:
        db = Database(request["url"], busy_timeout=30.0, retry_deadline=request["deadline"])
        try:
            started = time.monotonic()
            with db.unit_of_work():
                record = BlockStore(db).append(request["context"])
            reply = {"index": record.block_index, "seconds": time.monotonic() - started}
        finally:
            db.dispose()
    except Exception as exc:
        reply = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(reply), flush=True)
"""


class OtherProcess:
    """A writer in its own process, started once: it opens the database it is sent, times
    one write unit appending a block, and answers with the seconds it took (or the error)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WRITER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def append(self, url: str, context: str, *, deadline: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"url": url, "context": context, "deadline": deadline}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], JOIN_TIMEOUT)
        assert ready, "the other process did not answer"
        reply: dict[str, Any] = json.loads(self.process.stdout.readline())
        return reply

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


#: A writer gives up after this long; one still blocked by a held lock fails with
#: DatabaseBusyError. busy_timeout is far longer, so only the deadline could cut a wait short.
WRITER_DEADLINE = 3.0
#: A writer that finds the lock free has it well within this, even on a loaded machine;
#: one that waited for a lock left behind would need the whole WRITER_DEADLINE.
AT_ONCE = 1.5


def assert_next_writers_proceed_at_once(
    db: Database, url: str, other_process: OtherProcess, count: int
) -> None:
    """A writer in another thread, then one in another process, get the lock at once."""
    result = in_thread(lambda: timed_append(db, "next thread"))
    assert not isinstance(result, BaseException), result
    seconds, index = result
    assert index == count and seconds < AT_ONCE
    reply = other_process.append(url, "next process", deadline=WRITER_DEADLINE)
    assert "error" not in reply, reply
    assert reply["index"] == count + 1 and reply["seconds"] < AT_ONCE, reply
    assert db.stats().connections_checked_out == 0
