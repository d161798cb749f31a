"""What the layer keeps in a database beside the models' tables, and how to put it back.

The search indexes: the keyword index of revisions 0003 and 0006, the timestamp index of
0004, and the change notes of 0005.

Revision 0003 made the keyword index: on SQLite two FTS5 tables, the plain table
``search_pending`` and four triggers on ``blocks`` and ``block_keywords`` that note every
new or changed block there (see ``_keyword_index``); on PostgreSQL two trigram indexes.
Revision 0006 added its part for words of one and two characters: on SQLite two more FTS5
tables, filled by the same drain (see ``_short_grams``); on PostgreSQL the function
``app_short_grams`` and two GIN indexes on it.
Revision 0004 indexes ``blocks`` by the instant of its timestamp (an expression index;
on PostgreSQL through the function ``app_timestamp_key``). None of them is in the models,
so a user's own migration can lose them without a word: Alembic's batch mode on SQLite
rebuilds a table by copying it into a new one, and the triggers of the old table, and the
indexes SQLAlchemy cannot reflect, go with it. Keyword searches would then never find the
blocks written afterwards, and time windows would read the whole table.

So the migration environment restores them after every migration, inside its transaction
(``_keyword_index.restore``, which also re-indexes the rows); :func:`~app.schema.ensure_schema`
checks (and, where it may write, restores) when a Database opens; ``app doctor`` reports
:func:`problems` and ``app reindex`` rebuilds the index.
The definitions below are the ones revision 0003 created (a revision is frozen history: it
keeps its own copy); those of the later revisions are read from the revisions themselves.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.engine import Connection

from app.engine._driver import raw_execute
from app.schema._revisions import revision_module
from app.schema._short_grams import TABLES as GRAM_TABLES

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
#: Revision 0005's notes of embeddings changed in place (see ``_vector_changes``).
NOTES_REVISION = "0005"
NOTES_TABLE = "embedding_changes"

INSTANT_INDEX = "ix_blocks_instant"
INSTANT_REVISION = "0004"

#: Revision 0006's index of words of one and two characters.
GRAMS_REVISION = "0006"
PG_GRAM_INDEXES = ("ix_blocks_context_grams", "ix_block_keywords_keyword_grams")
PG_GRAM_FUNCTION = "app_short_grams(text)"


def problems(connection: Connection, applied: Collection[str]) -> list[str]:
    """What is missing of the search indexes the database should have ([] when whole).

    Args:
        applied: the revisions the database is at or past (see
            :func:`~app.schema.applied_revisions`). The keyword index counts as made when
            part of it is there (revision 0003 made none without FTS5's trigram tokenizer
            or pg_trgm).
    """
    missing = _keyword_problems(connection)
    if GRAMS_REVISION in applied:
        missing += _gram_problems(connection)
    if INSTANT_REVISION in applied and INSTANT_INDEX not in _indexes(connection):
        missing.append(f"index {INSTANT_INDEX} is missing")
    if NOTES_REVISION in applied:
        missing += [f"trigger {name} is missing" for name in _missing_note_triggers(connection)]
    return missing


def _note_triggers(connection: Connection) -> tuple[str, ...]:
    if connection.dialect.name == "sqlite":
        return ("embedding_changes_insert", "embedding_changes_update", "embedding_changes_delete")
    return ("embedding_changes_insert", "embedding_changes_change")


def _missing_note_triggers(connection: Connection) -> list[str]:
    if connection.dialect.name == "sqlite":
        present = _sqlite_names(connection)
    else:
        rows = raw_execute(
            connection,
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = 'block_embeddings' AND n.nspname = current_schema()",
        )
        present = {row[0] for row in rows}
    return [name for name in _note_triggers(connection) if name not in present]


def _keyword_problems(connection: Connection) -> list[str]:
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
    present = _indexes(connection) & set(PG_INDEXES)
    if not present:
        return []  # revision 0003 made none (pg_trgm came later): nothing was lost
    return [f"index {name} is missing" for name in PG_INDEXES if name not in present]


def _gram_problems(connection: Connection) -> list[str]:
    """What is missing of revision 0006's part of the keyword index. On SQLite it exists
    beside revision 0003's tables only (it shares their pending blocks)."""
    if connection.dialect.name == "sqlite":
        present = _sqlite_names(connection)
        if not any(table in present for table in FTS_TABLES):
            return []
        return [f"table {name} is missing" for name in GRAM_TABLES if name not in present]
    missing = [] if _pg_gram_function(connection) else [f"function {PG_GRAM_FUNCTION} is missing"]
    present = _indexes(connection)
    return missing + [f"index {name} is missing" for name in PG_GRAM_INDEXES if name not in present]


