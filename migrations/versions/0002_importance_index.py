"""Index blocks.importance.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

The legacy schema already serves the other lookups: the chain head (``ORDER BY block_index
DESC LIMIT 1``) is a primary-key lookup, children are found through the
``UNIQUE(block_index, ...)`` indexes, and dates through ``idx_blocks_timestamp``. Only the
importance filter and the importance sort (``filter_blocks_by_importance``,
``get_blocks(sort_by='importance')``) read and sort the whole table. Keyword search matches
substrings (``LIKE '%x%'``), which no B-tree index can serve, so it gets none.

Adding an index keeps every row; the downgrade drops it again.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_blocks_importance"), "blocks", ["importance"])


def downgrade() -> None:
    op.drop_index(op.f("ix_blocks_importance"), table_name="blocks")
