"""The engine factory: pool choice, per-connection pragmas, BEGIN control, error translation.

Everything that must hold for *every* connection is set in pool and connection events here,
so connections made by the ORM, by Alembic and by the legacy ``conn`` attribute all behave
the same.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import select
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool, StaticPool

from . import errors
from ._hints import command_hint
from .settings import Settings

log = logging.getLogger(__name__)

#: Execution option naming the kind of unit a connection's transaction serves.
UNIT_OPTION = "app_unit"
#: Execution option lowering ``busy_timeout`` (ms) for one transaction (deadline-bound retries).
BUSY_OPTION = "app_busy_timeout_ms"


#: Key of the transaction-level advisory lock that makes PostgreSQL write units take turns,
#: as SQLite's single write lock does. Derived from a fixed name, so every process agrees.
PG_WRITE_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"app.write-unit").digest()[:8], "big", signed=True
)


def build_engine(settings: Settings) -> Engine:
    """Create the engine for ``settings``, with every hook installed.

    Raises:
        ConfigurationError, ReadOnlyDatabaseError, NotADatabaseError: before anything is
            created, when the path cannot hold a database.
    """
    if settings.is_sqlite:
        engine = _sqlite_engine(settings)
        _install_sqlite_hooks(engine, settings)
    else:
        engine = _server_engine(settings)
        _install_postgres_hooks(engine, settings)
    _install_common_hooks(engine, settings)
    return engine


def _sqlite_engine(settings: Settings) -> Engine:
    connect_args: dict[str, Any] = {
        "timeout": settings.busy_timeout,
        # Connections move between threads through the pool (never while in use); the
        # single-connection legacy mode keeps sqlite3's same-thread check on purpose.
        "check_same_thread": settings.single_connection,
    }
    if settings.is_memory:
        # Each sqlite3 connection to :memory: is its own empty database, so sharing one
        # in-memory database between threads means sharing one connection (StaticPool).
        # The Database object then lets one unit at a time use it, reads included.
        return create_engine(
            "sqlite://", poolclass=StaticPool, connect_args=connect_args, echo=settings.echo
        )
    path = settings.sqlite_path
    assert path is not None
    prepare_sqlite_file(path, settings.file_mode, create=settings.create, url=settings.safe_url())
    if settings.single_connection:
        return create_engine(
            settings.parsed_url,
            poolclass=StaticPool,
            connect_args=connect_args,
            echo=settings.echo,
        )
    return create_engine(
        settings.parsed_url,
        poolclass=QueuePool,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        connect_args=connect_args,
        echo=settings.echo,
    )


def _server_engine(settings: Settings) -> Engine:
    # pool_pre_ping is honoured by the checkout hook of _install_postgres_hooks, which skips
    # the round trip when the connection's socket shows that the server has not closed it.
    return create_engine(
        settings.parsed_url,
        poolclass=QueuePool,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        echo=settings.echo,
    )


def prepare_sqlite_file(
    path: str, file_mode: int, *, create: bool = True, url: str | None = None
) -> None:
    """Check (and create, owner-only) the database file before SQLite touches it.

    Nothing is created when the check fails: a missing directory that cannot be made, a
    path that is a directory, a file that is not a database, a read-only file. A file (or
    directory) that is created is logged at INFO with its absolute path, so a mistyped path
    shows up in the log instead of silently starting an empty database.

    Args:
        create: make the file when it does not exist; when False a missing file is an error.
        url: the database URL (password hidden), for the hint in that error.

    Raises:
        DatabaseUnavailableError: the file does not exist and ``create`` is False.
        ConfigurationError, ReadOnlyDatabaseError, NotADatabaseError: the path cannot hold
            a database.
    """
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        raise errors.ConfigurationError(f"database path {target} is a directory; give a file path")
    if not create and not os.path.exists(target):
        shown = url or f"sqlite:///{target}"
        raise errors.DatabaseUnavailableError(
            f"the database file {target} does not exist, and creating it was not asked for "
            f"(nothing was created): check the URL {shown}, or create the database with "
            f"`{command_hint(shown, 'db', 'upgrade')}`"
        )
    if not os.path.isdir(directory):
        ancestor, missing = directory, []
        while not os.path.exists(ancestor):
            missing.append(ancestor)
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
            raise errors.ConfigurationError(
                f"cannot create directory {directory} for the database: {ancestor} is not a "
                "writable directory; create it or choose another path"
            )
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise errors.ConfigurationError(
                f"cannot create directory {directory} for the database ({exc.strerror}); "
                "create it or choose another path"
            ) from exc
        # Exact bits, whatever the umask (under umask 0 they would be world-writable): the
        # owner's, plus what file_mode grants the group and others, with search where it
        # lets them read (0600 gives 0700, 0640 gives 0750, 0660 gives 0770).
        directory_mode = 0o700 | (file_mode & 0o066) | (file_mode & 0o044) >> 2
        for created in reversed(missing):
            with contextlib.suppress(OSError):  # made by another user meanwhile: theirs
                os.chmod(created, directory_mode)
            log.info("created directory %s for the database", created)
    if os.path.exists(target):
        _check_existing_file(target)
        return
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode)
    except FileExistsError:
        return  # another process created it first
    except OSError as exc:
        raise errors.ConfigurationError(
            f"cannot create database file {target} ({exc.strerror}); check the directory's "
            "permissions or choose another path"
        ) from exc
    try:
        os.fchmod(fd, file_mode)  # exact bits, whatever the umask
    finally:
        os.close(fd)
    log.info("created a new database file %s", target)


def _check_existing_file(target: str) -> None:
    if not os.access(target, os.R_OK):
        raise errors.DatabaseUnavailableError(
            f"cannot read database file {target}; check its permissions"
        )
    if not os.access(target, os.W_OK):
        # Refused before any probe: a read-only WAL database would be left with -wal and
        # -shm files that the probe cannot remove.
        raise errors.ReadOnlyDatabaseError(
            f"database file {target} is read-only: make it writable by this user "
            "(for example chmod u+w) or point the URL at a writable copy"
        )
    problem = probe_sqlite_file(target)
    if isinstance(problem, errors.AppError):
        raise problem


def probe_sqlite_file(target: str) -> errors.AppError | bool:
    """Check that an existing file is a readable SQLite database, without changing it.

    The file is read through a read-only SQLite connection, never with ``open()``: closing
    any descriptor of a file drops every POSIX lock this process holds on it, including
    the locks of connections other Database objects of this process have open on it, and
    another process could then delete the WAL under them. SQLite's own descriptors share
    one lock table per file and are not closed while locks are held.

    Returns:
        True for an empty file (a new database), False for a database, or the error
        (NotADatabaseError, CorruptDatabaseError) that describes the damage.
    """
    if os.path.getsize(target) == 0:
        return True
    uri = f"file:{quote(os.path.abspath(target))}?mode=ro"
    companions = [target + suffix for suffix in ("-wal", "-shm")]
    existing = [os.path.exists(name) for name in companions]
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as probe:
            probe.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            # A damaged file whose header says WAL makes SQLite create an empty -wal and a
            # -shm before it finds the damage: leave the directory as it was.
            for name, was_there in zip(companions, existing, strict=True):
                if not was_there:
                    with contextlib.suppress(OSError):
                        os.remove(name)
        if code == sqlite3.SQLITE_NOTADB:
            return errors.NotADatabaseError(
                f"{target} is not a SQLite database (its header is not 'SQLite format 3'); "
                "check the path, or restore the file from a backup"
            )
        if code == sqlite3.SQLITE_CORRUPT:
            return errors.CorruptDatabaseError(
                f"{target} is corrupt ({exc}); restore it from a backup, or salvage rows "
                "with `sqlite3 FILE .recover`"
            )
        # Busy or locked by another process, or similar: the pooled connections, with
        # their busy_timeout, deal with that.
    return False


def _install_sqlite_hooks(engine: Engine, settings: Settings) -> None:
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
            cursor.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout * 1000)}")
            if file_database and not settings.single_connection:
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
            record.info["file_id"] = _file_id(path)
            if not os.access(path, os.W_OK):
                record.info[_OPENED_READ_ONLY] = True  # SQLite fell back to read-only

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        busy_ms = options.get(BUSY_OPTION)
        if busy_ms is not None:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(busy_ms)}")
            _record_info(conn)["busy_override"] = True
        unit = options.get(UNIT_OPTION)
        if unit == "write":
            if path is not None:
                _check_same_file(_record_info(conn).get("file_id"), path, settings)
            # Take the write lock now: a DEFERRED transaction that reads and then writes
            # can fail with SQLITE_BUSY at once, without waiting (see architecture notes).
            raw_execute(conn, "BEGIN IMMEDIATE")
        elif unit == "read":
            raw_execute_all(conn, (("BEGIN", None), ("PRAGMA query_only = ON", None)))
            _record_info(conn)["query_only"] = True
        else:
            raw_execute(conn, "BEGIN")

    @event.listens_for(engine, "checkout")
    def _reopen_read_only(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        # SQLite opens a file it may not write read-only, and the connection stays so for
        # good: once the file is writable again, only a new connection can write to it.
        info = record.info
        if info.pop(_REOPEN, False) or (
            info.get(_OPENED_READ_ONLY) and path is not None and os.access(path, os.W_OK)
        ):
            raise DisconnectionError("the connection is read-only: opening the file again")

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is None:
            return
        if record.info.pop("query_only", False):
            dbapi_connection.execute("PRAGMA query_only = OFF")
        if record.info.pop("busy_override", False):
            dbapi_connection.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout * 1000)}")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _check_same_file(opened: tuple[int, int] | None, path: str, settings: Settings) -> None:
    """Refuse a write when the file at ``path`` is no longer the one the connection opened.

    A connection keeps writing to the file it opened even after that file was deleted,
    its directory removed or another file moved over it: every commit would succeed and be
    lost. One ``stat`` per write transaction turns that into an error.
    """
    current = _file_id(path)
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


def _install_postgres_hooks(engine: Engine, settings: Settings) -> None:
    """PostgreSQL: the layer begins each transaction itself, and write units take turns.

    Write units take a transaction-level advisory lock (``pg_advisory_xact_lock``) as
    their first statement, rather than locking a chain-head row. What has to be serialised
    is every write unit, not only the chain append: code written for SQLite (``db.run``
    read-modify-write units, the legacy ``transaction()`` pattern, migrations) relies on one
    writer at a time. The advisory lock gives that without a schema change and without a
    hot row rewritten by every append (a dead tuple and WAL each time). It is always the
    unit's first lock, so it cannot deadlock with row locks taken later, and the server
    releases it at COMMIT or ROLLBACK, or when the session dies, so a crashed process never
    leaves it held. Write units run at READ COMMITTED: every statement after the lock sees
    the previous writer's commit, which makes "read the head, append the next block" atomic
    across processes (a REPEATABLE READ snapshot would be taken before the lock was
    granted). As on SQLite, writers of one database take turns even when they touch
    unrelated rows; the key is per database, so schemas of one database share it.

    A writer waits for the lock at most ``busy_timeout`` (``lock_timeout`` for that one
    statement), as SQLite's busy handler does, so ``Database.run`` can retry and give up at
    its deadline instead of waiting for ever behind a stuck writer.
    """
    # BEGIN with the unit's isolation level or write lock in one simple query: one round
    # trip where psycopg's implicit BEGIN followed by our statement took two.
    lock = f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK_KEY})"
    default_wait_ms = _lock_timeout_ms(settings.busy_timeout * 1000)
    read_begin = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"

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
            if unit == "write":
                conn.exec_driver_sql(take_lock)
            elif unit in ("read", "snapshot"):
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return
        if unit == "write":
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


def _install_common_hooks(engine: Engine, settings: Settings) -> None:
    database = settings.safe_url()

    @event.listens_for(engine, "connect")
    def _remember_pid(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _refuse_foreign_pid(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        # A connection inherited through fork() belongs to the parent: drop our reference
        # without closing it (closing could disturb the parent's locks) and make a new one.
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None  # type: ignore[misc]
            raise DisconnectionError("connection was created by another process")

    sqlite = settings.is_sqlite

    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> BaseException | None:
        if (
            sqlite
            and context.is_disconnect
            and not isinstance(context.original_exception, Exception)
        ):
            # SQLAlchemy discards a connection whose statement a KeyboardInterrupt or
            # SystemExit interrupted, as a network driver may be left mid-message. sqlite3
            # raises those only between its calls, so the connection is intact; and
            # discarding it would be harmful: closed while its cursor is still referenced
            # (by the traceback), SQLite keeps it, with its transaction and write lock,
            # until the garbage collector frees that cursor. Keep it: the unit rolls back.
            context.is_disconnect = False
        conn = context.connection
        read_unit = False
        if conn is not None and not conn.closed:
            read_unit = conn.get_execution_options().get(UNIT_OPTION) == "read"
        translated = errors.translate(
            context.original_exception, database=database, read_unit=read_unit
        )
        _reopen_if_read_only(conn, translated)
        return translated


#: Connection info keys: the pool replaces the connection at its next checkout; SQLite
#: opened the file read-only (it is replaced once the file is writable again).
_REOPEN, _OPENED_READ_ONLY = "app_reopen", "app_opened_read_only"


def _reopen_if_read_only(conn: Connection | None, error: BaseException | None) -> None:
    """After a write refused because the file is read-only, have the pool open a new
    connection next time (see ``_reopen_read_only``)."""
    if conn is None or not isinstance(error, errors.ReadOnlyDatabaseError):
        return
    with contextlib.suppress(Exception):  # a closed or invalidated connection: gone anyway
        _record_info(conn)[_REOPEN] = True


def _record_info(conn: Connection) -> dict[Any, Any]:
    return conn.connection.info


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
    dbapi_connection: Any = connection.connection.dbapi_connection
    dbapi = connection.dialect.loaded_dbapi
    cursor = None
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
    read_unit = connection.get_execution_options().get(UNIT_OPTION) == "read"
    database = connection.engine.url.render_as_string(hide_password=True)
    translated = errors.translate(exc, database=database, read_unit=read_unit)
    if translated is None:
        raise exc
    _reopen_if_read_only(connection, translated)
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
