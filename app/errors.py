"""The layer's exceptions, and the one place where driver errors are translated into them.

Every error raised on purpose is an :class:`AppError`. Driver exceptions (``sqlite3``,
``psycopg``) reach callers only as the ``__cause__`` of one of these, except where the
legacy contract promises a driver type: :class:`IntegrityViolationError` is also a
``sqlite3.IntegrityError``, so ``except sqlite3.IntegrityError`` keeps working.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from app._hints import command_hint


class AppError(Exception):
    """Base of every error this layer raises."""


class ConfigurationError(AppError, ValueError):
    """A setting, URL or environment value is wrong, or the database cannot be set up as asked."""


class InvalidInputError(AppError, ValueError):
    """A caller's argument was refused before anything was written."""


@dataclass(frozen=True)
class LockHolder:
    """Who held the write turn (or the database's write lock) when a wait ended.

    Attributes:
        pid: the process (on PostgreSQL, the client process when it named itself, else None).
        thread_name, thread_id: the holding thread, when known (same process, or the record
            a SQLite writer keeps next to the database).
        task: the asyncio task that opened the unit, if any.
        held: seconds it had held the turn or lock.
        site: where its unit began (``file:line in function``), when known.
        doing: ``running a statement``, ``idle in Python at ...`` or the server's state.
        backend: PostgreSQL's backend process id holding the lock (``pg_stat_activity``).
        query: the statement the backend runs or ran last (PostgreSQL).
    """

    pid: int | None
    thread_name: str | None = None
    thread_id: int | None = None
    task: str | None = None
    held: float | None = None
    site: str | None = None
    doing: str | None = None
    backend: int | None = None
    query: str | None = None

    def describe(self) -> str:
        """One line for messages: who, for how long, from where, doing what."""
        who = []
        if self.thread_name is not None:
            who.append(f"thread {self.thread_name!r} (id {self.thread_id})")
        if self.task is not None:
            who.append(f"asyncio task {self.task!r}")
        if self.pid is not None:
            who.append(f"process {self.pid}")
        if self.backend is not None:
            who.append(f"server backend {self.backend}")
        parts = [" of ".join(who) or "an unknown holder"]
        if self.held is not None:
            parts.append(f"for {self.held:.2f}s")
        if self.site is not None:
            parts.append(f"unit begun at {self.site}")
        if self.doing is not None:
            parts.append(self.doing)
        if self.query:
            parts.append(f"statement: {self.query}")
        return ", ".join(parts)


class DatabaseBusyError(AppError):
    """The database stayed locked by another writer past the deadline.

    Attributes:
        database: the database URL (password hidden).
        waited: seconds spent waiting, when known.
        holder: who held the turn or lock when the wait ended (:class:`LockHolder`), when
            the layer could tell; its description is also in the message.
    """

    def __init__(
        self,
        message: str,
        *,
        database: str = "",
        waited: float | None = None,
        holder: LockHolder | None = None,
    ):
        if holder is not None:
            message = f"{message}; held by {holder.describe()}"
        super().__init__(message)
        self.database = database
        self.waited = waited
        self.holder = holder


class ConflictError(DatabaseBusyError):
    """A transaction may not write because another one changed the database since it
    read: PostgreSQL aborted it to keep it serializable (SQLSTATE 40001, 40P01), or SQLite
    refused to let a transaction that began by reading write after another writer's commit
    (SQLITE_BUSY_SNAPSHOT). Nothing of it was written.

    :meth:`app.Database.run` re-runs such units from scratch.
    """


class CommitTimeoutError(AppError):
    """A unit's work is in a write transaction that was still open at the unit's deadline.

    Another unit of the process holds the transaction open (it runs long). Unlike
    :class:`DatabaseBusyError`, the work may still be committed when that unit ends, so
    blindly running the unit again could write it twice: check first.

    Attributes:
        database: the database URL (password hidden).
        waited: seconds spent waiting.
        holder: who held the write turn when the wait ended (:class:`LockHolder`), when
            the layer could tell; its description is also in the message.
    """

    def __init__(
        self,
        message: str,
        *,
        database: str = "",
        waited: float | None = None,
        holder: LockHolder | None = None,
    ):
        if holder is not None:
            message = f"{message}; held by {holder.describe()}"
        super().__init__(message)
        self.database = database
        self.waited = waited
        self.holder = holder


class PoolExhaustedError(AppError):
    """No pooled connection became free within ``pool_timeout``."""


class ReadOnlyUnitError(AppError):
    """A write was attempted inside a read unit (``Database.read()``)."""


class ReadOnlyDatabaseError(AppError):
    """The database file (or its directory) cannot be written."""


class StorageFullError(AppError):
    """The disk, or the database's ``max_page_count``, is full. Earlier data is intact."""


class DatabaseUnavailableError(AppError):
    """The database cannot be opened or reached (missing file or directory, I/O error,
    server down)."""


class ReplicaUnavailableError(DatabaseUnavailableError):
    """The read replica a read unit ran on failed in the middle of it (stopped, unreachable,
    or it cancelled the read to replay the primary's changes). Nothing was changed; the
    replica is skipped for a while, so running the read again uses another replica or the
    primary. The block store's reads do that by themselves."""


class CorruptDatabaseError(AppError):
    """The file is damaged: SQLite reports corruption or a malformed image."""


class NotADatabaseError(CorruptDatabaseError):
    """The file exists but is not a SQLite database."""


class SchemaOutOfDateError(AppError):
    """The database schema is older (or newer) than this code expects."""


class SchemaMismatchError(AppError):
    """An existing database's tables do not match the legacy schema, so it cannot be adopted."""


class IntegrityViolationError(AppError, sqlite3.IntegrityError):
    """A constraint refused the write (duplicate block index, missing parent row, ...)."""


