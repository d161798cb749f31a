"""The block store's searches that are more than a statement of block indices, each in one
read snapshot: keywords (``search_keywords``, and the catching up of their index),
similarity (``similar``), the two fused (``search``) and time windows read as instants."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import tzinfo
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

from app import errors
from app.chain import _time_window
from app.chain._block_arguments import fusion_weights, similarity_arguments
from app.chain._block_queries import text_window_query
from app.chain._block_results import ScoredBlock, SearchHit
from app.chain._block_sql import BlockRecord, load_records
from app.chain._validate import check_limit, check_text, check_words
from app.database import Database
from app.schema import _keyword_index
from app.search import _hybrid, _keyword_search, _vector_cache, _vector_scores


def keyword_search(db: Database, keywords: Iterable[str], limit: Any) -> list[BlockRecord]:
    """:meth:`~app.blocks.BlockStore.search_keywords`."""
    words = [w for w in check_words(keywords, "keywords") if w]
    count = check_limit(limit)
    if not words or not count:
        return []
    with db.reading() as connection:
        found, plan = _keyword_search.matching(connection, words, count)
        records = load_records(connection, found)
    if plan.pending >= _keyword_index.DRAIN_AT:
        _keyword_index.catch_up_quietly(db)
    return records


def refresh_keyword_index(db: Database) -> int:
    """:meth:`~app.blocks.BlockStore.refresh_search_index`."""
    with db.reading() as connection:
        ready = connection.dialect.name == "sqlite" and _keyword_index.sqlite_index_ready(
            connection
        )
    return _keyword_index.catch_up(db, wait=True) if ready else 0


def similar(
    db: Database, query_embedding: Any, top_k: Any, min_similarity: Any, model: Any
) -> list[ScoredBlock]:
    """:meth:`~app.blocks.BlockStore.similar`."""
    query, k, floor, wanted = similarity_arguments(query_embedding, top_k, min_similarity, model)
    with db.reading() as connection:
        ranked = vector_top_k(db, connection, query, k, floor, wanted)
        records = {r.block_index: r for r in load_records(connection, [i for i, _ in ranked])}
    embeddings = {i: r.embedding for i, r in records.items()}
    scores = _vector_scores.complete_scores(ranked, embeddings, query)
    return [ScoredBlock(records[i], scores[i]) for i, _ in ranked if i in scores]


def hybrid(
    db: Database,
    text: str | None,
    embedding: Any,
    top_k: Any,
    weights: Any,
    depth: Any,
    model: Any,
) -> list[SearchHit]:
    """:meth:`~app.blocks.BlockStore.search`."""
    k = check_limit(top_k, "top_k")
    keyword_weight, vector_weight = fusion_weights(weights)
    words = _hybrid.words(check_text(text, "text")) if text is not None else []
    vector = None
    if embedding is not None:
        vector, _, _, model = similarity_arguments(embedding, k, None, model)
    if text is None and vector is None:
        raise errors.InvalidInputError("search needs text, an embedding, or both")
    depth = max(_hybrid.DEPTH, k) if depth is None else check_limit(depth, "depth")
    keyword_ranks: list[int] = []
    vector_ranked: list[tuple[int, float | None]] = []
    plan = None
    with db.reading() as connection:
        if words and keyword_weight > 0:
            lists, plan = _keyword_search.per_word(connection, words, depth)
            if len(words) == 1:
                keyword_ranks = lists[0]  # newest first, as ranked below
            else:
                found = sorted({index for matches in lists for index in matches})
                contained = _keyword_search.words_contained(connection, words, found)
                keyword_ranks = _hybrid.by_words_contained(contained, depth)
        if vector is not None and vector_weight > 0:
            vector_ranked = vector_top_k(db, connection, vector, depth, None, model)
        vector_ranks = [index for index, _ in vector_ranked]
        fused = _hybrid.fuse(keyword_ranks, vector_ranks, keyword_weight, vector_weight)[:k]
        records = {r.block_index: r for r in load_records(connection, [hit[0] for hit in fused])}
    if plan is not None and plan.pending >= _keyword_index.DRAIN_AT:
        _keyword_index.catch_up_quietly(db)
    similarity: dict[int, float] = {}
    if vector is not None:
        hits = [(i, s) for i, s in vector_ranked if i in records]
        embeddings = {i: records[i].embedding for i, _ in hits}
        similarity = _vector_scores.complete_scores(hits, embeddings, vector)
    return [
        SearchHit(records[index], score, keyword_rank, vector_rank, similarity.get(index))
        for index, score, keyword_rank, vector_rank in fused
        if index in records
    ]


def vector_top_k(
    db: Database,
    connection: Connection,
    query: np.ndarray[Any, Any],
    k: int,
    floor: float | None,
    model: str | None,
) -> list[tuple[int, float | None]]:
    """The ``k`` nearest blocks in the connection's snapshot (see ``_vector_cache``)."""
    cache = _vector_cache.cache_for(db)
    return cache.top_k(connection, query, k, floor, model, db.settings.retry_deadline)


def time_window(
    db: Database, zone: tzinfo | None, low: str, high: str | None, limit: Any
) -> list[BlockRecord]:
    """:meth:`~app.blocks.BlockStore.date_range`'s blocks, with checked bounds: through the
    timestamp index, or compared as text when a bound is not ISO-8601 (the facade passes any
    text, as the old class took it)."""
    count = check_limit(limit)
    low_end = _time_window.bound(low, zone)
    high_end = None if high is None else _time_window.bound(high, zone)
    with db.reading() as connection:
        if low_end is not None and (high is None or high_end is not None):
            found = _time_window.window(connection, low_end, high_end, count, zone)
        else:
            query = text_window_query(low, high, count)
            found = list(connection.execute(query).scalars())
        return load_records(connection, found)
