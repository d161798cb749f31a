"""Index blocks by the instant their timestamp names.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

Timestamps are text as callers wrote them: ``datetime.isoformat()`` without a UTC offset
(the old class's default, in the writer's local time), with one (``+09:00``, ``Z``), or
anything else the old class accepted. Compared as text they sort in time order only when
they share one zone and one format, so a window in another zone found nothing. Windows now
compare instants (``app/_time_window.py``), and this index keys each block by what the
database reads in its timestamp: for a text with an offset, its instant; for one without,
its wall-clock time taken as if it were UTC (the layer places the window there in the
configured zone); NULL for any other text (the layer then reads the text itself).

The index holds the block's index after the key, so that the newest-first order (key, then
index) comes from it as it is, without computing a key per row.

SQLite: an index on ``julianday(timestamp)`` for texts that start with a valid date (a
``now`` in a timestamp must not reach julianday, which would refuse it in an index).
PostgreSQL: the same key in Unix seconds, from an immutable SQL function that only casts
texts it has checked (a cast that fails would make an insert fail). Being plain SQL, the
planner inlines it, which keeps a key to a few microseconds.

The downgrade drops the index (and the function).
"""

from collections.abc import Sequence

from alembic import context, op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_KEY = (
    "(CASE WHEN timestamp GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' "
    "AND date(julianday(substr(timestamp, 1, 10))) = substr(timestamp, 1, 10) "
    "THEN julianday(timestamp) END)"
)
POSTGRES_FUNCTION = r"""
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
POSTGRES_KEY = "app_timestamp_key(timestamp)"
#: What the upgrade runs (the layer runs them again when a migration drops the index).
SQLITE = (f"CREATE INDEX ix_blocks_instant ON blocks ({SQLITE_KEY}, block_index)",)
POSTGRES = (
    POSTGRES_FUNCTION,
    f"CREATE INDEX ix_blocks_instant ON blocks ({POSTGRES_KEY}, block_index)",
)


def upgrade() -> None:
    postgres = context.get_context().dialect.name == "postgresql"
    for statement in POSTGRES if postgres else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_blocks_instant")
    if context.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS app_timestamp_key(text)")
