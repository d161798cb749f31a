"""The legacy schema, created exactly, or adopted when the legacy class already made it.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

A database created by the legacy ``DatabaseManager`` has these six tables and no
``alembic_version``. Running this revision on it checks every table and column against the
legacy layout and, when they match, only records the revision (creating any of the four
legacy indexes that are missing). A mismatch stops the upgrade with an error naming each
difference; nothing is changed.

``LAYOUT`` below is what this revision means, frozen as revisions are: it is written out
here rather than taken from the application's models, so a column that a later revision
adds to a model changes neither what this revision creates nor what it accepts to adopt.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION
from sqlalchemy.schema import CreateIndex, CreateTable

from app.schema import adopt_legacy_schema

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IMPORTANCE = sa.REAL().with_variant(DOUBLE_PRECISION(), "postgresql")

#: The legacy tables as this revision creates them, parents first.
LAYOUT = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
sa.Table(
    "blocks",
    LAYOUT,
    sa.Column("block_index", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("timestamp", sa.Text(), nullable=False),
    sa.Column("context", sa.Text(), nullable=False),
    sa.Column("importance", _IMPORTANCE, nullable=False),
    sa.Column("hash", sa.Text(), nullable=False),
    sa.Column("prev_hash", sa.Text(), nullable=False),
    sa.Index("idx_blocks_timestamp", "timestamp"),
)
for _table, _column, _index in (
    ("block_keywords", "keyword", "idx_block_keywords"),
    ("block_tags", "tag", "idx_block_tags"),
):
    sa.Table(
        _table,
        LAYOUT,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("block_index", sa.Integer(), sa.ForeignKey("blocks.block_index"), nullable=False),
        sa.Column(_column, sa.Text(), nullable=False),
        sa.UniqueConstraint("block_index", _column),
        sa.Index(_index, _column),
        sqlite_autoincrement=True,
    )
sa.Table(
    "block_metadata",
    LAYOUT,
    sa.Column(
        "block_index",
        sa.Integer(),
        sa.ForeignKey("blocks.block_index"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("metadata", sa.Text(), nullable=False),
)
sa.Table(
    "block_embeddings",
    LAYOUT,
    sa.Column(
        "block_index",
        sa.Integer(),
        sa.ForeignKey("blocks.block_index"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("embedding", sa.LargeBinary(), nullable=False),
    sa.Column("embedding_model", sa.Text(), nullable=True),
    sa.Column("embedding_dim", sa.Integer(), nullable=True),
)
sa.Table(
    "short_term_memories",
    LAYOUT,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("timestamp", sa.Text(), nullable=False),
    sa.Column("content", sa.Text(), nullable=False),
    sa.Column("speaker", sa.Text(), nullable=True),
    sa.Column("metadata", sa.Text(), nullable=True),
    sa.Index("idx_stm_timestamp", "timestamp"),
)


def upgrade() -> None:
    if not context.is_offline_mode() and adopt_legacy_schema(op.get_bind(), LAYOUT):
        return
    for table in LAYOUT.sorted_tables:
        op.execute(CreateTable(table))
        for index in sorted(table.indexes, key=lambda index: index.name or ""):
            op.execute(CreateIndex(index))


def downgrade() -> None:
    for table in reversed(LAYOUT.sorted_tables):
        op.drop_table(table.name)
