"""Real threads and processes against one database: exact counts, no errors, no leaks."""

from __future__ import annotations

import gc
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import sessionmaker

from app import Database
from app.errors import DatabaseBusyError

from .helpers import (
    in_thread,
    increment_counter,
    make_counter_table,
    open_fds,
    run_threads,
    wait_for_child,
)

THREADS = 100
UNITS = 20


def test_read_modify_write_units_lose_nothing(make_db: object) -> None:
    db: Database = make_db(pool_size=5, max_overflow=5)  # type: ignore[operator]
    make_counter_table(db)

    def worker(_: int) -> None:
        try:
            for _ in range(UNITS):
                with db.unit_of_work() as session:
                    increment_counter(session)
        finally:
            db.session.remove()

    assert run_threads(THREADS, worker) == []
    with db.read() as session:
        assert session.execute(text("SELECT value FROM counter")).scalar_one() == THREADS * UNITS
    stats = db.stats()
    assert stats.connections_checked_out == 0
    assert stats.writers_queued == 0


def test_plain_sessions_with_deferred_transactions_lose_updates_or_fail(tmp_path: Path) -> None:
    """The same workload without the layer: shows what the layer prevents."""
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    engine = create_engine(url, connect_args={"timeout": 0.2})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection: object, record: object) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[attr-defined]

    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER)"))
        connection.execute(text("INSERT INTO counter VALUES (1, 0)"))
    factory = sessionmaker(engine)
    # In the first round, threads go in groups of ten that all read before any of them
    # writes, as happens under load (ten fit in the default pool of 5 + 10 overflow).
    first_round = threading.Barrier(10, timeout=60)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(_: int) -> None:
        for unit in range(UNITS):
            try:
                with factory() as session, session.begin():
                    value = session.execute(text("SELECT value FROM counter")).scalar_one()
                    if unit == 0:
                        first_round.wait()
                    session.execute(text("UPDATE counter SET value = :v"), {"v": value + 1})
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(exc)

    assert run_threads(THREADS, worker) == []  # every failure of a unit is counted in errors
    with engine.connect() as connection:
        final = connection.execute(text("SELECT value FROM counter")).scalar_one()
    engine.dispose()
    assert final < THREADS * UNITS or errors, "the naive version unexpectedly kept every update"
    assert final + len(errors) <= THREADS * UNITS


BLOCKER = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", BLOCKER, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    assert ready, "the blocking process did not take the lock within 30s"
    assert process.stdout.readline().strip() == "locked"
    return process


def test_run_gives_up_at_the_deadline_when_another_process_keeps_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    db = Database(f"sqlite:///{path}", busy_timeout=0.2, retry_deadline=1.5)
    make_counter_table(db)
    blocker = _hold_write_lock(path, 6)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseBusyError) as raised:
            db.run(increment_counter)
        waited = time.monotonic() - started
    finally:
        blocker.kill()
        blocker.wait(timeout=30)
    assert 1.4 <= waited <= 3.0
    assert str(path) in str(raised.value) and "stayed busy" in str(raised.value)
    assert raised.value.waited is not None and raised.value.waited >= 1.4
    assert db.stats().busy_retries >= 1
    with db.read() as session:
        assert session.execute(text("SELECT value FROM counter")).scalar_one() == 0
    db.dispose()


def test_run_succeeds_after_retrying_when_the_lock_is_released(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    db = Database(f"sqlite:///{path}", busy_timeout=0.1, retry_deadline=10)
    make_counter_table(db)
    blocker = _hold_write_lock(path, 0.8)
    try:
        db.run(increment_counter)
    finally:
        blocker.wait(timeout=30)
    assert db.stats().busy_retries >= 1
    with db.read() as session:
        assert session.execute(text("SELECT value FROM counter")).scalar_one() == 1
    db.dispose()


def test_short_lived_threads_leak_no_connections(db: Database) -> None:
    def touch() -> None:
        # Use the thread's Session and end the thread without removing it.
        with db.read() as session:
            session.execute(text("SELECT 1"))
        db.session().execute(text("SELECT 1"))  # a transaction left open on purpose

    for _ in range(50):  # warm up the pool and the interpreter's caches
        assert in_thread(touch) is None
    gc.collect()
    fds_before = open_fds()
    for _ in range(2000):
        assert in_thread(touch) is None  # the thread ended without an error
    gc.collect()
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert open_fds() <= fds_before + 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_uses_its_own_connections(sqlite_db: Database) -> None:
    make_counter_table(sqlite_db)
    sqlite_db.run(increment_counter)  # the parent holds pooled connections now
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            sqlite_db.run(increment_counter)
            with sqlite_db.read() as session:
                value = session.execute(text("SELECT value FROM counter")).scalar_one()
            code = 0 if value == 2 else 2
        finally:
            os._exit(code)
    assert wait_for_child(pid) == 0
    sqlite_db.run(increment_counter)  # the parent's connections still work
    with sqlite_db.read() as session:
        assert session.execute(text("SELECT value FROM counter")).scalar_one() == 3
