"""Copying the block store to another database: SQLite into PostgreSQL, or back.

:func:`copy_database` reads the source in one snapshot, table by table in primary-key order
and in batches (keyset pagination, so memory stays bounded whatever the size), and writes
everything into the target in one write unit: the target ends up with the complete copy or,
after any error, as it was. The target's schema is first brought to the current revision by
the migrations. Afterwards the target is checked: its row count per table must equal the
source's, and its hash chain must verify.

A target that already holds rows is refused, unless ``force`` is given: then its rows in
the six block-store tables are deleted in the same write unit, before the copy (other
tables are left alone). Writers may keep using the source meanwhile; what they commit after
the copy's snapshot was taken is not copied.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, func, insert, inspect, select, text
from sqlalchemy.engine import Connection

from app import errors
from app.blocks import BlockStore
from app.database import Database
from app.engine._sqlite_file import read_only
from app.models import LEGACY_TABLES, Base
from app.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_BATCH = 1000

#: ``progress(stage, done, total)``: ``stage`` is a table name while copying, then "verify".
Progress = Callable[[str, int, int], None]


@dataclass
class CopyResult:
    """What a copy did and found. ``problem`` is empty when the target checked out.

    Attributes:
        source_counts: rows per table in the source's snapshot.
        target_counts: rows per table in the target after the copy.
        replaced: rows per table that ``force`` deleted from the target first.
        first_bad_block: where the target's chain stops verifying (None: intact).
        source_first_bad_block: the same for the source, looked up only when the
            target's chain is broken (a chain already broken in the source stays broken).
    """

    source: str
    target: str
    source_counts: dict[str, int] = field(default_factory=dict)
    target_counts: dict[str, int] = field(default_factory=dict)
    replaced: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    first_bad_block: int | None = None
    source_first_bad_block: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def problem(self) -> str:
        """One line saying what does not match, or ''."""
        parts = [
            f"{name} has {self.target_counts.get(name, 0):,} rows, the source {count:,}"
            for name, count in self.source_counts.items()
            if self.target_counts.get(name, 0) != count
        ]
        if self.first_bad_block is not None:
            where = f"the target's chain does not verify from block {self.first_bad_block}"
            if self.source_first_bad_block == self.first_bad_block:
                where += " (nor does the source's: it was copied as it is)"
            parts.append(where)
        if not parts:
            return ""
        return f"copy to {self.target} does not match {self.source}: " + "; ".join(parts)


def copy_database(
    source_url: str,
    target_url: str,
    *,
    force: bool = False,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy the six block-store tables from ``source_url`` to ``target_url`` and verify.

    Args:
        force: replace the target's rows when it is not empty (see the module notes).
        batch_size: rows read and written per statement.
        progress: called after each batch and during the chain check.

    Returns:
        The counts and the check; ``result.ok`` is False when the target does not match.

    Raises:
        ConfigurationError: the two URLs name the same database, or the target holds rows
            and ``force`` is not given (nothing was changed).
        DatabaseUnavailableError: the source file does not exist.
        SchemaMismatchError, SchemaOutOfDateError: a schema this code cannot read or
            migrate, on either side.
        AppError: any error of the copy itself; the target was left as it was.
    """
    from app import schema

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise errors.InvalidInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    source_settings = Settings.resolve(source_url)
    target_settings = Settings.resolve(target_url)
    _refuse_same_database(source_settings, target_settings)
    started = time.monotonic()
    result = CopyResult(source_settings.safe_url(), target_settings.safe_url())
    with _open_source(source_settings) as source, _open(target_settings) as target:
        existing = _row_counts(target, present_only=True)
        if any(existing.values()) and not force:
            held = ", ".join(f"{n:,} {name}" for name, n in existing.items() if n)
            raise errors.ConfigurationError(
                f"{target.url} is not empty ({held}); copy into an empty database, or "
                "use --force (force=True) to replace these rows (nothing was changed)"
            )
        schema.upgrade(target)
        with source.reading() as reader:
            result.source_counts = {name: _count(reader, name) for name in LEGACY_TABLES}

            def write(writer: Connection) -> None:
                result.replaced = _clear(writer, existing) if force else {}
                for name in LEGACY_TABLES:
                    _copy_table(reader, writer, name, batch_size, result, progress)
                _advance_sequences(writer)

            target.run_on_connection(write)
        result.target_counts = _row_counts(target)
        check = BlockStore(target).verify_chain(
            _verify_progress(progress, result.target_counts.get("blocks", 0))
        )
        result.first_bad_block = check.first_bad_index
        if not check:
            result.source_first_bad_block = BlockStore(source).verify_chain().first_bad_index
    result.seconds = time.monotonic() - started
    return result


