"""What the layer keeps in a database beside the models' tables, and how to put it back.

Two search indexes: the keyword index of revision 0003 and the timestamp index of 0004.

Revision 0003 made the keyword index: on SQLite two FTS5 tables, the plain table
``search_pending`` and four triggers on ``blocks`` and ``block_keywords`` that note every
new or changed block there (see ``_keyword_index``); on PostgreSQL two trigram indexes.
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
keeps its own copy).
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.engine import Connection

from ._driver import raw_execute
from ._postgres_hooks import PG_WRITE_LOCK_KEY
from ._time_window import POSTGRES_KEY, SQLITE_KEY

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
#: Revision 0005's notes of embeddings changed in place (see ``_vector_changes``), as the
#: revision created them: the table, then the triggers (PostgreSQL: functions, then triggers).
NOTES_REVISION = "0005"
NOTES_TABLE = "embedding_changes"
_WRITE_LOCK = PG_WRITE_LOCK_KEY
NOTES_SQLITE = (
    "CREATE TABLE embedding_changes ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, block_index INTEGER NOT NULL)",
    "INSERT INTO embedding_changes (seq, block_index) VALUES (0, abs(random() % 2147483647))",
    "CREATE TRIGGER embedding_changes_insert BEFORE INSERT ON block_embeddings "
    "WHEN EXISTS (SELECT 1 FROM block_embeddings WHERE block_index >= new.block_index) "
    "BEGIN INSERT INTO embedding_changes (block_index) VALUES (new.block_index); END",
    "CREATE TRIGGER embedding_changes_update AFTER UPDATE ON block_embeddings BEGIN "
    "INSERT INTO embedding_changes (block_index) VALUES (new.block_index); "
    "INSERT INTO embedding_changes (block_index) SELECT old.block_index "
    "WHERE old.block_index <> new.block_index; END",
    "CREATE TRIGGER embedding_changes_delete AFTER DELETE ON block_embeddings BEGIN "
    "INSERT INTO embedding_changes (block_index) VALUES (old.block_index); END",
)
NOTES_POSTGRES = (
    "CREATE TABLE embedding_changes ("
    "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, block_index INTEGER NOT NULL)",
    "INSERT INTO embedding_changes (seq, block_index) OVERRIDING SYSTEM VALUE "
    "VALUES (0, floor(random() * 2147483647)::int)",
    f"""CREATE FUNCTION app_note_embedding_insert() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM block_embeddings WHERE block_index >= NEW.block_index) THEN
        PERFORM pg_advisory_xact_lock({_WRITE_LOCK});
        INSERT INTO embedding_changes (block_index) VALUES (NEW.block_index);
    END IF;
    RETURN NEW;
END
$fn$""",
    f"""CREATE FUNCTION app_note_embedding_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock({_WRITE_LOCK});
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO embedding_changes (block_index) VALUES (NEW.block_index);
    END IF;
    IF TG_OP = 'DELETE' OR OLD.block_index <> NEW.block_index THEN
        INSERT INTO embedding_changes (block_index) VALUES (OLD.block_index);
    END IF;
    RETURN NULL;
END
$fn$""",
    "CREATE TRIGGER embedding_changes_insert BEFORE INSERT ON block_embeddings "
    "FOR EACH ROW EXECUTE FUNCTION app_note_embedding_insert()",
    "CREATE TRIGGER embedding_changes_change AFTER UPDATE OR DELETE ON block_embeddings "
    "FOR EACH ROW EXECUTE FUNCTION app_note_embedding_change()",
)

INSTANT_INDEX = "ix_blocks_instant"
INSTANT_REVISION = "0004"
#: As revision 0004 created it (the revision keeps its own copy).
POSTGRES_KEY_FUNCTION = r"""
CREATE FUNCTION app_timestamp_key(value text) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
SELECT CASE
    WHEN value !~ ('^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])'
            '(?:[T ]([01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?)?'
            '(?: ?(Z|[+-](0\d|1[0-5])(?::?[0-5]\d)?))?$')
        THEN NULL
    WHEN substr(value, 1, 4) = '0000' THEN NULL
    WHEN substr(value, 9, 2)::int > CASE
        WHEN substr(value, 6, 2) IN ('04', '06', '09', '11') THEN 30
        WHEN substr(value, 6, 2) <> '02' THEN 31
        WHEN substr(value, 1, 4)::int % 400 = 0
            OR (substr(value, 1, 4)::int % 4 = 0 AND substr(value, 1, 4)::int % 100 <> 0)
            THEN 29
        ELSE 28 END
        THEN NULL
    WHEN length(value) > 10 AND value ~ '(Z|[+-]\d\d(?::?\d\d)?)$'
        THEN extract(epoch FROM value::timestamptz)
    ELSE extract(epoch FROM value::timestamp)
END
$fn$
"""


def problems(connection: Connection, applied: Collection[str]) -> list[str]:
    """What is missing of the search indexes the database should have ([] when whole).

    Args:
        applied: the revisions the database is at or past (see
            :func:`~app.schema.applied_revisions`). The keyword index counts as made when
            part of it is there (revision 0003 made none without FTS5's trigram tokenizer
            or pg_trgm).
    """
    missing = _keyword_problems(connection)
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
    if connection.dialect.name == "sqlite":
        raw_execute(
            connection, f"CREATE INDEX {INSTANT_INDEX} ON blocks ({SQLITE_KEY}, block_index)"
        )
        return
    found = raw_execute(
        connection,
        "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = 'app_timestamp_key' AND n.nspname = current_schema()",
    ).fetchone()
    if found is None:
        raw_execute(connection, POSTGRES_KEY_FUNCTION)
    raw_execute(connection, f"CREATE INDEX {INSTANT_INDEX} ON blocks ({POSTGRES_KEY}, block_index)")


def _restore_note_triggers(connection: Connection) -> None:
    """Create the notes' table, functions and triggers that are missing (a migration that
    rebuilt ``block_embeddings`` dropped its triggers)."""
    sqlite = connection.dialect.name == "sqlite"
    statements = NOTES_SQLITE if sqlite else NOTES_POSTGRES
    wanted = set(_missing_note_triggers(connection))
    for statement in statements:
        if statement.startswith(("CREATE TABLE", "INSERT")):
            continue  # the table is not on the rebuilt one; it stays, with its name
        if statement.startswith("CREATE FUNCTION"):
            raw_execute(
                connection, statement.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
            )
            continue
        name = statement.split()[2]
        if name in wanted:
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
