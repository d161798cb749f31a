"""Interruptions (KeyboardInterrupt, SystemExit) at every point of the write turn, the
hand-over of an open transaction, its commit and the append batcher.

The interrupted caller gets its exception; everybody else carries on; no transaction is
left open without an owner; nothing is written twice or half. Each window is hit
deterministically by wrapping the step that precedes it; a randomized loop then sends real
signals at arbitrary moments.
"""

from __future__ import annotations

import ctypes
import functools
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

import app.blocks
import app.blocks._append_batcher
import app.writers._fairlock
from app import BlockStore, Database
from app.writers._fairlock import FairLock
from app.writers._shared_transaction import SharedTransaction
from app.writers._wal_bound import WalBound

from .helpers import (
    Background,
    assert_chain_intact,
    counter_value,
    increment_counter,
    make_counter_table,
    run_threads,
    wait_for_queue,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'memory.db'}")
    make_counter_table(database)
    with database.unit_of_work() as session:
        session.execute(text("CREATE TABLE log (id TEXT PRIMARY KEY)"))
    yield database
    database.dispose()


def logged_increment(name: str) -> Callable[[Session], None]:
    """A unit that bumps the counter and logs its name: both or neither are written."""

    def unit(session: Session) -> None:
        increment_counter(session)
        session.execute(text("INSERT INTO log VALUES (:n)"), {"n": name})

    return unit


def logged(db: Database) -> set[str]:
    with db.read() as session:
        return set(session.execute(text("SELECT id FROM log")).scalars())


def assert_quiet(db: Database) -> None:
    """Nothing is left behind: no turn held, no transaction open, no connection out, and a
    writer of this process gets in at once."""
    side = db.core.side
    assert side.turn.owner is None and side.turn.queued() == 0
    assert side.shared is None
    assert db.stats().connections_checked_out == 0
    with Database(db.url, busy_timeout=0.5, retry_deadline=0.5) as other:
        other.run(lambda session: session.execute(text("SELECT 1")))


class InterruptOnce:
    """Wraps a function: the first call (after ``skip`` calls) runs it, then raises ``exc``.

    Works as a method too (it binds like a function)."""

    def __init__(self, real: Callable[..., Any], exc: type[BaseException], skip: int = 0):
        self.real, self.exc, self.skip = real, exc, skip
        self.fired = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.real(*args, **kwargs)
        with self.lock:
            fire = not self.fired.is_set() and not self.skip
            self.skip = max(0, self.skip - 1)
            if fire:
                self.fired.set()
        if fire:
            raise self.exc
        return result

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return self if instance is None else functools.partial(self, instance)


def queue_behind_a_unit(db: Database, targets: list[Callable[[], None]]) -> None:
    """Hold a unit on this thread until every target runs in its own thread and queues for
    the turn; then end the unit (handing its open transaction on) and join them. A target
    that raises, or hangs, fails the test."""
    units = []
    with db.unit_of_work() as session:
        logged_increment("holder")(session)
        for target in targets:
            units.append(Background(target, name=target.__name__, timeout=30).start())
            wait_for_queue(db, len(units))
    for unit in units:
        unit.join()


