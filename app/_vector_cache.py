"""Exact cosine top-k without reading the chain per query.

Scores are defined once, by :func:`exact_scores`: float64 dot products and norms of the
stored float32 values, each row summed in a fixed (pairwise) order, so a row scores the same
bits whichever path computed it and ties are broken by block index alone.

Each process keeps, per :class:`~app.Database`, the embeddings as float32 unit vectors in
one matrix per dimension (:class:`VectorCache`). A query multiplies the matrix by the unit
query once; float32 rounding moves a score by at most ``(d + 8) * 2**-23`` (d terms of
products of values at most 1), so only rows within twice that of the k-th best can be in
the exact top k, and two of them whose approximate scores are further apart than that are
in the same order exactly. Rows closer than that to each other (or to ``min_similarity``)
are read from the database inside the query's snapshot and scored exactly; the scores of
the others are computed from the records that are loaded anyway. The result is the full
scan's, bit for bit.

The chain is append-only, so the cache is refreshed by reading only the embeddings past the
last block index it holds, inside the snapshot of the query that needs them. A snapshot
older than the cache uses the cache's prefix up to its own last index. A short digest of
each block's hash is kept: when the hash at the snapshot's last index (or at the cache's,
before extending) differs, the file was replaced or rewritten (a restored backup, a copy)
and the cache is rebuilt. An embedding rewritten in place under an unchanged block, or one
inserted below the last index, is not noticed until the cache is rebuilt.

Memory is bounded by the ``vector_cache_limit`` setting: a cache that would grow past it is
dropped and queries stream the embeddings from the database, as before (exact as well).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.engine import Connection

from . import errors
from ._block_sql import index_value
from ._driver import raw_execute
from .models import blocks_table, embeddings_table

if TYPE_CHECKING:
    from .database import Database

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
_CHUNK = 4096
#: The "dimension" of a stored blob that is not a whole number of float32 values.
_UNREADABLE = -1
_NO_HASH = np.uint64(0)


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
    if size == _UNREADABLE:
        return errors.InvalidInputError(
            f"block {index}'s embedding (model {model!r}) is not a whole number of float32 "
            "values; pass model= to compare within another model"
        )
    return errors.InvalidInputError(
        f"query embedding has dimension {dimension} but block {index}'s embedding "
        f"(model {model!r}) has {size}; pass model= to compare within one model"
    )


def _digest(block_hash: str | None) -> np.uint64:
    if block_hash is None:
        return _NO_HASH
    raw = hashlib.blake2b(block_hash.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return np.uint64(int.from_bytes(raw, "little") | 1)  # never 0, which means "no block"


# -- streaming: the path without a cache ------------------------------------------------------


_COLUMNS = (
    embeddings_table.c.block_index,
    embeddings_table.c.embedding,
    embeddings_table.c.embedding_dim,
    embeddings_table.c.embedding_model,
)


def _stream(connection: Connection, query: Select[Any]) -> Any:
    """Rows of ``query`` fetched in chunks (a server-side cursor on PostgreSQL)."""
    return connection.execute(query.execution_options(yield_per=_CHUNK)).partitions()


def stream_top_k(
    connection: Connection, query: Array, k: int, floor: float | None, model: str | None
) -> list[tuple[int, float | None]]:
    """Exact top-k by reading every embedding (of ``model``) in chunks: bounded memory."""
    dimension = query.size
    stmt = select(*_COLUMNS)
    if model is not None:
        stmt = stmt.where(embeddings_table.c.embedding_model == model)
    kept_index = np.empty(0, dtype=np.int64)
    kept_score = np.empty(0, dtype=np.float64)
    for chunk in _stream(connection, stmt):
        indices = np.empty(len(chunk), dtype=np.int64)
        matrix = np.empty((len(chunk), dimension), dtype=np.float32)
        for row, (index, blob, stored_dim, stored_model) in enumerate(chunk):
            vector = decode(bytes(blob), stored_dim)
            size = _UNREADABLE if vector is None else vector.size
            if size != dimension:
                raise mismatch(dimension, index, size, stored_model)
            indices[row] = index
            matrix[row] = vector
        top = best(indices, exact_scores(matrix, query), k, floor)
        kept_index = np.concatenate([kept_index, np.array([i for i, _ in top], np.int64)])
        kept_score = np.concatenate([kept_score, np.array([s for _, s in top], np.float64)])
    return best(kept_index, kept_score, k, None)


# -- the cache --------------------------------------------------------------------------------


@dataclass
class _Segment:
    """The rows of one dimension, in block-index order (capacity grows by a quarter)."""

    dimension: int
    unit: Array  # (capacity, dimension) float32: row / |row|, zero rows stay zero
    index: Array  # (capacity,) int64
    model: Array  # (capacity,) int32: position in VectorCache.models
    usable: Array  # (capacity,) bool: norm > 0
    count: int = 0
    zeros: int = 0  # rows with norm 0 (never returned)

    @classmethod
    def empty(cls, dimension: int, capacity: int) -> _Segment:
        return cls(
            dimension,
            np.zeros((capacity, max(dimension, 0)), dtype=np.float32),
            np.empty(capacity, dtype=np.int64),
            np.empty(capacity, dtype=np.int32),
            np.zeros(capacity, dtype=bool),
        )

    @property
    def nbytes(self) -> int:
        return int(self.unit.nbytes + self.index.nbytes + self.model.nbytes + self.usable.nbytes)


@dataclass(frozen=True)
class _View:
    """An immutable state of the cache that queries read without a lock.

    Arrays are shared with later views: a refresh only writes past ``count`` (or copies
    into new arrays), so the rows a view covers never change under a reader.
    """

    count: int
    index: Array  # every cached row's block index, ascending
    digest: Array  # uint64 digest of the row's block hash (0: no block row)
    dimension: Array  # int32 size of the row's vector (_UNREADABLE for a bad blob)
    model: Array  # int32
    segments: dict[int, tuple[_Segment, int, int]]  # dimension -> (segment, rows, zero rows)
    models: tuple[str | None, ...]

    @property
    def head(self) -> int | None:
        return int(self.index[self.count - 1]) if self.count else None

    def rows_through(self, last: int) -> int:
        return int(np.searchsorted(self.index[: self.count], last, side="right"))


@dataclass
class _Build:
    """The cache's arrays while a refresh writes them (under the cache lock)."""

    count: int = 0
    expected: int = 0  # rows a rebuild will hold, counted before it starts
    index: Array = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    digest: Array = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    dimension: Array = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    model: Array = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    segments: dict[int, _Segment] = field(default_factory=dict)
    models: list[str | None] = field(default_factory=list)
    model_codes: dict[str | None, int] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        own = self.index.nbytes + self.digest.nbytes + self.dimension.nbytes + self.model.nbytes
        return int(own + sum(s.nbytes for s in self.segments.values()))

    def view(self) -> _View:
        return _View(
            self.count,
            self.index,
            self.digest,
            self.dimension,
            self.model,
            {d: (s, s.count, s.zeros) for d, s in self.segments.items()},
            tuple(self.models),
        )


