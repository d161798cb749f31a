"""SQLite connections: the pragmas every connection gets, who issues BEGIN, and the checks
that keep a write from going to a file that was removed or replaced."""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app import errors
from app.engine._driver import (
    BUSY_OPTION,
    OPENED_READ_ONLY,
    REOPEN,
    UNIT_OPTION,
    UnitKind,
    raw_execute,
    raw_execute_all,
    record_info,
)
from app.engine._sqlite_file import file_id
from app.settings import Settings

log = logging.getLogger(__name__)


def install_sqlite_hooks(engine: Engine, settings: Settings) -> None:
    pragmas = _sqlite_pragmas(settings)
    file_database = not settings.is_memory
    path = settings.sqlite_path

    if path is not None:

        @event.listens_for(engine, "do_connect")
        def _refuse_missing_file(*args: Any) -> None:
            # The file was created (or found) when the engine was built. If it is gone now,
            # SQLite would quietly create an empty database in its place and later writes
            # would land there, or fail on missing tables: say what happened instead.
            if not os.path.exists(path):
                raise errors.DatabaseUnavailableError(
                    f"{settings.safe_url()}: the database file {os.path.abspath(path)} was "
                    "removed (or its directory was) while the database was open; restore it "
                    "from a backup and open the Database again"
                )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, record: ConnectionPoolEntry) -> None:
        # Hand BEGIN over to the layer: sqlite3's implicit transactions would start a
        # DEFERRED transaction behind our back and break the write-unit guarantees.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {settings.busy_timeout_ms}")
            if file_database and not settings.single_connection and not settings.read_only:
                mode = cursor.execute(f"PRAGMA journal_mode = {settings.journal_mode}").fetchone()
                answered = str(mode[0]).lower() if mode else ""
                # SQLite reports a failed switch by answering the old mode, not by raising.
                if settings.journal_mode == "wal" and answered != "wal":
                    raise errors.ConfigurationError(
                        f"{settings.safe_url()} could not switch to WAL (journal_mode is "
                        f"{answered!r}); WAL needs a local file system with shared memory. "
                        "Use another path, or set journal_mode explicitly"
                    )
            for statement in pragmas:
                cursor.execute(statement)
        finally:
            cursor.close()
        if path is not None:
            record.info["file_id"] = file_id(path)
            if not settings.read_only and not os.access(path, os.W_OK):
                record.info[OPENED_READ_ONLY] = True  # SQLite fell back to read-only

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        busy_ms = options.get(BUSY_OPTION)
        if busy_ms is not None:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy_ms)}")
            record_info(conn)["busy_override"] = True
        unit = options.get(UNIT_OPTION)
        if unit == UnitKind.WRITE.value:
            if path is not None:
                _check_same_file(record_info(conn).get("file_id"), path, settings)
            # Take the write lock now: a DEFERRED transaction that reads and then writes
            # can fail with SQLITE_BUSY at once, without waiting for busy_timeout.
            raw_execute(conn, "BEGIN IMMEDIATE")
        elif unit == UnitKind.READ.value:
            raw_execute_all(conn, (("BEGIN", None), ("PRAGMA query_only = ON", None)))
            record_info(conn)["query_only"] = True
        else:
            raw_execute(conn, "BEGIN")

    @event.listens_for(engine, "checkout")
    def _reopen_read_only(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        # SQLite opens a file it may not write read-only, and the connection stays so for
        # good: once the file is writable again, only a new connection can write to it.
        info = record.info
        if info.pop(REOPEN, False) or (
            info.get(OPENED_READ_ONLY) and path is not None and os.access(path, os.W_OK)
        ):
            raise DisconnectionError("the connection is read-only: opening the file again")

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is None:
            return
        if record.info.pop("query_only", False):
            dbapi_connection.execute("PRAGMA query_only = OFF")
        if record.info.pop("busy_override", False):
            dbapi_connection.execute(f"PRAGMA busy_timeout = {settings.busy_timeout_ms}")


def _check_same_file(opened: tuple[int, int] | None, path: str, settings: Settings) -> None:
    """Refuse a write when the file at ``path`` is no longer the one the connection opened.

    A connection keeps writing to the file it opened even after that file was deleted,
    its directory removed or another file moved over it: every commit would succeed and be
    lost. One ``stat`` per write transaction turns that into an error.
    """
    current = file_id(path)
    if current is None:
        raise errors.DatabaseUnavailableError(
            f"{settings.safe_url()}: the database file {os.path.abspath(path)} was removed "
            "(or its directory was) while the database was open; the write was refused. "
            "Restore the file from a backup and open the Database again"
        )
    if opened is not None and current != opened:
        raise errors.DatabaseUnavailableError(
            f"{settings.safe_url()}: the database file {os.path.abspath(path)} was replaced "
            "by another file while the database was open; the write was refused. Open the "
            "Database again to use the new file (run `app doctor` on it first)"
        )


def _sqlite_pragmas(settings: Settings) -> list[str]:
    # Every value here was validated by Settings (numbers or a fixed choice), never user text.
    statements = [
        "PRAGMA foreign_keys = ON",
        f"PRAGMA synchronous = {settings.synchronous.upper()}",
        # Schema objects may not call application-defined functions (defence in depth).
        "PRAGMA trusted_schema = OFF",
    ]
    if settings.cache_size is not None:
        statements.append(f"PRAGMA cache_size = {int(settings.cache_size)}")
    if settings.mmap_size is not None:
        statements.append(f"PRAGMA mmap_size = {int(settings.mmap_size)}")
    if settings.journal_size_limit is not None:
        statements.append(f"PRAGMA journal_size_limit = {int(settings.journal_size_limit)}")
    if settings.temp_store is not None:
        statements.append(f"PRAGMA temp_store = {settings.temp_store.upper()}")
    return statements