def _verify_progress(progress: Progress | None, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    report = progress
    return lambda done: report("verify", done, total)


def _refuse_same_database(source: Settings, target: Settings) -> None:
    same = source.safe_url() == target.safe_url()
    if source.sqlite_path is not None and target.sqlite_path is not None:
        same = os.path.realpath(source.sqlite_path) == os.path.realpath(target.sqlite_path)
    if same:
        raise errors.ConfigurationError(
            f"the source and the target are the same database ({target.safe_url()}); "
            "give another URL to --to"
        )


@contextmanager
def _open_source(settings: Settings) -> Iterator[Database]:
    overrides: dict[str, Any] = {}
    path = settings.sqlite_path
    if path is not None:
        if not os.path.isfile(path):
            raise errors.DatabaseUnavailableError(
                f"the source database {os.path.abspath(path)} does not exist; check --url"
            )
        # Opening the file with another journal mode would change it for good: a copy only
        # reads its source.
        overrides["journal_mode"] = _journal_mode(path)
    with _open(settings, **overrides) as database:
        _check_source_schema(database)
        yield database


@contextmanager
def _open(settings: Settings, **overrides: Any) -> Iterator[Database]:
    # No schema check: the source is read as it is, the target is migrated explicitly.
    database = Database(settings.url, check_schema=False, **overrides)
    try:
        yield database
    finally:
        database.dispose()


def _journal_mode(path: str) -> str:
    try:
        with closing(read_only(path)) as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    except sqlite3.DatabaseError as exc:
        translated = errors.translate(exc, database=path)
        raise (translated or exc) from exc


def _check_source_schema(database: Database) -> None:
    from app import schema

    revision = schema.current_revision(database)
    if revision is not None and revision not in {r.revision for r in schema.history()}:
        raise errors.SchemaOutOfDateError(
            f"the source {database.url} is at schema revision {revision!r}, which this code "
            "does not know: upgrade the package before copying it"
        )
    with database.reading() as connection:
        problems = schema.legacy_schema_differences(connection)
    if problems:
        raise errors.SchemaMismatchError(
            f"the source {database.url} does not hold the block-store tables as expected: "
            + "; ".join(problems)
        )


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


def _count(connection: Connection, name: str) -> int:
    return int(connection.execute(select(func.count()).select_from(_table(name))).scalar_one())


def _row_counts(database: Database, *, present_only: bool = False) -> dict[str, int]:
    with database.reading() as connection:
        present = set(inspect(connection).get_table_names())
        return {
            name: _count(connection, name) if name in present else 0
            for name in LEGACY_TABLES
            if name in present or not present_only
        }


def _clear(connection: Connection, existing: dict[str, int]) -> dict[str, int]:
    """Delete the target's rows, children first; returns what was deleted."""
    for name in reversed(LEGACY_TABLES):
        connection.execute(delete(_table(name)))
    return {name: count for name, count in existing.items() if count}


def _copy_table(
    reader: Connection,
    writer: Connection,
    name: str,
    batch_size: int,
    result: CopyResult,
    progress: Progress | None,
) -> None:
    table = _table(name)
    (key,) = table.primary_key.columns
    columns = list(table.columns)
    keys = [column.key for column in columns]
    position = next(i for i, column in enumerate(columns) if column is key)
    total = result.source_counts[name]
    query = select(*columns).order_by(key).limit(batch_size)
    done, last = 0, None
    if progress is not None:
        progress(name, 0, total)
    while True:
        # Keyset pagination: each batch starts after the last key of the one before, so
        # no batch rereads earlier rows (OFFSET would) and memory holds one batch.
        page = query if last is None else query.where(key > last)
        rows = reader.execute(page).all()
        if not rows:
            return
        writer.execute(insert(table), [dict(zip(keys, row, strict=True)) for row in rows])
        done += len(rows)
        last = rows[-1][position]
        if progress is not None:
            progress(name, done, total)


def _advance_sequences(connection: Connection) -> None:
    """Move PostgreSQL's id sequences past the copied ids, so later inserts do not collide.

    SQLite's AUTOINCREMENT counter follows explicit ids by itself.
    """
    if connection.dialect.name != "postgresql":
        return
    for name in LEGACY_TABLES:
        for column in _table(name).primary_key.columns:
            if column.autoincrement is not True:
                continue
            # Names come from the models, never from input.
            connection.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', '{column.name}'), "
                    f"coalesce(max({column.name}), 0) + 1, false) FROM {name}"
                )
            )
