"""Database objects as applications really hold them: one per thread, per request, per
component, several on one file, disposed while others work, across fork(), in memory.

Every case runs many threads at once on one database and checks exact counts, an intact
chain and zero errors; a hard timeout turns a hang into a failure.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app import BlockStore, Database, DatabaseManager, errors, schema

from .helpers import (
    Background,
    assert_chain_intact,
    counter_value,
    increment_counter,
    make_counter_table,
    run_threads,
)
from .legacy_helpers import next_block

pytestmark = pytest.mark.timeout(180)

THREADS = 8
ROUNDS = 10


@pytest.fixture
def url(db_url: str) -> str:
    """The test's database, at the current schema, with a counter row."""
    with Database(db_url, auto_upgrade=True) as setup:
        make_counter_table(setup)
    return db_url


def pause() -> None:
    # A short pause between calls, as application code has: other threads' units queue up
    # meanwhile, so turns are handed between objects instead of one object running alone.
    time.sleep(0.001)


def test_a_database_per_thread(url: str) -> None:
    def work(number: int) -> None:
        db = Database(url)
        try:
            store = BlockStore(db)
            for round_ in range(ROUNDS):
                with db.unit_of_work() as session:
                    increment_counter(session)
                pause()
                db.run(increment_counter)
                store.append(f"thread {number} round {round_}")
                pause()
        finally:
            db.dispose()

    assert run_threads(THREADS, work) == []
    with Database(url) as db:
        assert counter_value(db) == THREADS * ROUNDS * 2
        assert_chain_intact(db, THREADS * ROUNDS)


def test_a_manager_per_thread_closed_at_the_end(url: str) -> None:
    def work(number: int) -> None:
        manager = DatabaseManager(url)
        try:
            for round_ in range(ROUNDS):
                with manager.transaction():
                    manager.add_block(next_block(manager.get_last_block_info()))
                pause()
                manager.append_block(f"thread {number} round {round_}")
                manager.conn.execute(
                    "INSERT INTO short_term_memories (id, timestamp, content) VALUES (?, ?, ?)",
                    (f"{number}-{round_}", "2025-01-01T00:00:00", "note"),
                )
                manager.conn.commit()
                pause()
        finally:
            manager.close()

    assert run_threads(THREADS, work) == []
    with Database(url) as db:
        assert_chain_intact(db, THREADS * ROUNDS * 2)
        with db.read() as session:
            notes = session.execute(text("SELECT count(*) FROM short_term_memories")).scalar()
        assert notes == THREADS * ROUNDS


def test_a_database_per_request_in_fifty_threads(url: str) -> None:
    """``with Database(url) as db:`` around each call, 50 threads, 4 calls each."""
    requests = 50

    def work(number: int) -> None:
        for call in range(4):
            with Database(url) as db:
                if call == 0:
                    with db.unit_of_work() as session:
                        increment_counter(session)
                elif call == 1:
                    db.run(increment_counter)
                elif call == 2:
                    BlockStore(db).append(f"request {number}")
                else:
                    assert BlockStore(db).count() >= 0

    assert run_threads(requests, work) == []
    with Database(url) as db:
        assert counter_value(db) == requests * 2
        assert_chain_intact(db, requests)


def test_a_shared_database_and_a_second_one_of_another_component(url: str) -> None:
    """One object shared by the application, and a component that opened its own with other
    settings (a smaller pool, groups of two units, a shorter busy_timeout)."""
    shared = Database(url)
    component: list[Database] = []
    created = threading.Lock()

    def component_db() -> Database:
        with created:
            if not component:
                component.append(
                    Database(url, pool_size=2, max_units_per_commit=2, busy_timeout=2.0)
                )
            return component[0]

    def work(number: int) -> None:
        db = shared if number % 2 else component_db()
        store = BlockStore(db)
        for round_ in range(ROUNDS):
            with db.unit_of_work() as session:
                increment_counter(session)
            store.append(f"{number}-{round_}")
            pause()

    try:
        assert run_threads(THREADS * 2, work) == []
        assert counter_value(shared) == THREADS * 2 * ROUNDS
        assert_chain_intact(shared, THREADS * 2 * ROUNDS)
    finally:
        shared.dispose()
        for db in component:
            db.dispose()


