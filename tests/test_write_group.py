"""How the units of a finished write group learn its outcome: one after another, in order."""

from __future__ import annotations

from typing import Any

from app._write_group import Waiter, WriteGroup
from app.errors import StorageFullError

from .conftest import in_thread


def finished_group(count: int, error: BaseException | None = None) -> list[Waiter]:
    group = WriteGroup(connection=Any)  # type: ignore[arg-type]  # finish() never uses it
    group.waiters = [Waiter() for _ in range(count)]
    waiters = list(group.waiters)
    group.finish(error)
    assert group.waiters == []
    return waiters


def awake(waiters: list[Waiter]) -> list[bool]:
    return [not waiter.gate.locked() for waiter in waiters]


def test_finish_wakes_only_the_first_unit_and_each_wakes_the_next() -> None:
    waiters = finished_group(4)
    assert awake(waiters) == [True, False, False, False]
    assert waiters[0].wait() is None
    assert awake(waiters) == [False, True, False, False]
    assert waiters[1].wait() is None
    assert awake(waiters) == [False, False, True, False]
    assert waiters[2].wait() is None
    assert waiters[3].wait() is None
    assert awake(waiters) == [False, False, False, False]


def test_every_unit_gets_the_group_error() -> None:
    failure = StorageFullError("database or disk is full")
    waiters = finished_group(3, failure)
    assert [waiter.wait() for waiter in waiters] == [failure, failure, failure]


def test_a_unit_never_woken_by_its_predecessor_still_returns_and_wakes_the_next() -> None:
    """The first unit's thread died before passing on: the rest find out on their own."""
    waiters = finished_group(3)
    assert in_thread(waiters[1].wait, timeout=10) is None
    assert awake(waiters) == [True, False, True]
    assert waiters[2].wait() is None


def test_a_waiter_interrupted_while_waiting_learns_the_outcome_first() -> None:
    waiter = Waiter()
    group = WriteGroup(connection=Any)  # type: ignore[arg-type]
    group.waiters = [waiter, Waiter()]
    calls = 0
    acquire = waiter.gate.acquire

    class InterruptOnce:
        def acquire(self, timeout: float = -1) -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                group.finish(None)
                raise KeyboardInterrupt
            return acquire(timeout=timeout)

        def release(self) -> None:
            waiter_gate.release()

        def locked(self) -> bool:
            return waiter_gate.locked()

    waiter_gate = waiter.gate
    waiter.gate = InterruptOnce()  # type: ignore[assignment]
    following = group.waiters[1]
    outcome = in_thread(waiter.wait, timeout=10)
    assert type(outcome) is KeyboardInterrupt
    assert calls == 2  # it went back to waiting, got the outcome, then raised
    assert not following.gate.locked()  # and passed the wake-up on


def test_a_group_without_waiters_finishes_quietly() -> None:
    assert finished_group(0) == []
