"""A first-come-first-served lock: the writers' turn on one database in one process.

SQLite lets one writer in at a time. If every thread of a process asked SQLite directly,
they would all sleep in SQLite's busy handler, which polls in growing steps and wakes
whoever happens to retry first: slow and unfair (p99 latencies of seconds). Instead the
writers of a process line up here, and only the head of the line talks to SQLite. Other
processes are still kept apart by SQLite's own lock and ``busy_timeout``.

Ownership is handed directly to the oldest waiter on release, so a thread that releases
and immediately asks again goes to the back of the line. Each waiter may carry a tag
(``joins``): :meth:`FairLock.hand_over` passes the lock on only to a waiter with the tag
the holder names, which is how a write transaction left open is only ever handed to a unit
that can use it (see ``_write_side``).
"""

from __future__ import annotations

import threading
from collections import deque

from .errors import TransactionStateError


class _Waiter:
    __slots__ = ("gate", "joins", "owner")

    def __init__(self, owner: int, joins: object) -> None:
        self.owner = owner
        self.joins = joins
        self.gate = threading.Lock()
        self.gate.acquire()  # bounded: a new lock, free: taking it never waits


class FairLock:
    """A FIFO lock with direct hand-off and a timeout. Not re-entrant; owned by a thread."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._owner: int | None = None

    @property
    def owner(self) -> int | None:
        """Thread ident of the current holder, or None."""
        return self._owner

    def held_by_me(self) -> bool:
        return self._owner == threading.get_ident()

    def queued(self) -> int:
        """Threads waiting for their turn."""
        return len(self._waiters)

    def acquire(self, timeout: float, joins: object = None) -> bool:
        """Wait up to ``timeout`` seconds for this thread's turn.

        Returns:
            True once the lock is held; False if the time passed first.

        Raises:
            TransactionStateError: this thread holds the lock already.
            BaseException: whatever interrupted the wait (``KeyboardInterrupt``...). The
                caller has then left the line; if the lock was handed to it meanwhile, it
                holds it (``held_by_me()``) and must release it.
        """
        me = threading.get_ident()
        if self._owner == me:
            raise TransactionStateError(
                "this thread already holds the write turn of this database (a unit of "
                "another Database object on the same database is open in it, or an "
                "asyncio task's unit is); finish that unit first, or use app.aio from "
                "asyncio code"
            )
        waiter: _Waiter | None = None
        try:
            with self._mutex:
                if self._owner is None and not self._waiters:
                    self._owner = me
                    return True
                waiter = _Waiter(me, joins)
                self._waiters.append(waiter)
            if waiter.gate.acquire(timeout=max(timeout, 0.0)):
                return True
            if self._leave(waiter):
                return False
            # The lock was handed to us just as the wait timed out: it is ours after all
            # (the hand-off released the gate, so this returns at once).
            waiter.gate.acquire()  # bounded: the gate was released by the hand-off
            return True
        except BaseException:
            if waiter is not None:
                self._leave(waiter)
            raise

    def _leave(self, waiter: _Waiter) -> bool:
        """Leave the line. Returns True if we left before being handed the lock."""
        with self._mutex:
            try:
                self._waiters.remove(waiter)
                return True
            except ValueError:
                return False

    def release(self) -> None:
        """Hand the lock to the oldest waiter, or free it."""
        with self._mutex:
            if self._waiters:
                self._pass_to_head()
            else:
                self._owner = None

    def _pass_to_head(self) -> None:
        # Called with the mutex held. No call between taking the waiter from the line and
        # opening its gate (a subscript and a ``del`` are no calls), so an asynchronous
        # exception (KeyboardInterrupt, SystemExit) cannot leave the lock owned by a waiter
        # that was never woken: it arrives before or after the whole hand-off.
        waiter = self._waiters[0]
        self._owner = waiter.owner
        del self._waiters[0]
        waiter.gate.release()

    def hand_over(self, joins: object) -> bool:
        """Hand the lock to the oldest waiter if its tag is ``joins``.

        Returns:
            True once that waiter owns the lock; False, with the lock still held, when
            nobody waits or the oldest waiter has another tag.
        """
        with self._mutex:
            if not self._waiters or self._waiters[0].joins is not joins:
                return False
            self._pass_to_head()
            return True
