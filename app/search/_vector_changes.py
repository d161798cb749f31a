"""Embeddings changed in place, seen by the vector cache (revision 0005).

The cache (``_vector_cache``) reads only the embeddings appended after the ones it holds.
Triggers on ``block_embeddings`` note every other change (an embedding rewritten in place,
deleted, or inserted below the last one) in ``embedding_changes``, numbered in commit order,
whoever made it: the layer, raw SQL, another process. Each query reads the newest number in
its snapshot; a cache behind it reads the notes after its own number.

The blocks changed since the cache's arrays were built are its *overlay*: their rows in the
arrays are left out of every search, and their current embeddings, read when the notes were
applied, are searched apart and the two rankings merged by exact score. Once the overlay
holds more than :func:`overlay_limit` blocks, the cache is rebuilt instead (the overlay is
read again at each refresh, the arrays only at a rebuild).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

from app.engine._driver import raw_execute
from app.search import _vector_scores
from app.search._vector_scores import Array

#: Overlays of up to this many blocks (or a twentieth of the cache, if more) are kept.
_OVERLAY_ROWS = 20_000


def log_head(connection: Connection) -> tuple[int, int] | None:
    """The log's name (the note numbered 0) and its newest note in the connection's
    snapshot (0 for none), or None when the database has no change log (a schema before
    revision 0005)."""
    if connection.dialect.name == "sqlite":
        present = raw_execute(
            connection,
            "SELECT count(*) FROM sqlite_master "
            "WHERE type = 'table' AND name = 'embedding_changes'",
        ).fetchone()[0]
    else:
        present = raw_execute(
            connection, "SELECT to_regclass('embedding_changes') IS NOT NULL"
        ).fetchone()[0]
    if not present:
        return None
    name, newest = raw_execute(
        connection,
        "SELECT (SELECT block_index FROM embedding_changes WHERE seq = 0), "
        "(SELECT max(seq) FROM embedding_changes)",
    ).fetchone()
    return int(name or 0), int(newest or 0)


def changed_since(connection: Connection, seen: int) -> set[int] | None:
    """The blocks whose embedding changed after note ``seen``, or None when notes after it
    are gone (the log was pruned past it: the caller rebuilds)."""
    if seen > 0:
        oldest = raw_execute(
            connection, "SELECT min(seq) FROM embedding_changes WHERE seq > 0"
        ).fetchone()[0]
        if oldest is not None and int(oldest) > seen + 1:
            return None
    marker = "?" if connection.dialect.name == "sqlite" else "%s"
    rows = raw_execute(
        connection,
        f"SELECT DISTINCT block_index FROM embedding_changes WHERE seq > {marker}",
        (max(seen, 0),),
    )
    return {int(row[0]) for row in rows}


def overlay_limit(cached_rows: int) -> int:
    return max(_OVERLAY_ROWS, cached_rows // 20)


def rows_of(connection: Connection, blocks: Array, through: int) -> list[Any]:
    """The current embedding rows (with their block's hash) of ``blocks`` up to index
    ``through``, in index order, as the cache's refresh reads rows."""
    sqlite = connection.dialect.name == "sqlite"
    statement = (
        "SELECT e.block_index, e.embedding, e.embedding_dim, e.embedding_model, b.hash "
        "FROM block_embeddings e LEFT JOIN blocks b ON b.block_index = e.block_index "
        + (
            "WHERE e.block_index IN (SELECT value FROM json_each(?)) AND e.block_index <= ? "
            if sqlite
            else "WHERE e.block_index = ANY(%s) AND e.block_index <= %s "
        )
        + "ORDER BY e.block_index"
    )
    found: list[Any] = []
    wanted = [int(i) for i in blocks]
    for start in range(0, len(wanted), _vector_scores.CHUNK):
        part = wanted[start : start + _vector_scores.CHUNK]
        among: Any = json.dumps(part) if sqlite else part
        found += raw_execute(connection, statement, (among, through)).fetchall()
    return found


def left_out(indices: Array, excluded: Array) -> Array | None:
    """A mask of the positions of ``indices`` (ascending) that are in ``excluded``
    (ascending), or None when there are none."""
    if excluded.size == 0 or indices.size == 0:
        return None
    positions = np.searchsorted(indices, excluded)
    inside = positions < indices.size
    positions = positions[inside]
    positions = positions[indices[positions] == excluded[inside]]
    if positions.size == 0:
        return None
    mask = np.zeros(indices.size, dtype=bool)
    mask[positions] = True
    return mask


def merge(
    connection: Connection,
    rankings: list[list[tuple[int, float | None]]],
    query: Array,
    k: int,
    model: str | None,
) -> list[tuple[int, float | None]]:
    """The best ``k`` of several exact rankings of disjoint blocks, by exact score (those
    a ranking left without one are read and scored in the query's snapshot)."""
    entries = [entry for ranking in rankings for entry in ranking]
    missing = np.array([i for i, score in entries if score is None], dtype=np.int64)
    exact = dict(_vector_scores.exact_of(connection, missing, query, model)) if missing.size else {}
    scored = [(i, exact.get(i) if score is None else score) for i, score in entries]
    known = [(i, s) for i, s in scored if s is not None]
    known.sort(key=lambda item: (-item[1], item[0]))
    return [(i, s) for i, s in known[:k]]
