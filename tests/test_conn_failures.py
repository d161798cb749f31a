"""A failed statement on the legacy ``conn``, swallowed as old code does, never stalls the
other writers of the process, and nothing the old class would have stored is lost.

Old code: ``try: m.conn.cursor().execute("INSERT ..."); m.conn.commit() except
sqlite3.IntegrityError: pass``. The failed INSERT opened the thread's write transaction and
nothing ends it: the layer must, as the old class's next commit did.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from app import DatabaseManager

from .helpers import Background
from .legacy_helpers import LEGACY_FIXTURE, chain_is_intact

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")

#: What the driver raises for a duplicate key (old code on SQLite catches the first).
try:
    import psycopg

    DRIVER_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, psycopg.Error)
except ImportError:  # pragma: no cover - psycopg is a test dependency
    DRIVER_ERRORS = (sqlite3.Error,)


def kv_manager(db_url: str) -> DatabaseManager:
    """A manager on a database with a table ``kv`` holding the key 'taken' (settings from
    the environment as the test set it)."""
    db = DatabaseManager(db_url)
    db.conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
    db.conn.execute("INSERT INTO kv VALUES (?, ?)", ("taken", "first"))
    db.conn.commit()
    return db


@pytest.fixture
def manager(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatabaseManager]:
    # A short deadline: a writer stalled behind an abandoned transaction fails fast.
    monkeypatch.setenv("APP_RETRY_DEADLINE", "5")
    db = kv_manager(db_url)
    yield db
    db.close()


def in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own; what it raised is raised here."""
    return Background(fn).start().join()  # type: ignore[no-any-return]


class PoolThread:
    """A thread that runs ``fn`` and then stays alive, as a server's pool thread does, until
    the test lets it end; what ``fn`` raised is raised by :meth:`finish`."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._ran, self._stay = threading.Event(), threading.Event()

        def body() -> None:
            try:
                fn()
            finally:
                self._ran.set()
                self._stay.wait(60)

        self._thread = Background(body)

    def __enter__(self) -> PoolThread:
        self._thread.start()
        assert self._ran.wait(60)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stay.set()
        self._thread.join()


def count(db: DatabaseManager, sql: str) -> int:
    return int(db.conn.execute(sql).fetchone()[0])


def swallow_duplicate(db: DatabaseManager) -> None:
    try:
        db.conn.cursor().execute("INSERT INTO kv VALUES (?, ?)", ("taken", "again"))
        db.conn.commit()
    except DRIVER_ERRORS:
        pass


def test_a_swallowed_failed_insert_in_a_pool_thread_stalls_nobody(manager: DatabaseManager) -> None:
    def request(number: int) -> str:
        if number % 3 == 0:
            swallow_duplicate(manager)
            return "swallowed"
        manager.append_block(f"request {number}")
        return "appended"

    # The thread that swallowed the error stays alive (a pool thread between requests).
    with PoolThread(lambda: swallow_duplicate(manager)), ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(request, range(24)))  # a request's error is raised here
    assert outcomes.count("appended") == 16
    assert count(manager, "SELECT COUNT(*) FROM blocks") == 16
    assert count(manager, "SELECT COUNT(*) FROM kv") == 1
    assert chain_is_intact(manager) == (16, None)


def test_a_statement_with_wrong_parameters_ends_its_transaction(manager: DatabaseManager) -> None:
    def bad_call() -> None:
        with pytest.raises(DRIVER_ERRORS):
            manager.conn.execute("INSERT INTO kv VALUES (?, ?)", ("only one",))

    with PoolThread(bad_call):
        # The failing thread lives on: writers of other threads go on at once.
        assert manager.append_block("after a bad statement") == 0
        assert in_thread(lambda: manager.append_block("from another thread")) == 1
    assert chain_is_intact(manager) == (2, None)


def test_writes_before_the_failure_are_committed_when_the_thread_walks_away(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What the old class's next commit would have stored is stored: the rows written
    before the failed statement, once the thread has left them for failed_write_grace."""
    monkeypatch.setenv("APP_FAILED_WRITE_GRACE", "0.2")
    monkeypatch.setenv("APP_RETRY_DEADLINE", "20")
    db = kv_manager(db_url)

    def walks_away() -> None:
        try:
            db.conn.execute("INSERT INTO kv VALUES ('mine', 'written before the failure')")
            db.conn.execute("INSERT INTO kv VALUES ('taken', 'again')")
            db.conn.commit()
        except DRIVER_ERRORS:
            pass

    try:
        with PoolThread(walks_away):
            with caplog.at_level(logging.WARNING, logger="app.legacy._implicit"):
                assert in_thread(lambda: db.append_block("waits for the grace only")) == 0
            assert "left open" in caplog.text
            rows = dict(db.conn.execute("SELECT k, v FROM kv").fetchall())
            assert rows == {"taken": "first", "mine": "written before the failure"}
    finally:
        db.close()


def test_a_thread_that_rolls_back_after_the_failure_keeps_its_rollback(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_FAILED_WRITE_GRACE", "60")
    with kv_manager(db_url) as db:

        def careful() -> None:
            try:
                db.conn.execute("INSERT INTO kv VALUES ('mine', 'undone')")
                db.conn.execute("INSERT INTO kv VALUES ('taken', 'again')")
                db.conn.commit()
            except DRIVER_ERRORS:
                db.conn.rollback()

        in_thread(careful)
        assert db.append_block("nothing waits") == 0
        assert [r[0] for r in db.conn.execute("SELECT k FROM kv").fetchall()] == ["taken"]


def test_a_thread_that_goes_on_after_the_failure_keeps_one_transaction(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_FAILED_WRITE_GRACE", "60")
    with kv_manager(db_url) as db:

        def goes_on() -> None:
            db.conn.execute("INSERT INTO kv VALUES ('a', '1')")
            with pytest.raises(DRIVER_ERRORS):
                db.conn.execute("INSERT INTO kv VALUES ('taken', 'again')")
            db.conn.execute("INSERT INTO kv VALUES ('b', '2')")
            assert db.conn.in_transaction
            db.conn.commit()

        in_thread(goes_on)
        keys = sorted(r[0] for r in db.conn.execute("SELECT k FROM kv").fetchall())
        assert keys == ["a", "b", "taken"]


def test_the_old_class_database_with_a_failed_insert_of_an_existing_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real database of the old class: old code re-inserting a block that exists (the
    IntegrityError it swallows) stalls no writer, and the chain goes on intact."""
    monkeypatch.setenv("APP_RETRY_DEADLINE", "5")
    path = tmp_path / "memory.db"
    shutil.copyfile(LEGACY_FIXTURE, path)
    with DatabaseManager(str(path)) as db:
        first = db.get_block(0)
        assert first is not None

        def old_code(number: int) -> None:
            if number % 2 == 0:
                try:
                    db.conn.cursor().execute(
                        "INSERT INTO blocks (block_index, timestamp, context, importance, hash,"
                        " prev_hash) VALUES (?, ?, ?, ?, ?, ?)",
                        (0, first["timestamp"], "dup", 0.0, first["hash"], ""),
                    )
                    db.conn.commit()
                except sqlite3.IntegrityError:
                    pass
            else:
                db.append_block(f"new {number}")

        with PoolThread(lambda: old_code(0)), ThreadPoolExecutor(4) as pool:
            list(pool.map(old_code, range(20)))
        assert chain_is_intact(db) == (250, None)
        assert db.get_block(0) == first
