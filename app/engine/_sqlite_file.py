"""The SQLite file itself: checked (and created, owner-only) before SQLite touches it.

An existing file is only ever looked at through SQLite, never with ``open()``: closing any
descriptor of a file drops every POSIX lock the process holds on it (see
:func:`probe_sqlite_file`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from urllib.parse import quote

from sqlalchemy.engine import URL

from app import errors
from app._hints import command_hint

log = logging.getLogger(__name__)


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
    refuse_directory(target)
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
        create_file(target, file_mode)
    except FileExistsError:
        return  # another process created it first
    except OSError as exc:
        raise errors.ConfigurationError(
            f"cannot create database file {target} ({exc.strerror}); check the directory's "
            "permissions or choose another path"
        ) from exc
    log.info("created a new database file %s", target)


def refuse_directory(path: str) -> None:
    """Raise when the database path names a directory (every command says the same).

    Raises:
        ConfigurationError: ``path`` is a directory.
    """
    if os.path.isdir(path):
        raise errors.ConfigurationError(
            f"database path {os.path.abspath(path)} is a directory, not a database file; give "
            f"the file's path (for example {os.path.join(os.path.abspath(path), 'memory.db')})"
        )


def _check_existing_file(target: str) -> None:
    if not os.access(target, os.R_OK):
        raise errors.DatabaseUnavailableError(
            f"cannot read database file {target}; check its permissions"
        )
    if not os.access(target, os.W_OK):
        # Refused before any probe: a read-only WAL database would be left with -wal and
        # -shm files that the probe cannot remove.
        raise errors.ReadOnlyDatabaseError(
            f"database file {target} is read-only for this process: to read it, open it "
            "with read_only=True (APP_READ_ONLY=true, or ?mode=ro in the URL; on read-only "
            "media or in a directory this process cannot write, also immutable=True); to "
            "write to it, make it writable by this user"
        )
    problem = probe_sqlite_file(target)
    if isinstance(problem, errors.AppError):
        raise problem


def check_file_to_read(path: str, *, url: str) -> None:
    """Check an existing database file that is opened read-only (nothing is created).

    Raises:
        DatabaseUnavailableError: it does not exist, or cannot be read.
        ConfigurationError: the path is a directory.
        NotADatabaseError, CorruptDatabaseError: it is not a healthy SQLite database.
    """
    target = os.path.abspath(path)
    refuse_directory(target)
    if not os.path.exists(target):
        raise errors.DatabaseUnavailableError(
            f"the database file {target} does not exist (it was to be opened read-only, so "
            f"nothing was created): check the URL {url}"
        )
    if not os.access(target, os.R_OK):
        raise errors.DatabaseUnavailableError(
            f"cannot read database file {target}; check its permissions"
        )
    if os.path.getsize(target) == 0:
        raise errors.NotADatabaseError(
            f"{target} is empty: there is no database to read (it was opened read-only)"
        )
    problem = probe_sqlite_file(target)
    if isinstance(problem, errors.AppError):
        raise problem


def read_only_url(path: str, *, immutable: bool) -> URL:
    """The SQLAlchemy URL that opens ``path`` in SQLite's read-only mode (a URI filename)."""
    query = {"mode": "ro", "uri": "true"}
    if immutable:
        query["immutable"] = "1"
    return URL.create("sqlite", database=f"file:{quote(os.path.abspath(path))}", query=query)


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
    companions = [target + suffix for suffix in ("-wal", "-shm")]
    existing = [os.path.exists(name) for name in companions]
    try:
        with contextlib.closing(read_only(target)) as probe:
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


def file_id(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def create_file(path: str, mode: int) -> None:
    """Create ``path`` empty with exactly the permission bits ``mode``, whatever the umask.

    Raises:
        FileExistsError: it exists already (nothing is changed).
        OSError: it cannot be created.
    """
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def read_only(path: str, timeout: float = 5.0, *, immutable: bool = False) -> sqlite3.Connection:
    """A sqlite3 connection that never writes the database file (``mode=ro``); a WAL-mode
    file still gets its -wal and -shm companions if they are absent, as for any reader,
    unless ``immutable`` (no locks, no companions: for files nothing writes)."""
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, timeout=timeout)


def file_size(path: str) -> int | None:
    """The size of ``path`` in bytes, or None when it cannot be read."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None
