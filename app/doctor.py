"""Health checks of a configured database, for ``app doctor``.

The file is looked at read-only first (header, ``quick_check``, schema revision, block
count) so a damaged file is reported, not modified. Only a file that passes is opened the
way the application opens it, to show the pragmas in force on a pooled connection.
"""

from __future__ import annotations

import os
import platform
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, _keyword_index, _search_schema, errors
from ._hints import command_hint, install_hint
from ._search_report import search_report
from ._sqlite_file import file_size, probe_sqlite_file, read_only
from .blocks import BlockStore
from .database import Database, ReplicaStats, Stats
from .schema import (
    applied_revisions,
    current_revision,
    head_revision,
    history,
    legacy_schema_differences,
)
from .settings import Settings

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
#: Blocks waiting for the keyword index beyond which searches scan enough to notice.
_BACKLOG = 10 * _keyword_index.DRAIN_AT
_SYNCHRONOUS = {0: "off", 1: "normal", 2: "full", 3: "extra"}
_TEMP_STORE = {0: "default", 1: "file", 2: "memory"}


@dataclass(frozen=True)
class Check:
    """One line of the report. ``advice`` says what to do when the status is warn or fail."""

    name: str
    value: str
    status: str = INFO
    advice: str = ""


@dataclass
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status in (WARN, FAIL)]

    @property
    def verdict(self) -> str:
        """One line: the overall result, counting failures and warnings."""
        failures = sum(c.status == FAIL for c in self.checks)
        warnings = sum(c.status == WARN for c in self.checks)
        counted = ", ".join(
            f"{n} {word}{'s' if n != 1 else ''}"
            for n, word in ((failures, "failure"), (warnings, "warning"))
            if n
        )
        if failures:
            return f"verdict: NOT OK, {counted}: fix what the advice above says"
        if warnings:
            return f"verdict: OK, with {counted} (see the advice above)"
        return "verdict: OK, no problems found"

    def add(self, name: str, value: Any, status: str = INFO, advice: str = "") -> None:
        self.checks.append(Check(name, str(value), status, advice))


Progress = Callable[[int, int], None]


def diagnose(
    url: str | None = None, *, verify_chain: bool = False, progress: Progress | None = None
) -> Report:
    """Check the database at ``url`` (default: the environment, then ``data/memory.db``).

    Args:
        verify_chain: also recompute every block hash and link.
        progress: called with (blocks checked, total blocks) during the chain check.

    Raises:
        ConfigurationError: the URL or a setting is invalid.
        NotADatabaseError: the file is not a SQLite database at all.
    """
    settings = Settings.resolve(url)
    report = Report(settings.safe_url())
    report.add("url", report.url)
    report.add("versions", _versions(settings))
    overrides: dict[str, Any] = {}
    path = settings.sqlite_path
    if path is not None:
        carry_on, file_mode = _inspect_file(report, settings, path)
        if not carry_on:
            return report
        if not settings.read_only and not os.access(path, os.W_OK):
            # The application would be refused at open; the doctor, which only looks, goes
            # on in read-only mode.
            overrides["read_only"] = True
            report.add(
                "access",
                "the file is read-only for this process (checked on in read-only mode)",
                FAIL,
                "make it writable by the application's user, or, if it is only to be read, "
                "open it with read_only=True (?mode=ro in the URL)",
            )
        if file_mode is not None and file_mode != settings.journal_mode:
            # Opening with the configured mode would switch the file's journal mode, a
            # lasting change: the doctor only looks, so it keeps the file's mode.
            overrides["journal_mode"] = file_mode
        if overrides.get("journal_mode") and not (settings.read_only or "read_only" in overrides):
            report.add(
                "journal mode",
                f"the file is in {file_mode} mode; the application switches it to "
                f"{settings.journal_mode} when it opens it",
            )
    try:
        db = Database(settings.url, check_schema=False, create=False, **overrides)
    except errors.AppError as exc:
        report.add("open", exc, FAIL, "fix what the message names, then run doctor again")
        return report
    try:
        _inspect_live(report, db, verify_chain, progress)
    finally:
        db.dispose()
    return report


def _versions(settings: Settings) -> str:
    parts = [f"app {__version__}", f"Python {platform.python_version()}"]
    parts.append(f"SQLAlchemy {sqlalchemy.__version__}")
    if settings.is_sqlite:
        parts.append(f"sqlite3 driver, SQLite {sqlite3.sqlite_version}")
    else:
        try:
            import psycopg

            parts.append(f"psycopg {psycopg.__version__}")
        except ImportError:
            parts.append(f"psycopg not installed ({install_hint('postgres')})")
    return ", ".join(parts)


