"""Index keyword search: FTS5 trigram tables on SQLite, pg_trgm GIN indexes on PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Keyword search matches substrings (case-insensitive), which a B-tree cannot serve. This
revision adds trigram indexes that narrow a search to the blocks that can match; the exact
substring test still decides (see ``app/_keyword_index.py``).

SQLite: two contentless FTS5 tables (``tokenize='trigram'``, ``detail='none'``: only which
rows hold a trigram), filled here from the existing rows, and a plain table
``search_pending`` that triggers on ``blocks`` and ``block_keywords`` fill with the index of
every block written or changed later, by any writer. The layer moves pending blocks into
the FTS5 tables; FTS5 itself cannot be written from a trigger while connections run with
``trusted_schema=OFF``, and the pending rows cost writers far less than indexing each block
as it is written. Without FTS5's trigram tokenizer (SQLite before 3.34) nothing is created
and searches keep scanning.

PostgreSQL: ``CREATE EXTENSION pg_trgm`` when it is missing (in schema ``public`` when there
is one, so dropping an application schema never drops it) and GIN indexes on
``lower(context)`` and ``lower(keyword)``, which the server keeps up to date. Without the
extension (not installed, or no right to create it) the indexes are skipped with a warning
and searches scan, with the same results.

The downgrade drops what this revision made (the pg_trgm extension stays: other schemas
may use it).
"""

import logging
from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text
from sqlalchemy.engine import Connection

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# A trigger writes only the plain pending table, and only when the block is not pending yet
# (its WHEN clause): the INSERT can then never conflict, so no conflict clause is needed
# (an outer INSERT OR FAIL would impose its own on the trigger's statement), and the
# keyword rows of a block appended with it cost one lookup each.
_NOT_PENDING = "WHEN NOT EXISTS (SELECT 1 FROM search_pending WHERE block_index = new.block_index)"
_REMEMBER = "INSERT INTO search_pending (block_index) VALUES (new.block_index);"
_TRIGGERS = {
    "search_pending_block_insert": "AFTER INSERT ON blocks",
    "search_pending_block_update": "AFTER UPDATE OF block_index, context ON blocks",
    "search_pending_keyword_insert": "AFTER INSERT ON block_keywords",
    "search_pending_keyword_update": "AFTER UPDATE OF block_index, keyword ON block_keywords",
}
_FTS_OPTIONS = "content='', tokenize='trigram', detail='none', columnsize=0"
# NUL ends a text for the trigram tokenizer and SQLite's replace() cannot replace it: the
# rare texts holding one (the legacy class could store it) are indexed from Python with a
# space in its place, which keeps every trigram of a word (words never contain NUL).
_NUL = "instr(CAST({} AS BLOB), x'00') > 0"
_SQLITE_FILL = (
    "INSERT INTO search_context_fts (rowid, context) SELECT block_index, context FROM blocks "
    f"WHERE NOT {_NUL.format('context')} ORDER BY block_index",
    "INSERT INTO search_keyword_fts (rowid, keywords) "
    "SELECT block_index, group_concat(keyword, char(10)) FROM block_keywords "
    f"GROUP BY block_index HAVING NOT max({_NUL.format('keyword')}) ORDER BY block_index",
)
_PG_INDEXES = {
    "ix_blocks_context_trgm": ("blocks", "context"),
    "ix_block_keywords_keyword_trgm": ("block_keywords", "keyword"),
}


def upgrade() -> None:
    offline = context.is_offline_mode()
    bind = None if offline else op.get_bind()
    dialect = context.get_context().dialect.name
    if dialect == "sqlite":
        if bind is not None and not _sqlite_trigram_available(bind):
            log.warning("SQLite has no FTS5 trigram tokenizer: keyword search keeps scanning")
            return
        _sqlite_upgrade(bind)
    elif dialect == "postgresql":
        schema = "" if bind is None else _pg_trgm_schema(bind)
        if schema is None:
            log.warning("pg_trgm is not available: keyword search keeps scanning")
            return
        opclass = f'"{schema}".gin_trgm_ops' if schema else "gin_trgm_ops"
        if bind is None:
            op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, (table, column) in _PG_INDEXES.items():
            op.execute(f"CREATE INDEX {name} ON {table} USING gin (lower({column}) {opclass})")


def downgrade() -> None:
    dialect = context.get_context().dialect.name
    if dialect == "sqlite":
        for name in _TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        for table in ("search_pending", "search_keyword_fts", "search_context_fts"):
            op.execute(f"DROP TABLE IF EXISTS {table}")
    elif dialect == "postgresql":
        for name in _PG_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")


def _sqlite_upgrade(bind: Connection | None) -> None:
    op.execute(f"CREATE VIRTUAL TABLE search_context_fts USING fts5(context, {_FTS_OPTIONS})")
    op.execute(f"CREATE VIRTUAL TABLE search_keyword_fts USING fts5(keywords, {_FTS_OPTIONS})")
    op.execute(
        "CREATE TABLE search_pending (block_index INTEGER NOT NULL PRIMARY KEY) WITHOUT ROWID"
    )
    for statement in _SQLITE_FILL:
        op.execute(statement)
    if bind is not None:
        _index_texts_with_nul(bind)
    for name, when in _TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} {_NOT_PENDING} BEGIN {_REMEMBER} END")


def _index_texts_with_nul(bind: Connection) -> None:
    contexts = bind.execute(
        text(f"SELECT block_index, context FROM blocks WHERE {_NUL.format('context')}")
    ).all()
    for index, block_context in contexts:
        bind.execute(
            text("INSERT INTO search_context_fts (rowid, context) VALUES (:i, :t)"),
            {"i": index, "t": block_context.replace("\x00", " ")},
        )
    keywords: dict[int, list[str]] = {}
    for index, keyword in bind.execute(
        text(
            "SELECT block_index, keyword FROM block_keywords WHERE block_index IN "
            f"(SELECT block_index FROM block_keywords WHERE {_NUL.format('keyword')})"
        )
    ):
        keywords.setdefault(index, []).append(keyword.replace("\x00", " "))
    for index, held in keywords.items():
        bind.execute(
            text("INSERT INTO search_keyword_fts (rowid, keywords) VALUES (:i, :t)"),
            {"i": index, "t": "\n".join(held)},
        )


def _sqlite_trigram_available(bind: Connection) -> bool:
    try:
        with bind.begin_nested():
            bind.execute(
                text("CREATE VIRTUAL TABLE temp.search_probe USING fts5(x, tokenize='trigram')")
            )
            bind.execute(text("DROP TABLE temp.search_probe"))
    except Exception:  # noqa: BLE001 - no FTS5, or no trigram tokenizer: both mean "no"
        return False
    return True


def _pg_trgm_schema(bind: Connection) -> str | None:
    """The schema holding pg_trgm, after creating it if needed; None when it cannot be had."""
    find = text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    )
    schema = bind.execute(find).scalar()
    if schema is not None:
        return str(schema)
    available = bind.execute(
        text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
    ).scalar()
    if available is None:
        return None
    public = bind.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = 'public'")).scalar()
    try:
        with bind.begin_nested():
            where = " SCHEMA public" if public else ""
            bind.execute(text(f"CREATE EXTENSION IF NOT EXISTS pg_trgm{where}"))
    except Exception as exc:  # noqa: BLE001 - e.g. no right to create extensions
        log.warning("could not create the pg_trgm extension: %s", exc)
        return None
    schema = bind.execute(find).scalar()
    return None if schema is None else str(schema)
