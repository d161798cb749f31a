"""What the layer keeps in a database beside the models' tables, and how to put it back.

Revision 0003 made the keyword index: on SQLite two FTS5 tables, the plain table
``search_pending`` and four triggers on ``blocks`` and ``block_keywords`` that note every
new or changed block there (see ``_keyword_index``); on PostgreSQL two trigram indexes.
None of them is in the models, so a user's own migration can lose them without a word:
Alembic's batch mode on SQLite rebuilds a table by copying it into a new one, and the
triggers of the old table go with it. Searches would then never find the blocks written
afterwards.

So the migration environment restores them after every migration, inside its transaction
(``_keyword_index.restore``, which also re-indexes the rows); :func:`~app.schema.ensure_schema`
checks (and, where it may write, restores) when a Database opens; ``app doctor`` reports
:func:`problems` and ``app reindex`` rebuilds the index.
The definitions below are the ones revision 0003 created (a revision is frozen history: it
keeps its own copy).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from ._driver import raw_execute

FTS_TABLES = ("search_context_fts", "search_keyword_fts")
PENDING_TABLE = "search_pending"
_PENDING_DDL = (
    "CREATE TABLE search_pending (block_index INTEGER NOT NULL PRIMARY KEY) WITHOUT ROWID"
)
_NOT_PENDING = "WHEN NOT EXISTS (SELECT 1 FROM search_pending WHERE block_index = new.block_index)"
_REMEMBER = "INSERT INTO search_pending (block_index) VALUES (new.block_index);"
_TRIGGER_EVENTS = {
    "search_pending_block_insert": "AFTER INSERT ON blocks",
    "search_pending_block_update": "AFTER UPDATE OF block_index, context ON blocks",
    "search_pending_keyword_insert": "AFTER INSERT ON block_keywords",
    "search_pending_keyword_update": "AFTER UPDATE OF block_index, keyword ON block_keywords",
}
TRIGGERS = tuple(_TRIGGER_EVENTS)
PG_INDEXES = {
    "ix_blocks_context_trgm": ("blocks", "context"),
    "ix_block_keywords_keyword_trgm": ("block_keywords", "keyword"),
}


def problems(connection: Connection) -> list[str]:
    """What is missing of the keyword index that the database should have ([] when whole,
    or when the database never had one: before revision 0003, no FTS5 trigram tokenizer, no
    pg_trgm)."""
    if connection.dialect.name == "sqlite":
        present = _sqlite_names(connection)
        if not any(table in present for table in FTS_TABLES):
            return []
        wanted = [*FTS_TABLES, PENDING_TABLE]
        missing = [f"table {name} is missing" for name in wanted if name not in present]
        missing += [f"trigger {name} is missing" for name in TRIGGERS if name not in present]
        return missing
    if not _pg_trgm_schema(connection):
        return []
    present = _pg_indexes(connection)
    if not present:
        return []  # revision 0003 made none (pg_trgm came later): nothing was lost
    return [f"index {name} is missing" for name in PG_INDEXES if name not in present]


def restore_objects(connection: Connection) -> list[str]:
    """Create what :func:`problems` finds missing, inside the caller's write transaction
    (the index's contents are ``_keyword_index.restore``'s job).

    Returns:
        What was missing.
    """
    missing = problems(connection)
    if not missing:
        return []
    if connection.dialect.name == "sqlite":
        present = _sqlite_names(connection)
        if PENDING_TABLE not in present:
            raw_execute(connection, _PENDING_DDL)
        for name in FTS_TABLES:
            if name not in present:
                column = "context" if name == "search_context_fts" else "keywords"
                raw_execute(
                    connection,
                    f"CREATE VIRTUAL TABLE {name} USING fts5({column}, content='', "
                    "tokenize='trigram', detail='none', columnsize=0)",
                )
        for name, when in _TRIGGER_EVENTS.items():
            if name not in present:
                raw_execute(
                    connection, f"CREATE TRIGGER {name} {when} {_NOT_PENDING} BEGIN {_REMEMBER} END"
                )
    else:
        schema = _pg_trgm_schema(connection)
        present = _pg_indexes(connection)
        for name, (table, column) in PG_INDEXES.items():
            if name not in present:
                raw_execute(
                    connection,
                    f'CREATE INDEX {name} ON {table} USING gin (lower({column}) "{schema}".'
                    "gin_trgm_ops)",
                )
    return missing


def _sqlite_names(connection: Connection) -> set[str]:
    rows = raw_execute(
        connection, "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')"
    )
    return {row[0] for row in rows}


def _pg_trgm_schema(connection: Connection) -> str | None:
    row = raw_execute(
        connection,
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'",
    ).fetchone()
    return None if row is None else str(row[0])


def _pg_indexes(connection: Connection) -> set[str]:
    rows = raw_execute(
        connection,
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
        "AND indexname IN ('ix_blocks_context_trgm', 'ix_block_keywords_keyword_trgm')",
    )
    return {row[0] for row in rows}
