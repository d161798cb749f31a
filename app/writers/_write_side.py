"""The write side of one database in one process: the writers' turn and the open write
transaction that the turn guards, owned together.

SQLite keeps one set of locks per file for the whole process, so every ``Database`` object
of a process that opens the same file must queue its writers in the same line, and only
the holder of the turn may have a write transaction open: a second open write transaction
on that file would wait on SQLite for a lock its own process holds. So there is one
:class:`WriteSide` per database per process (shared by every ``Database`` on it), holding

* the turn, a FIFO lock (``_fairlock``), and
* the :class:`~app.writers._shared_transaction.SharedTransaction` left open by the last
  unit, if any.

The turn's rules (every path that takes or gives up the turn follows them):

1. A transaction left open is handed on only with the turn, and only to a waiting unit of
   the Database that opened it (``FairLock.hand_over(joins=owner)``). Anyone else who takes
   the turn (another Database's unit, a migration, a checkpoint, a reader of an in-memory
   database, the fork guard below) finds no transaction open, because the holder commits
   it before passing the turn to them.
2. Whoever ends a turn without handing it on commits the open transaction first
   (:meth:`WriteSide.release`), and whoever takes the turn and finds a transaction it cannot
   join commits it first; that second rule repairs a turn passed on by an interrupted path.
3. An interruption (``KeyboardInterrupt``, ``SystemExit``...) anywhere in taking, holding or
   handing over the turn ends in :meth:`WriteSide.release`, so no transaction is left open
   without an owner and no waiter sleeps for a wake-up that will not come.

On PostgreSQL the same holds per URL: the server's advisory lock keeps processes apart,
and the turn keeps this process's writers in line without queueing on the server.

``fork()`` copies SQLite's in-process lock bookkeeping into the child, where a write
transaction of the parent then looks held for ever. So before a fork the forking thread
takes the turn of every write side (waiting at most the longest ``retry_deadline`` of the
Databases using it), which commits any open transaction and keeps new ones from starting
until the fork is done. If that is impossible (the forking thread is itself inside a write
unit, or another thread's unit outlasts the wait), the child refuses to write to that
database with a :class:`~app.errors.TransactionStateError` instead of timing out.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.engine import Connection

from app import _process, errors
from app.engine._postgres_hooks import write_lock_holder
from app.writers._fairlock import FairLock
from app.writers._holder import Turn
from app.writers._shared_transaction import CommitWaiter, SharedTransaction
from app.writers._turn_record import SUFFIX, TurnRecord

log = logging.getLogger(__name__)


class EndingUnit(Protocol):
    """What :meth:`WriteSide.end_unit` uses of a unit (``_units.Unit``, whose module
    imports this one): where it waits while a later unit is to commit its work."""

    waiter: CommitWaiter | None


class WriteSide:
    """The turn and the open write transaction of one database in this process."""

    __slots__ = (
        "__weakref__",
        "fork_wait",
        "forked_mid_write",
        "holding",
        "key",
        "record",
        "shared",
        "turn",
        "users",
    )

    def __init__(self, key: str, forked_mid_write: str | None = None) -> None:
        self.key = key
        self.turn = FairLock()
        # Who holds the turn now (set by the thread that takes it, cleared before it
        # passes it on), for messages and ``app top``.
        self.holding: Turn | None = None
        # SQLite files: the record next to the file that other processes read to learn who
        # holds the write lock (see _turn_record); None elsewhere.
        self.record: TurnRecord | None = (
            TurnRecord(key.removeprefix("sqlite:") + SUFFIX) if key.startswith("sqlite:") else None
        )

        # The transaction the last unit left open for the next one; only the holder of the
        # turn reads or changes it.
        self.shared: SharedTransaction | None = None
        self.fork_wait = 0.0  # longest retry_deadline of the Databases using this side
        self.users = 0  # Databases of this process using it (see write_side and leave)
        self.forked_mid_write = forked_mid_write

    def take_turn(self, deadline: float, joins: object, database: str) -> float:
        """Wait for this thread's turn, first come first served, until ``deadline``.

        Args:
            deadline: ``time.monotonic()`` value to give up at.
            joins: the Database whose open transaction this caller may join, or None.
            database: the URL for messages.

        Returns:
            Seconds waited.

        Raises:
            DatabaseBusyError: the turn did not come by the deadline.
            TransactionStateError: this thread holds the turn already, or the process was
                forked while a write was in progress (see the module docstring).
        """
        if self.forked_mid_write is not None:
            raise errors.TransactionStateError(
                f"this process was forked while {self.forked_mid_write} on {database}; "
                "SQLite's locks cannot be trusted in it, so it must not write to that "
                "database: fork between units (or use the 'spawn' or 'forkserver' start "
                "method of multiprocessing)"
            )
        if self.turn.held_by_me():
            raise errors.TransactionStateError(
                f"this thread already holds the write turn of {database}; finish its unit first"
            )
        # Who takes the turn, and from where, is known before the wait: worked out now, so
        # that the thread holding the turn next does not spend its turn on it.
        turn = Turn()
        started = time.monotonic()
        try:
            got = self.turn.acquire(deadline - started, joins)
            shared = self.shared
            if got and shared is not None and (joins is None or shared.owner is not joins):
                self._settle()
        except BaseException:
            # The turn may have been handed to us as we were interrupted: pass it on. (Run
            # again if that is interrupted too: a turn kept by mistake stops every writer.)
            try:
                self.release_if_held()
            except BaseException:
                self.release_if_held()
                raise
            raise
        waited = time.monotonic() - started
        if not got:
            raise errors.DatabaseBusyError(
                f"waited {waited:.2f}s for a turn to write to {database}: other threads of "
                "this process kept the write turn; shorten their units or raise retry_deadline",
                database=database,
                waited=waited,
                holder=self.holder(),
            )
        turn.taken()
        self.holding = turn
        record = self.record
        if record is not None:
            record.note_wait(waited, self.turn.queued())
            if self.shared is not None:  # a transaction handed on with the turn
                record.hold(turn.thread_id, turn.thread_name, turn.task, turn.site)
        return waited

    def holder(self) -> errors.LockHolder | None:
        """Who holds this process's turn now (None when nobody does)."""
        holding = self.holding
        if holding is None or self.turn.owner is None:
            return None
        return dataclasses.replace(holding.holder(), pid=os.getpid())

    def begin(
        self,
        connection: Connection,
        owner: object,
        after_commit: Callable[[Connection], None],
        counted: Callable[[bool, int], None],
    ) -> SharedTransaction:
        """Begin the write transaction (``BEGIN IMMEDIATE``, or the PostgreSQL write lock)
        on ``connection`` in the turn this thread holds, and leave it open for the turn's
        units (see :class:`~app.writers._shared_transaction.SharedTransaction` for the
        arguments)."""
        try:
            try:
                connection.begin()
            except errors.DatabaseBusyError as busy:
                raise self._named_busy(busy, connection) from busy
            self.shared = SharedTransaction(connection, owner, after_commit, counted)
            holding = self.holding
            if self.record is not None and holding is not None:
                self.record.hold(holding.thread_id, holding.thread_name, holding.task, holding.site)
        except BaseException:
            # Closing rolls back: no transaction may be left open without an owner, so
            # close again if the first close is interrupted.
            try:
                connection.close()
            except BaseException:
                connection.close()
                raise
            raise
        return self.shared

    def _named_busy(
        self, busy: errors.DatabaseBusyError, connection: Connection
    ) -> errors.DatabaseBusyError:
        """``busy`` with who holds the write lock in another process, when that can be
        told (the SQLite file's turn record, or the server's lock table)."""
        holder = None
        try:
            if self.record is not None:
                holder = self.record.holder()
            elif connection.dialect.name == "postgresql":
                holder = write_lock_holder(connection)
        except Exception:  # naming the holder must never hide the error itself
            log.debug("could not tell who holds the write lock", exc_info=True)
        if holder is None:
            return busy
        return errors.DatabaseBusyError(
            str(busy), database=busy.database, waited=busy.waited, holder=holder
        )

    def end_unit(
        self,
        owner: object,
        shared: SharedTransaction,
        unit: EndingUnit,
        failure: BaseException | None,
        max_units: int,
    ) -> BaseException | None:
        """End the turn of ``unit`` (of the Database ``owner``): hand the open transaction
        with the turn to the next writer if it is a unit of ``owner`` (and the transaction
        holds fewer than ``max_units`` units), else commit it and pass the turn on.

        When a later unit will commit this unit's work, ``unit.waiter`` is where to wait for
        it. Returns the error of the commit this unit made (None when it committed, kept
        nothing, or left the commit to a later unit).
        """
        kept = shared.holds(unit)
        if self.turn.queued() and shared.units < max_units and shared.alive():
            if kept:  # nothing to wait for after a failure
                waiter = CommitWaiter()
                shared.waiters.append(waiter)  # before the next writer can commit
                unit.waiter = waiter
            # The writer seen waiting may have given up since (its deadline passed), or be
            # no unit of this Database: then it cannot take the open transaction.
            holding, self.holding = self.holding, None  # before the next one sets its own
            if self.turn.hand_over(owner):
                return None
            self.holding = holding
            if unit.waiter is not None:
                unit.waiter = None
                shared.waiters.remove(waiter)
        if failure is not None and not kept and shared.aborted_by is None and shared.aborted():
            # The database aborted the whole transaction under this unit (SQLite does on
            # a full disk or an I/O error): the units sharing it fail with that error.
            shared.aborted_by = failure
        error = self.release()
        return error if kept else None

    def release(self) -> BaseException | None:
        """End this thread's turn: commit the open transaction, if any, and pass the turn on.

        Returns:
            The error of that commit (None when it committed, or nothing was open).
        """
        try:
            return self._settle()
        finally:
            try:
                self._pass_turn_on()
            except BaseException:
                self._pass_turn_on()
                raise

    def release_if_held(self) -> None:
        """:meth:`release`, when this thread holds the turn (for clean-up paths)."""
        if self.turn.held_by_me():
            self.release()

    def _pass_turn_on(self) -> None:
        if self.turn.held_by_me():
            self.holding = None
            self.turn.release()

    def _settle(self) -> BaseException | None:
        shared = self.shared
        if shared is None:
            return None
        error: BaseException | None = None
        try:
            error = shared.close()
            return error
        finally:
            self.shared = None
            if self.record is not None:
                self.record.release(committed=error is None and shared.units > 0)


