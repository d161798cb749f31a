"""Write units, read units, savepoints and isolation, on every backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from app import Database
from app.errors import ReadOnlyUnitError, TransactionStateError
from app.models import ShortTermMemory
from app.writers._shared_transaction import SharedTransaction

from .helpers import Background, in_thread, increment_counter, make_counter_table, wait_for_queue


def _make_table(db: Database) -> None:
    with db.unit_of_work() as session:
        session.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))


def _names(db: Database) -> list[str]:
    with db.read() as session:
        return list(session.execute(text("SELECT name FROM items ORDER BY id")).scalars())


def test_unit_commits_on_success(db: Database) -> None:
    _make_table(db)
    with db.unit_of_work() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a')"))
        session.add(ShortTermMemory(id="m1", timestamp="2026-01-01T00:00:00", content="c"))
    assert _names(db) == ["a"]
    assert db.stats().units_committed >= 2


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_unit_rolls_back_on_any_exception(db: Database, error: BaseException) -> None:
    _make_table(db)
    rolled_back = db.stats().units_rolled_back
    with pytest.raises(type(error)), db.unit_of_work() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a')"))
        raise error
    assert _names(db) == []
    assert db.stats().units_rolled_back == rolled_back + 1
    # Nothing is left held: the next unit starts at once and works.
    with db.unit_of_work() as session:
        session.execute(text("INSERT INTO items VALUES (2, 'b')"))
    assert _names(db) == ["b"]


def test_nested_unit_is_a_savepoint_that_rolls_back_alone(db: Database) -> None:
    _make_table(db)
    with db.unit_of_work() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'outer')"))
        with pytest.raises(RuntimeError), db.unit_of_work() as inner:
            inner.execute(text("INSERT INTO items VALUES (2, 'inner')"))
            raise RuntimeError("inner fails")
        with db.unit_of_work() as inner:
            inner.execute(text("INSERT INTO items VALUES (3, 'kept')"))
    assert _names(db) == ["outer", "kept"]


def test_read_unit_refuses_core_and_orm_writes(db: Database) -> None:
    _make_table(db)
    with pytest.raises(ReadOnlyUnitError), db.read() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a')"))
    with pytest.raises(ReadOnlyUnitError), db.read() as session:
        session.add(ShortTermMemory(id="m1", timestamp="2026-01-01T00:00:00", content="c"))
        session.flush()
    with pytest.raises(ReadOnlyUnitError), db.read() as session:
        session.add(ShortTermMemory(id="m2", timestamp="2026-01-01T00:00:00", content="c"))
    assert _names(db) == []
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM short_term_memories")).scalar() == 0
    # The connection is usable for writes again afterwards.
    with db.unit_of_work() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'a')"))
    assert _names(db) == ["a"]


def test_write_unit_inside_read_unit_is_refused(db: Database) -> None:
    with pytest.raises(TransactionStateError), db.read(), db.unit_of_work():
        pass


def test_reads_proceed_while_a_writer_holds_the_lock(db: Database) -> None:
    _make_table(db)
    with db.unit_of_work() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'committed')"))
    writer_in = threading.Event()
    reader_done = threading.Event()

    def writer() -> None:
        with db.unit_of_work() as session:
            session.execute(text("INSERT INTO items VALUES (2, 'uncommitted')"))
            writer_in.set()
            # Hold the write lock until the reader finished; a reader that queued
            # behind writers would never finish and this wait would time out.
            assert reader_done.wait(10)

    writing = Background(writer, name="writer").start()
    assert writer_in.wait(10)
    try:
        # The read neither waits for the writer nor sees its uncommitted row.
        assert _names(db) == ["committed"]
    finally:
        reader_done.set()
        written = writing.outcome()
    assert written is None  # the writer's unit committed without an error
    assert _names(db) == ["committed", "uncommitted"]


def test_read_unit_sees_one_stable_snapshot(db: Database) -> None:
    _make_table(db)
    with db.unit_of_work() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'first')"))
    with db.read() as session:
        before = list(session.execute(text("SELECT name FROM items ORDER BY id")).scalars())
        committed = threading.Event()

        def writer() -> None:
            with db.unit_of_work() as other:
                other.execute(text("INSERT INTO items VALUES (2, 'second')"))
            committed.set()

        assert in_thread(writer) is None
        assert committed.is_set()
        after = list(session.execute(text("SELECT name FROM items ORDER BY id")).scalars())
    assert before == after == ["first"]
    assert _names(db) == ["first", "second"]


def test_read_unit_inside_write_unit_sees_its_changes(db: Database) -> None:
    _make_table(db)
    with db.unit_of_work() as session:
        session.execute(text("INSERT INTO items VALUES (1, 'pending')"))
        with db.read() as same:
            assert same is session
            assert list(same.execute(text("SELECT name FROM items")).scalars()) == ["pending"]


def test_run_returns_the_function_result(db: Database) -> None:
    _make_table(db)

    def add(session: object, item_id: int, *, name: str) -> str:
        session.execute(text("INSERT INTO items VALUES (:i, :n)"), {"i": item_id, "n": name})  # type: ignore[attr-defined]
        return name.upper()

    assert db.run(add, 1, name="x") == "X"
    assert _names(db) == ["x"]


def test_disposed_database_refuses_use(tmp_path: object) -> None:
    db = Database("sqlite://")
    db.dispose()
    db.dispose()  # twice is fine
    from app.errors import ClosedError

    with pytest.raises(ClosedError), db.unit_of_work():
        pass
    with pytest.raises(ClosedError), db.read():
        pass


def test_context_manager_disposes() -> None:
    with Database("sqlite://") as db, db.unit_of_work() as session:
        session.execute(text("SELECT 1"))
    assert db.closed


def test_units_share_one_commit_up_to_max_units_per_commit(
    make_db: Callable[..., Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten units queued behind a first one commit in groups of exactly 4, 4 and 2."""
    db = make_db(max_units_per_commit=4)
    make_counter_table(db)
    groups: list[int] = []
    close = SharedTransaction.close

    def recording(self: SharedTransaction) -> Any:
        groups.append(self.units)
        return close(self)

    monkeypatch.setattr(SharedTransaction, "close", recording)
    first_in, release = threading.Event(), threading.Event()

    def first() -> None:
        with db.unit_of_work() as session:
            first_in.set()
            assert release.wait(30)
            increment_counter(session)

    def other() -> None:
        with db.unit_of_work() as session:
            increment_counter(session)

    units = [Background(first, name="first", timeout=30).start()]
    assert first_in.wait(30)
    units += [Background(other, name=f"other {n}", timeout=30).start() for n in range(9)]
    try:
        wait_for_queue(db, 9)  # every other unit waits for its turn
    finally:
        release.set()
    assert [unit.join() for unit in units] == [None] * 10  # each ended without an error
    assert groups == [4, 4, 2]
    with db.read() as session:
        assert session.execute(text("SELECT value FROM counter")).scalar_one() == 10
    assert db.stats().units_committed == 11  # the table's unit, then the ten
