"""What ``app doctor`` checks of a SQLite file before anything opens it, read-only: the
file, its WAL, ``quick_check``, the schema revision and the block count; and what a schema
revision means (PostgreSQL's is judged the same way)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager

from app import errors
from app._hints import command_hint
from app.engine._sqlite_file import file_size, probe_sqlite_file, read_only
from app.operations._doctor_report import FAIL, OK, WARN, Report, mib
from app.schema import head_revision, history
from app.settings import Settings


@contextmanager
def _read_only(path: str, immutable: bool) -> Iterator[sqlite3.Connection]:
    with closing(read_only(path, immutable=immutable)) as conn:
        yield conn


def inspect_file(report: Report, settings: Settings, path: str) -> tuple[bool, str | None]:
    """Checks that need no write access.

    Returns:
        Whether there is more to check, and the file's journal mode when it was read.
    """
    if os.path.isdir(path):
        report.add(
            "database file",
            f"{os.path.abspath(path)} is a directory, not a database file",
            FAIL,
            "point --url / APP_DATABASE_URL at the database file inside it (for example "
            f"{os.path.join(os.path.abspath(path), 'memory.db')})",
        )
        return False, None
    if not os.path.exists(path):
        report.add(
            "database file",
            f"{os.path.abspath(path)} does not exist",
            FAIL,
            f"point --url / APP_DATABASE_URL at the right file, or create the database with "
            f"`{_upgrade(settings)}`",
        )
        return False, None
    if not os.access(path, os.R_OK):
        raise errors.DatabaseUnavailableError(f"cannot read {path}; check its permissions")
    problem = probe_sqlite_file(path)  # never open(): see probe_sqlite_file
    if isinstance(problem, errors.NotADatabaseError):
        raise problem
    empty = problem is True
    size, wal = file_size(path), file_size(path + "-wal")
    report.add("database file", f"{os.path.abspath(path)}, {mib(size)}")
    limit = settings.journal_size_limit
    if wal is not None and limit is not None and wal > 2 * limit:
        report.add(
            "WAL file",
            mib(wal),
            WARN,
            "the WAL is far above journal_size_limit: a long read transaction may block "
            "checkpoints; run "
            f"`{command_hint(settings.safe_url(), 'checkpoint', '--mode', 'truncate')}`",
        )
    else:
        report.add("WAL file", mib(wal), OK)
    if empty:
        report.add(
            "schema revision",
            "none: an empty file, without the schema",
            FAIL,
            f"create the schema with `{_upgrade(settings)}`",
        )
        return False, None
    try:
        with _read_only(path, settings.immutable) as conn:
            return _inspect_read_only(report, settings, conn)
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY:
            report.add(
                "access",
                f"cannot read the file without writing next to it: {exc}",
                FAIL,
                "it is in WAL mode and its -shm file cannot be made in its directory: if "
                "nothing writes to it, check it with ?immutable=1 in the URL (or "
                "APP_IMMUTABLE=true); else make the directory writable",
            )
            return False, None
        report.add(
            "quick_check",
            f"cannot read the file: {exc}",
            FAIL,
            "the file is damaged: stop writers and restore the latest backup (`app backup` "
            "makes one), or salvage rows with `sqlite3 file .recover`",
        )
        return False, None


def _inspect_read_only(
    report: Report, settings: Settings, conn: sqlite3.Connection
) -> tuple[bool, str | None]:
    verdicts = [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
    if verdicts != ["ok"]:
        report.add(
            "quick_check",
            "; ".join(verdicts)[:500],
            FAIL,
            "the file is damaged: stop writers and restore the latest backup, or salvage "
            "rows with `sqlite3 file .recover`",
        )
        return False, None
    report.add("quick_check", "ok", OK)
    file_mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    current = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        current = row[0] if row else None
    report_revision(report, settings, current, legacy="blocks" in tables)
    if "blocks" in tables:
        count = conn.execute("SELECT count(*) FROM blocks").fetchone()[0]
        report.add("blocks", f"{count:,}")
    return True, file_mode


def report_revision(report: Report, settings: Settings, current: str | None, legacy: bool) -> None:
    head = head_revision()
    if current == head:
        report.add("schema revision", f"{current} (head)", OK)
        return
    known = {r.revision for r in history()}
    if current is not None and current not in known:
        report.add(
            "schema revision",
            f"{current}, unknown to this code (head is {head})",
            FAIL,
            "a newer version of the package migrated this database: upgrade the package",
        )
        return
    if current is None and not legacy:
        report.add(
            "schema revision",
            f"none: the database has no schema (head is {head})",
            FAIL,
            f"create the schema with `{_upgrade(settings)}`",
        )
        return
    shown = current or "none (a legacy database, not yet adopted)"
    automatic = settings.should_auto_upgrade
    report.add(
        "schema revision",
        f"{shown}; head is {head}",
        WARN if automatic else FAIL,
        f"run `{_upgrade(settings)}`"
        + (" (the application also upgrades it when it opens it)" if automatic else ""),
    )


def _upgrade(settings: Settings) -> str:
    return command_hint(settings.safe_url(), "db", "upgrade")