class _Registry:
    """One :class:`WriteSide` per database key in this process, kept while a Database uses it."""

    def __init__(self, unusable: dict[str, str] | None = None) -> None:
        self.mutex = threading.Lock()
        self.sides: weakref.WeakValueDictionary[str, WriteSide] = weakref.WeakValueDictionary()
        # In a child forked mid-write: the keys it must not write to, and why.
        self.unusable = unusable or {}

    def get(self, key: str, retry_deadline: float) -> WriteSide:
        with self.mutex:
            side = self.sides.get(key)
            if side is None:
                side = self.sides[key] = WriteSide(key, self.unusable.get(key))
            side.fork_wait = max(side.fork_wait, retry_deadline)
            side.users += 1
            return side

    def leave(self, side: WriteSide) -> None:
        with self.mutex:
            side.users -= 1
            if side.users <= 0 and side.record is not None:
                side.record.close()  # mapped again by the next Database that writes


_REGISTRY = _Registry()
_paused: list[WriteSide] = []
_unusable_in_child: dict[str, str] = {}


def write_side(key: str, retry_deadline: float) -> WriteSide:
    """The write side of the database ``key`` in this process, for one more Database (which
    calls :func:`leave_write_side` once it is closed)."""
    return _REGISTRY.get(key, retry_deadline)


