"""The driver underneath SQLAlchemy: statements sent straight to it, and its errors.

The layer's hot paths (savepoints, chain writes, block loading) skip SQLAlchemy's
per-statement bookkeeping and talk to the DB-API connection; their errors are translated
exactly as the engine's ``handle_error`` hook translates every other statement's.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from sqlalchemy.engine import Connection

from app import errors
from app._telemetry import STATEMENTS

log = logging.getLogger(__name__)

#: Execution option naming the kind of unit a connection's transaction serves: the value
#: of a :class:`UnitKind`.
UNIT_OPTION = "app_unit"


class UnitKind(enum.Enum):
    """What a unit of work may do; the value is what the engine's ``begin`` hook reads."""

    WRITE = "write"  # BEGIN IMMEDIATE (the advisory lock on PostgreSQL)
    READ = "read"  # Database.read(): a snapshot in which writes are refused
    SNAPSHOT = "snapshot"  # the layer's own reads: a snapshot without the ORM


#: Execution option lowering ``busy_timeout`` (ms) for one transaction (deadline-bound retries).
BUSY_OPTION = "app_busy_timeout_ms"


#: Connection info keys: the pool replaces the connection at its next checkout; SQLite
#: opened the file read-only (it is replaced once the file is writable again).
REOPEN, OPENED_READ_ONLY = "app_reopen", "app_opened_read_only"


def reopen_if_read_only(conn: Connection | None, error: BaseException | None) -> None:
    """After a write refused because the file is read-only, have the pool open a new
    connection next time (see ``_reopen_read_only``)."""
    if conn is None or not isinstance(error, errors.ReadOnlyDatabaseError):
        return
    with contextlib.suppress(Exception):  # a closed or invalidated connection: gone anyway
        record_info(conn)[REOPEN] = True


def record_info(conn: Connection) -> dict[Any, Any]:
    return conn.connection.info


#: Set once a Database with telemetry is open in the process: statements sent straight to
#: the driver are then counted on their connection too (see ``_telemetry.UnitRecord``).
_counting = False


def count_statements() -> None:
    """Count the statements each connection runs, from now on (for telemetry's spans)."""
    global _counting
    _counting = True


def raw_execute(connection: Connection, statement: str, parameters: Any = None) -> Any:
    """Run one statement on the driver's own connection and return the driver's cursor.

    The layer's hot paths (savepoints, chain writes, block loading) use this to skip the
    per-statement bookkeeping of SQLAlchemy. Driver errors are translated exactly as the
    ``handle_error`` hook translates them for every other statement.
    """
    return raw_execute_all(connection, ((statement, parameters),))


def raw_execute_all(connection: Connection, statements: Iterable[tuple[str, Any]]) -> Any:
    """:func:`raw_execute` for several ``(statement, parameters)`` in order; returns the
    driver's cursor of the last one."""
    pooled = connection.connection
    dbapi_connection: Any = pooled.dbapi_connection
    dbapi = connection.dialect.loaded_dbapi
    cursor = None
    if _counting:
        statements = tuple(statements)
        info = pooled.info
        info[STATEMENTS] = info.get(STATEMENTS, 0) + len(statements)
    try:
        if connection.dialect.name == "sqlite":
            for statement, parameters in statements:
                cursor = dbapi_connection.execute(
                    statement, () if parameters is None else parameters
                )
            return cursor
        for statement, parameters in statements:
            if parameters is None:
                cursor = dbapi_connection.execute(statement)
            else:
                # psycopg caches its parsing of %s markers only for statements of up to 50
                # parameters, and the chain's multi-row inserts have hundreds: send
                # PostgreSQL's own $n markers (converted once per statement) on a raw
                # cursor, which parses nothing.
                cursor = dbapi.RawCursor(dbapi_connection).execute(_numbered(statement), parameters)
        return cursor
    except dbapi.Error as exc:
        _raise_translated(connection, exc)


def _raise_translated(connection: Connection, exc: Exception) -> NoReturn:
    read_unit = connection.get_execution_options().get(UNIT_OPTION) == UnitKind.READ.value
    database = connection.engine.url.render_as_string(hide_password=True)
    translated = errors.translate(exc, database=database, read_unit=read_unit)
    if translated is None:
        raise exc
    reopen_if_read_only(connection, translated)
    raise translated from exc


_MARKER = re.compile(r"%([s%])")


@functools.lru_cache(maxsize=1024)
def _numbered(statement: str) -> str:
    """``statement`` with its ``%s`` markers as ``$1, $2, ...`` and ``%%`` as ``%``."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match[1] == "%":
            return "%"
        count += 1
        return f"${count}"

    return _MARKER.sub(number, statement)


@contextmanager
def pipeline(connection: Connection) -> Iterator[None]:
    """Send the statements run inside the block together and wait once for all of them.

    On PostgreSQL this is psycopg's pipeline mode: one round trip instead of one per
    statement. Statements inside must not read results; an error is raised (translated)
    at the latest when the block ends, and the statements after it are skipped. Nothing
    changes on SQLite, whose statements run in-process.
    """
    dbapi_connection: Any = connection.connection.dbapi_connection
    if connection.dialect.name == "sqlite" or not hasattr(dbapi_connection, "pipeline"):
        yield
        return
    dbapi = connection.dialect.loaded_dbapi
    try:
        with dbapi_connection.pipeline():
            yield
    except dbapi.Error as exc:
        _raise_translated(connection, exc)


def placeholder(connection: Connection) -> str:
    """The driver's positional parameter marker: ``?`` (sqlite3) or ``%s`` (psycopg)."""
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"
