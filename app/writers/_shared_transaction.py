"""A write transaction shared by successive write units of one Database, and one commit.

SQLite lets one writer in at a time, so a process's writers already take turns (see
``_write_side``). Committing each unit on its own pays for a BEGIN, a COMMIT and the WAL
writes of every unit. Instead, a unit that ends while another unit of the same Database
waits for the turn leaves the transaction open and hands it on; each unit runs in its own
SAVEPOINT, so a unit that fails rolls back alone. The last unit (nobody of that Database
waiting, or ``max_units_per_commit`` reached) commits, and every unit whose work was in the
transaction returns only then: a unit that returned has been committed.

The units are woken one after another, in the order they ran: each wakes the next as it
leaves. They come back for their next turn in that order, and they do not all compete for
the interpreter with the unit now holding the turn.

If the database aborts the whole transaction (SQLite does so on some I/O and disk-full
errors), or the commit fails, every unit of it fails with that error, exactly as if each
had met it on its own.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from app import errors

log = logging.getLogger(__name__)

# A waiter whose predecessor never woke it (an exception between that thread's wake-up and
# its passing on) finds its transaction ended on its own after this many seconds.
_FALLBACK_POLL = 0.05

#: Errors after which SQLite may roll back the whole transaction, not only the statement:
#: the units that shared it fail with the same type, as if each had met the error itself.
_TRANSACTION_ABORTING = (
    errors.StorageFullError,
    errors.DatabaseUnavailableError,
    errors.CorruptDatabaseError,
    errors.ReadOnlyDatabaseError,
)


class CommitWaiter:
    """A unit whose work is in a shared transaction, waiting for its commit."""

    __slots__ = ("done", "error", "gate", "next_to_wake")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.done = False  # the transaction has ended (error is final)
        self.next_to_wake: CommitWaiter | None = None  # the unit to wake once this one is awake
        self.gate = threading.Lock()
        self.gate.acquire()  # bounded: a new lock, free: taking it never waits

    def wait(
        self,
        deadline: float,
        database: str,
        holder: Callable[[], errors.LockHolder | None] | None = None,
    ) -> BaseException | None:
        """Block until the transaction ends; return its error, or None once committed.

        An interruption (``KeyboardInterrupt``...) is delivered once the outcome is known,
        since the unit's work is already in the transaction's hands.

        Raises:
            CommitTimeoutError: the transaction was still open at ``deadline`` (the unit
                holding it runs long, named through ``holder`` when given); its outcome is
                not known.
        """
        interrupted: BaseException | None = None
        started = time.monotonic()
        try:
            while True:
                try:
                    remaining = deadline - time.monotonic()
                    if self.gate.acquire(timeout=max(0.0, min(_FALLBACK_POLL, remaining))):
                        break
                    if self.done:
                        break
                    if remaining <= 0:
                        waited = time.monotonic() - started
                        raise errors.CommitTimeoutError(
                            f"waited {waited:.2f}s for the commit of the write transaction "
                            f"this unit's work is in, on {database}: another unit of this "
                            "process still holds it open. The work will be committed when "
                            "that unit ends, or rolled back if it fails; check before "
                            "writing it again",
                            database=database,
                            waited=waited,
                            holder=None if holder is None else holder(),
                        )
                except errors.CommitTimeoutError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - delivered once the outcome is known
                    interrupted = exc
        finally:
            next_to_wake, self.next_to_wake = self.next_to_wake, None
            if next_to_wake is not None:
                next_to_wake.gate.release()
        if interrupted is not None:
            raise interrupted
        return self.error


class WriteOutcome:
    """Where a write unit's work went, to tell afterwards whether it was committed, even
    when the caller was interrupted after the commit."""

    __slots__ = ("transaction", "unit", "value")

    def __init__(self) -> None:
        self.unit: object = None
        self.transaction: SharedTransaction | None = None
        self.value: Any = None  # what the unit's body produced (set by the body)

    def committed(self) -> bool:
        return self.transaction is not None and self.transaction.committed(self.unit)


class SharedTransaction:
    """The open write transaction of one Database, passed from unit to unit.

    Args:
        connection: the connection whose transaction it is (``BEGIN IMMEDIATE`` done).
        owner: the Database whose units may join it.
        after_commit: run after a successful commit (the WAL bound); never raises.
        counted: told how many units ended and whether they committed.
    """

    __slots__ = (
        "aborted_by",
        "after_commit",
        "connection",
        "counted",
        "ended",
        "error",
        "kept",
        "owner",
        "spoiled",
        "waiters",
        "woke",
    )

    def __init__(
        self,
        connection: Connection,
        owner: object,
        after_commit: Callable[[Connection], None],
        counted: Callable[[bool, int], None],
    ) -> None:
        self.connection = connection
        self.owner = owner
        self.after_commit = after_commit
        self.counted = counted
        # The units whose work is in the transaction. A unit is added at the one point
        # after which its work can no longer be rolled back alone (its body and flush
        # succeeded): COMMIT then includes it, whatever interrupts the unit afterwards.
        self.kept: list[object] = []
        self.spoiled = False  # a unit failed in a way only a rollback of everything undoes
        self.waiters: list[CommitWaiter] = []
        # The failure of the unit under which the database aborted the transaction.
        self.aborted_by: BaseException | None = None
        self.ended = False  # closed: ``error`` is the outcome of every kept unit
        self.error: BaseException | None = None
        self.woke = False  # the first waiter was woken

    @property
    def units(self) -> int:
        """How many units' work the transaction holds."""
        return len(self.kept)

    def keep(self, unit: object) -> None:
        """Record that ``unit``'s work is in the transaction for good (see ``kept``)."""
        self.kept.append(unit)

    def holds(self, unit: object) -> bool:
        """True when ``unit``'s work is in the transaction (it was the last one kept)."""
        return bool(self.kept) and self.kept[-1] is unit

    def committed(self, unit: object) -> bool:
        """True once the transaction committed with ``unit``'s work in it."""
        return self.ended and self.error is None and unit in self.kept

    @property
    def url(self) -> str:
        return self.connection.engine.url.render_as_string(hide_password=True)

    def alive(self) -> bool:
        """False when it was spoiled, or the database aborted it behind our back."""
        return not self.spoiled and self._driver_in_transaction(aborted_counts=False)

    def aborted(self) -> bool:
        """True when the database ended (or poisoned) the transaction behind our back."""
        return not self._driver_in_transaction(aborted_counts=False)

    def _driver_in_transaction(self, *, aborted_counts: bool) -> bool:
        if self.connection.invalidated:
            # SQLAlchemy discards a connection when a statement on it was interrupted
            # (KeyboardInterrupt, SystemExit): its transaction is gone with it.
            return False
        raw: Any = self.connection.connection.dbapi_connection
        if type(raw) is sqlite3.Connection:  # asked for by every unit: the common case first
            return raw.in_transaction
        status = getattr(getattr(raw, "info", None), "transaction_status", None)
        if status is not None:  # psycopg: INTRANS is 2; INERROR (3) means aborted
            return int(status) == 2 or (aborted_counts and int(status) == 3)
        return bool(getattr(raw, "in_transaction", True))

    def close(self) -> BaseException | None:
        """Commit (or, when it cannot be committed, roll back) and wake every waiting unit.

        Returns:
            The error the units of the transaction get (None once committed).
        """
        error: BaseException | None = None
        commit = known = False
        try:
            try:
                commit = self.units > 0 and self.alive()
                if commit:
                    self.connection.commit()
                    known = True
                    self.after_commit(self.connection)
                else:
                    self.connection.rollback()
                    known = True
                    if self.units:
                        error = _shared_failure(self.url, self.aborted_by)
            except Exception as exc:  # noqa: BLE001 - handed to every unit of the transaction
                error, known = exc, True
            finally:
                if not known and (not commit or self._driver_in_transaction(aborted_counts=True)):
                    # Interrupted before the driver committed: closing rolls it back.
                    error = errors.UnitAbortedError(
                        f"the write transaction on {self.url} was interrupted before its "
                        "commit; nothing of this unit was written"
                    )
                # Closing rolls back whatever was not committed, so it must happen, even
                # when interrupted once.
                try:
                    self._close_connection()
                except BaseException:
                    self._close_connection()
                    raise
        finally:
            # Whatever happened above (an interruption included), the waiting units learn
            # the outcome: never leave them asleep (again if that is interrupted too).
            self.error, self.ended = error, True
            try:
                self._finish(error)
            except BaseException:
                self._finish(error)
                raise
            self.counted(error is None, self.units)
        return error

    def _close_connection(self) -> None:
        try:
            self.connection.close()
        except Exception:
            log.debug("closing a write connection failed", exc_info=True)

    def _finish(self, error: BaseException | None) -> None:
        """Hand every waiting unit the outcome and wake the first of them (each wakes the
        next). Safe to call again: nobody is woken twice."""
        waiters = self.waiters
        for waiter, next_to_wake in zip(waiters, [*waiters[1:], None], strict=False):
            waiter.error = error
            waiter.next_to_wake = next_to_wake
            waiter.done = True  # last: a waiter that sees it also sees its error
        if waiters and not self.woke:
            self.woke = True
            waiters[0].gate.release()


def _shared_failure(url: str, cause: BaseException | None) -> errors.AppError:
    """The error of a unit whose work was in a write transaction that another unit's
    failure ended, so nothing of it was written."""
    if isinstance(cause, _TRANSACTION_ABORTING):
        error = type(cause)(
            f"{cause} (this unit shared the write transaction that the error aborted, so "
            "nothing of it was written either)"
        )
        error.__cause__ = cause
        return error
    return errors.UnitAbortedError(
        f"{url} aborted the write transaction after an error in another unit sharing its "
        "commit; nothing of this unit was written (run it again)"
    )
