"""The database URL, checked before anything touches the disk or loads a driver: what is
accepted, SQLite's read-only query options, and a suggestion for each usual mistake."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from app._hints import install_hint
from app.errors import ConfigurationError


def parse_url(raw: Any) -> URL:
    """The URL, checked before anything touches the disk or loads a driver.

    Raises:
        ConfigurationError: the URL cannot be used, with a suggestion where one can be made.
    """
    if not isinstance(raw, str) or not raw:
        raise ConfigurationError(f"url must be a non-empty string, got {raw!r}")
    if "://" not in raw:
        raise ConfigurationError(_not_a_url(raw))
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise ConfigurationError(
            f"cannot parse database URL {raw!r}: expected {_EXPECTED}"
        ) from exc
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        return _postgres_url(url)
    if backend == "sqlite":
        return _sqlite_url(raw, url)
    shown = url.render_as_string(hide_password=True)
    close = difflib.get_close_matches(backend, ("sqlite", "postgresql", "postgres"), 1, 0.7)
    suggestion = ""
    if close:
        scheme = "sqlite" if close[0] == "sqlite" else "postgresql+psycopg"
        suggestion = f"; did you mean {scheme}{shown[len(url.drivername) :]}?"
    raise ConfigurationError(
        f"unsupported database URL scheme {url.drivername!r} in {shown!r}: use {_EXPECTED}"
        + suggestion
    )


_EXPECTED = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:// (in memory) or "
    "postgresql+psycopg://user@host/dbname"
)


def _not_a_url(raw: str) -> str:
    """The message for a string without ``scheme://``: most often a bare file path."""
    scheme, colon, rest = raw.partition(":")
    if colon and scheme.lower() == "sqlite" and rest.startswith("/"):
        # sqlite:/path: one slash where SQLAlchemy needs three (relative) or four (absolute).
        return f"{raw!r} is not a valid SQLite URL; did you mean {_sqlite_choices(rest)}?"
    if raw == ":memory:":
        return f"{raw!r} is not a database URL; did you mean sqlite:// (in memory)?"
    if _PATH_LIKE.fullmatch(raw):
        return (
            f"{raw!r} is a file path, not a database URL; did you mean "
            f"sqlite:///{os.path.expanduser(raw)}?"
        )
    return f"cannot parse database URL {raw!r}: expected {_EXPECTED}"


#: A string that reads as a file path (letters, digits, ``._-~/\`` and spaces, no colon).
_PATH_LIKE = re.compile(r"[\w.~/\\ -]+")


def _sqlite_choices(path: str) -> str:
    """Both readings of a path whose leading slashes were miscounted."""
    path = path.lstrip("/")
    return (
        f"sqlite:///{path} (relative to the working directory) or sqlite:////{path} "
        "(an absolute path)"
    )


def _sqlite_url(raw: str, url: URL) -> URL:
    if "+" in url.drivername and url.get_driver_name() != "pysqlite":
        raise ConfigurationError(
            f"SQLite driver {url.get_driver_name()!r} is not supported; use sqlite:///path"
        )
    if url.host or url.port or url.username or url.password:
        # sqlite://data/memory.db reads "data" as a host name: SQLite has none.
        path = raw.split("://", 1)[1].split("?", 1)[0]
        raise ConfigurationError(
            f"{raw!r} is not a valid SQLite URL (a SQLite URL has no host; the path starts "
            f"after the third slash): did you mean {_sqlite_choices(path)}?"
        )
    database = url.database or ""
    if database.startswith("~"):
        raise ConfigurationError(
            f"{raw!r} names a path starting with '~', which is not expanded in a URL (it "
            f"would create a directory called '~'): did you mean "
            f"sqlite:///{os.path.expanduser(database)}?"
        )
    return url


def _postgres_url(url: URL) -> URL:
    shown = url.render_as_string(hide_password=True)
    if "+" not in url.drivername:
        # Only psycopg 3 is a dependency; a bare postgresql:// would pick psycopg2.
        url = url.set(drivername="postgresql+psycopg")
    elif url.get_driver_name() != "psycopg":
        fixed = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=True)
        raise ConfigurationError(
            f"the PostgreSQL driver {url.get_driver_name()!r} in {shown!r} is not supported "
            f"(this layer uses psycopg 3): did you mean {fixed}?"
        )
    if importlib.util.find_spec("psycopg") is None:
        raise ConfigurationError(
            f"{shown} needs psycopg 3, which is not installed: {install_hint('postgres')}"
        )
    return url


def read_only_query(url: URL) -> tuple[URL, bool, bool]:
    """The URL without SQLite's ``mode=ro`` and ``immutable=1`` (which pysqlite would ignore
    without ``uri=true``), and whether they were asked for."""
    query = dict(url.query)
    mode = query.pop("mode", None)
    immutable = query.pop("immutable", None)
    if mode is not None and mode not in ("ro", "memory"):
        raise ConfigurationError(
            f"?mode={mode} is not supported in a SQLite URL: use ?mode=ro (or read_only=True) "
            "to read only, create=False to refuse a missing file"
        )
    if mode == "memory":
        query["mode"] = mode
    if immutable is not None and immutable not in ("0", "1"):
        raise ConfigurationError(f"?immutable must be 1 or 0 in a SQLite URL, got {immutable!r}")
    return url.set(query=query), mode == "ro", immutable == "1"
