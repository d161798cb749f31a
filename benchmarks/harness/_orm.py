"""Strategies on SQLAlchemy: a plain ``scoped_session`` with default settings, and this layer."""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import create_engine, select
from sqlalchemy.orm import scoped_session, sessionmaker

from app.blocks import BlockStore
from app.database import Database
from app.models import Block, BlockEmbedding, BlockKeyword, BlockMetadata, BlockTag

from ._target import Target
from ._workload import BenchBlock, legacy_block, now


class PlainScopedSession(Target):
    """A plain ``scoped_session`` on an engine with SQLAlchemy's defaults throughout:
    QueuePool(5 + 10 overflow), pysqlite's own DEFERRED BEGIN before the first write, busy
    timeout 5 s. What a first version usually looks like."""

    def __init__(self, path: str) -> None:
        self.engine = create_engine(f"sqlite:///{path}")
        self.session = scoped_session(sessionmaker(self.engine))

    def thread_done(self) -> None:
        self.session.remove()

    def close(self) -> None:
        self.session.remove()
        self.engine.dispose()


class _PlainSession(PlainScopedSession):
    def unit(self, block: BenchBlock) -> None:
        session = self.session()
        try:
            last = session.execute(
                select(Block.block_index, Block.hash).order_by(Block.block_index.desc()).limit(1)
            ).first()
            data = legacy_block(block, None if last is None else (last[0], last[1]))
            index = data["block_index"]
            row = Block(
                block_index=index,
                timestamp=data["timestamp"],
                context=data["context"],
                importance=data["importance"],
                hash=data["hash"],
                prev_hash=data["prev_hash"],
            )
            row.keywords = [BlockKeyword(block_index=index, keyword=k) for k in data["keywords"]]
            row.tags = [BlockTag(block_index=index, tag=t) for t in data["tags"]]
            row.meta = BlockMetadata(block_index=index, json=json.dumps(data["metadata"]))
            vector = np.array(data["embedding"], dtype=np.float32)
            row.embedding = BlockEmbedding(
                block_index=index,
                embedding=vector.tobytes(),
                embedding_model="default",
                embedding_dim=len(vector),
            )
            session.add(row)
            session.commit()
        except BaseException:
            session.rollback()
            raise


def sqlalchemy_default(path: str) -> Target:
    """SQLAlchemy: plain scoped_session, default settings"""
    return _PlainSession(path)


class _Layer(Target):
    def __init__(self, path: str) -> None:
        self.db = Database(f"sqlite:///{path}")
        self.store = BlockStore(self.db)

    def unit(self, block: BenchBlock) -> None:
        self.store.append(
            block.context,
            keywords=block.keywords,
            tags=block.tags,
            importance=block.importance,
            metadata=block.metadata,
            embedding=block.embedding,
            timestamp=now(),
        )

    def thread_done(self) -> None:
        self.db.session.remove()

    def close(self) -> None:
        self.db.dispose()


def layer_append(path: str) -> Target:
    """this layer: BlockStore.append (group commit)"""
    return _Layer(path)
