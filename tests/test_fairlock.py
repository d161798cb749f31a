"""The writers' turn (``app.writers._fairlock.FairLock``) with each kind of gate a waiter sleeps on:
an eventfd where the system has one (Linux), a lock elsewhere or when no descriptor is left.
Order, timeouts and the hand-off racing a timeout behave the same with both, and a waiter's
descriptor is closed once it is out of the line."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import app.writers._fairlock as fairlock
from app.writers._fairlock import FairLock

from .helpers import Background, run_threads

HAS_EVENTFD = hasattr(os, "eventfd")


@pytest.fixture(params=["eventfd", "lock"])
def gate_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "eventfd":
        if not HAS_EVENTFD:
            pytest.skip("os.eventfd is Linux only")
    else:
        monkeypatch.setattr(fairlock, "_eventfd", None)
    yield request.param


def wait_for_waiters(lock: FairLock, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while lock.queued() < count:
        assert time.monotonic() < deadline, f"{lock.queued()} of {count} waiters queued"
        time.sleep(0.001)


def test_waiters_get_the_lock_first_come_first_served(gate_kind: str) -> None:
    lock = FairLock()
    assert lock.acquire(1.0)
    order: list[int] = []
    waiters = []
    for number in range(8):  # queued one by one, so the order is known
        waiter = Background(lambda n=number: _take_and_note(lock, n, order), timeout=30)
        waiters.append(waiter.start())
        wait_for_waiters(lock, number + 1)
    lock.release()
    for waiter in waiters:
        waiter.join()
    assert order == list(range(8))
    assert lock.owner is None and lock.queued() == 0


def _take_and_note(lock: FairLock, number: int, order: list[int]) -> None:
    assert lock.acquire(10.0)
    order.append(number)
    lock.release()


def test_many_threads_hand_the_lock_on_without_losing_a_turn(gate_kind: str) -> None:
    lock = FairLock()
    inside = [0]
    turns = [0]

    def work(_: int) -> None:
        for _ in range(50):
            assert lock.acquire(30.0)
            inside[0] += 1
            assert inside[0] == 1, "two threads held the lock at once"
            turns[0] += 1
            inside[0] -= 1
            lock.release()

    assert run_threads(16, work) == []
    assert turns[0] == 16 * 50
    assert lock.owner is None and lock.queued() == 0


def test_a_waiter_that_times_out_leaves_the_line(gate_kind: str) -> None:
    lock = FairLock()
    assert lock.acquire(1.0)
    results: list[bool] = []
    waiter = Background(lambda: results.append(lock.acquire(0.05)), timeout=30).start()
    waiter.join()
    assert results == [False]
    assert lock.queued() == 0
    assert lock.held_by_me()
    lock.release()
    assert lock.owner is None


def test_a_thread_keeps_one_gate_and_closes_it_when_it_ends(
    gate_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[int] = []
    closed: list[int] = []

    class CountedGate(fairlock._EventGate):  # type: ignore[misc]
        __slots__ = ()

        def __init__(self, fd: int) -> None:
            super().__init__(fd)
            made.append(fd)

        def __del__(self) -> None:
            closed.append(self.fd)
            super().__del__()

    monkeypatch.setattr(fairlock, "_EventGate", CountedGate)
    lock = FairLock()

    def work(_: int) -> None:
        for _ in range(20):
            assert lock.acquire(30.0)
            lock.release()

    assert run_threads(8, work) == []
    # A timed-out waiter's thread closes its descriptor as it ends too.
    assert lock.acquire(1.0)
    assert Background(lambda: lock.acquire(0.01), timeout=30).start().join() is False
    lock.release()
    if gate_kind == "lock":
        assert made == []
    else:
        assert 1 <= len(made) <= 9  # at most one per thread, reused from wait to wait
        assert len(closed) == len(made)


def test_the_gate_is_an_eventfd_where_the_system_has_one(gate_kind: str) -> None:
    waiter = fairlock._Waiter(threading.get_ident(), None)
    expected = fairlock._EventGate if gate_kind == "eventfd" else type(threading.Lock())
    assert isinstance(waiter.gate, expected)


@pytest.mark.skipif(not HAS_EVENTFD, reason="os.eventfd is Linux only")
def test_without_a_free_descriptor_a_waiter_sleeps_on_a_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_descriptor_left(*_: Any) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(fairlock, "_eventfd", no_descriptor_left)
    monkeypatch.setattr(fairlock, "_thread_gates", threading.local())  # none kept yet
    waiter = fairlock._Waiter(threading.get_ident(), None)
    assert isinstance(waiter.gate, type(threading.Lock()))
    lock = FairLock()
    assert lock.acquire(1.0)
    taken = Background(lambda: lock.acquire(10.0), timeout=30).start()
    wait_for_waiters(lock, 1)
    lock.release()
    taken.join()
    assert lock.owner == taken.thread.ident


def test_a_hand_off_that_races_the_timeout_still_gives_the_lock(
    gate_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait times out just as the holder hands the lock over: the waiter owns it, and
    says so (True), instead of leaving a lock that nobody holds. The wake-up the hand-off
    left in the thread's gate is taken, so the thread's next wait really waits."""
    real_waiter = fairlock._Waiter
    handed = threading.Event()
    patched: list[object] = []

    class LateGate:
        def __init__(self, gate: Any) -> None:
            self.gate = gate

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            handed.wait(10.0)  # the hand-off happens here...
            return False  # ...but the wait reports a timeout

        def release(self) -> None:
            self.gate.release()
            handed.set()

    class Waiter(real_waiter):  # type: ignore[misc, valid-type]
        def __init__(self, owner: int, joins: object) -> None:
            super().__init__(owner, joins)
            if not patched:  # the first waiter only
                patched.append(self)
                self.gate = LateGate(self.gate)

    monkeypatch.setattr(fairlock, "_Waiter", Waiter)
    lock = FairLock()
    assert lock.acquire(1.0)
    taken_again = threading.Event()
    results: list[bool] = []

    def taker() -> None:
        results.append(lock.acquire(10.0))
        lock.release()
        taken_again.wait(10.0)
        results.append(lock.acquire(0.2))  # the lock is held: this must time out

    thread = Background(taker, timeout=30).start()
    wait_for_waiters(lock, 1)
    lock.release()
    deadline = time.monotonic() + 10.0
    while lock.owner is not None or not results:  # the taker got it, then gave it back
        assert time.monotonic() < deadline, "the taker never gave the lock back"
        time.sleep(0.001)
    assert lock.acquire(1.0)
    taken_again.set()
    thread.join()
    assert results == [True, False]
    assert lock.held_by_me() and lock.queued() == 0
    lock.release()