class ClosedError(AppError):
    """The object was used after ``close()`` / ``dispose()``."""


class TransactionStateError(AppError):
    """A unit was opened or ended in a state that does not allow it."""


class UnitAbortedError(TransactionStateError):
    """Another unit sharing this unit's write transaction failed in a way that ended the
    whole transaction (an interruption in the middle of a statement, say), so nothing of
    this unit was written. Running it again is safe; :meth:`app.Database.run` does so."""


# SQLite primary result codes (https://sqlite.org/rescode.html).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_CONSTRAINT = 11, 13, 14, 19
_SQLITE_NOTADB = 26
_SQLITE_BUSY_SNAPSHOT = _SQLITE_BUSY | (2 << 8)


def translate(exc: BaseException, *, database: str, read_unit: bool = False) -> AppError | None:
    """Map a driver exception to the layer's exception, or None when it has no mapping.

    Args:
        exc: the DB-API exception (``sqlite3.Error`` or ``psycopg.Error``), possibly
            wrapped by SQLAlchemy.
        database: the URL to name in the message (password hidden).
        read_unit: the statement ran inside a read unit, so a refused write is the caller's
            mistake rather than a read-only file.
    """
    orig: Any = getattr(exc, "orig", None) or exc
    if isinstance(orig, AppError):
        return orig
    if isinstance(orig, sqlite3.Error):
        return _translate_sqlite(orig, database, read_unit)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None or type(orig).__module__.startswith("psycopg"):
        return _translate_postgres(orig, sqlstate, database)
    return None


def _translate_sqlite(orig: sqlite3.Error, database: str, read_unit: bool) -> AppError | None:
    code = getattr(orig, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(orig)
    if code == _SQLITE_BUSY_SNAPSHOT:
        # A transaction that began by reading tried to write after another writer had
        # committed: SQLite refuses, so the write cannot be based on stale reads.
        return ConflictError(
            f"{database}: another writer committed after this transaction read, so it may "
            "not write (nothing of it was written); read again in a new transaction, or use "
            "Database.unit_of_work() / Database.run(), whose reads and writes are one unit",
            database=database,
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
        return DatabaseBusyError(
            f"{database} is locked by another writer ({text}); retry later or raise "
            "busy_timeout / retry_deadline",
            database=database,
        )
    if primary == _SQLITE_READONLY:
        if read_unit:
            return ReadOnlyUnitError(
                f"write refused inside a read unit on {database}: use Database.unit_of_work() "
                "or Database.run() for writes"
            )
        return ReadOnlyDatabaseError(
            f"{database} is read-only ({text}): make the file, its -wal/-shm files and "
            "their directory writable by this user"
        )
    if primary == _SQLITE_FULL:
        return StorageFullError(
            f"{database} is full ({text}): free disk space or raise max_page_count; "
            "the failed unit was rolled back and earlier data is intact"
        )
    if primary == _SQLITE_NOTADB or "file is not a database" in text:
        return NotADatabaseError(
            f"{database} is not a SQLite database ({text}): check the path, or restore "
            "the file from a backup"
        )
    if primary == _SQLITE_CORRUPT or "malformed" in text:
        return CorruptDatabaseError(
            f"{database} is corrupt ({text}): stop writers, run "
            f"`{command_hint(database, 'doctor')}`, and restore from a backup"
        )
    if primary == _SQLITE_CANTOPEN or "unable to open database" in text:
        return DatabaseUnavailableError(
            f"cannot open {database} ({text}): check that the file and its directory "
            "exist and are accessible"
        )
    if primary == _SQLITE_IOERR or "disk I/O error" in text:
        return DatabaseUnavailableError(
            f"I/O error on {database} ({text}): the file may have been removed, truncated "
            f"or its disk failed; run `{command_hint(database, 'doctor')}`"
        )
    if primary == _SQLITE_CONSTRAINT or isinstance(orig, sqlite3.IntegrityError):
        return IntegrityViolationError(f"constraint failed on {database}: {text}")
    return None


def _translate_postgres(orig: Any, sqlstate: str | None, database: str) -> AppError | None:
    text = str(orig).strip()
    state = sqlstate or ""
    if state in ("40001", "40P01"):
        return ConflictError(
            f"{database} aborted the unit to avoid a conflict ({text}); it can be re-run",
            database=database,
        )
    if state == "55P03":
        return DatabaseBusyError(f"{database} lock not available ({text})", database=database)
    if state == "25006":
        return ReadOnlyUnitError(
            f"write refused inside a read unit on {database}: use Database.unit_of_work() "
            "or Database.run() for writes"
        )
    if state == "53100":
        return StorageFullError(f"{database} is out of disk space ({text})")
    if state.startswith("23"):
        return IntegrityViolationError(f"constraint failed on {database}: {text}")
    if state == "22003":
        # A number too large for its column (block_index is a 4-byte INTEGER there).
        return InvalidInputError(f"a value is out of range for its column on {database}: {text}")
    if state.startswith("57P0"):
        # The server is shutting down, restarting or crashed (57P01-57P03), or ended the
        # session: the connection is gone, and an open transaction with it.
        return DatabaseUnavailableError(
            f"{database} ended the connection ({text}): the server is stopping or "
            "restarting; try again once it is back"
        )
    if state.startswith("28") or state == "3D000":
        return ConfigurationError(f"cannot use {database}: {text}")
    # No SQLSTATE on an OperationalError: the connection attempt itself failed (an unknown
    # host, a refused or timed-out connection) before the server could answer.
    unreached = "connect" in text.lower() or type(orig).__name__ == "OperationalError"
    if state.startswith("08") or (not state and unreached):
        return DatabaseUnavailableError(
            f"cannot reach {database} ({text}): check that the server runs and the URL is right"
        )
    return None
