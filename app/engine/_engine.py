"""The engine factory: pool choice and the hooks every connection gets.

log = logging.getLogger(__name__)

Everything that must hold for *every* connection is set in pool and connection events,
so connections made by the ORM, by Alembic and by the legacy ``conn`` attribute all behave
the same. The backend-specific hooks live in ``_sqlite_hooks`` and ``_postgres_hooks``.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool, StaticPool

from app import errors
from app._telemetry import Telemetry
from app.engine._driver import UNIT_OPTION, UnitKind, reopen_if_read_only
from app.engine._postgres_hooks import install_postgres_hooks
from app.engine._sqlite_file import check_file_to_read, prepare_sqlite_file, read_only_url
from app.engine._sqlite_hooks import install_sqlite_hooks
from app.engine._telemetry_hooks import MeasuredQueuePool, install_telemetry_hooks
from app.settings import Settings


def build_engine(settings: Settings, telemetry: Telemetry | None = None) -> Engine:
    """Create the engine for ``settings``, with every hook installed (and those that time
    its connections for ``telemetry``, when given).

    Raises:
        ConfigurationError, ReadOnlyDatabaseError, NotADatabaseError: before anything is
            created, when the path cannot hold a database.
    """
    if settings.is_sqlite:
        engine = _sqlite_engine(settings)
        install_sqlite_hooks(engine, settings)
    else:
        engine = _server_engine(settings)
        install_postgres_hooks(engine, settings)
    _install_common_hooks(engine, settings)
    if telemetry is not None:
        install_telemetry_hooks(engine, telemetry)
    return engine


def _pool_class(settings: Settings) -> type[QueuePool]:
    return MeasuredQueuePool if settings.telemetry else QueuePool


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
    url = settings.parsed_url
    if settings.read_only:
        check_file_to_read(path, url=settings.safe_url())
        url = read_only_url(path, immutable=settings.immutable)
    else:
        prepare_sqlite_file(
            path, settings.file_mode, create=settings.create, url=settings.safe_url()
        )
    if settings.single_connection:
        return create_engine(
            url,
            poolclass=StaticPool,
            connect_args=connect_args,
            echo=settings.echo,
        )
    return create_engine(
        url,
        poolclass=_pool_class(settings),
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
        poolclass=_pool_class(settings),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        echo=settings.echo,
    )


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
            read_unit = conn.get_execution_options().get(UNIT_OPTION) == UnitKind.READ.value
        translated = errors.translate(
            context.original_exception, database=database, read_unit=read_unit
        )
        if settings.read_only and isinstance(translated, errors.ReadOnlyDatabaseError):
            # Opened read-only, and SQLite still could not read: a WAL-mode file needs its
            # -shm file, which a read-only directory or mount cannot hold.
            translated = errors.ReadOnlyDatabaseError(
                f"{database} cannot be read in read-only mode ({context.original_exception}): "
                "it is in WAL mode, and its -wal/-shm files are missing and cannot be made "
                "in its directory. If nothing writes to the file while it is open, open it "
                "with immutable=True (APP_IMMUTABLE=true, or ?immutable=1 in the URL); else "
                "make the directory writable, or read a copy"
            )
            translated.__cause__ = context.original_exception
            return translated
        reopen_if_read_only(conn, translated)
        return translated