def test_interrupted_right_after_the_turn_was_handed_over(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second unit is handed the turn and the open transaction, and is interrupted
    before it can use them: the transaction is committed for the first unit, and the third
    gets the turn."""
    real_waiter = app.writers._fairlock._Waiter
    patched: list[object] = []

    class InterruptedGate:
        def __init__(self, gate: Any) -> None:
            self.gate = gate

        def acquire(self, timeout: float = -1) -> bool:
            self.gate.acquire(timeout=timeout)  # handed the turn...
            raise KeyboardInterrupt  # ...and interrupted at once

        def release(self) -> None:
            self.gate.release()

    class Waiter(real_waiter):  # type: ignore[misc, valid-type]
        def __init__(self, owner: int, joins: object) -> None:
            super().__init__(owner, joins)
            if threading.current_thread().name == "second" and not patched:
                patched.append(self)
                self.gate = InterruptedGate(self.gate)

    monkeypatch.setattr(app.writers._fairlock, "_Waiter", Waiter)
    outcomes: dict[str, str] = {}

    def second() -> None:
        try:
            db.run(logged_increment("second"))
            outcomes["second"] = "ok"
        except KeyboardInterrupt:
            outcomes["second"] = "interrupted"

    def third() -> None:
        db.run(logged_increment("third"))
        outcomes["third"] = "ok"

    queue_behind_a_unit(db, [second, third])
    assert outcomes == {"second": "interrupted", "third": "ok"}
    assert logged(db) == {"holder", "third"}
    assert counter_value(db) == 2
    assert_quiet(db)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_interrupted_just_after_handing_the_transaction_on(
    db: Database, monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]
) -> None:
    """A unit interrupted right after it handed its open transaction to the next one: it
    learns that its work was committed before the interruption reaches its caller, and the
    next units carry on."""
    results: dict[str, str] = {}

    def unit(name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                db.run(logged_increment(name))
                results[name] = "ok"
            except exc:
                results[name] = "interrupted"

        return run

    names = [f"unit {n}" for n in range(4)]
    hand_over = InterruptOnce(FairLock.hand_over, exc, skip=1)  # the first is the holder's
    monkeypatch.setattr(FairLock, "hand_over", hand_over)
    queue_behind_a_unit(db, [unit(name) for name in names])
    assert hand_over.fired.is_set()
    assert sorted(results.values()) == ["interrupted", "ok", "ok", "ok"]
    # Interrupted after the hand-over, its work was kept and committed with the next units.
    assert logged(db) == {"holder", *names}
    assert counter_value(db) == 5
    assert_quiet(db)


@pytest.mark.parametrize("where", ["after_commit", "connection_close", "alive"])
def test_interrupted_while_the_shared_transaction_ends(
    db: Database, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An interruption inside the commit of a shared transaction: its units learn the real
    outcome (committed when the driver committed, else nothing written), nobody waits for
    ever, and the next writer gets the turn."""
    if where == "after_commit":
        real = WalBound.after_commit
        monkeypatch.setattr(WalBound, "after_commit", InterruptOnce(real, KeyboardInterrupt))
    elif where == "alive":
        monkeypatch.setattr(
            SharedTransaction,
            "alive",
            InterruptOnce(SharedTransaction.alive, KeyboardInterrupt, skip=0),
        )
    else:
        real_close = SharedTransaction.close
        once = InterruptOnce(lambda close: close(), KeyboardInterrupt)

        def close(self: SharedTransaction) -> Any:
            connection_close = self.connection.close
            self.connection.close = lambda: once(connection_close)  # type: ignore[method-assign]
            return real_close(self)

        monkeypatch.setattr(SharedTransaction, "close", close)
    results: dict[int, str] = {}

    def unit(number: int) -> None:
        try:
            db.run(logged_increment(f"unit {number}"))
            results[number] = "ok"
        except KeyboardInterrupt:
            results[number] = "interrupted"
        except Exception as error:  # noqa: BLE001 - asserted below
            results[number] = type(error).__name__

    assert run_threads(6, unit) == []
    assert set(results.values()) <= {"ok", "interrupted", "TransactionStateError"}
    assert "interrupted" in results.values()

    def named(outcome: str) -> set[str]:
        return {f"unit {n}" for n, value in results.items() if value == outcome}

    assert named("ok") <= logged(db)  # a unit that returned was written
    assert not named("TransactionStateError") & logged(db)  # told "nothing written": true
    assert counter_value(db) == len(logged(db))  # units are whole
    assert_quiet(db)


def test_a_woken_append_caller_interrupted_before_passing_the_wake_up_on(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first caller of a batch's wake-up chain is interrupted as it wakes: the callers
    after it still wake (and return their blocks), and its own block is written."""
    real_request = app.blocks._append_batcher.Request
    interrupted_once = threading.Event()

    class Gate:
        def __init__(self, gate: Any) -> None:
            self.gate = gate

        def acquire(self, timeout: float = -1) -> bool:
            got = self.gate.acquire(timeout=timeout)
            if got and not interrupted_once.is_set():
                interrupted_once.set()
                raise KeyboardInterrupt
            return bool(got)

        def release(self) -> None:
            self.gate.release()

    class Request(real_request):  # type: ignore[misc, valid-type]
        def __init__(self, items: Any) -> None:
            super().__init__(items)
            self.gate = Gate(self.gate)

    monkeypatch.setattr(app.blocks._append_batcher, "Request", Request)
    store = BlockStore(db)
    batcher = store.chain_batcher()
    real_write_chain = app.blocks.write_chain
    first_batch = threading.Event()

    def write_chain(*args: Any, **kwargs: Any) -> Any:
        # The first batch waits until two callers queue behind it, so the next batch has
        # callers asleep on their gates whatever the machine's load.
        if not first_batch.is_set():
            first_batch.set()
            wait_until(lambda: len(batcher._queue) >= 2, "two appends queued behind a batch")
        return real_write_chain(*args, **kwargs)

    monkeypatch.setattr(app.blocks, "write_chain", write_chain)
    results: dict[int, str] = {}

    def append(number: int) -> None:
        for round_ in range(5):
            try:
                store.append(f"{number}-{round_}")
                results[number * 10 + round_] = "ok"
            except KeyboardInterrupt:
                results[number * 10 + round_] = "interrupted"

    assert run_threads(12, append, timeout=60) == []
    assert interrupted_once.is_set()
    assert list(results.values()).count("interrupted") == 1
    blocks = store.count()
    assert blocks in (59, 60)  # the interrupted caller's block may or may not be written
    assert_chain_intact(db, blocks)
    contexts = [record.context for record in store.page(limit=100)]
    assert len(contexts) == len(set(contexts))  # nothing written twice
    assert_quiet(db)


@pytest.mark.parametrize("when", ["before_commit", "after_commit"])
def test_an_append_leader_interrupted_while_writing_a_batch(
    db: Database, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Before the commit: the others' appends go back to the queue and are written once.
    After the commit: they get their blocks; nothing is written twice."""
    import app.blocks

    if when == "before_commit":
        interrupted = InterruptOnce(app.blocks.write_chain, KeyboardInterrupt, skip=2)
        monkeypatch.setattr(app.blocks, "write_chain", interrupted)
    else:
        monkeypatch.setattr(
            WalBound,
            "after_commit",
            InterruptOnce(WalBound.after_commit, KeyboardInterrupt, skip=2),
        )
    store = BlockStore(db)
    results: dict[str, str] = {}

    def append(number: int) -> None:
        for round_ in range(5):
            name = f"{number}-{round_}"
            try:
                store.append(name)
                results[name] = "ok"
            except KeyboardInterrupt:
                results[name] = "interrupted"

    assert run_threads(10, append, timeout=60) == []
    contexts = [record.context for record in store.page(limit=100)]
    assert len(contexts) == len(set(contexts))  # nothing written twice
    ok = {name for name, outcome in results.items() if outcome == "ok"}
    assert ok <= set(contexts)
    assert list(results.values()).count("interrupted") == 1
    assert len(contexts) in (len(ok), len(ok) + 1)
    assert_chain_intact(db, len(contexts))
    assert_quiet(db)


# -- randomized ------------------------------------------------------------------------------


def _async_raise(thread: threading.Thread, exc: type[BaseException]) -> None:
    ident = thread.ident
    assert ident is not None
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
    assert done <= 1


@pytest.mark.slow
def test_random_interrupts_never_hang_or_lose_anything(db: Database) -> None:
    """A few hundred rounds: the main thread appends or runs a unit and gets a real SIGINT at
    a random moment, and a worker thread gets SystemExit at random moments, while four other
    threads keep writing. The other threads never fail, nothing is written twice, every
    call that returned was written, and nothing is left held."""
    store = BlockStore(db)
    rounds = 300
    rnd = random.Random(20261201)
    stop = threading.Event()
    steady: dict[str, int] = {"units": 0, "blocks": 0}
    tally = threading.Lock()
    returned: set[str] = set()
    maybe: set[str] = set()

    def steady_writer(number: int) -> None:
        i = 0
        while not stop.is_set():
            name = f"steady {number} {i}"
            if i % 2:
                db.run(logged_increment(name))
                key = "units"
            else:
                store.append(name)
                key = "blocks"
            with tally:
                steady[key] += 1
                returned.add(name)
            i += 1

    def operation(name: str, i: int) -> None:
        if i % 2:
            db.run(logged_increment(name))
        else:
            store.append(name)

    victim_ready = threading.Event()

    def victim() -> None:
        i = 0
        while not stop.is_set():
            name = f"victim {i}"
            victim_ready.set()
            try:
                operation(name, i)
                with tally:
                    returned.add(name)
            except SystemExit:
                with tally:
                    maybe.add(name)
            i += 1

    main = threading.main_thread()
    go, fired = threading.Event(), threading.Event()

    def interrupter() -> None:
        while not stop.is_set():
            if not go.wait(0.1):
                continue
            go.clear()
            time.sleep(rnd.uniform(0, 0.004))
            signal.pthread_kill(main.ident or 0, signal.SIGINT)
            fired.set()

    workers = [
        Background(functools.partial(steady_writer, n), name=f"steady {n}", timeout=30)
        for n in range(4)
    ]
    victim_thread = Background(victim, name="victim", timeout=30)
    helper = Background(interrupter, name="interrupter", timeout=30)
    for thread in [*workers, victim_thread, helper]:
        thread.start()
    try:
        for i in range(rounds):
            name = f"main {i}"
            fired.clear()
            go.set()
            try:
                try:
                    operation(name, i)
                    returned.add(name)
                except KeyboardInterrupt:
                    maybe.add(name)
                    continue
                fired.wait(10)
                # The signal arrives at the next check after it was sent: inside this try.
                for _ in range(100):
                    pass
            except KeyboardInterrupt:
                pass  # it came after the call had returned
            if i % 10 == 0 and victim_ready.wait(5):
                _async_raise(victim_thread.thread, SystemExit)
    finally:
        stop.set()
        ended = {
            thread.thread.name: thread.outcome() for thread in [*workers, victim_thread, helper]
        }
    # The victim may end early, by a SystemExit that landed between two of its calls; no
    # other thread ends by an error.
    assert type(ended.pop("victim")) in (type(None), SystemExit)
    assert ended == dict.fromkeys(ended), ended
    written = logged(db) | {record.context for record in store.page(limit=100_000)}
    assert returned <= written  # every call that returned was written
    assert written <= returned | maybe  # and nothing else
    contexts = [record.context for record in store.page(limit=100_000)]
    assert len(contexts) == len(set(contexts))  # nothing written twice
    assert counter_value(db) == len(logged(db))  # units are whole
    assert_chain_intact(db, len(contexts))
    assert steady["units"] > 0 and steady["blocks"] > 0
    # The interruptions really landed inside calls, on both threads.
    assert sum(name.startswith("main") for name in maybe) > rounds // 10
    assert any(name.startswith("victim") for name in maybe)
    assert_quiet(db)
