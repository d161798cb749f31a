"""Exact cosine scores, and the exact top k found from approximate ones.

Scores are defined once, by :func:`exact_scores`: float64 dot products and norms of the
stored float32 values, each row summed in a fixed (pairwise) order, so a row scores the same
bits whichever path computed it and ties are broken by block index alone.

The vector cache (``_vector_cache``) holds the embeddings as float32 unit vectors, and
:func:`unit_top_k` ranks them: it multiplies them by the unit query once; float32 rounding
moves a score by at most ``(d + 8) * 2**-23`` (d terms of products of values at most 1), so
only rows within twice that of the k-th best can be in the exact top k, and two of them
whose approximate scores are further apart than that are in the same order exactly. Rows
closer than that to each other (or to ``min_similarity``) are read from the database inside
the query's snapshot and scored exactly; the scores of the others are computed from the
records that are loaded anyway (:func:`complete_scores`). The result is the full scan's, bit
for bit. Without a cache, :func:`stream_top_k` scores every embedding as it streams by.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Select, select
from sqlalchemy.engine import Connection

from app import errors
from app.chain._block_sql import index_value
from app.engine._driver import raw_execute
from app.models import blocks_table, embeddings_table

Array = np.ndarray[Any, Any]
#: Rows read from the database at a time.
CHUNK = 4096
#: The "dimension" of a stored blob that is not a whole number of float32 values.
UNREADABLE = -1


def exact_scores(rows: Array, query: Array) -> Array:
    """Cosine similarity of each float32 row with the float32 query, in float64.

    Rows whose norm is 0 score NaN (the caller drops them).
    """
    matrix = rows.astype(np.float64)
    vector = query.astype(np.float64)
    dots = (matrix * vector).sum(axis=1)
    denominators = np.sqrt((matrix * matrix).sum(axis=1)) * math.sqrt(
        float((vector * vector).sum())
    )
    scores = np.full(dots.shape, np.nan)
    # Divided only where the denominator is not 0 (cheaper than silencing the warning).
    np.divide(dots, denominators, out=scores, where=denominators > 0)
    return scores


def best(
    indices: Array, scores: Array, k: int, floor: float | None
) -> list[tuple[int, float | None]]:
    """The ``k`` best ``(index, score)``: highest score first, then lowest index; NaN scores
    (zero rows) and scores under ``floor`` dropped."""
    keep = ~np.isnan(scores)
    if floor is not None:
        keep &= scores >= floor
    indices, scores = indices[keep], scores[keep]
    order = np.lexsort((indices, -scores))[:k]
    return [(int(indices[i]), float(scores[i])) for i in order]


def decode(blob: bytes, dimension: int | None) -> Array | None:
    """A stored embedding as float32 values, or None when the blob is not float32 data."""
    if len(blob) % 4:
        return None
    vector = np.frombuffer(blob, dtype=np.float32)
    return vector[:dimension] if dimension else vector


def mismatch(dimension: int, index: int, size: int, model: str | None) -> errors.InvalidInputError:
    if size == UNREADABLE:
        return errors.InvalidInputError(
            f"block {index}'s embedding (model {model!r}) is not a whole number of float32 "
            "values; pass model= to compare within another model"
        )
    return errors.InvalidInputError(
        f"query embedding has dimension {dimension} but block {index}'s embedding "
        f"(model {model!r}) has {size}; pass model= to compare within one model"
    )


# -- streaming: the path without a cache ------------------------------------------------------


EMBEDDING_COLUMNS = (
    embeddings_table.c.block_index,
    embeddings_table.c.embedding,
    embeddings_table.c.embedding_dim,
    embeddings_table.c.embedding_model,
)


def stream_rows(connection: Connection, query: Select[Any]) -> Any:
    """Rows of ``query`` fetched in chunks (a server-side cursor on PostgreSQL)."""
    return connection.execute(query.execution_options(yield_per=CHUNK)).partitions()


def rows_between(connection: Connection, start: int | None, last: int) -> Any:
    """The embeddings of blocks ``start`` (exclusive; None: from the first) to ``last``, in
    block order, with each block's hash, in chunks (what the caches are filled from)."""
    index = embeddings_table.c.block_index
    stmt = (
        select(*EMBEDDING_COLUMNS, blocks_table.c.hash)
        .outerjoin(blocks_table, blocks_table.c.block_index == index)
        .where(index <= index_value(last))
        .order_by(index)
    )
    if start is not None:
        stmt = stmt.where(index > index_value(start))
    return stream_rows(connection, stmt)


