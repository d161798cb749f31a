"""Health checks of a configured database, for ``app doctor``.

The file is looked at read-only first (header, ``quick_check``, schema revision, block
count) so a damaged file is reported, not modified. Only a file that passes is opened the
way the application opens it, to show the pragmas in force on a pooled connection.
"""

from __future__ import annotations

import os
import platform
import sqlite3
from typing import Any

import sqlalchemy
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from app import errors
from app._hints import install_hint
from app._version import __version__
from app.database import Database
from app.operations._doctor_blocks import inspect_blocks, report_tables
from app.operations._doctor_connection import (
    format_replica,
    format_stats,
    pool_status,
    report_pragmas,
    report_replicas,
    report_server,
)
from app.operations._doctor_file import inspect_file, report_revision
from app.operations._doctor_report import FAIL, INFO, OK, WARN, Check, Progress, Report
from app.schema import current_revision
from app.settings import Settings

__all__ = [
    "FAIL",
    "INFO",
    "OK",
    "WARN",
    "Check",
    "Progress",
    "Report",
    "diagnose",
    "format_replica",
    "format_stats",
    "one_line_error",
]


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
        carry_on, file_mode = inspect_file(report, settings, path)
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


def _inspect_live(
    report: Report, db: Database, verify_chain: bool, progress: Progress | None
) -> None:
    settings = db.settings
    has_blocks = inspect(db.engine).has_table("blocks")
    if settings.is_sqlite:
        report_pragmas(report, db)
    else:
        report_server(report, db)
        report_revision(report, settings, current_revision(db), legacy=has_blocks)
    report.add("pool", pool_status(db))
    report_replicas(report, db)
    if not has_blocks:
        if settings.sqlite_path is None:
            report.add("blocks", "no blocks table yet")
        report.add("stats", format_stats(db.stats()))
        return
    if not report_tables(report, db):
        return
    try:
        inspect_blocks(report, db, verify_chain, progress)
    except (errors.AppError, SQLAlchemyError) as exc:
        # Whatever stops a check is a finding, reported with the rest, never instead of it.
        report.add("checks", f"stopped: {one_line_error(exc)}", FAIL, "fix what it names")
    report.add("stats", format_stats(db.stats()))


def one_line_error(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return " ".join(str(cause).split())