@pytest.mark.skipif(not HAS_EVENTFD or not hasattr(os, "fork"), reason="eventfd and fork")
def test_a_forked_child_does_not_share_the_parents_gates() -> None:
    """A gate's eventfd is shared with a forked child; the child's threads get new ones, so
    a wake-up meant for a thread of one process never reaches the other."""
    lock = FairLock()
    holder = threading.Event()
    done = threading.Event()

    def hold() -> None:
        assert lock.acquire(10.0)
        holder.set()
        done.wait(10.0)
        lock.release()

    with Background(hold, timeout=30):
        assert holder.wait(10.0)
        waiting = Background(lambda: lock.acquire(10.0), timeout=30).start()
        wait_for_waiters(lock, 1)
        done.set()
        assert waiting.join() is True
    parent_gate = fairlock._shut_gate()  # this thread's gate, kept for its waits
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        status = 0
        try:
            if getattr(fairlock._thread_gates, "gate", None) is not None:
                status = 2
            elif fairlock._shut_gate() is parent_gate:
                status = 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert fairlock._shut_gate() is parent_gate  # the parent keeps its own


@pytest.mark.skipif(not HAS_EVENTFD, reason="os.eventfd is Linux only")
def test_past_the_gate_limit_threads_sleep_on_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ``_GATE_LIMIT`` eventfd gates are alive (a quarter of the descriptor limit),
    so waiting writers never take the descriptors the application needs; the others wait
    on locks, in the same line."""
    alive: list[int] = []  # gates alive as each one is made

    class CountedGate(fairlock._EventGate):  # type: ignore[misc]
        __slots__ = ()

        def __init__(self, fd: int) -> None:
            super().__init__(fd)
            alive.append(len(fairlock._gate_fds))

    monkeypatch.setattr(fairlock, "_EventGate", CountedGate)
    monkeypatch.setattr(fairlock, "_GATE_LIMIT", 2)
    monkeypatch.setattr(fairlock, "_gate_fds", set())
    monkeypatch.setattr(fairlock, "_thread_gates", threading.local())
    lock = FairLock()
    turns = [0]

    def work() -> None:
        for _ in range(20):
            assert lock.acquire(30.0)
            turns[0] += 1
            lock.release()

    assert lock.acquire(1.0)  # all eight line up behind this thread first
    workers = [Background(work, timeout=30).start() for _ in range(8)]
    wait_for_waiters(lock, 8)
    lock.release()
    for worker in workers:
        worker.join()
    assert turns[0] == 8 * 20
    # Two waited on eventfds, six on locks; a thread that ended gave its gate back, and a
    # later wait of another thread may have taken one: never more than two at once.
    assert max(alive) == 2
    assert fairlock._gate_fds == set()  # the threads ended: their gates are closed


def test_the_gate_limit_is_a_quarter_of_the_descriptor_limit() -> None:
    resource = pytest.importorskip("resource")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        assert fairlock._gate_limit() == 2**20
    else:
        assert fairlock._gate_limit() == soft // 4


@pytest.mark.skipif(not HAS_EVENTFD, reason="os.eventfd is Linux only")
def test_a_gate_dropped_late_in_shutdown_still_closes_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Late in the interpreter's shutdown the module's names are None; a gate dropped then
    still closes its descriptor and reports nothing."""
    reported: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    fd = os.eventfd(0)
    gate = fairlock._EventGate(fd)
    monkeypatch.setattr(fairlock, "_gate_fds", None)
    del gate
    assert reported == []
    with pytest.raises(OSError):
        os.fstat(fd)
