"""Index words of one and two characters: FTS5 1-/2-gram tables, GIN indexes on PostgreSQL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

Trigrams (revision 0003) cannot serve a word under three characters, so such words scanned
every block: most Korean words are two syllables. This revision indexes every 1-gram and
2-gram of ``lower(context)`` and of each ``lower(keyword)``; a word of one or two characters
is in a text exactly when its gram is among the text's grams. The exact substring test still
decides (see ``app/search/_keyword_search.py``).

SQLite: two contentless FTS5 tables (``tokenize='ascii'``, ``detail='none'``), one row per
block, filled here from the blocks that are indexed already; blocks waiting in
``search_pending`` are indexed with their trigrams by the layer's drain, which fills both
(see ``app/schema/_short_grams.py`` for the grams and their tokens). They rely on revision
0003's pending table and triggers: without them (no FTS5 trigram tokenizer) nothing is made
and short words keep scanning. Offline (``--sql``) the grams cannot be computed: nothing is
made, and the layer makes and fills the tables when it next opens the database for writing
(or ``app reindex`` does).

PostgreSQL: an IMMUTABLE function ``app_short_grams(text)`` returning the text's
characters and its 2-grams (linear in the text), and GIN
indexes on ``app_short_grams(lower(context))`` and ``app_short_grams(lower(keyword))``,
kept by the server.

GIN's pending list: rows inserted into a GIN index wait in a list that every search reads
whole until it is merged (at 4 MB by default, or by VACUUM). With blocks appended after
the index was made, searches of rare words read megabytes of it and the planner, counting
those pages, preferred reading the table (measured: 45-70 ms instead of under 1 ms at
20,000 blocks). The new indexes, and revision 0003's trigram indexes, get a
``gin_pending_list_limit`` of 512 kB (on ``blocks``) or 128 kB (on ``block_keywords``,
whose pages hold more, shorter rows): inserts merge it sooner, searches read at most that.

The planner needs statistics on the new expressions to tell a common word (read the blocks
in order and stop at the limit) from a rare one (read the index): the new indexes' column
gets a statistics target of 500, and the upgrade runs ``ANALYZE`` on both tables when they
hold rows (autovacuum keeps them fresh afterwards; an empty table is left unanalyzed, see
``POSTGRES_ANALYZE``).

The downgrade drops what this revision made and gives the trigram indexes their default
pending list back.
"""

import logging
from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import text

from app.schema._short_grams import index_all_but_pending

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

