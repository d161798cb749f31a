"""Alembic environment (from the generic template).

Migrations run through the application's own engine factory, so they get the same pragmas
and the same write unit (``BEGIN IMMEDIATE`` on SQLite, the write lock on PostgreSQL) as the
application: two processes upgrading at once take turns, and the second finds nothing to do.
A connection handed in ``config.attributes["connection"]`` is used as is.
"""

import warnings
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SAWarning

from app.database import migration_database
from app.models import Base
from app.schema import after_migrations, foreign_keys_off, write_connection
from app.schema._autogenerate import drop_legacy_noise

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
_UNREFLECTED = "Skipped unsupported reflection of expression-based index ix_blocks_instant"


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Leave the layer's own tables and indexes out of autogenerate: the FTS5 tables of
    revision 0003, their pending table, the trigram indexes, the timestamp index of 0004,
    the change notes of 0005 and the 1-/2-gram tables and indexes of 0006 are made by those
    revisions' own DDL, not by the models."""
    if type_ == "table" and name is not None and name.startswith(_OWN_TABLE_STARTS):
        return False
    return not (type_ == "index" and name is not None and name.endswith(_OWN_INDEX_ENDINGS))


_OWN_INDEX_ENDINGS = ("_trgm", "_instant", "_grams")
_OWN_TABLE_STARTS = ("search_", "embedding_changes")


def _url() -> str | None:
    return context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )


def run_migrations_offline() -> None:
    """Emit the migration SQL instead of running it (``alembic upgrade --sql``)."""
    url = _url() or "sqlite:///data/memory.db"
    context.configure(
        url=url,
        target_metadata=target_metadata,
        include_name=_include_name,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=_include_name,
        # A database the old class made differs from the models in ways that mean nothing
        # (see app/_autogenerate.py): a new script holds only the user's own changes.
        process_revision_directives=lambda _context, _revision, directives: drop_legacy_noise(
            connection, target_metadata, directives
        ),
        render_as_batch=connection.dialect.name == "sqlite",
        # The layer issues BEGIN itself, so DDL on SQLite is transactional too: a failed
        # upgrade leaves the schema as it was.
        transactional_ddl=True,
        compare_type=True,
    )
    # SQLite: foreign keys off around the transaction, so that batch mode can rebuild a
    # table that others point at; checked, and the layer's own triggers restored (a
    # rebuilt table loses them), before the commit.
    with (
        warnings.catch_warnings(),
        foreign_keys_off(connection),
        context.begin_transaction(),
    ):
        # SQLAlchemy cannot reflect the expression index of revision 0004 on SQLite (batch
        # mode and autogenerate skip it, and after_migrations puts it back).
        warnings.filterwarnings("ignore", message=_UNREFLECTED, category=SAWarning)
        context.run_migrations()
        after_migrations(connection)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    with migration_database(_url()) as database, write_connection(database) as connection:
        _run_with(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