def stream_top_k(
    connection: Connection, query: Array, k: int, floor: float | None, model: str | None
) -> list[tuple[int, float | None]]:
    """Exact top-k by reading every embedding (of ``model``) in chunks: bounded memory."""
    dimension = query.size
    stmt = select(*EMBEDDING_COLUMNS)
    if model is not None:
        stmt = stmt.where(embeddings_table.c.embedding_model == model)
    kept_index = np.empty(0, dtype=np.int64)
    kept_score = np.empty(0, dtype=np.float64)
    for chunk in stream_rows(connection, stmt):
        indices = np.empty(len(chunk), dtype=np.int64)
        matrix = np.empty((len(chunk), dimension), dtype=np.float32)
        for row, (index, blob, stored_dim, stored_model) in enumerate(chunk):
            vector = decode(bytes(blob), stored_dim)
            size = UNREADABLE if vector is None else vector.size
            if size != dimension:
                raise mismatch(dimension, index, size, stored_model)
            indices[row] = index
            matrix[row] = vector
        top = best(indices, exact_scores(matrix, query), k, floor)
        kept_index = np.concatenate([kept_index, np.array([i for i, _ in top], np.int64)])
        kept_score = np.concatenate([kept_score, np.array([s for _, s in top], np.float64)])
    return best(kept_index, kept_score, k, None)


# -- the cache's path: its unit vectors ranked ------------------------------------------------


def unit_rows(vectors: Sequence[Array]) -> tuple[Array, Array]:
    """The rows as float32 unit vectors (normalised in float64, so that each value is off by
    at most its float32 rounding), and which rows are usable (norm > 0; the others are
    zero rows, never returned)."""
    rows = np.stack(vectors).astype(np.float64)
    norms = np.sqrt((rows * rows).sum(axis=1))
    usable = norms > 0
    rows[usable] /= norms[usable, None]
    rows[~usable] = 0.0
    return rows.astype(np.float32), usable


def unit_top_k(
    connection: Connection,
    unit: Array,
    indices: Array,
    ruled_out: Array | None,
    query: Array,
    k: int,
    floor: float | None,
    model: str | None,
) -> list[tuple[int, float | None]]:
    """The exact top k of the rows ``unit`` (float32 unit vectors of the blocks ``indices``,
    rows where ``ruled_out`` is true left out), as the module notes explain.

    Returns:
        ``(block index, score)``, best first; a score is None where the order did not need
        it (:func:`complete_scores` computes it).
    """
    dimension = query.size
    unit_query = query.astype(np.float64) / np.linalg.norm(query.astype(np.float64))
    chosen = _candidates(unit, unit_query.astype(np.float32), ruled_out, k, floor, dimension)
    if chosen.size == 0:
        return []
    # The candidates again, in float64: only the rounding of the stored unit vectors to
    # float32 (2**-24 of each value) is left, so far fewer rows need their stored values.
    refined = unit[chosen].astype(np.float64) @ unit_query
    return _rank(connection, refined, indices[chosen], query, k, floor, model, 2.0**-22)


#: Below this many rows the product runs on the calling thread: waking BLAS's threads costs
#: more than the work when the machine is busy (milliseconds for a few thousand rows).
_ONE_THREAD_ROWS = 8192
#: Rows scored at a time. The scratch of a query stays this size however large the store
#: grows: scratch the size of the store, freed after each query, is kept by the allocator
#: of every thread that searched, and a service's memory would grow with its data.
SCORE_ROWS = 65_536


def _products(matrix: Array, vector: Array) -> Array:
    """``matrix @ vector`` in float32 (either way within the error bound used above)."""
    if len(matrix) < _ONE_THREAD_ROWS:
        return np.einsum("ij,j->i", matrix, vector)  # type: ignore[no-any-return]
    product: Array = matrix @ vector
    return product


def _candidates(
    unit: Array, query: Array, ruled_out: Array | None, k: int, floor: float | None, size: int
) -> Array:
    """Rows of ``unit`` whose exact score can be among the best ``k`` (at or above
    ``floor``), ascending, ``ruled_out`` rows left out: those whose approximate score is
    within twice the float32 error of the k-th best approximate score, or above it.

    The rows are scored :data:`SCORE_ROWS` at a time. The k-th best score so far only rises,
    so a row below it (less the margin) when its chunk is scored is below the final one too
    and need not be kept."""
    margin = (size + 8) * 2.0**-23
    base = -np.inf if floor is None else floor - margin
    best = np.empty(0, np.float32)  # the k best approximate scores so far, ruled out = -inf

    def passing(scores: Array) -> Array:
        """Positions of ``scores`` at or above the bound the k best so far set."""
        bound = base if best.size < k else max(base, float(best[0]) - 2 * margin)
        return np.flatnonzero(scores > bound if bound == -np.inf else scores >= bound)

    rows, scores = np.empty(0, np.int64), np.empty(0, np.float32)
    for start in range(0, len(unit), SCORE_ROWS):
        approx = _products(unit[start : start + SCORE_ROWS], query)
        if ruled_out is not None:
            approx[ruled_out[start : start + SCORE_ROWS]] = -np.inf
        best = _top(np.concatenate((best, _top(approx, k))), k)
        kept = passing(approx)
        rows = np.concatenate((rows, kept + start))
        scores = np.concatenate((scores, approx[kept]))
    chosen: Array = rows[passing(scores)]
    return chosen


