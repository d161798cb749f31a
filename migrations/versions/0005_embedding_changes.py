"""Note every embedding rewritten in place, so that similarity caches see it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Each process keeps a database's embeddings in memory (``app/_vector_cache.py``) and reads
only the rows appended after the ones it holds. An embedding changed in place (a new model's
vectors written over the old ones, by the layer, raw SQL or another process), deleted, or
added below the last one held would go unseen. So triggers on ``block_embeddings`` note the
block of every such change in ``embedding_changes``, in commit order; a cache reads the
notes after the last one it applied, in the snapshot of the query that needs them.

An embedding inserted above every stored one (an append, the usual case) is not noted: the
caches read those anyway. Hence a BEFORE INSERT trigger, which sees the table as it was
before the row (so a REPLACE of an existing row is noted too). On PostgreSQL the note takes
the layer's transaction-level write lock first, so that notes are numbered in commit order
even when writers outside the layer change embeddings.

The note numbered 0 names the log (its ``block_index`` is a random number): a log dropped
and made again (this revision's downgrade and upgrade) starts its numbers afresh, and a
cache that finds another name there rebuilds instead of taking the new numbers for old
ones. Pruning keeps it.

The downgrade drops the triggers and the table.
"""

from collections.abc import Sequence

from alembic import context, op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The layer's PostgreSQL write lock (app.engine._postgres_hooks.PG_WRITE_LOCK_KEY).
_WRITE_LOCK = -7101321502734893906

SQLITE = (
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
POSTGRES = (
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


def upgrade() -> None:
    postgres = context.get_context().dialect.name == "postgresql"
    for statement in POSTGRES if postgres else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if context.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS embedding_changes_insert ON block_embeddings")
        op.execute("DROP TRIGGER IF EXISTS embedding_changes_change ON block_embeddings")
        op.execute("DROP FUNCTION IF EXISTS app_note_embedding_insert()")
        op.execute("DROP FUNCTION IF EXISTS app_note_embedding_change()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS embedding_changes_{name}")
    op.execute("DROP TABLE IF EXISTS embedding_changes")
