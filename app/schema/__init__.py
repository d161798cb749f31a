"""Schema revisions: where the migrations live, which revision a database is at, upgrades.

Alembic owns the schema. These functions run it through the application's engine, and
:func:`ensure_schema` is what :class:`~app.Database` calls when it opens a database.

Layer 3, schema and models. May import: the package root (``app.models`` included) and
``app.engine``. ``app.database`` calls it when a database opens; it knows the ``Database``
only through the small protocol a migration needs (``Migratable``).
"""

from __future__ import annotations

import logging
import threading
import time

from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection

from app import errors
from app._hints import command_hint
from app.engine._driver import raw_execute
from app.schema import _search_schema
from app.schema._keyword_index import restore

# Re-exported: the migration environment and callers import these from here.
from app.schema._migration_connection import Migratable as Migratable
from app.schema._migration_connection import foreign_keys_off as foreign_keys_off
from app.schema._migration_connection import write_connection as write_connection
from app.schema._revisions import Revision as Revision
from app.schema._revisions import alembic_config as alembic_config
from app.schema._revisions import applied_revisions as applied_revisions
from app.schema._revisions import head_revision as head_revision
from app.schema._revisions import history as history
from app.schema._revisions import legacy_layout as legacy_layout
from app.schema._revisions import migrations_dir as migrations_dir
from app.schema._revisions import reset_script_cache as reset_script_cache
from app.schema._revisions import revision_module as revision_module
from app.schema._revisions import script as script_directory
from app.schema._revisions import use_migrations_dir as use_migrations_dir

log = logging.getLogger(__name__)


def current_revision(database: Migratable) -> str | None:
    """The revision recorded in the database, or None (empty or legacy database)."""
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(database: Migratable, revision: str = "head") -> None:
    """Upgrade (adopting a legacy database first when there is one)."""
    _run(database, command.upgrade, revision)


def downgrade(database: Migratable, revision: str) -> None:
    _run(database, command.downgrade, revision)


def rows_dropped_by_downgrade(database: Migratable, revision: str) -> dict[str, int]:
    """The rows a downgrade to ``revision`` would drop with their tables (revision 0001's
    downgrade drops the block store's tables): {table: rows} of the tables that hold any,
    {} when the downgrade keeps 0001 or they are empty."""
    with database.engine.connect() as connection:
        applied = applied_revisions(connection)
        if "0001" not in applied:
            connection.rollback()
            return {}
        kept = _kept_by_downgrade(connection, revision)
        if "0001" in kept:
            connection.rollback()
            return {}
        present = set(inspect(connection).get_table_names())
        counts = {
            name: int(raw_execute(connection, f"SELECT count(*) FROM {name}").fetchone()[0])
            for name in legacy_layout().tables
            if name in present
        }
        connection.rollback()
    return {name: count for name, count in counts.items() if count}


def _kept_by_downgrade(connection: Connection, revision: str) -> set[str]:
    """The revisions still applied after a downgrade to ``revision`` (an id, ``base`` or a
    relative ``-N``)."""
    if revision == "base":
        return set()
    script = script_directory()
    if revision.startswith("-") and revision[1:].isdigit():
        current = MigrationContext.configure(connection).get_current_heads()
        found = script.get_revision(current[0]) if current else None
        for _ in range(int(revision[1:])):
            if found is None:
                return set()
            down = found.down_revision
            found = script.get_revision(down) if isinstance(down, str) else None
        return (
            set()
            if found is None
            else {r.revision for r in script.iterate_revisions(found.revision, "base")}
        )
    return {r.revision for r in script.iterate_revisions(revision, "base")}


def stamp(database: Migratable, revision: str) -> None:
    """Record ``revision`` without running migrations."""
    _run(database, command.stamp, revision)


#: Alembic keeps the migration it runs in module globals (``alembic.context``,
#: ``alembic.op``): two migrations at once in one process, even of two files (the first
#: open of a file per tenant from several threads), would run each other's steps. One at a
#: time, then; innermost, after the file's own write turn, so no two waits cross.
_ONE_MIGRATION = threading.Lock()


def _run(database: Migratable, action: object, revision: str) -> None:
    """Run the Alembic ``action`` to ``revision`` on ``database``.

    Raises:
        DatabaseBusyError: another migration of this process (of any database) did not end
            within ``retry_deadline``; nothing was changed.
    """
    with write_connection(database) as connection:
        deadline = database.settings.retry_deadline
        started = time.monotonic()
        if not _ONE_MIGRATION.acquire(timeout=deadline):
            raise errors.DatabaseBusyError(
                f"{database.url} was not migrated: another migration in this process ran "
                f"for more than retry_deadline ({deadline:g}s); nothing was changed",
                database=database.url,
                waited=time.monotonic() - started,
            )
        try:
            action(alembic_config(connection), revision)  # type: ignore[operator]
        finally:
            _ONE_MIGRATION.release()


def after_migrations(connection: Connection) -> None:
    """At the end of every migration, inside its transaction: check the foreign keys (they
    were off, see :func:`foreign_keys_off`) and restore what the layer keeps beside the
    models' tables that a migration may have dropped (the search indexes' triggers and
    expression index: see ``_search_schema``).

    Raises:
        IntegrityViolationError: the migration left rows whose foreign key points at no
            row; the migration is rolled back.
    """
    if connection.dialect.name == "sqlite":
        broken = raw_execute(connection, "PRAGMA foreign_key_check").fetchmany(5)
        if broken:
            shown = ", ".join(f"{row[0]} row {row[1]} -> {row[2]}" for row in broken)
            raise errors.IntegrityViolationError(
                f"the migration left rows whose foreign key points at no row ({shown}); it "
                "was rolled back, nothing changed"
            )
    restore(connection, applied_revisions(connection), level=logging.INFO)