def _top(values: Array, k: int) -> Array:
    """The ``k`` largest of ``values`` (all of them if fewer), the smallest of them first."""
    if values.size <= k:
        return np.sort(values)
    return np.sort(np.partition(values, values.size - k)[values.size - k :])


def _rank(
    connection: Connection,
    approx: Array,
    indices: Array,
    query: Array,
    k: int,
    floor: float | None,
    model: str | None,
    margin: float,
) -> list[tuple[int, float | None]]:
    """The exact order of the candidates, from approximate scores at most ``margin`` off.

    Two rows whose approximate scores differ by more than ``2 * margin`` are in the same
    order exactly, and a row more than ``margin`` under the floor is under it. Only runs of
    rows closer than that, and rows within ``margin`` of the floor, need their exact scores,
    read from the database; the others keep their place (and get their score later, from
    their records).
    """
    if floor is not None:
        above = approx >= floor - margin
        approx, indices = approx[above], indices[above]
    order = np.lexsort((indices, -approx))
    approx, indices = approx[order], indices[order]
    close = np.diff(approx) >= -2 * margin  # approx is descending
    uncertain = np.zeros(approx.size, dtype=bool)
    uncertain[:-1] |= close
    uncertain[1:] |= close
    if floor is not None:
        uncertain |= approx < floor + margin
    exact = dict(exact_of(connection, indices[uncertain], query, model)) if uncertain.any() else {}
    ranked: list[tuple[int, float | None]] = []
    position = 0
    while position < approx.size and len(ranked) < k:
        end = position + 1
        while end < approx.size and close[end - 1]:
            end += 1
        if not uncertain[position]:
            ranked.append((int(indices[position]), None))
        else:
            run: list[tuple[int, float]] = [
                (i, exact[i])
                for i in map(int, indices[position:end])
                if i in exact and not math.isnan(exact[i]) and (floor is None or exact[i] >= floor)
            ]
            run.sort(key=lambda item: (-item[1], item[0]))
            ranked.extend(run)
        position = end
    return ranked[:k]


_CANDIDATES = {
    "sqlite": "SELECT block_index, embedding, embedding_dim, embedding_model "
    "FROM block_embeddings WHERE block_index IN (SELECT value FROM json_each(?))",
    "postgresql": "SELECT block_index, embedding, embedding_dim, embedding_model "
    "FROM block_embeddings WHERE block_index = ANY(%s)",
}


def exact_of(
    connection: Connection, indices: Array, query: Array, model: str | None
) -> list[tuple[int, float]]:
    """Exact scores of the given blocks' stored embeddings, read in the query's snapshot a
    chunk at a time (many rows tie when many embeddings are equal)."""
    dimension = query.size
    sqlite = connection.dialect.name == "sqlite"
    statement = _CANDIDATES["sqlite" if sqlite else "postgresql"]
    wanted = [int(i) for i in indices]
    scored: list[tuple[int, float]] = []
    for start in range(0, len(wanted), CHUNK):
        part = wanted[start : start + CHUNK]
        found_index: list[int] = []
        found_rows: list[Array] = []
        among: Any = json.dumps(part) if sqlite else part
        for index, blob, stored_dim, stored_model in raw_execute(connection, statement, (among,)):
            if model is not None and stored_model != model:
                continue
            vector = decode(bytes(blob), stored_dim)
            size = UNREADABLE if vector is None else vector.size
            if size != dimension:
                raise mismatch(dimension, index, size, stored_model)
            found_index.append(index)
            found_rows.append(vector)  # type: ignore[arg-type]
        if found_rows:
            scores = exact_scores(np.stack(found_rows), query)
            scored += zip(found_index, scores.tolist(), strict=True)
    return scored


def complete_scores(
    ranked: Sequence[tuple[int, float | None]],
    embeddings: Mapping[int, Sequence[float] | None],
    query: Array,
) -> dict[int, float]:
    """The exact score of every ranked block that has an embedding in ``embeddings`` (its
    loaded record's): those :meth:`~app.search._vector_cache.VectorCache.top_k` left out are
    computed here, from the same float32 values, so they are the bits the full scan
    computes."""
    scores = {index: score for index, score in ranked if score is not None}
    missing = [i for i, score in ranked if score is None and embeddings.get(i) is not None]
    if missing:
        rows = np.array([embeddings[i] for i in missing], dtype=np.float32)
        scores.update(zip(missing, exact_scores(rows, query).tolist(), strict=True))
    return scores