def _mib(size: int | None) -> str:
    return "absent" if size is None else f"{size / 1024 / 1024:.2f} MiB ({size:,} bytes)"


@contextmanager
def _read_only(path: str, immutable: bool) -> Iterator[sqlite3.Connection]:
    with closing(read_only(path, immutable=immutable)) as conn:
        yield conn


def _inspect_file(report: Report, settings: Settings, path: str) -> tuple[bool, str | None]:
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
    report.add("database file", f"{os.path.abspath(path)}, {_mib(size)}")
    limit = settings.journal_size_limit
    if wal is not None and limit is not None and wal > 2 * limit:
        report.add(
            "WAL file",
            _mib(wal),
            WARN,
            "the WAL is far above journal_size_limit: a long read transaction may block "
            "checkpoints; run "
            f"`{command_hint(settings.safe_url(), 'checkpoint', '--mode', 'truncate')}`",
        )
    else:
        report.add("WAL file", _mib(wal), OK)
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
    _report_revision(report, settings, current, legacy="blocks" in tables)
    if "blocks" in tables:
        count = conn.execute("SELECT count(*) FROM blocks").fetchone()[0]
        report.add("blocks", f"{count:,}")
    return True, file_mode


def _report_revision(report: Report, settings: Settings, current: str | None, legacy: bool) -> None:
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


def _inspect_live(
    report: Report, db: Database, verify_chain: bool, progress: Progress | None
) -> None:
    settings = db.settings
    has_blocks = inspect(db.engine).has_table("blocks")
    if settings.is_sqlite:
        _report_pragmas(report, db)
    else:
        _report_server(report, db)
        _report_revision(report, settings, current_revision(db), legacy=has_blocks)
    report.add("pool", _pool_status(db))
    _report_replicas(report, db)
    if not has_blocks:
        if settings.sqlite_path is None:
            report.add("blocks", "no blocks table yet")
        report.add("stats", format_stats(db.stats()))
        return
    if not _report_tables(report, db):
        return
    try:
        _inspect_blocks(report, db, verify_chain, progress)
    except (errors.AppError, SQLAlchemyError) as exc:
        # Whatever stops a check is a finding, reported with the rest, never instead of it.
        report.add("checks", f"stopped: {one_line_error(exc)}", FAIL, "fix what it names")
    report.add("stats", format_stats(db.stats()))


def _report_tables(report: Report, db: Database) -> bool:
    """The block store's tables, as the legacy layout has them; False when they differ (a
    database of something else, or one a migration broke): the checks of blocks stop."""
    with db.reading() as connection:
        # Columns a user's own migration added are theirs: only what is missing or wrong
        # counts.
        differences = [
            d for d in legacy_schema_differences(connection) if not d.startswith("unexpected")
        ]
    if not differences:
        report.add("tables", "the block store's six tables, as expected", OK)
        return True
    report.add(
        "tables",
        "; ".join(differences),
        FAIL,
        "this is not a block store as this layer and the old class write it: check the URL "
        "(`db upgrade` refuses such a file and changes nothing)",
    )
    return False


def _inspect_blocks(
    report: Report, db: Database, verify_chain: bool, progress: Progress | None
) -> None:
    store = BlockStore(db)
    total = store.count()
    if db.settings.sqlite_path is None:
        report.add("blocks", f"{total:,}")
    for name, value in search_report(db):
        report.add(name, value)
    _report_search_machinery(report, db)
    if verify_chain:
        check = store.verify_chain(
            progress=None if progress is None else (lambda done: progress(done, total))
        )
        if check:
            report.add("chain", str(check), OK)
        else:
            report.add(
                "chain",
                str(check),
                FAIL,
                "restore from a backup, or find the writer that bypassed the layer",
            )


