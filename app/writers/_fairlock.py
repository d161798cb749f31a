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

How a waiter is woken matters as much as the order. The holder wakes the next writer while
it still holds the interpreter lock (GIL); woken through a ``threading.Lock``, the writer
finds the GIL taken, sleeps again until the holder lets go, and the kernel often preempts
the holder in between: two wake-ups and a preemption per hand-off, on the path every write
waits for. On Linux each waiter therefore sleeps on an eventfd of its own, and waking it is
a write to that descriptor, made with the GIL released, so the woken writer can run as soon
as it is scheduled (with 100 to 500 writer threads this made the hand-off pattern 2-25%
faster). Each thread keeps its eventfd until it ends; at most a quarter of the process's
descriptor limit are held. Where eventfd is missing, or that many are held, or no descriptor
is left, the gate is a lock as before: same order, same guarantees.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import threading
from collections import deque
from typing import Any

from app import _process
from app.errors import TransactionStateError

_eventfd = getattr(os, "eventfd", None)  # Linux only
_EVENTFD_FLAGS = getattr(os, "EFD_CLOEXEC", 0) | getattr(os, "EFD_NONBLOCK", 0)
_MAX_POLL_MS = 2**31 - 1  # poll() takes a C int


def _gate_limit() -> int:
    """How many eventfd gates the process may hold: a quarter of its descriptor limit, so
    that waiting writers never take the descriptors SQLite and the application need."""
    try:
        import resource
    except ImportError:  # not Unix: no eventfd either
        return 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 2**20 if soft == resource.RLIM_INFINITY else max(0, soft // 4)


_GATE_LIMIT = _gate_limit()
# The descriptors of the eventfd gates alive in this process (a set: adding and discarding
# are single steps, safe from __del__ in any thread).
_gate_fds: set[int] = set()


class _EventGate:
    """A gate on an eventfd, with a lock's ``acquire(timeout)`` and ``release()``; each
    thread reuses its own (see ``_shut_gate``), so a wake-up must never be left in it.

    ``release`` is a C callable (no Python frame): nothing can interrupt the hand-off
    between choosing a waiter and opening its gate (see ``FairLock._pass_to_head``). The
    descriptor is closed when the last reference goes, so never while a hand-off that
    holds the waiter can still write to it.
    """

    __slots__ = ("fd", "poller", "release")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.release = functools.partial(os.eventfd_write, fd, 1)
        self.poller = select.poll()  # not select(): it refuses descriptors above 1023
        self.poller.register(fd, select.POLLIN)

    def acquire(self, timeout: float = -1) -> bool:
        """Wait until released and take the wake-up; False if ``timeout`` seconds passed."""
        wait_ms = None if timeout < 0 else min(math.ceil(timeout * 1000), _MAX_POLL_MS)
        if not self.poller.poll(wait_ms):  # bounded: FairLock passes its timeout
            return False
        self.drain()
        return True

    def drain(self) -> None:
        """Take a wake-up left in the gate, if any."""
        with contextlib.suppress(BlockingIOError):  # none was left
            os.eventfd_read(self.fd)

    def __del__(self, _close: Any = os.close) -> None:
        live = _gate_fds  # None late in the interpreter's shutdown
        if live is not None:
            live.discard(self.fd)
        _close(self.fd)


_thread_gates = threading.local()


def _shut_gate() -> Any:
    """A shut gate for this thread to wait on: its eventfd gate where the system has
    eventfd, else (with ``_GATE_LIMIT`` gates alive, or no descriptor left) a new lock."""
    if _eventfd is not None:
        gate = getattr(_thread_gates, "gate", None)
        if gate is not None:
            return gate
        if len(_gate_fds) < _GATE_LIMIT:
            # A forked child must not wait on the parent's gates: the fork hooks forget
            # them, so they are installed before the first gate exists (a FairLock used
            # without a Database included).
            _process.install_fork_hooks()
            try:
                fd = _eventfd(0, _EVENTFD_FLAGS)
            except OSError:  # no descriptor left (EMFILE, ENFILE): a lock gate works too
                pass
            else:
                _gate_fds.add(fd)
                gate = _thread_gates.gate = _EventGate(fd)
                return gate
    gate = threading.Lock()
    gate.acquire()  # bounded: a new lock, free: taking it never waits
    return gate


def _new_gates_after_fork() -> None:
    # The child shares the parent's eventfds: a wake-up meant for one could reach the other.
    _thread_gates.__dict__.clear()
    _gate_fds.clear()  # the other threads' gates went with their threads


_process.on_fork("turn gates", after_in_child=_new_gates_after_fork)


class _Waiter:
    __slots__ = ("_event_gate", "gate", "joins", "owner")

    def __init__(self, owner: int, joins: object) -> None:
        self.owner = owner
        self.joins = joins
        self.gate = _shut_gate()
        self._event_gate = self.gate if isinstance(self.gate, _EventGate) else None

    def drain(self) -> None:
        """Take the hand-off's wake-up if it is still in the gate (the gate is reused)."""
        if self._event_gate is not None:
            self._event_gate.drain()

    def discard(self) -> None:
        """Stop this thread reusing the gate: whether a wake-up is still to come is unknown."""
        if getattr(_thread_gates, "gate", None) is self._event_gate:
            del _thread_gates.gate


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
        # Set once the waiter is out of the line and its gate holds no wake-up: the thread
        # reuses the gate for its next wait only then.
        clean = False
        try:
            with self._mutex:
                if self._owner is None and not self._waiters:
                    self._owner = me
                    return True
                waiter = _Waiter(me, joins)
                self._waiters.append(waiter)
            if waiter.gate.acquire(timeout=max(timeout, 0.0)):
                clean = True
                return True
            left = self._leave(waiter)
            # Not left: the lock was handed to us just as the wait timed out, so it is ours
            # after all; the hand-off, made under the mutex, has opened the gate already.
            waiter.drain()
            clean = True
            return not left
        except BaseException:
            if waiter is not None:
                self._leave(waiter)
                waiter.drain()
                clean = True
            raise
        finally:
            if waiter is not None and not clean:
                waiter.discard()

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

    def adopt(self, owner: int) -> bool:
        """Take the lock over from the thread ``owner``, which holds it but will not use it
        (it left a unit idle: see ``legacy._conn``); this thread then holds it, and its
        ``release()`` hands it on as usual.

        Returns:
            True once this thread holds the lock; False when ``owner`` no longer held it.
        """
        with self._mutex:
            if self._owner != owner:
                return False
            self._owner = threading.get_ident()
            return True

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