def _pg_gram_function(connection: Connection) -> bool:
    found = raw_execute(
        connection, "SELECT to_regprocedure(%s) IS NOT NULL", (PG_GRAM_FUNCTION,)
    ).fetchone()
    return bool(found[0])


def restore_objects(connection: Connection, applied: Collection[str]) -> list[str]:
    """Create what :func:`problems` finds missing, inside the caller's write transaction
    (the index's contents are ``_keyword_index.restore``'s job).

    Returns:
        What was missing.
    """
    missing = problems(connection, applied)
    if not missing:
        return []
    if any(INSTANT_INDEX in problem for problem in missing):
        _restore_instant_index(connection)
    if any("embedding_changes" in problem for problem in missing):
        _restore_note_triggers(connection)
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
    elif any("_trgm" in problem for problem in missing):
        schema = _pg_trgm_schema(connection)
        present = _indexes(connection)
        for name, (table, column) in PG_INDEXES.items():
            if name not in present:
                raw_execute(
                    connection,
                    f'CREATE INDEX {name} ON {table} USING gin (lower({column}) "{schema}".'
                    "gin_trgm_ops)",
                )
    # Last: on SQLite beside 0003's tables; on PostgreSQL after the trigram indexes, whose
    # pending-list limit it sets again.
    if GRAMS_REVISION in applied and any(
        "_grams" in problem or "_trgm" in problem or PG_GRAM_FUNCTION in problem
        for problem in missing
    ):
        _restore_grams(connection)
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


def _restore_instant_index(connection: Connection) -> None:
    """Run revision 0004's statements again (its function made again if it is missing)."""
    for statement in _revision_statements(INSTANT_REVISION, connection):
        raw_execute(connection, _or_replace(statement))


def _revision_statements(revision: str, connection: Connection) -> tuple[str, ...]:
    """What a revision's upgrade runs on this backend: the revision is the one copy."""
    module = revision_module(revision)
    statements: tuple[str, ...] = (
        module.SQLITE if connection.dialect.name == "sqlite" else module.POSTGRES
    )
    return statements


def _or_replace(statement: str) -> str:
    return statement.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _restore_note_triggers(connection: Connection) -> None:
    """Create the notes' functions and the triggers that are missing (a migration that
    rebuilt ``block_embeddings`` dropped its triggers; the table and its notes stay)."""
    wanted = set(_missing_note_triggers(connection))
    for statement in _revision_statements(NOTES_REVISION, connection):
        if statement.startswith("CREATE FUNCTION"):
            raw_execute(connection, _or_replace(statement))
        elif statement.startswith("CREATE TRIGGER") and statement.split()[2] in wanted:
            raw_execute(connection, statement)


def _restore_grams(connection: Connection) -> None:
    """Run revision 0006's statements for what is missing (its function made again, its
    pending-list limit set again on trigram indexes just restored). Rebuilt GIN indexes
    get fresh statistics: without them the planner takes every word for a rare one."""
    present = _sqlite_names(connection) if connection.dialect.name == "sqlite" else set()
    indexes = _indexes(connection)
    made = False
    for statement in _revision_statements(GRAMS_REVISION, connection):
        words = statement.split()
        if statement.startswith("CREATE VIRTUAL TABLE") and words[3] not in present:
            raw_execute(connection, statement)
        elif statement.lstrip().startswith("CREATE FUNCTION"):
            raw_execute(connection, _or_replace(statement))
        elif statement.startswith("CREATE INDEX") and words[2] not in indexes:
            raw_execute(connection, statement)
            made = True
        elif statement.startswith("ALTER INDEX"):
            raw_execute(connection, statement)
    if made:
        analyze_filled(connection)


def analyze_filled(connection: Connection) -> None:
    """ANALYZE the block tables that hold rows (PostgreSQL): the planner's statistics of the
    indexed expressions. An empty table is left alone (see revision 0006's notes)."""
    revision = revision_module(GRAMS_REVISION)
    for table, statement in revision.POSTGRES_ANALYZE.items():
        if raw_execute(connection, revision.FILLED.format(table=table)).fetchone()[0]:
            raw_execute(connection, statement)


def _indexes(connection: Connection) -> set[str]:
    """The names of the indexes on the block tables (in the current schema)."""
    if connection.dialect.name == "sqlite":
        rows = raw_execute(connection, "SELECT name FROM sqlite_master WHERE type = 'index'")
    else:
        rows = raw_execute(
            connection, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        )
    return {row[0] for row in rows}