def one_line_error(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return " ".join(str(cause).split())


def _report_search_machinery(report: Report, db: Database) -> None:
    """The keyword index's triggers, tables and indexes: a migration that rebuilt the
    blocks table may have dropped them, after which the index misses new blocks."""
    with db.reading() as connection:
        missing = _search_schema.problems(connection, applied_revisions(connection))
        waiting = (
            _keyword_index.pending_count(connection)
            if connection.dialect.name == "sqlite" and _keyword_index.sqlite_index_ready(connection)
            else 0
        )
    if not missing:
        if waiting > _BACKLOG:
            report.add(
                "search indexes",
                f"complete, but {waiting:,} blocks wait to be indexed (searches scan them)",
                WARN,
                "nothing indexed them yet (a read-only process cannot, and searches index them "
                f"in batches as they run): run `{command_hint(db.url, 'reindex')}`",
            )
        else:
            report.add("search indexes", "complete", OK)
        return
    report.add(
        "search indexes",
        "; ".join(missing),
        FAIL,
        "a migration rebuilt a table and dropped them: searches and time windows read the "
        f"whole table (slowly, still exact); run `{command_hint(db.url, 'reindex')}`",
    )


def _report_pragmas(report: Report, db: Database) -> None:
    settings = db.settings
    with db.engine.connect() as conn:
        values = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in (
                "journal_mode",
                "synchronous",
                "foreign_keys",
                "busy_timeout",
                "journal_size_limit",
                "cache_size",
                "mmap_size",
                "temp_store",
            )
        }
        conn.rollback()
    shown: dict[str, Any] = dict(values)
    for name, names in (("synchronous", _SYNCHRONOUS), ("temp_store", _TEMP_STORE)):
        shown[name] = names.get(int(values[name] or 0), values[name])
    report.add("pragmas (pooled connection)", ", ".join(f"{k}={v}" for k, v in shown.items()))
    expected: dict[str, Any] = {
        "foreign_keys": 1,
        "busy_timeout": settings.busy_timeout_ms,
        "synchronous": settings.synchronous,
    }
    if not settings.is_memory and not settings.single_connection:
        expected["journal_mode"] = settings.journal_mode
    wrong = [f"{k} is {shown[k]}, expected {v}" for k, v in expected.items() if shown[k] != v]
    if wrong:
        report.add(
            "pragmas in force",
            "; ".join(wrong),
            FAIL,
            "another tool changed the connection settings, or the file system cannot honour "
            "them (WAL needs a local disk)",
        )
    else:
        report.add("pragmas in force", "as configured", OK)


def _report_server(report: Report, db: Database) -> None:
    with db.engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
        settings = {
            name: conn.execute(text(f"SHOW {name}")).scalar()
            for name in (
                "default_transaction_isolation",
                "lock_timeout",
                "statement_timeout",
                "idle_in_transaction_session_timeout",
            )
        }
        conn.rollback()
    report.add("server", f"PostgreSQL {version}, database {_mib(int(size or 0))}")
    report.add("server settings", ", ".join(f"{k}={v}" for k, v in settings.items()))


def _report_replicas(report: Report, db: Database) -> None:
    """Each replica checked now: reachable, a replica, and how far behind the primary."""
    limit = db.settings.max_replica_lag
    for number, replica in enumerate(db.check_replicas(), 1):
        status, advice = OK, ""
        if replica.state == "lagging":
            status = WARN
            advice = (
                f"it is further behind than max_replica_lag ({limit}s): reads skip it until "
                "it catches up; check its load and its connection to the primary"
            )
        elif replica.state == "down":
            status = WARN
            advice = "it cannot be reached: reads go to the other replicas or the primary"
        elif replica.state != "up":
            status = WARN
            advice = "it is not in recovery (a primary, or a promoted replica): no reads go to it"
        report.add(f"replica {number}", format_replica(replica), status, advice)


def format_replica(replica: ReplicaStats) -> str:
    """One replica's stats on one line."""
    lag = "unknown" if replica.lag is None else f"{replica.lag:.2f}s"
    return (
        f"{replica.url}: {replica.state}, lag {lag}, replayed {replica.replayed or '-'}, "
        f"reads served {replica.reads}, failures {replica.failures}"
    )


def format_stats(stats: Stats) -> str:
    """``db.stats()`` on one line."""
    line = (
        f"units committed {stats.units_committed}, rolled back {stats.units_rolled_back}, "
        f"busy retries {stats.busy_retries}, write waits {stats.write_waits} "
        f"(total {stats.write_wait_total:.3f}s, max {stats.write_wait_max * 1000:.1f}ms), "
        f"writers queued {stats.writers_queued}, connections "
        f"{stats.connections_checked_out} checked out / {stats.connections_open} open, "
        f"vector cache {stats.vector_cache_bytes:,} bytes"
    )
    if stats.replicas:
        served = ", ".join(f"{r.url} {r.reads}" for r in stats.replicas)
        line += f"; reads on the primary {stats.primary_reads}, on replicas: {served}"
    return line


def _pool_status(db: Database) -> str:
    stats = db.stats()
    pool: Any = db.engine.pool
    return (
        f"{type(pool).__name__}: {stats.connections_open} open, "
        f"{stats.connections_checked_out} checked out (pool_size={db.settings.pool_size}, "
        f"max_overflow={db.settings.max_overflow})"
    )
