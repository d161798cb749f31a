"""How the units of a shared write transaction learn its outcome: one after another, in order."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.errors import CommitTimeoutError, StorageFullError
from app.writers._shared_transaction import CommitWaiter, SharedTransaction

from .helpers import in_thread

URL = "sqlite:///memory.db"


def shared(waiters: list[CommitWaiter]) -> SharedTransaction:
    # _finish() uses neither the connection nor the hooks.
    transaction = SharedTransaction(Any, None, Any, Any)  # type: ignore[arg-type]
    transaction.waiters = waiters
    return transaction


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def finished_group(count: int, error: BaseException | None = None) -> list[CommitWaiter]:
    group = shared([CommitWaiter() for _ in range(count)])
    waiters = list(group.waiters)
    group._finish(error)
    assert all(waiter.done for waiter in waiters)
    return waiters


def awake(waiters: list[CommitWaiter]) -> list[bool]:
    return [not waiter.gate.locked() for waiter in waiters]


def test_finish_wakes_only_the_first_unit_and_each_wakes_the_next() -> None:
    waiters = finished_group(4)
    assert awake(waiters) == [True, False, False, False]
    assert waiters[0].wait(later(), URL) is None
    assert awake(waiters) == [False, True, False, False]
    assert waiters[1].wait(later(), URL) is None
    assert awake(waiters) == [False, False, True, False]
    assert waiters[2].wait(later(), URL) is None
    assert waiters[3].wait(later(), URL) is None
    assert awake(waiters) == [False, False, False, False]


def test_every_unit_gets_the_group_error() -> None:
    failure = StorageFullError("database or disk is full")
    waiters = finished_group(3, failure)
    assert [waiter.wait(later(), URL) for waiter in waiters] == [failure, failure, failure]


def test_a_unit_never_woken_by_its_predecessor_still_returns_and_wakes_the_next() -> None:
    """The first unit's thread died before passing on: the rest find out on their own."""
    waiters = finished_group(3)
    assert in_thread(lambda: waiters[1].wait(later(), URL), timeout=10) is None
    assert awake(waiters) == [True, False, True]
    assert waiters[2].wait(later(), URL) is None


def test_a_waiter_interrupted_while_waiting_learns_the_outcome_first() -> None:
    waiter = CommitWaiter()
    group = shared([waiter, CommitWaiter()])
    calls = 0
    acquire = waiter.gate.acquire

    class InterruptOnce:
        def acquire(self, timeout: float = -1) -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                group._finish(None)
                raise KeyboardInterrupt
            return acquire(timeout=timeout)

        def release(self) -> None:
            waiter_gate.release()

        def locked(self) -> bool:
            return waiter_gate.locked()

    waiter_gate = waiter.gate
    waiter.gate = InterruptOnce()  # type: ignore[assignment]
    following = group.waiters[1]
    outcome = in_thread(lambda: waiter.wait(later(), URL), timeout=10)
    assert type(outcome) is KeyboardInterrupt
    assert calls == 2  # it went back to waiting, got the outcome, then raised
    assert not following.gate.locked()  # and passed the wake-up on


def test_a_group_without_waiters_finishes_quietly() -> None:
    assert finished_group(0) == []


def test_a_waiter_whose_transaction_never_ends_gets_a_named_error_at_its_deadline() -> None:
    """The unit holding the transaction runs on: the waiter stops at its deadline."""
    group = shared([CommitWaiter(), CommitWaiter()])
    first, second = group.waiters
    started = time.monotonic()
    with pytest.raises(CommitTimeoutError, match="still holds it open") as caught:
        first.wait(started + 0.3, URL)
    waited = time.monotonic() - started
    assert 0.3 - 0.01 <= waited < 0.3 + 0.5  # a lock wait may end a hair early
    assert caught.value.database == URL
    # Its own clock starts a moment after the test's: up to that moment less than 0.3 s.
    assert caught.value.waited is not None and caught.value.waited >= 0.3 - 0.01
    # The transaction ends later: the next waiter still learns the outcome.
    group._finish(None)
    assert second.wait(later(), URL) is None


def test_finishing_twice_wakes_nobody_twice() -> None:
    """The clean-up that ends a transaction runs again when interrupted: harmless."""
    group = shared([CommitWaiter(), CommitWaiter()])
    group._finish(None)
    group._finish(None)
    assert [waiter.wait(later(), URL) for waiter in group.waiters] == [None, None]