def test_the_facade_and_a_block_store_on_one_database(url: str) -> None:
    manager = DatabaseManager(url)
    db = Database(url)
    store = BlockStore(db)

    def work(number: int) -> None:
        for round_ in range(ROUNDS):
            kind = (number + round_) % 4
            if kind == 0:
                manager.append_block(f"facade {number} {round_}")
            elif kind == 1:
                store.append(f"store {number} {round_}")
            elif kind == 2:
                with manager.transaction():
                    manager.add_block(next_block(manager.get_last_block_info()))
            else:
                with db.unit_of_work():
                    store.append(f"in a unit {number} {round_}")
            pause()

    try:
        assert run_threads(THREADS, work) == []
        assert_chain_intact(db, THREADS * ROUNDS)
    finally:
        manager.close()
        db.dispose()


def test_dispose_while_other_threads_work(url: str) -> None:
    """Threads of a disposed Database finish their call or get ClosedError, and nothing of a
    refused call is written; another Database on the same file carries on untouched."""
    doomed, other = Database(url), Database(url)
    done = {"counter": 0, "blocks": 0}
    tally = threading.Lock()
    closed_seen = threading.Event()
    progress = threading.Semaphore(0)

    def count(name: str) -> None:
        with tally:
            done[name] += 1

    def on_doomed(number: int) -> None:
        store = BlockStore(doomed)
        try:
            while True:
                if number % 2:
                    with doomed.unit_of_work() as session:
                        increment_counter(session)
                    count("counter")
                else:
                    store.append(f"doomed {number}")
                    count("blocks")
                progress.release()
        except errors.ClosedError:
            closed_seen.set()

    def on_other(number: int) -> None:
        store = BlockStore(other)
        for round_ in range(ROUNDS * 3):
            other.run(increment_counter)
            count("counter")
            store.append(f"other {number} {round_}")
            count("blocks")

    def work(number: int) -> None:
        if number < THREADS:
            on_doomed(number)
        elif number < THREADS * 2:
            on_other(number)
        else:
            for _ in range(20):  # let the doomed threads get going, then pull the rug
                assert progress.acquire(timeout=30)
            doomed.dispose()

    try:
        assert run_threads(THREADS * 2 + 1, work) == []
        assert closed_seen.is_set()
        assert counter_value(other) == done["counter"]
        assert_chain_intact(other, done["blocks"])
        with pytest.raises(errors.ClosedError):
            BlockStore(doomed).append("after dispose")
    finally:
        other.dispose()


def test_checkpoints_migrations_and_legacy_conn_writes_among_units(url: str, backend: str) -> None:
    db = Database(url)
    manager = DatabaseManager(url)
    store = BlockStore(db)

    def work(number: int) -> None:
        for round_ in range(ROUNDS):
            kind = number % 4
            if kind == 0:
                store.append(f"{number} {round_}")
            elif kind == 1:
                with db.unit_of_work() as session:
                    increment_counter(session)
            elif kind == 2:
                manager.conn.execute("UPDATE counter SET value = value + 1 WHERE id = 1")
                manager.conn.commit()
            elif backend == "sqlite" and round_ % 2:
                db.checkpoint("truncate")
            else:
                with Database(url, check_schema=False) as migrating:
                    schema.upgrade(migrating)
            pause()

    try:
        assert run_threads(THREADS, work) == []
        writers = THREADS // 4
        assert counter_value(db) == writers * ROUNDS * 2
        assert_chain_intact(db, writers * ROUNDS)
    finally:
        manager.close()
        db.dispose()


@pytest.mark.parametrize("facade", [False, True], ids=["Database", "DatabaseManager"])
def test_an_in_memory_database_with_readers_and_writers(facade: bool) -> None:
    manager = DatabaseManager(":memory:") if facade else None
    db = manager.database if manager is not None else Database("sqlite://")
    store = BlockStore(db)
    make_counter_table(db)

    def work(number: int) -> None:
        for round_ in range(ROUNDS):
            if number % 2:
                with db.read() as session:
                    session.execute(text("SELECT count(*) FROM blocks")).scalar()
                store.recent(3)
            elif manager is not None and round_ % 2:
                manager.append_block(f"{number} {round_}")
                db.run(increment_counter)
            else:
                store.append(f"{number} {round_}")
                with db.unit_of_work() as session:
                    increment_counter(session)

    try:
        assert run_threads(THREADS, work) == []
        writers = THREADS // 2
        assert counter_value(db) == writers * ROUNDS
        assert_chain_intact(db, writers * ROUNDS)
    finally:
        if manager is not None:
            manager.close()
        db.dispose()


