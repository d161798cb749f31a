"""PostgreSQL connections: the layer issues BEGIN, write units take turns on an advisory
lock, idle pooled connections are checked cheaply, and who holds the lock can be asked.

Every connection names its client process (``application_name`` = ``app pid <pid>``,
unless the URL sets one), so the server's activity view says which process a backend
serves; :func:`write_lock_holders` reads the lock table with that view.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import select
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app.engine._driver import BUSY_OPTION, UNIT_OPTION, UnitKind
from app.errors import LockHolder
from app.settings import Settings

log = logging.getLogger(__name__)

#: Key of the transaction-level advisory lock that makes PostgreSQL write units take turns,
#: as SQLite's single write lock does. Derived from a fixed name, so every process agrees.
PG_WRITE_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"app.write-unit").digest()[:8], "big", signed=True
)


def install_postgres_hooks(engine: Engine, settings: Settings) -> None:
    """PostgreSQL: the layer begins each transaction itself, and write units take turns on
    a transaction-level advisory lock, waiting for it at most ``busy_timeout`` (why a lock
    and not a row: docs/architecture.md)."""
    # BEGIN with the unit's isolation level or write lock in one simple query: one round
    # trip where psycopg's implicit BEGIN followed by our statement took two.
    lock = f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK_KEY})"
    default_wait_ms = _lock_timeout_ms(settings.busy_timeout_ms)
    read_begin = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"

    @event.listens_for(engine, "do_connect")
    def _name_the_process(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        # Read at each connect, so a forked child's connections name the child.
        cparams.setdefault("application_name", f"{APPLICATION_PREFIX}{os.getpid()}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Hand BEGIN over to the layer, as on SQLite. COMMIT and ROLLBACK keep working:
        # psycopg sends them whenever the server reports an open transaction.
        dbapi_connection.autocommit = True

    if settings.pool_pre_ping:

        @event.listens_for(engine, "checkout")
        def _pre_ping(
            dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
        ) -> None:
            if record.info.get("pid") != os.getpid():
                return  # inherited through fork(): the common hook replaces it, unused
            if _quiet(dbapi_connection):
                return
            try:
                dbapi_connection.execute(";")
            except Exception as exc:  # any failure at all means: use a new connection
                raise DisconnectionError(f"connection failed its ping: {exc}") from exc

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        unit = options.get(UNIT_OPTION)
        busy_ms = options.get(BUSY_OPTION)
        wait_ms = default_wait_ms if busy_ms is None else _lock_timeout_ms(busy_ms)
        # The wait is bounded for the lock alone; the unit's own statements get the
        # session's lock_timeout back.
        take_lock = f"SET LOCAL lock_timeout = {wait_ms}; {lock}; SET LOCAL lock_timeout = DEFAULT"
        dbapi_connection: Any = conn.connection.dbapi_connection
        if not dbapi_connection.autocommit:
            # An isolation level set through SQLAlchemy turned autocommit off: psycopg
            # sends BEGIN itself before the first statement.
            if unit == UnitKind.WRITE.value:
                conn.exec_driver_sql(take_lock)
            elif unit in ("read", "snapshot"):
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return
        if unit == UnitKind.WRITE.value:
            # One write unit at a time across every process, like SQLite's write lock.
            conn.exec_driver_sql(f"BEGIN; {take_lock}")
        elif unit in ("read", "snapshot"):
            # One stable snapshot for the whole unit, and writes refused by the server.
            conn.exec_driver_sql(read_begin)
        else:
            # A transaction outside any unit (the thread's Session used directly): one
            # snapshot for its reads, and a write based on rows another transaction changed
            # since fails (ConflictError) instead of overwriting them, as on SQLite.
            conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")


#: How connections name their process to the server (``pg_stat_activity.application_name``).
APPLICATION_PREFIX = "app pid "
_CLIENT_PID = re.compile(re.escape(APPLICATION_PREFIX) + r"(\d+)")

# The advisory lock's bigint key as pg_locks shows it: high and low 32 bits, objsubid 1.
_KEY = PG_WRITE_LOCK_KEY & 0xFFFFFFFFFFFFFFFF
_LOCK_ROWS = (
    "SELECT a.pid, a.application_name, a.state, left(a.query, 200), l.granted, "
    "extract(epoch FROM clock_timestamp() - a.xact_start), "
    "extract(epoch FROM clock_timestamp() - a.state_change) "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.classid = %s::bigint::oid "
    "AND l.objid = %s::bigint::oid AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND a.pid <> pg_backend_pid() ORDER BY l.granted DESC, a.xact_start"
)


def write_lock_holders(dbapi_connection: Any) -> tuple[list[LockHolder], list[LockHolder]]:
    """Who holds the layer's write lock on this database, and who waits for it (oldest
    first), from ``pg_locks`` and ``pg_stat_activity``, asked on ``dbapi_connection`` (a
    psycopg connection; a failed transaction on it is rolled back first)."""
    if dbapi_connection.info.transaction_status != 0:
        dbapi_connection.rollback()
    rows = dbapi_connection.execute(_LOCK_ROWS, (_KEY >> 32, _KEY & 0xFFFFFFFF)).fetchall()
    holders: list[LockHolder] = []
    waiters: list[LockHolder] = []
    for backend, application, state, query, granted, held, in_state in rows:
        client = _CLIENT_PID.fullmatch(application or "")
        if state == "idle in transaction":
            doing = f"idle in Python for {float(in_state or 0):.2f}s (idle in transaction)"
        elif state == "active":
            doing = "running a statement" if granted else "waiting for the write lock"
        else:
            doing = f"server state {state}"
        (holders if granted else waiters).append(
            LockHolder(
                pid=int(client.group(1)) if client else None,
                held=None if held is None else float(held),
                doing=doing,
                backend=int(backend),
                query=query,
            )
        )
    return holders, waiters


def write_lock_holder(connection: Connection) -> LockHolder | None:
    """The backend holding the layer's write lock, asked on ``connection``'s driver
    connection (None when nobody holds it)."""
    holders, _waiters = write_lock_holders(connection.connection.dbapi_connection)
    return holders[0] if holders else None


def _lock_timeout_ms(milliseconds: float) -> int:
    # lock_timeout = 0 would mean "wait for ever": the shortest wait is 1 ms.
    return max(1, int(milliseconds))


def _quiet(dbapi_connection: Any) -> bool:
    """True when an idle psycopg connection is certainly still open, without a round trip.

    A server that ends a session (restart, ``idle_session_timeout``, ``pg_terminate_backend``)
    sends an error and closes the socket, so an idle connection with nothing to read has
    not been closed by the server; anything else is left to a real ping. A connection cut
    off without a word (a dead network) fails the same way as a ping would: on first use.
    """
    try:
        if dbapi_connection.closed or dbapi_connection.info.transaction_status != 0:
            return False
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
        return not poller.poll(0)
    except Exception:  # noqa: BLE001 - no poll() on this platform, or a broken connection
        return False
