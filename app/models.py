"""ORM models of the block store, with exactly the legacy table and column names and types.

A database written by the legacy ``DatabaseManager`` is readable as is. The only
differences from the legacy DDL are constraint names (from the naming convention below, so
migrations can refer to them) and ``DOUBLE PRECISION`` for ``importance`` on PostgreSQL,
whose ``REAL`` is 4 bytes and would change the value that the block hash covers.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    REAL,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: 8-byte float everywhere: SQLite REAL is already 8 bytes, PostgreSQL REAL is not.
Importance: TypeEngine[float] = REAL().with_variant(DOUBLE_PRECISION(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Block(Base):
    """One block of the hash chain."""

    __tablename__ = "blocks"
    __table_args__ = (
        Index("idx_blocks_timestamp", "timestamp"),
        # Added by revision 0002: importance filters and sorts without a full scan.
        Index("ix_blocks_importance", "importance"),
    )

    block_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    timestamp: Mapped[str] = mapped_column(Text, nullable=False)
    context: Mapped[str] = mapped_column(Text, nullable=False)
    importance: Mapped[float] = mapped_column(Importance, nullable=False)
    hash: Mapped[str] = mapped_column(Text, nullable=False)
    prev_hash: Mapped[str] = mapped_column(Text, nullable=False)

    keywords: Mapped[list[BlockKeyword]] = relationship(
        lazy="selectin", order_by="BlockKeyword.keyword", passive_deletes=True
    )
    tags: Mapped[list[BlockTag]] = relationship(
        lazy="selectin", order_by="BlockTag.tag", passive_deletes=True
    )
    meta: Mapped[BlockMetadata | None] = relationship(lazy="selectin", passive_deletes=True)
    embedding: Mapped[BlockEmbedding | None] = relationship(lazy="selectin", passive_deletes=True)

    def __repr__(self) -> str:
        return f"Block(block_index={self.block_index!r}, hash={self.hash[:12]!r}...)"


class BlockKeyword(Base):
    __tablename__ = "block_keywords"
    __table_args__ = (
        UniqueConstraint("block_index", "keyword"),
        Index("idx_block_keywords", "keyword"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    block_index: Mapped[int] = mapped_column(ForeignKey("blocks.block_index"), nullable=False)
    keyword: Mapped[str] = mapped_column(Text, nullable=False)


class BlockTag(Base):
    __tablename__ = "block_tags"
    __table_args__ = (
        UniqueConstraint("block_index", "tag"),
        Index("idx_block_tags", "tag"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    block_index: Mapped[int] = mapped_column(ForeignKey("blocks.block_index"), nullable=False)
    tag: Mapped[str] = mapped_column(Text, nullable=False)


class BlockMetadata(Base):
    __tablename__ = "block_metadata"

    block_index: Mapped[int] = mapped_column(
        ForeignKey("blocks.block_index"), primary_key=True, autoincrement=False
    )
    #: JSON text; the column is called ``metadata``, a name the ORM reserves for itself.
    json: Mapped[str] = mapped_column("metadata", Text, nullable=False)


class BlockEmbedding(Base):
    __tablename__ = "block_embeddings"

    block_index: Mapped[int] = mapped_column(
        ForeignKey("blocks.block_index"), primary_key=True, autoincrement=False
    )
    #: float32 values, native byte order, as the legacy class wrote them.
    embedding: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    embedding_model: Mapped[str | None] = mapped_column(Text)
    embedding_dim: Mapped[int | None] = mapped_column(Integer)


class ShortTermMemory(Base):
    __tablename__ = "short_term_memories"
    __table_args__ = (Index("idx_stm_timestamp", "timestamp"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    timestamp: Mapped[str] = mapped_column(Text, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    speaker: Mapped[str | None] = mapped_column(Text)
    #: JSON text or NULL (column ``metadata``).
    json: Mapped[str | None] = mapped_column("metadata", Text)


blocks_table = cast(Table, Block.__table__)
keywords_table = cast(Table, BlockKeyword.__table__)
tags_table = cast(Table, BlockTag.__table__)
metadata_table = cast(Table, BlockMetadata.__table__)
embeddings_table = cast(Table, BlockEmbedding.__table__)
short_term_table = cast(Table, ShortTermMemory.__table__)

#: The legacy tables, parents first.
LEGACY_TABLES = (
    "blocks",
    "block_keywords",
    "block_tags",
    "block_metadata",
    "block_embeddings",
    "short_term_memories",
)