def ensure_schema(database: Migratable) -> None:
    """Make sure the schema is the one this code expects.

    Raises:
        SchemaOutOfDateError: the database is behind and ``auto_upgrade`` is off, or it is at
            a revision this code does not know (migrated by newer code).
    """
    current = current_revision(database)
    expected = head_revision()
    if current == expected:
        _check_search_machinery(database)
        return
    known = {r.revision for r in history()}
    if current is not None and current not in known:
        raise errors.SchemaOutOfDateError(
            f"{database.url} is at schema revision {current!r}, which this code does not know "
            f"(it expects {expected!r}): it was migrated by a newer version; upgrade the package"
        )
    if database.settings.read_only:
        _check_readable_schema(database, current)
        return
    if database.settings.should_auto_upgrade:
        log.info("upgrading %s from %s to %s", database.url, current or "nothing", expected)
        upgrade(database)
        return
    raise errors.SchemaOutOfDateError(
        f"{database.url} is at schema revision {current or 'none'} but this code expects "
        f"{expected}: run `{command_hint(database.url, 'db', 'upgrade')}`"
    )


def _check_readable_schema(database: Migratable, current: str | None) -> None:
    """A database opened read-only is read at any revision this code knows, or as the old
    class left it (the later revisions add indexes only); it needs the legacy tables."""
    with database.engine.connect() as connection:
        missing = [t for t in legacy_layout().tables if not inspect(connection).has_table(t)]
        connection.rollback()
    if missing:
        raise errors.SchemaOutOfDateError(
            f"{database.url} has no {', '.join(sorted(missing))} table: there is no block store "
            "to read (it was opened read-only, so nothing was created)"
        )
    log.info(
        "reading %s read-only at schema revision %s (this code's is %s): searches read "
        "without the indexes of the later revisions",
        database.url,
        current or "none (the old class's)",
        head_revision(),
    )


def _check_search_machinery(database: Migratable) -> None:
    """The keyword index may have lost its triggers to a migration of older code (or a
    hand-made one): restore it when the database may be upgraded on open, else say so."""
    if database.settings.read_only:
        return  # nothing may change it; searches stay exact by reading more
    with database.engine.connect() as connection:
        missing = _search_schema.problems(connection, applied_revisions(connection))
        connection.rollback()
    if not missing:
        return
    if not database.settings.should_auto_upgrade:
        log.warning(
            "the search indexes of %s are incomplete (%s): searches read the whole table "
            "meanwhile; run `%s`",
            database.url,
            "; ".join(missing),
            command_hint(database.url, "reindex"),
        )
        return
    with write_connection(database) as connection, connection.begin():
        restore(connection, applied_revisions(connection))


def legacy_schema_differences(connection: Connection, layout: MetaData | None = None) -> list[str]:
    """How the existing tables differ from the legacy layout ([] when they match).

    Args:
        layout: the legacy tables (revision 0001's ``LAYOUT`` when not given).
    """
    tables = (layout or legacy_layout()).sorted_tables
    inspector = inspect(connection)
    present = set(inspector.get_table_names())
    problems = [f"table {t.name} is missing" for t in tables if t.name not in present]
    dialect = connection.dialect
    for table in tables:
        name = table.name
        if name not in present:
            continue
        found = {c["name"]: c for c in inspector.get_columns(name)}
        primary_key = set(inspector.get_pk_constraint(name).get("constrained_columns") or [])
        for column in table.columns:
            actual = found.pop(column.name, None)
            if actual is None:
                problems.append(f"column {name}.{column.name} is missing")
                continue
            expected_type = column.type.compile(dialect=dialect)
            actual_type = actual["type"].compile(dialect=dialect)
            if expected_type != actual_type:
                problems.append(
                    f"column {name}.{column.name} is {actual_type}, expected {expected_type}"
                )
            if not column.primary_key and bool(actual["nullable"]) != bool(column.nullable):
                expected_null = "NULL" if column.nullable else "NOT NULL"
                problems.append(f"column {name}.{column.name} should be {expected_null}")
        problems.extend(f"unexpected column {name}.{extra}" for extra in sorted(found))
        expected_pk = {c.name for c in table.primary_key.columns}
        if primary_key != expected_pk:
            problems.append(
                f"table {name} has primary key {sorted(primary_key)}, "
                f"expected {sorted(expected_pk)}"
            )
    return problems


def adopt_legacy_schema(connection: Connection, layout: MetaData) -> bool:
    """Adopt tables made by the legacy class (revision 0001 calls this with its layout).
    Returns False when there are none.

    Raises:
        SchemaMismatchError: some legacy tables exist but differ from the legacy layout.
    """
    present = set(inspect(connection).get_table_names())
    if not present.intersection(layout.tables):
        return False
    problems = legacy_schema_differences(connection, layout)
    if problems:
        raise errors.SchemaMismatchError(
            "the existing tables do not match the legacy schema, so the database was not "
            "adopted (nothing was changed): " + "; ".join(problems)
        )
    for table in layout.sorted_tables:
        for index in table.indexes:
            index.create(connection, checkfirst=True)
    log.info("adopted an existing legacy database at revision 0001")
    return True
