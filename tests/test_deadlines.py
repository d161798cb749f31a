"""Every blocking wait of the layer ends: at a deadline taken from the settings, with a named
error that says what it waited for (or, where waiting longer gains nothing, by going on).

Each test makes one wait last for ever (a holder that never lets go, a wake-up that never
comes) and checks the error and when it came: within the deadline plus a small margin.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import app.blocks
from app import BlockStore, Database, errors

from .helpers import (
    Background,
    counter_value,
    increment_counter,
    make_counter_table,
    wait_for_queue,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

DEADLINE = 0.5
MARGIN = 1.0  # a loaded two-core machine schedules threads late


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'memory.db'}", retry_deadline=DEADLINE)
    make_counter_table(database)
    yield database
    database.dispose()


def timed(fn: Any) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_waiting_for_the_turn_behind_a_unit_that_never_ends(db: Database) -> None:
    inside, leave = threading.Event(), threading.Event()

    def holder() -> None:
        with db.unit_of_work() as session:
            increment_counter(session)
            inside.set()
            assert leave.wait(30)

    holding = Background(holder, name="holder", timeout=30).start()
    try:
        assert inside.wait(30)
        error, waited = timed(lambda: db.run(increment_counter))
        assert type(error) is errors.DatabaseBusyError, error
        assert "for a turn to write" in str(error)
        assert error.waited is not None and error.waited >= DEADLINE - 0.01
        assert DEADLINE - 0.01 <= waited < DEADLINE + MARGIN
    finally:
        leave.set()
        held = holding.outcome()
    assert held is None  # the holder's unit committed without an error
    assert counter_value(db) == 1  # the refused unit wrote nothing


def test_waiting_for_a_shared_commit_that_a_later_unit_holds_open(db: Database) -> None:
    """The first unit hands its open transaction to a second one that runs on and on: the
    first gets CommitTimeoutError at its deadline; its work is committed with the second."""
    second_inside, leave = threading.Event(), threading.Event()

    def first() -> tuple[BaseException | None, float]:
        return timed(lambda: db.run(increment_counter))

    def second() -> None:
        def body(session: Any) -> None:
            increment_counter(session)
            second_inside.set()
            assert leave.wait(30)

        db.run(body)

    units: list[Background] = []
    # Hold the turn until both are queued, through another object on the file: its
    # transaction is committed before the turn goes to them (it is not theirs to join).
    with Database(db.url) as other, other.unit_of_work() as session:
        session.execute(text("SELECT 1"))
        for target in (first, second):
            units.append(Background(target, name=target.__name__, timeout=30).start())
            wait_for_queue(db, len(units))
    try:
        assert second_inside.wait(30)
        error, waited = units[0].join(DEADLINE + MARGIN + 5)
        assert type(error) is errors.CommitTimeoutError, error
        assert "still holds it open" in str(error)
        # It names the unit that holds the transaction open: where it began, and that it
        # is idle in Python (waiting on ``leave`` in ``body``).
        assert error.holder is not None and error.holder.thread_name == "second", error
        assert error.holder.site is not None and error.holder.site.endswith("in second"), error
        assert error.holder.doing is not None and "in body" in error.holder.doing, error
        assert DEADLINE - 0.01 <= waited < 2 * DEADLINE + MARGIN
    finally:
        leave.set()
        ended = [unit.outcome() for unit in units]
    assert ended[1] is None  # the second unit committed without an error
    assert counter_value(db) == 2  # "may still be committed": it was, with the second unit


def test_appends_waiting_behind_a_write_that_never_ends(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's write hangs: the appends it carries get CommitTimeoutError (their
    outcome is not known yet), queued ones DatabaseBusyError (withdrawn, never written)."""
    write_chain = app.blocks.write_chain
    writing, leave = threading.Event(), threading.Event()

    def stuck(connection: Any, blocks: Any, *planned: Any) -> Any:
        if len(blocks) > 1 and not leave.is_set():
            writing.set()
            assert leave.wait(30)
        return write_chain(connection, blocks, *planned)

    store = BlockStore(db)
    store.append("first")
    monkeypatch.setattr(app.blocks, "write_chain", stuck)
    outcomes: dict[str, tuple[BaseException | None, float]] = {}
    carried = [f"carried {n}" for n in range(3)]

    def append(name: str) -> None:
        outcomes[name] = timed(lambda: store.append(name))

    # Hold the turn while the three appends queue up.
    appends: list[Background] = []
    with Database(db.url) as other, other.unit_of_work() as session:
        session.execute(text("SELECT 1"))
        for name in carried:
            appends.append(Background(functools.partial(append, name), name=name).start())
        # One of them leads and waits for the turn; the other two queue behind it and will
        # be written together, in the batch that hangs.
        batcher = store._committer()
        wait_until(
            lambda: db.stats().writers_queued >= 1 and len(batcher._queue) >= 2,
            "one append waits for the turn, two queue behind it",
            timeout=30,
        )
    assert writing.wait(30)
    late = Background(lambda: append("queued"), name="queued").start()
    appends.append(late)
    try:
        late.join(DEADLINE + MARGIN + 5)
        error, waited = outcomes["queued"]
        assert type(error) is errors.DatabaseBusyError, error
        assert "it was not written" in str(error)
        assert error.holder is not None, error  # the leader stuck in its write
        assert error.holder.thread_name in carried, error
        assert DEADLINE - 0.01 <= waited < DEADLINE + MARGIN
        for carrier in appends[:-1]:
            # A bounded wait, not a check: the leader stays in its write until ``leave``.
            carrier.thread.join(2 * DEADLINE + MARGIN + 5)
        followers = [name for name in carried if outcomes.get(name, (None,))[0] is not None]
        for name in followers:
            error, waited = outcomes[name]
            assert type(error) is errors.CommitTimeoutError, error
            assert 2 * DEADLINE - 0.01 <= waited < 2 * DEADLINE + MARGIN
        assert followers  # the leader itself is the one stuck in the write
    finally:
        leave.set()
        ended = [unit.outcome() for unit in appends]
    assert ended == [None] * 4  # every append thread ended, its outcome recorded
    contexts = [record.context for record in store.page(limit=10)]
    # "May still be committed": the carried appends were; the withdrawn one never is.
    assert sorted(contexts) == sorted(["first", *carried])


def test_a_reader_held_back_for_a_checkpoint_that_never_ends_goes_on(db: Database) -> None:
    """While the WAL is emptied, new snapshots wait for it; if nobody lets them go (the
    checkpointer is stuck), they go on after a second: waiting longer gains nothing."""
    db.core.wal._readers_may_start.clear()
    try:
        error, waited = timed(lambda: BlockStore(db).count())
        assert error is None
        assert 0.9 <= waited < 1.0 + MARGIN
    finally:
        db.core.wal._readers_may_start.set()
