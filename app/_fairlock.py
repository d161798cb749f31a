"""A first-come-first-served lock for the writers of one database in one process.

SQLite lets one writer in at a time. If every thread of a process asked SQLite directly,
they would all sleep in SQLite's busy handler, which polls in growing steps and wakes
whoever happens to retry first: slow and unfair (p99 latencies of seconds). Instead the
writers of a process line up here, and only the head of the line talks to SQLite. Other
processes are still kept apart by SQLite's own lock and ``busy_timeout``.

Ownership is handed directly to the oldest waiter on release, so a thread that releases
and immediately asks again goes to the back of the line.
"""

from __future__ import annotations

import threading
from collections import deque

from .errors import TransactionStateError


class _Waiter:
    __slots__ = ("gate", "owner")

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.gate = threading.Lock()
        self.gate.acquire()


class FairLock:
    """A FIFO lock with direct hand-off and an optional timeout. Not re-entrant."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._owner: int | None = None

    @property
    def owner(self) -> int | None:
        """Thread ident of the current holder, or None."""
        return self._owner

    def queued(self) -> int:
        """Threads waiting for their turn."""
        return len(self._waiters)

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for this thread's turn.

        Returns:
            True once the lock is held; False if ``timeout`` seconds passed first.
        """
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                raise TransactionStateError("this thread already holds the write lock")
            if self._owner is None and not self._waiters:
                self._owner = me
                return True
            waiter = _Waiter(me)
            self._waiters.append(waiter)
        try:
            got = waiter.gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
        except BaseException:
            # Interrupted (KeyboardInterrupt in the main thread): give the turn back.
            self._abandon(waiter)
            raise
        if got:
            return True
        if self._leave(waiter):
            return False
        # The lock was handed to us just as the wait timed out: it is ours after all. (The
        # hand-off released the gate before we could leave the line.)
        waiter.gate.acquire()
        return True

    def _leave(self, waiter: _Waiter) -> bool:
        """Leave the line. Returns True if we left before being handed the lock."""
        with self._mutex:
            try:
                self._waiters.remove(waiter)
                return True
            except ValueError:
                return False

    def _abandon(self, waiter: _Waiter) -> bool:
        """Leave the line for good. Returns True if we left before being handed the lock."""
        if self._leave(waiter):
            return True
        # The lock was handed to us while we gave up: pass it on, so nobody starves.
        self.release()
        return False

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                waiter = self._waiters.popleft()
                self._owner = waiter.owner
                waiter.gate.release()
            else:
                self._owner = None

    def hand_over(self) -> bool:
        """Hand the lock to the oldest waiter, if there is one.

        Returns:
            True once the waiter owns it; False, with the lock still held, when nobody
            waits (``queued()`` may have counted a waiter that timed out since).
        """
        with self._mutex:
            if not self._waiters:
                return False
            waiter = self._waiters.popleft()
            self._owner = waiter.owner
            waiter.gate.release()
            return True


class LockRegistry:
    """One :class:`FairLock` per database per process, shared by every Database object."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, FairLock] = {}

    def get(self, key: str) -> FairLock:
        with self._mutex:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = FairLock()
            return lock

    def reset_after_fork(self) -> None:
        # Threads that held or awaited these locks do not exist in a forked child.
        self._mutex = threading.Lock()
        self._locks = {}


WRITE_LOCKS = LockRegistry()
