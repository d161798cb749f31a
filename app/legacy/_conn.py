"""The legacy ``conn`` attribute as a connection that every thread can use.

Old call sites do ``db.conn.cursor()``, ``db.conn.execute(...)`` and ``db.conn.commit()``
from whatever thread they run on, often through a reference kept since start-up. So there
is one :class:`ThreadConnection` object per manager, and everything it tracks (the open
write unit, above all) is kept per thread. The rules are in its docstring.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Connection

from app import errors
from app.database import Database
from app.engine._sql_text import statement_kind, to_pyformat
from app.legacy._cursor import Columns, LegacyCursor, Row
from app.legacy._implicit import ImplicitUnit

log = logging.getLogger(__name__)

_PG_STATEMENT_SAVEPOINT = "app_conn_statement"


class UseTracker:
    """Counts the calls and units in progress on a manager, so that closing it waits for them.

    Used as ``with tracker:`` around every call. After :meth:`close`, a thread may still
    finish the write unit it has open; any other call raises :class:`~app.errors.ClosedError`.
    ``on_last`` (disposing the pool) runs once, when the manager is closed and nothing is
    in progress.

    Args:
        db: the database whose units count as "in progress".
        name: how messages name the manager's database.
        on_last: called once after close, when the last user is done.
        owner: in the single-connection mode, the only thread allowed to call.
        kind: the manager's class name, as messages give it (either of the old class's
            two names).
    """

    def __init__(
        self,
        db: Database,
        name: str,
        on_last: Callable[[], None],
        owner: int | None = None,
        *,
        kind: str,
    ) -> None:
        self._db = db
        self._name = name
        self._kind = kind
        self._on_last = on_last
        self.owner = owner
        self._lock = threading.Lock()
        self._count = 0
        self._closed = False
        self._finished = False

    @property
    def closed(self) -> bool:
        return self._closed

    def check_thread(self) -> None:
        """Raise sqlite3's own error when a thread other than the owner calls (legacy mode)."""
        me = threading.get_ident()
        if self.owner is not None and me != self.owner:
            raise sqlite3.ProgrammingError(
                "SQLite objects created in a thread can only be used in that same thread. "
                f"The object was created in thread id {self.owner} and this is thread id {me}."
            )

    def check_open(self) -> None:
        """Raise ClosedError after close, unless this thread is finishing its write unit."""
        if self._closed and not self._db.in_write_unit():
            raise errors.ClosedError(
                f"this {self._kind} for {self._name} was closed; create a new "
                f"{self._kind} to use the database again"
            )

    def acquire(self) -> None:
        with self._lock:
            self.check_open()
            self.check_thread()
            self._count += 1

    def release(self) -> None:
        with self._lock:
            self._count -= 1
            last = self._closed and self._count == 0 and not self._finished
            self._finished = self._finished or last
        if last:
            self._on_last()

    def close(self) -> None:
        """Refuse new calls; run ``on_last`` now if nothing is in progress."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            last = self._count == 0
            self._finished = last
        if last:
            self._on_last()

    def __enter__(self) -> None:
        self.acquire()  # bounded: counts a call in progress, never waits

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ThreadConnection:
    """``DatabaseManager.conn``: a DB-API-like connection that works from every thread.

    Rules:

    * Rows are ``sqlite3.Row`` by default (``row_factory`` can be set to ``None`` or a
      ``(cursor, row)`` factory; it applies to every thread). On PostgreSQL, rows are
      :class:`Row`, with the same index and key access, and ``?`` / ``:name`` placeholders
      are rewritten for psycopg outside quoted text. Driver errors reach the caller as the
      driver raised them (``sqlite3.IntegrityError``, ...).
    * Inside ``DatabaseManager.transaction()`` (or ``run_serialized``), statements run on
      that unit's own connection, so they are part of it. ``commit()`` there is deferred to
      the end of the unit; ``rollback()`` raises :class:`~app.errors.TransactionStateError`
      (let the exception leave the ``with`` block to roll the unit back).
    * Outside, a read runs on a pooled connection checked out for that statement only, and
      its rows are fetched at once (cursors never hold a connection).
    * Outside, the first write (INSERT, UPDATE, DELETE, REPLACE, DDL, ``WITH ... INSERT``,
      ``PRAGMA x = y``) or an explicit ``BEGIN`` opens a write unit for the calling thread,
      as sqlite3's implicit transactions did: it waits its turn behind this process's
      other writers and takes the database's write lock, and lasts until ``commit()``,
      ``rollback()``, ``close()``, a write call of the manager (which committed the shared
      connection in the old class too) or the end of the thread (rolled back). Until then
      the thread's statements and the manager's calls see the pending writes; other
      writers wait, so commit promptly.
    * A statement that fails there (and is swallowed, as old code often does) never keeps
      the other writers waiting: if it was the unit's first write, the unit ends at once;
      otherwise, once the thread has left the unit alone for ``failed_write_grace``
      seconds, what it wrote before the failure is committed (as the old class's next
      commit did) and the turn passed on.
    * ``close()`` only rolls back the calling thread's pending writes; the manager stays
      open. Rows of large SELECTs are held in memory: page big reads with LIMIT.
    """

    def __init__(self, db: Database, users: UseTracker) -> None:
        self._db = db
        self._users = users
        self._sqlite = db.settings.is_sqlite
        self._local = threading.local()
        #: How rows are built; applies to every thread (it was one shared connection).
        self.row_factory: Any = sqlite3.Row

    # -- the DB-API surface ---------------------------------------------------------------

    def cursor(self) -> LegacyCursor:
        self._users.check_thread()
        return LegacyCursor(self)

    def execute(self, sql: str, parameters: Any = ()) -> LegacyCursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any) -> LegacyCursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    @property
    def in_transaction(self) -> bool:
        """True while this thread is inside a write unit of the manager."""
        return self._db.in_write_unit()

    def commit(self) -> None:
        """Commit this thread's implicit write unit (deferred inside ``transaction()``)."""
        self._users.check_thread()
        if self._in_explicit_unit():
            return
        unit = self._take_unit()
        if unit is not None:
            unit.end(commit=True)

    def rollback(self) -> None:
        """Roll back this thread's implicit write unit.

        Raises:
            TransactionStateError: inside ``transaction()``, which only an exception leaving
                its ``with`` block can roll back.
        """
        self._users.check_thread()
        if self._in_explicit_unit():
            raise errors.TransactionStateError(
                "conn.rollback() inside DatabaseManager.transaction(): raise an exception out "
                "of the with block to roll the whole transaction back"
            )
        unit = self._take_unit()
        if unit is not None:
            unit.end(commit=False)

    def close(self) -> None:
        """Roll back this thread's uncommitted writes. The manager stays usable."""
        if not self._in_explicit_unit():
            unit = self._take_unit()
            if unit is not None:
                unit.end(commit=False)

    def __enter__(self) -> ThreadConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # sqlite3's connection context manager: commit on success, roll back on error.
        if exc_type is None:
            self.commit()
        elif not self._in_explicit_unit():
            self.rollback()

    # -- for the manager --------------------------------------------------------------------

    def commit_after_write(self) -> None:
        """End this thread's implicit unit after a write call of the manager, unless that
        call ran inside an explicit unit nested in it."""
        unit = getattr(self._local, "unit", None)
        if unit is not None and self._db.write_depth() <= 1:
            self._take_unit()
            unit.end(commit=True)

    # -- internals --------------------------------------------------------------------------

    def _take_unit(self) -> ImplicitUnit | None:
        unit: ImplicitUnit | None = getattr(self._local, "unit", None)
        self._local.unit = None
        return unit

    def _in_explicit_unit(self) -> bool:
        if not self._db.in_write_unit():
            return False
        if getattr(self._local, "unit", None) is None:
            return True
        # A unit opened inside the implicit one is nested in it (a SAVEPOINT).
        return self._db.write_depth() > 1

    def _after_failure(self, error: BaseException) -> None:
        """A statement failed in this thread's implicit unit (outside ``transaction()``):
        end the unit if it wrote nothing, else mark it failed (see ``ImplicitUnit``)."""
        unit: ImplicitUnit | None = getattr(self._local, "unit", None)
        if unit is None or self._in_explicit_unit():
            return
        if unit.wrote_nothing():
            self._take_unit()
            unit.end(commit=False)
        else:
            unit.statement_failed(error)

    def _begin(self) -> None:
        # A BEGIN inside a unit is a no-op: old code guarded it with ``in_transaction``.
        if self._db.unit_kind() is None:
            self._local.unit = ImplicitUnit(self._db, self._users)

    def run_for_cursor(
        self, cursor: LegacyCursor, sql: str, parameters: Any, *, many: bool
    ) -> None:
        """Run ``sql`` for ``cursor`` (a :class:`LegacyCursor` of this connection) and load
        its results into it; what ``cursor.execute`` and ``executemany`` call."""
        kind = statement_kind(sql)
        if kind in ("begin", "commit", "rollback"):
            # Transaction control goes through the unit, never to the driver directly.
            if kind == "commit":
                self.commit()
            elif kind == "rollback":
                self.rollback()
            else:
                with self._users:
                    self._begin()
            cursor._load([], None, -1, None)
            return
        with self._users:
            if kind == "write" and self._db.unit_kind() is None:
                self._begin()
            if self._db.unit_kind() is not None:
                # Inside a unit the statement joins it, on the unit's own connection.
                try:
                    with self._db.reading() as connection:
                        self._run(connection, cursor, sql, parameters, many, in_unit=True)
                    implicit = getattr(self._local, "unit", None)
                    if kind == "write" and implicit is not None:
                        implicit.written = True
                except BaseException as exc:
                    self._after_failure(exc)
                    raise
                return
            with self._db.read() as session:
                self._run(session.connection(), cursor, sql, parameters, many, in_unit=False)

    def _run(
        self,
        connection: Connection,
        cursor: LegacyCursor,
        sql: str,
        parameters: Any,
        many: bool,
        *,
        in_unit: bool,
    ) -> None:
        dbapi: Any = connection.connection.dbapi_connection
        raw = dbapi.cursor()
        try:
            if self._sqlite:
                # Per cursor, never on the pooled connection: SQLAlchemy shares it.
                raw.row_factory = self.row_factory
                (raw.executemany if many else raw.execute)(sql, parameters)
                description = raw.description
                rows = raw.fetchall() if description is not None else []
                cursor._load(rows, description, raw.rowcount, raw.lastrowid)
            else:
                probe = getattr(self._local, "unit", None) if in_unit else None
                if probe is not None and probe.written:
                    probe = None
                self._run_postgres(raw, cursor, sql, parameters, many, in_unit, probe)
        finally:
            raw.close()

    def _run_postgres(
        self,
        raw: Any,
        cursor: LegacyCursor,
        sql: str,
        parameters: Any,
        many: bool,
        savepoint: bool,
        probe: ImplicitUnit | None,
    ) -> None:
        sequence: Any
        if many:
            sequence = list(parameters)
            statement = to_pyformat(sql, sequence[0] if sequence else ())
        else:
            # No parameters: psycopg then leaves the text alone (no placeholders, no %%).
            sequence = parameters if parameters else None
            statement = to_pyformat(sql, parameters) if sequence is not None else sql
        # A failed statement aborts a whole PostgreSQL transaction; in SQLite it fails alone.
        # A savepoint around each statement keeps the unit usable, as in SQLite.
        if probe is not None:
            # In the same round trip: has the implicit unit written anything before this
            # statement (a transaction gets its id at its first write)?
            raw.execute(
                f"SAVEPOINT {_PG_STATEMENT_SAVEPOINT}; "
                "SELECT txid_current_if_assigned() IS NOT NULL"
            )
            raw.nextset()
            probe.written = bool(raw.fetchone()[0])
        elif savepoint:
            raw.execute(f"SAVEPOINT {_PG_STATEMENT_SAVEPOINT}")
        try:
            if many:
                raw.executemany(statement, sequence)
            else:
                raw.execute(statement, sequence)
        except BaseException:
            if savepoint:
                raw.execute(f"ROLLBACK TO SAVEPOINT {_PG_STATEMENT_SAVEPOINT}")
                raw.execute(f"RELEASE SAVEPOINT {_PG_STATEMENT_SAVEPOINT}")
            raise
        description = None
        rows: list[Any] = []
        if raw.description is not None:
            description = tuple(
                (c.name, None, None, None, None, None, None) for c in raw.description
            )
            values = raw.fetchall()
            cursor.description = description  # a custom row factory may read it
            rows = self._postgres_rows(cursor, description, values)
        cursor._load(rows, description, raw.rowcount, None)
        if savepoint:
            raw.execute(f"RELEASE SAVEPOINT {_PG_STATEMENT_SAVEPOINT}")

    def _postgres_rows(
        self, cursor: LegacyCursor, description: tuple[tuple[Any, ...], ...], values: list[Any]
    ) -> list[Any]:
        factory = self.row_factory
        if factory is None:
            return [tuple(v) for v in values]
        if factory is sqlite3.Row:
            columns = Columns([d[0] for d in description])
            return [Row(columns, v) for v in values]
        return [factory(cursor, tuple(v)) for v in values]
