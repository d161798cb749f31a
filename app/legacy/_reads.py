"""What the old API's reads do (``ThreadSafeDatabaseManager`` calls them): blocks, pages of
blocks, the chain's head and a block's embedding, the searches (keywords, similarity,
hybrid, dates, importance) as the old class's dicts, and the health check."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlalchemy import inspect, select, text

from app.blocks import BlockStore
from app.chain._block_sql import index_value
from app.chain._validate import check_index, check_timestamp
from app.database import Database
from app.legacy._conn import UseTracker
from app.legacy._values import SORT_FIELDS, block_dict, fallback, is_blank_vector, is_negative, iso
from app.models import LEGACY_TABLES, embeddings_table
from app.search._block_search import time_window

# Messages keep the logger of the manager they are about.
log = logging.getLogger("app.legacy")


def block(users: UseTracker, blocks: BlockStore, block_index: int) -> dict[str, Any] | None:
    """The work of the manager's ``get_block``."""
    if is_negative(block_index):
        return None
    with users:
        record = blocks.get(block_index)
    return None if record is None else block_dict(record)


def page(
    users: UseTracker,
    blocks: BlockStore,
    start_idx: int | None,
    end_idx: int | None,
    limit: int,
    offset: int,
    sort_by: str,
    order: str,
) -> list[dict[str, Any]]:
    """The work of the manager's ``get_blocks``."""
    if end_idx is not None and is_negative(end_idx):
        return []
    if start_idx is not None and is_negative(start_idx):
        start_idx = None
    # Checked here so that a refusal names this method's arguments.
    if start_idx is not None:
        start_idx = check_index(start_idx, "start_idx")
    if end_idx is not None:
        end_idx = check_index(end_idx, "end_idx")
    with users:
        records = blocks.page(
            start_idx,
            end_idx,
            limit=limit,
            offset=offset,
            sort_by=fallback(sort_by, SORT_FIELDS, "block_index"),
            order=fallback(order, ("asc", "desc"), "asc"),
        )
    return [block_dict(r) for r in records]


def last_block_info(users: UseTracker, blocks: BlockStore) -> dict[str, Any] | None:
    """The work of the manager's ``get_last_block_info``."""
    with users:
        head = blocks.head()
    return None if head is None else {"block_index": head.block_index, "hash": head.hash}


def embedding_of(users: UseTracker, database: Database, block_index: int) -> dict[str, Any] | None:
    """The work of the manager's ``get_block_embedding``."""
    index = check_index(block_index)
    stmt = select(
        embeddings_table.c.embedding,
        embeddings_table.c.embedding_model,
        embeddings_table.c.embedding_dim,
    ).where(embeddings_table.c.block_index == index_value(index))
    with users, database.read() as session:
        row = session.execute(stmt).first()
    if row is None:
        return None
    vector = np.frombuffer(row[0], dtype=np.float32)
    if row[2]:
        vector = vector[: row[2]]
    return {"embedding": vector.tolist(), "embedding_model": row[1], "embedding_dim": row[2]}


def by_keyword(
    users: UseTracker, blocks: BlockStore, keywords: Iterable[str], limit: int
) -> list[dict[str, Any]]:
    """The work of the manager's ``search_blocks_by_keyword``."""
    if isinstance(keywords, np.ndarray):
        keywords = keywords.tolist()  # it has no truth value; its items are checked below
    if not keywords:
        return []
    with users:
        return [block_dict(r) for r in blocks.search_keywords(keywords, limit=limit)]


def by_embedding(
    users: UseTracker,
    blocks: BlockStore,
    query_embedding: Any,
    top_k: int,
    min_similarity: float | None,
) -> list[dict[str, Any]]:
    """The work of the manager's ``search_blocks_by_embedding``."""
    if is_blank_vector(query_embedding):
        return []
    with users:
        scored = blocks.similar(query_embedding, top_k, min_similarity=min_similarity)
    results = []
    for block, similarity in scored:
        found = block_dict(block)
        found["similarity"] = similarity
        results.append(found)
    return results


def hybrid(
    users: UseTracker,
    blocks: BlockStore,
    query_text: str | None,
    query_embedding: Any,
    top_k: int,
    keyword_weight: float,
    vector_weight: float,
) -> list[dict[str, Any]]:
    """The work of the manager's ``search_blocks_hybrid``."""
    text = query_text or None
    embedding = None if is_blank_vector(query_embedding) else query_embedding
    if text is None and embedding is None:
        return []
    with users:
        hits = blocks.search(text, embedding, top_k=top_k, weights=(keyword_weight, vector_weight))
    results = []
    for hit in hits:
        found = block_dict(hit.block)
        found.update(
            score=hit.score,
            keyword_rank=hit.keyword_rank,
            vector_rank=hit.vector_rank,
            similarity=hit.similarity,
        )
        results.append(found)
    return results


def by_date_range(
    users: UseTracker, blocks: BlockStore, start_date: Any, end_date: Any, limit: int
) -> list[dict[str, Any]]:
    """The work of the manager's ``search_blocks_by_date_range``."""
    with users:
        low = check_timestamp(iso(start_date), "start_date", legacy=True)
        high = check_timestamp(iso(end_date), "end_date", legacy=True)
        records = time_window(blocks.db, blocks.zone, low, high, limit)
    return [block_dict(r) for r in records]


def since(
    users: UseTracker, blocks: BlockStore, since_timestamp: Any, limit: int
) -> list[dict[str, Any]]:
    """The work of the manager's ``get_blocks_since_time``."""
    if not since_timestamp:
        return []
    with users:
        low = check_timestamp(iso(since_timestamp), "since_timestamp", legacy=True)
        return [block_dict(r) for r in time_window(blocks.db, blocks.zone, low, None, limit)]


def by_importance(
    users: UseTracker, blocks: BlockStore, threshold: float, limit: int, sort_by: str, order: str
) -> list[dict[str, Any]]:
    """The work of the manager's ``filter_blocks_by_importance``."""
    with users:
        records = blocks.by_importance(
            threshold,
            limit=limit,
            sort_by=fallback(sort_by, SORT_FIELDS, "importance"),
            order=fallback(order, ("asc", "desc"), "desc"),
        )
    return [block_dict(r) for r in records]


def health_check(users: UseTracker, database: Database) -> bool:
    """The work of the manager's ``health_check``."""
    if users.closed:
        return False
    try:
        with users, database.read() as session:
            session.execute(text("SELECT 1"))
            present = set(inspect(session.connection()).get_table_names())
            missing = sorted(set(LEGACY_TABLES) - present)
            if missing:
                log.error("health check: table(s) %s missing", ", ".join(missing))
                return False
            if database.settings.is_sqlite:
                verdict = session.execute(text("PRAGMA quick_check")).scalar()
                if verdict != "ok":
                    log.error("health check: quick_check reported %r", verdict)
                    return False
        return True
    except Exception:
        log.exception("health check failed")
        return False
