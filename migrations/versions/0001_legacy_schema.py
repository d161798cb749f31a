"""The legacy schema, created exactly, or adopted when the legacy class already made it.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

A database created by the legacy ``DatabaseManager`` has these six tables and no
``alembic_version``. Running this revision on it checks every table and column against the
legacy layout and, when they match, only records the revision (creating any of the four
legacy indexes that are missing). A mismatch stops the upgrade with an error naming each
difference; nothing is changed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

from app.schema import adopt_legacy_schema

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IMPORTANCE = sa.REAL().with_variant(DOUBLE_PRECISION(), "postgresql")


def upgrade() -> None:
    if not context_is_offline() and adopt_legacy_schema(op.get_bind()):
        return
    op.create_table(
        "blocks",
        sa.Column("block_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("timestamp", sa.Text(), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("importance", _IMPORTANCE, nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("block_index", name=op.f("pk_blocks")),
    )
    op.create_index("idx_blocks_timestamp", "blocks", ["timestamp"])
    for table, column, index in (
        ("block_keywords", "keyword", "idx_block_keywords"),
        ("block_tags", "tag", "idx_block_tags"),
    ):
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("block_index", sa.Integer(), nullable=False),
            sa.Column(column, sa.Text(), nullable=False),
            sa.ForeignKeyConstraint(
                ["block_index"],
                ["blocks.block_index"],
                name=op.f(f"fk_{table}_block_index_blocks"),
            ),
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
            sa.UniqueConstraint(
                "block_index", column, name=op.f(f"uq_{table}_block_index_{column}")
            ),
            sqlite_autoincrement=True,
        )
        op.create_index(index, table, [column])
    op.create_table(
        "block_metadata",
        sa.Column("block_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["block_index"],
            ["blocks.block_index"],
            name=op.f("fk_block_metadata_block_index_blocks"),
        ),
        sa.PrimaryKeyConstraint("block_index", name=op.f("pk_block_metadata")),
    )
    op.create_table(
        "block_embeddings",
        sa.Column("block_index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("embedding_model", sa.Text(), nullable=True),
        sa.Column("embedding_dim", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["block_index"],
            ["blocks.block_index"],
            name=op.f("fk_block_embeddings_block_index_blocks"),
        ),
        sa.PrimaryKeyConstraint("block_index", name=op.f("pk_block_embeddings")),
    )
    op.create_table(
        "short_term_memories",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("speaker", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_short_term_memories")),
    )
    op.create_index("idx_stm_timestamp", "short_term_memories", ["timestamp"])


def downgrade() -> None:
    for table in (
        "short_term_memories",
        "block_embeddings",
        "block_metadata",
        "block_tags",
        "block_keywords",
        "blocks",
    ):
        op.drop_table(table)


def context_is_offline() -> bool:
    from alembic import context

    return context.is_offline_mode()
