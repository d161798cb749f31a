"""The write unit that a thread's first raw write through the legacy ``conn`` opens
(pysqlite's implicit BEGIN), and what becomes of it when a statement in it fails and old
code swallows the error (see :class:`ImplicitUnit`)."""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from app.database import Database
from app.database._units import Unit

log = logging.getLogger(__name__)


class UseTracker(Protocol):
    """What the unit needs of its manager's tracker of calls in progress (``legacy._conn``):
    the unit counts as one, so closing the manager waits for it."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...


class _Rollback(Exception):
    """Thrown into a unit to roll it back."""


class ImplicitUnit:
    """The write unit that a thread's first raw write opened (pysqlite's implicit BEGIN).

    Old code often swallows a failed statement and never commits: the unit would keep the
    write turn, and every other writer of the process would wait for it, for as long as the
    thread lives (a pool thread never ends). With the old class's one shared connection,
    the next commit by anyone ended such a transaction. So when a statement fails in it:

    * if the unit has written nothing yet, it ends at once (rolled back: nothing is lost);
    * else it is marked failed, and if its thread does nothing more with it for
      ``failed_write_grace`` seconds, a timer thread commits what it wrote before the
      failure (what the old class's next commit would have stored) and passes the turn on.
      The thread coming back to the unit first (a statement, a commit or rollback, any call
      of the layer) clears the mark: :meth:`touch`, called on each lookup of the unit.
    """

    def __init__(self, db: Database, users: UseTracker) -> None:
        users.acquire()  # bounded: counts a call in progress, never waits
        self._db = db
        self._users = users
        self._lock = threading.Lock()  # between the thread coming back and the timer
        self._failed: threading.Timer | None = None
        unit: Any = db.unit_of_work()
        try:
            unit.__enter__()
        except BaseException:
            users.release()
            raise
        self._unit: Any = unit
        try:
            opened = db.current_unit()
            assert opened is not None
            self._opened: Unit = opened
            self._changes_at_start = _sqlite_changes(opened.connection)
            #: PostgreSQL: something was written before the statement now running.
            self.written = False
            opened.watch = weakref.WeakMethod(self.touch)
        except BaseException:
            self.end(commit=False)
            raise

    def end(self, *, commit: bool) -> None:
        unit, self._unit = self._unit, None
        if unit is None:
            return
        try:
            if commit:
                unit.__exit__(None, None, None)
            else:
                unit.__exit__(_Rollback, _Rollback(), None)
        finally:
            self._users.release()

    def wrote_nothing(self) -> bool:
        """True when nothing was written in the unit before the statement that failed.

        SQLite counts the rows changed on a connection, and a failed statement changes
        none. PostgreSQL gives a transaction an id at its first write, but a failed INSERT
        gets one too: there the runner looks just before each statement (``written``).
        """
        if self._unit is None:
            return True
        if self._changes_at_start is None:
            return not self.written
        return _sqlite_changes(self._opened.connection) == self._changes_at_start

    def statement_failed(self, error: BaseException) -> None:
        """A statement of the unit failed in its thread (see the class docstring)."""
        grace = self._db.settings.failed_write_grace
        with self._lock:
            self._cancel_timer()
            timer = threading.Timer(grace, self._give_up, args=(error,))
            timer.name = f"failed conn transaction ({self._db.url})"
            timer.daemon = True
            self._failed = timer
            timer.start()

    def touch(self) -> None:
        if self._failed is not None:
            with self._lock:  # bounded: waits only while the timer commits the unit
                self._cancel_timer()

    def _cancel_timer(self) -> None:
        timer, self._failed = self._failed, None
        if timer is not None:
            timer.cancel()

    def _give_up(self, error: BaseException) -> None:
        """In the timer's thread: commit the abandoned unit and pass the write turn on."""
        with self._lock:
            if self._failed is None or self._unit is None:
                return  # its thread came back meanwhile
            self._failed = None
            if not self._db.adopt_write_turn(self._opened):
                return
            log.warning(
                "a write transaction on %s made through conn was left open for %.1fs after a "
                "statement in it failed (%s: %s); committed what it wrote before the failure, "
                "as the old class's next commit would have, so that other writers can go on. "
                "Commit or roll back after an error on conn",
                self._db.url,
                self._db.settings.failed_write_grace,
                type(error).__name__,
                error,
            )
            try:
                self.end(commit=True)
            except Exception:
                log.exception("committing an abandoned conn transaction failed")

    def __del__(self) -> None:
        # Runs in the thread that is ending (its thread-local state is dropped there), like
        # a sqlite3 connection closed with a pending transaction: the writes are discarded
        # and, above all, the write lock is handed on.
        if getattr(self, "_unit", None) is None:
            return
        try:
            log.warning("a thread ended with uncommitted writes made through conn; rolled back")
            self.end(commit=False)
        except Exception:  # noqa: BLE001 - nothing can report it (this may run at shutdown)
            pass


def _sqlite_changes(connection: Connection | None) -> int | None:
    """Rows changed so far on a SQLite connection (None on PostgreSQL)."""
    assert connection is not None
    changes = getattr(connection.connection.dbapi_connection, "total_changes", None)
    return None if changes is None else int(changes)