class _OverLimit(Exception):
    pass


class VectorCache:
    """The embeddings of one Database, in this process (see the module notes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._build: _Build | None = None
        self._view: _View | None = None
        # The last index of the snapshot that found the embeddings too big for the limit.
        self._over_limit_at: int | None = None

    @property
    def nbytes(self) -> int:
        build = self._build
        return 0 if build is None else build.nbytes

    @property
    def rows(self) -> int:
        view = self._view
        return 0 if view is None else view.count

    def top_k(
        self,
        connection: Connection,
        query: Array,
        k: int,
        floor: float | None,
        model: str | None,
        wait: float,
    ) -> list[tuple[int, float | None]]:
        """Exact top-k in the connection's snapshot: from the cache when it can hold the
        embeddings, else by streaming them.

        Args:
            wait: longest time to wait for another thread's refresh (then this query streams).

        Returns:
            ``(block index, score)``, best first. A score is None where the order did not
            need it: :func:`complete_scores` computes it from the block's loaded record.
        """
        last, digest = _snapshot_head(connection)
        if last is None:
            return []  # no embedding in this snapshot
        view = self._usable_view(connection, last, digest, wait)
        if view is None:
            return stream_top_k(connection, query, k, floor, model)
        return _search_view(connection, view, view.rows_through(last), query, k, floor, model)

    def _usable_view(
        self, connection: Connection, last: int, digest: np.uint64, wait: float
    ) -> _View | None:
        """A view holding the snapshot's embeddings (refreshed when needed), or None when the
        query must stream (cache off, over its limit, or busy past ``wait``)."""
        if self.limit <= 0:
            return None
        view = self._view
        if view is not None and _holds(view, last, digest):
            return view
        if self._over_limit_at is not None and last >= self._over_limit_at:
            return None
        if not self._lock.acquire(timeout=max(0.0, wait)):
            log.info("the vector cache stayed busy for %.1fs: this query streams", wait)
            return None
        try:
            view = self._view
            if view is not None and _holds(view, last, digest):
                return view
            try:
                self._refresh(connection, last)
            except _OverLimit:
                self._build = self._view = None
                self._over_limit_at = last
                log.info(
                    "the embeddings need more than vector_cache_limit (%d bytes): "
                    "similarity searches stream them",
                    self.limit,
                )
                return None
            self._over_limit_at = None
            return self._view
        finally:
            self._lock.release()

    def _refresh(self, connection: Connection, last: int) -> None:
        """Bring the cache to the snapshot's ``last`` index: extend it when its own last
        block is unchanged in this snapshot, else rebuild it."""
        build, view = self._build, self._view
        start = None
        if build is not None and view is not None and view.head is not None and view.head < last:
            digest = _hash_at(connection, view.head)
            if digest == view.digest[view.count - 1]:
                start = view.head
        index = embeddings_table.c.block_index
        if start is None:
            build = _Build()
            self._build, self._view = build, None
            # Counted first, so the arrays are made at their size (no growth by copies, no
            # spare capacity) and a chain too big for the limit is known after one chunk.
            counted = select(func.count()).where(index <= index_value(last))
            build.expected = int(connection.execute(counted).scalar_one())
        assert build is not None
        stmt = (
            select(*_COLUMNS, blocks_table.c.hash)
            .outerjoin(blocks_table, blocks_table.c.block_index == index)
            .where(index <= index_value(last))
            .order_by(index)
        )
        if start is not None:
            stmt = stmt.where(index > index_value(start))
        for chunk in _stream(connection, stmt):
            _append(build, chunk, self.limit)
        self._view = build.view()


def _snapshot_head(connection: Connection) -> tuple[int | None, np.uint64]:
    row = raw_execute(
        connection,
        "SELECT e.block_index, b.hash FROM "
        "(SELECT block_index FROM block_embeddings ORDER BY block_index DESC LIMIT 1) e "
        "LEFT JOIN blocks b ON b.block_index = e.block_index",
    ).fetchone()
    if row is None:
        return None, _NO_HASH
    return int(row[0]), _digest(row[1])


def _hash_at(connection: Connection, index: int) -> np.uint64:
    stmt = select(blocks_table.c.hash).where(blocks_table.c.block_index == index_value(index))
    return _digest(connection.execute(stmt).scalar())


def _holds(view: _View, last: int, digest: np.uint64) -> bool:
    """True when the view holds the snapshot's embeddings up to ``last`` unchanged."""
    position = view.rows_through(last) - 1
    return position >= 0 and int(view.index[position]) == last and view.digest[position] == digest