_FTS_OPTIONS = "content='', tokenize='ascii', detail='none', columnsize=0"
#: What the upgrade runs (the layer runs them again when one of the objects is missing).
SQLITE = (
    f"CREATE VIRTUAL TABLE search_context_grams USING fts5(context, {_FTS_OPTIONS})",
    f"CREATE VIRTUAL TABLE search_keyword_grams USING fts5(keywords, {_FTS_OPTIONS})",
)
# The characters, then each character joined to the next (the two arrays zipped by unnest).
# (No colon before a word: Alembic's op.execute reads one as a bound parameter.)
# PL/pgSQL rather than SQL: a SQL function that cannot be inlined is planned again in every
# statement that calls it, which is every append's INSERT; PL/pgSQL keeps its plan for the
# session (measured: 45 us a Korean note's grams instead of 95). Never inlined either, so
# the planner charges its cost (100, as for any function) for each row it would compute it
# on: a plan that reads the table to test it is costed as the dear one it is, and where a
# common word's blocks are read in order, the cheap exact test runs first and the function
# only on the rows that test keeps.
POSTGRES_FUNCTION = r"""
CREATE FUNCTION app_short_grams(value text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 100 AS $fn$
DECLARE
    chars text[] := string_to_array(value, NULL);
BEGIN
    RETURN chars || ARRAY(
        SELECT a || b FROM unnest(chars[1 : cardinality(chars) - 1], chars[2 :]) AS pair(a, b));
END
$fn$
"""
# kB of pending list per GIN index (see the module notes): a context's row brings some 150
# grams, whose merges cost appends; keyword rows are short and many, and a page of their
# pending list costs a search about four times as much to read.
_CONTEXT_LIMIT = "gin_pending_list_limit = 512"
_KEYWORD_LIMIT = "gin_pending_list_limit = 128"
POSTGRES_INDEXES = {
    "ix_blocks_context_grams": "CREATE INDEX ix_blocks_context_grams ON blocks "
    f"USING gin (app_short_grams(lower(context))) WITH ({_CONTEXT_LIMIT})",
    "ix_block_keywords_keyword_grams": "CREATE INDEX ix_block_keywords_keyword_grams ON "
    f"block_keywords USING gin (app_short_grams(lower(keyword))) WITH ({_KEYWORD_LIMIT})",
}
#: Revision 0003's trigram indexes (made only where pg_trgm was available).
POSTGRES_TRIGRAM_INDEXES = {
    "ix_blocks_context_trgm": _CONTEXT_LIMIT,
    "ix_block_keywords_keyword_trgm": _KEYWORD_LIMIT,
}
# The planner's estimate for a gram missing from an expression's most common elements is
# half the rarest one's frequency, times the rows: at 1,000,000 blocks and the default
# statistics target an absent word looked like 1,700 blocks, and the planner read blocks in
# order hoping to meet ten (2.4 s). Five times the target (a sample of 150,000 rows, five
# times the elements kept) made it 240 and the lookup reads the index (2 ms).
_STATISTICS = 500
POSTGRES = (
    POSTGRES_FUNCTION,
    *POSTGRES_INDEXES.values(),
    *(
        f"ALTER INDEX {name} ALTER COLUMN 1 SET STATISTICS {_STATISTICS}"
        for name in POSTGRES_INDEXES
    ),
    *(
        f"ALTER INDEX IF EXISTS {name} SET ({limit})"
        for name, limit in POSTGRES_TRIGRAM_INDEXES.items()
    ),
)
#: After the indexes: statistics of their expressions for the planner, per table. Only for
#: a table that holds rows: statistics of an empty table tell the planner it stays empty,
#: and a connection's prepared statements then keep plans that read the whole table (the
#: chain's head by a sequential scan and a sort: appends ran at a quarter of their speed
#: until the next ANALYZE). Autovacuum analyzes a table once rows come.
POSTGRES_ANALYZE = {"blocks": "ANALYZE blocks", "block_keywords": "ANALYZE block_keywords"}
FILLED = "SELECT EXISTS (SELECT 1 FROM {table})"


def upgrade() -> None:
    dialect = context.get_context().dialect.name
    if dialect == "postgresql":
        for statement in POSTGRES:
            op.execute(statement)
        bind = op.get_bind()
        for table, statement in POSTGRES_ANALYZE.items():
            if bind.execute(text(FILLED.format(table=table))).scalar():
                op.execute(statement)
        return
    if dialect != "sqlite":
        return
    if context.is_offline_mode():
        log.warning("the 1-/2-gram tables are made when the layer next opens the database")
        return
    bind = op.get_bind()
    pending = bind.execute(
        text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'search_pending'")
    ).scalar()
    if pending is None:
        log.warning("no keyword index (revision 0003 made none): short words keep scanning")
        return
    for statement in SQLITE:
        op.execute(statement)
    index_all_but_pending(bind)


def downgrade() -> None:
    dialect = context.get_context().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TABLE IF EXISTS search_keyword_grams")
        op.execute("DROP TABLE IF EXISTS search_context_grams")
    elif dialect == "postgresql":
        for name in POSTGRES_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")
        op.execute("DROP FUNCTION IF EXISTS app_short_grams(text)")
        for name in POSTGRES_TRIGRAM_INDEXES:
            op.execute(f"ALTER INDEX IF EXISTS {name} RESET (gin_pending_list_limit)")