def leave_write_side(side: WriteSide) -> None:
    """A Database closed: the last one of this process on the file unmaps its record."""
    _REGISTRY.leave(side)


def _before_fork() -> None:
    """Take every write side's turn, so no write transaction is open while the process is
    copied (see the module docstring). Bounded by the sides' ``fork_wait``."""
    with _REGISTRY.mutex:
        sides = sorted(_REGISTRY.sides.values(), key=lambda side: side.key)
    _unusable_in_child.clear()
    started = time.monotonic()
    for side in sides:
        if side.turn.held_by_me():
            _unusable_in_child[side.key] = "the forking thread was inside a write unit"
            continue
        try:
            if side.turn.acquire(started + side.fork_wait - time.monotonic()):
                _paused.append(side)
                side._settle()
                continue
        except BaseException:  # a fork must not fail because of this
            log.debug("pausing writers before fork() failed", exc_info=True)
            if side.turn.held_by_me() and side not in _paused:
                _paused.append(side)
            continue
        _unusable_in_child[side.key] = "a write unit of another thread was in progress"
        log.warning(
            "fork(): a write to %s was still in progress; the child process must not write to it",
            side.key,
        )


def _after_fork_in_parent() -> None:
    paused = list(_paused)
    _paused.clear()
    for side in paused:
        side.turn.release()


def _after_fork_in_child() -> None:
    # Threads that held or awaited these turns do not exist here; the transactions they
    # guarded belong to the parent.
    global _REGISTRY
    _paused.clear()
    _REGISTRY = _Registry(dict(_unusable_in_child))


_process.on_fork(
    "write sides",
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