def _grown(array: Array, needed: int, spare: int, expected: int) -> Array:
    """``array`` with room for ``needed`` rows: the ``expected`` rows of a rebuild, else
    grown by a quarter (at most ``spare`` rows beyond ``needed``), so appends copy rarely
    and the limit still bounds the memory."""
    if needed <= len(array):
        return array
    if needed <= expected <= needed + spare:
        capacity = expected
    else:
        capacity = needed + min(spare, max(len(array) // 4, 1024))
    bigger = np.empty((capacity, *array.shape[1:]), dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger


def row_bytes(size: int) -> int:
    """Bytes one row of ``size`` floats takes: global arrays plus its segment's."""
    return 24 + 13 + 4 * max(size, 0)


def _append(build: _Build, chunk: Sequence[Any], limit: int) -> None:
    """Decode ``chunk`` (rows after the cache's last one) into the arrays.

    Raises:
        _OverLimit: the rows held would need more than ``limit`` bytes.
    """
    vectors = [decode(bytes(row[1]), row[2]) for row in chunk]
    sizes = [_UNREADABLE if v is None else v.size for v in vectors]
    held = build.count * 24 + sum(row_bytes(size) for size in sizes)
    held += sum(13 * s.count + s.unit[: s.count].nbytes for s in build.segments.values())
    rest = max(0, build.expected - build.count - len(chunk))
    if held + rest * row_bytes(sizes[-1]) > limit:  # the rows still to come, if alike
        raise _OverLimit
    spare = (limit - held) // row_bytes(max(sizes))
    start, need = build.count, build.count + len(chunk)
    build.index = _grown(build.index, need, spare, build.expected)
    build.digest = _grown(build.digest, need, spare, build.expected)
    build.dimension = _grown(build.dimension, need, spare, build.expected)
    build.model = _grown(build.model, need, spare, build.expected)
    for offset, row in enumerate(chunk):
        stored_model = row[3]
        code = build.model_codes.get(stored_model)
        if code is None:
            code = build.model_codes[stored_model] = len(build.models)
            build.models.append(stored_model)
        position = start + offset
        build.index[position] = row[0]
        build.digest[position] = _digest(row[4])
        build.dimension[position] = sizes[offset]
        build.model[position] = code
    by_size: dict[int, list[int]] = {}
    for offset, size in enumerate(sizes):
        by_size.setdefault(size, []).append(offset)
    for size, offsets in by_size.items():
        segment = build.segments.get(size)
        if segment is None:
            segment = build.segments[size] = _Segment.empty(size, 0)
        _fill(
            segment,
            offsets,
            vectors,
            build.index[start:need],
            build.model[start:need],
            spare,
            build.expected - build.count + segment.count,
        )
    build.count = need


def _fill(
    segment: _Segment,
    offsets: list[int],
    vectors: list[Array | None],
    indices: Array,
    models: Array,
    spare: int,
    expected: int,
) -> None:
    begin, end = segment.count, segment.count + len(offsets)
    segment.unit = _grown(segment.unit, end, spare, expected)
    segment.index = _grown(segment.index, end, spare, expected)
    segment.model = _grown(segment.model, end, spare, expected)
    segment.usable = _grown(segment.usable, end, spare, expected)
    segment.index[begin:end] = indices[offsets]
    segment.model[begin:end] = models[offsets]
    if segment.dimension > 0:
        rows = np.stack([vectors[o] for o in offsets]).astype(np.float64)  # type: ignore[misc]
        norms = np.sqrt((rows * rows).sum(axis=1))
        usable = norms > 0
        rows[usable] /= norms[usable, None]
        rows[~usable] = 0.0
        segment.unit[begin:end] = rows.astype(np.float32)
        segment.usable[begin:end] = usable
        segment.zeros += int(len(offsets) - usable.sum())
    else:
        segment.usable[begin:end] = False
        segment.zeros += len(offsets)
    segment.count = end


def _search_view(
    connection: Connection,
    view: _View,
    count: int,
    query: Array,
    k: int,
    floor: float | None,
    model: str | None,
) -> list[tuple[int, float | None]]:
    dimension = query.size
    code: int | None = None
    if model is not None:
        code = view.models.index(model) if model in view.models else -1
    if count == 0:
        return []
    if set(view.segments) != {dimension}:
        # Any embedding of another size in this snapshot (and model) makes the query
        # invalid, as it does for the full scan.
        other = view.dimension[:count] != dimension
        if code is not None:
            other &= view.model[:count] == code
        if other.any():
            at = int(np.argmax(other))
            stored_model = view.models[int(view.model[at])]
            raise mismatch(dimension, int(view.index[at]), int(view.dimension[at]), stored_model)
    found = view.segments.get(dimension)
    if found is None or k == 0:
        return []
    segment, filled, zeros = found
    last = view.index[count - 1]
    rows = (
        filled
        if segment.index[filled - 1] <= last
        else int(np.searchsorted(segment.index[:filled], last, "right"))
    )
    unit_query = query.astype(np.float64) / np.linalg.norm(query.astype(np.float64))
    approx = _products(segment.unit[:rows], unit_query.astype(np.float32))
    if zeros:
        approx[~segment.usable[:rows]] = -np.inf
    if code is not None:
        approx[segment.model[:rows] != code] = -np.inf
    chosen = _candidates(approx, k, floor, (dimension + 8) * 2.0**-23)
    if chosen.size == 0:
        return []
    # The candidates again, in float64: only the rounding of the stored unit vectors to
    # float32 (2**-24 of each value) is left, so far fewer rows need their stored values.
    refined = segment.unit[chosen].astype(np.float64) @ unit_query
    return _rank(connection, refined, segment.index[chosen], query, k, floor, model, 2.0**-22)


#: Below this many rows the product runs on the calling thread: waking BLAS's threads costs
#: more than the work when the machine is busy (milliseconds for a few thousand rows).
_ONE_THREAD_ROWS = 8192


def _products(matrix: Array, vector: Array) -> Array:
    """``matrix @ vector`` in float32 (either way within the error bound used above)."""
    if len(matrix) < _ONE_THREAD_ROWS:
        return np.einsum("ij,j->i", matrix, vector)  # type: ignore[no-any-return]
    product: Array = matrix @ vector
    return product


def _candidates(approx: Array, k: int, floor: float | None, margin: float) -> Array:
    """Rows whose exact score can be among the best ``k`` (at or above ``floor``); rows
    ruled out beforehand score -inf."""
    threshold = -np.inf if floor is None else floor - margin
    if k < approx.size:
        kth = float(np.partition(approx, approx.size - k)[approx.size - k])
        threshold = max(threshold, kth - 2 * margin)
    if threshold == -np.inf:
        chosen: Array = np.flatnonzero(approx > -np.inf)
    else:
        chosen = np.flatnonzero(approx >= threshold)
    return chosen


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
    exact = dict(_exact(connection, indices[uncertain], query, model)) if uncertain.any() else {}
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


def _exact(
    connection: Connection, indices: Array, query: Array, model: str | None
) -> list[tuple[int, float]]:
    """Exact scores of the given blocks' stored embeddings, read in the query's snapshot a
    chunk at a time (many rows tie when many embeddings are equal)."""
    dimension = query.size
    sqlite = connection.dialect.name == "sqlite"
    statement = _CANDIDATES["sqlite" if sqlite else "postgresql"]
    wanted = [int(i) for i in indices]
    scored: list[tuple[int, float]] = []
    for start in range(0, len(wanted), _CHUNK):
        part = wanted[start : start + _CHUNK]
        found_index: list[int] = []
        found_rows: list[Array] = []
        among: Any = json.dumps(part) if sqlite else part
        for index, blob, stored_dim, stored_model in raw_execute(connection, statement, (among,)):
            if model is not None and stored_model != model:
                continue
            vector = decode(bytes(blob), stored_dim)
            size = _UNREADABLE if vector is None else vector.size
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
    loaded record's): those :meth:`VectorCache.top_k` left out are computed here, from the
    same float32 values, so they are the bits the full scan computes."""
    scores = {index: score for index, score in ranked if score is not None}
    missing = [i for i, score in ranked if score is None and embeddings.get(i) is not None]
    if missing:
        rows = np.array([embeddings[i] for i in missing], dtype=np.float32)
        scores.update(zip(missing, exact_scores(rows, query).tolist(), strict=True))
    return scores


# -- one cache per Database per process -------------------------------------------------------

_CACHES: weakref.WeakKeyDictionary[Database, VectorCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(db: Database) -> VectorCache:
    with _CACHES_LOCK:
        cache = _CACHES.get(db)
        if cache is None:
            cache = _CACHES[db] = VectorCache(db.settings.vector_cache_limit)
        return cache


def cache_bytes(db: Database) -> int:
    """Memory the process's vector cache of ``db`` holds (0 when it has none)."""
    cache = _CACHES.get(db)
    return 0 if cache is None else cache.nbytes


def _forget_after_fork() -> None:
    # The parent's caches may be mid-refresh, their locks held by threads that do not exist
    # here: start afresh (a child rebuilds on its first query).
    global _CACHES_LOCK
    _CACHES_LOCK = threading.Lock()
    _CACHES.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
