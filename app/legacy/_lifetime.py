"""How a ``ThreadSafeDatabaseManager`` opens and closes: the URL from ``connection_string``
and ``db_type``, the mode from ``GREEUM_THREAD_SAFE``, the Database's settings, the one
``sqlite3`` connection of the single-connection mode, and what closing releases."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from sqlalchemy.engine import URL

from app import errors
from app._hints import install_hint
from app.database import Database
from app.legacy._conn import ThreadConnection, UseTracker
from app.settings import parse_flag

THREAD_SAFE_ENV = "GREEUM_THREAD_SAFE"


def database_settings(thread_safe: bool) -> dict[str, Any]:
    """The settings of a manager's Database, in the given mode."""
    settings: dict[str, Any] = {}
    if "APP_AUTO_UPGRADE" not in os.environ:
        # The old class created its tables when absent, on every backend.
        settings["auto_upgrade"] = True
    if not thread_safe:
        settings["single_connection"] = True
    return settings


def single_connection(database: Database) -> sqlite3.Connection:
    """The one ``sqlite3`` connection of the single-connection mode (the Database is
    disposed if it cannot be had)."""
    try:
        pooled = database.engine.raw_connection()
        raw: sqlite3.Connection | None = pooled.dbapi_connection  # type: ignore[assignment]
        pooled.close()  # back to the single-connection pool; the connection stays open
    except BaseException:
        database.dispose()
        raise
    assert raw is not None
    # The old class set it on its one connection; SQLAlchemy reads sqlite3.Row rows fine.
    raw.row_factory = sqlite3.Row
    return raw


def close_manager(users: UseTracker, proxy: ThreadConnection | None, database: Database) -> None:
    """``close``: the calling thread's resources released, and the manager closed."""
    users.check_thread()
    if users.closed:
        return
    if proxy is not None:
        proxy.close()
    if not database.in_write_unit():
        database.session.remove()
    users.close()


def thread_safe_from_env() -> bool:
    raw = os.environ.get(THREAD_SAFE_ENV, "")
    flag = parse_flag(raw) if raw.strip() else True
    if flag is not None:
        return flag
    raise errors.ConfigurationError(
        f"{THREAD_SAFE_ENV}={os.environ[THREAD_SAFE_ENV]!r} is not understood: set it to "
        "'true' (the default, thread-safe) or 'false' (the single-connection legacy mode)"
    )


def resolve_url(connection_string: Any, db_type: Any) -> tuple[str, str]:
    """The SQLAlchemy URL and the normalised db_type ('sqlite' or 'postgres')."""
    kind = db_type.lower() if isinstance(db_type, str) else db_type
    if kind in ("postgres", "postgresql"):
        kind = "postgres"
    elif kind not in ("sqlite", "sqlite3"):
        raise errors.ConfigurationError(f"db_type must be 'sqlite' or 'postgres', got {db_type!r}")
    target = os.fspath(connection_string)
    if not isinstance(target, str):
        raise errors.ConfigurationError(f"connection_string must be a str, got {target!r}")
    if "://" in target:
        scheme = target.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme in ("postgres", "postgresql"):
            return target, "postgres"
        if kind == "postgres":
            raise errors.ConfigurationError(
                f"db_type is 'postgres' but the URL {target.split('://')[0]}://... is not a "
                "PostgreSQL URL; pass postgresql+psycopg://user@host/dbname"
            )
        return target, "sqlite"
    if kind == "postgres":
        return libpq_to_url(target), "postgres"
    if target == ":memory:":
        return "sqlite://", "sqlite"
    return f"sqlite:///{target}", "sqlite"


def libpq_to_url(conninfo: str) -> str:
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:  # pragma: no cover - psycopg is an optional dependency
        raise errors.ConfigurationError(
            f"PostgreSQL needs psycopg 3: install the 'postgres' extra ({install_hint('postgres')})"
        ) from exc
    try:
        parts = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    except Exception as exc:
        raise errors.ConfigurationError(
            f"cannot parse the PostgreSQL connection string: {exc}; pass a URL "
            "(postgresql+psycopg://user@host/dbname) or 'dbname=... user=... host=...'"
        ) from exc
    port = parts.pop("port", None)
    url = URL.create(
        "postgresql+psycopg",
        username=parts.pop("user", None),
        password=parts.pop("password", None),
        host=parts.pop("host", None),
        port=int(port) if port else None,
        database=parts.pop("dbname", None),
        query=parts,
    )
    return url.render_as_string(hide_password=False)
