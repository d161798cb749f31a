"""Maintenance of a database: online backup and WAL checkpoint (SQLite), and the keyword
index's rebuild (the JSONL import is :mod:`app.blocks.jsonl_import`).

Each function takes an open :class:`~app.Database` and is safe while other threads and
processes keep writing.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

from app import errors
from app.database import CHECKPOINT_MODES, Database
from app.engine._sqlite_file import create_file, file_size
from app.schema import _keyword_index


def _sqlite_file(db: Database, what: str) -> str:
    path = db.settings.sqlite_path
    if path is None:
        raise errors.ConfigurationError(
            f"{what} works on SQLite database files; {db.url} is not one"
            + (" (use pg_dump and the server's own tools)" if not db.settings.is_sqlite else "")
        )
    return path


@contextlib.contextmanager
def _raw_connection(db: Database) -> Iterator[sqlite3.Connection]:
    """A pooled connection with the layer's pragmas, outside any transaction."""
    proxy = db.engine.raw_connection()
    try:
        driver = proxy.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        yield driver
    finally:
        proxy.close()


def _bytes(path: str) -> int:
    return file_size(path) or 0


# -- backup ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    """A finished backup: where it is, its size, how many blocks it holds, how long it took,
    and its permission bits."""

    path: str
    size: int
    blocks: int
    seconds: float
    mode: int = 0o600


def backup(db: Database, dest: str, *, overwrite: bool = False) -> BackupResult:
    """Copy the database to ``dest`` while writers keep running, as one consistent snapshot.

    The copy is made with SQLite's online backup API in a single step (one read snapshot, so
    writers in WAL mode are never blocked and never restart it), into a file created with
    the database's ``file_mode`` (owner only, 0600, unless set otherwise), checked with
    ``quick_check``, switched to a self-contained rollback journal, and moved into place
    atomically: a failed backup leaves nothing at ``dest``.

    Raises:
        ConfigurationError: not a SQLite file, ``dest`` exists (without ``overwrite``) or is
            the database itself, or its directory cannot be written.
        CorruptDatabaseError: the copy does not pass ``quick_check``.
    """
    source = _sqlite_file(db, "backup")
    target = os.path.abspath(dest)
    if os.path.exists(target) and os.path.samefile(target, source):
        raise errors.ConfigurationError(f"{target} is the database itself; choose another path")
    if os.path.isdir(target):
        raise errors.ConfigurationError(f"{target} is a directory; give a file path")
    if os.path.exists(target) and not overwrite:
        raise errors.ConfigurationError(f"{target} already exists; choose another path or --force")
    partial = f"{target}.partial-{os.getpid()}"
    # A copy holds the same data as the database, so it gets the same (owner-only) bits.
    mode = db.settings.file_mode
    started = time.monotonic()
    try:
        create_file(partial, mode)
    except OSError as exc:
        raise errors.ConfigurationError(
            f"cannot create {partial} ({exc.strerror}); check that the directory exists and "
            "is writable"
        ) from exc
    try:
        copy = sqlite3.connect(partial, isolation_level=None)
        try:
            with _raw_connection(db) as conn:
                conn.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")
            verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise errors.CorruptDatabaseError(
                    f"the backup of {db.url} failed quick_check ({verdict}); the source may "
                    "be damaged: run `app doctor`"
                )
            blocks = _count_blocks(copy)
        finally:
            copy.close()
        os.replace(partial, target)
    except BaseException:
        for leftover in (partial, partial + "-journal", partial + "-wal", partial + "-shm"):
            with contextlib.suppress(OSError):
                os.remove(leftover)
        raise
    return BackupResult(target, _bytes(target), blocks, time.monotonic() - started, mode)


def backup_path(dest: str) -> str:
    """The file a backup goes to: ``dest`` as a path, or the file of a ``sqlite:///`` URL
    (what every other command takes).

    Raises:
        ConfigurationError: a URL that names no SQLite file (a backup is a SQLite file: to
            copy into a server, use ``app copy --to URL``).
    """
    if "://" not in dest:
        return dest
    from app.settings import Settings

    settings = Settings(url=dest)
    if settings.sqlite_path is None:
        raise errors.ConfigurationError(
            f"a backup is written to a SQLite file, and {settings.safe_url()} names none: give "
            "a file path (or sqlite:///path); to copy into a server database use "
            "`app copy --to URL`"
        )
    return settings.sqlite_path


def _count_blocks(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.execute("SELECT count(*) FROM blocks").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # no blocks table yet


# -- checkpoint ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointResult:
    """SQLite's answer to ``PRAGMA wal_checkpoint`` and the WAL file's size around it.

    Attributes:
        busy: the checkpoint could not finish (a reader or writer was in the way).
        wal_frames: frames in the WAL (-1 when the database is not in WAL mode).
        checkpointed: frames copied into the database file.
    """

    mode: str
    busy: bool
    wal_frames: int
    checkpointed: int
    wal_before: int
    wal_after: int

    @property
    def in_wal_mode(self) -> bool:
        return self.wal_frames >= 0


def checkpoint(db: Database, mode: str = "passive") -> CheckpointResult:
    """Copy the WAL's pages into the database file (``truncate`` also empties the WAL).

    ``passive`` never waits; ``full``, ``restart`` and ``truncate`` wait (up to
    ``busy_timeout``) for writers, and the last two for readers too.

    Raises:
        InvalidInputError: an unknown mode.
        ConfigurationError: not a SQLite file.
    """
    if not isinstance(mode, str) or mode.lower() not in CHECKPOINT_MODES:
        raise errors.InvalidInputError(
            f"checkpoint mode must be one of {', '.join(CHECKPOINT_MODES)}; got {mode!r}"
        )
    wal = _sqlite_file(db, "checkpoint") + "-wal"
    before = _bytes(wal)
    busy, frames, done = db.checkpoint(mode)
    return CheckpointResult(mode.lower(), bool(busy), frames, done, before, _bytes(wal))


# -- the search indexes ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReindexResult:
    """A rebuilt keyword index: what of it was missing (and was restored) and how many
    blocks were indexed (0 on PostgreSQL, whose indexes the server keeps)."""

    restored: tuple[str, ...]
    indexed: int
    seconds: float


def reindex(db: Database) -> ReindexResult:
    """Restore whatever of the search indexes is missing and, on SQLite, index every block
    afresh, in one write unit (see :meth:`~app.BlockStore.rebuild_search_index`)."""
    started = time.monotonic()
    restored, indexed = db.run_on_connection(_keyword_index.reindex)
    return ReindexResult(tuple(restored), indexed, time.monotonic() - started)