# -- fork ------------------------------------------------------------------------------------


def _child_writes(url: str, inherited: Database, report: Any) -> None:
    """In the forked child: write through the inherited object and a new one (with retries,
    as the parent's writers keep going)."""
    try:
        inherited.run(increment_counter)
        with Database(url) as fresh:
            BlockStore(fresh).append("from the child")
        report.send("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report.send(f"{type(exc).__name__}: {exc}")


def _fork_and_report(target: Callable[..., None], *args: Any) -> str:
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(*args, send))
    child.start()
    send.close()
    try:
        assert receive.poll(60), "the forked child did not report within 60s"
        return str(receive.recv())
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
            pytest.fail("the forked child hung")


def test_fork_while_other_threads_are_inside_units(url: str) -> None:
    """Forks at random moments while writers run: the child always writes; the parent's
    writers lose nothing."""
    db = Database(url)
    store = BlockStore(db)
    stop = threading.Event()
    written = {"counter": 0, "blocks": 0}
    tally = threading.Lock()

    def writer(number: int) -> None:
        while not stop.is_set():
            if number % 2:
                with db.unit_of_work() as session:
                    increment_counter(session)
                    time.sleep(0.002)  # long enough that forks often land inside a unit
                name = "counter"
            else:
                store.append(f"parent {number}")
                name = "blocks"
            with tally:
                written[name] += 1
            # Think time, as applications have: another process (the child) gets the lock
            # between the parent's transactions (SQLite does not queue processes fairly).
            time.sleep(0.005)

    def forker(number: int) -> None:
        if number < 2:
            writer(number)
            return
        try:
            for _ in range(6):
                time.sleep(0.01)
                assert _fork_and_report(_child_writes, url, db) == "ok"
        finally:
            stop.set()

    try:
        assert run_threads(3, forker) == []
        assert counter_value(db) == written["counter"] + 6
        assert_chain_intact(db, written["blocks"] + 6)
    finally:
        db.dispose()


def _child_tries_to_write(url: str, report: Any) -> None:
    try:
        with Database(url) as fresh:
            assert BlockStore(fresh).count() >= 0  # reading is fine
            BlockStore(fresh).append("from the child")
        report.send("written")
    except errors.TransactionStateError as exc:
        report.send(f"refused: {exc}")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report.send(f"{type(exc).__name__}: {exc}")


def test_a_child_forked_inside_a_write_unit_refuses_to_write(sqlite_url: str) -> None:
    with Database(sqlite_url) as db:
        with db.unit_of_work() as session:
            session.execute(text("SELECT 1"))
            answer = _fork_and_report(_child_tries_to_write, sqlite_url)
        assert answer.startswith("refused: this process was forked while the forking thread")
        BlockStore(db).append("the parent carries on")
        assert BlockStore(db).count() == 1


def test_a_fork_waits_for_a_unit_in_progress_but_not_for_ever(tmp_path: Path) -> None:
    """The unit ends within the wait: the child writes. It outlasts the wait (the longest
    retry_deadline of the Databases on the file): the fork goes on, and the child refuses."""
    sqlite_url = f"sqlite:///{tmp_path / 'quick.db'}"
    with Database(sqlite_url, retry_deadline=0.5) as db:
        for hold, expected in ((0.2, "written"), (3.0, "refused: this process was forked")):
            inside = threading.Event()

            def holder(_: int, hold: float = hold, inside: threading.Event = inside) -> None:
                with db.unit_of_work() as session:
                    session.execute(text("SELECT 1"))
                    inside.set()
                    time.sleep(hold)

            holding = Background(lambda: holder(0), name="holder", timeout=10).start()
            assert inside.wait(10)
            started = time.monotonic()
            answer = _fork_and_report(_child_tries_to_write, sqlite_url)
            assert answer.startswith(expected), answer
            assert time.monotonic() - started < 10
            assert holding.join() is None  # the unit ended without an error


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    with Database(url):
        pass
    return url


def test_fork_keeps_working_when_no_unit_is_open(url: str) -> None:
    """The parent holds pooled connections but no unit when it forks: the child writes
    through the inherited object and a new one, and the parent's connections still work."""
    with Database(url) as db:
        db.run(increment_counter)  # the parent holds pooled connections now
        assert _fork_and_report(_child_writes, url, db) == "ok"
        db.run(increment_counter)
        assert counter_value(db) == 3
        assert BlockStore(db).count() == 1
