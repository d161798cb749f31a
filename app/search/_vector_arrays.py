"""The vector cache's arrays: each dimension's unit rows, the immutable views that queries
read, and the streamed rows decoded into them within the cache's limit (``_vector_cache``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.search import _vector_scores
from app.search._quantized import QuantRows
from app.search._vector_scores import Array

NO_HASH = np.uint64(0)


def hash_digest(block_hash: str | None) -> np.uint64:
    if block_hash is None:
        return NO_HASH
    raw = hashlib.blake2b(block_hash.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return np.uint64(int.from_bytes(raw, "little") | 1)  # never 0, which means "no block"


@dataclass
class Segment:
    """The rows of one dimension, in block-index order (capacity grows by a quarter)."""

    dimension: int
    unit: Array  # (capacity, dimension) float32: row / |row|, zero rows stay zero
    index: Array  # (capacity,) int64
    model: Array  # (capacity,) int32: position in VectorCache.models
    usable: Array  # (capacity,) bool: norm > 0
    count: int = 0
    zeros: int = 0  # rows with norm 0 (never returned)

    @classmethod
    def empty(cls, dimension: int, capacity: int) -> Segment:
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
class View:
    """An immutable state of the cache that queries read without a lock.

    Arrays are shared with later views: a refresh only writes past ``count`` (or copies
    into new arrays), so the rows a view covers never change under a reader.
    """

    count: int
    index: Array  # every cached row's block index, ascending
    digest: Array  # uint64 digest of the row's block hash (0: no block row)
    dimension: Array  # int32 size of the row's vector (UNREADABLE for a bad blob)
    model: Array  # int32
    segments: dict[int, tuple[Segment, int, int]]  # dimension -> (segment, rows, zero rows)
    models: tuple[str | None, ...]
    # The newest change note applied, the blocks changed since the arrays were built (left
    # out of them, ascending), and those blocks' current embeddings (see _vector_changes).
    seen: int = 0
    log_name: int = 0  # which change log ``seen`` counts in (see _vector_changes)
    excluded: Array = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    overlay: View | None = None
    # The compact tier's rows (``_vector_quant``): then ``segments`` is empty and the
    # arrays above are the copy's columns.
    quant: QuantRows | None = None

    @property
    def head(self) -> int | None:
        return int(self.index[self.count - 1]) if self.count else None

    def rows_through(self, last: int) -> int:
        return int(np.searchsorted(self.index[: self.count], last, side="right"))


@dataclass
class Build:
    """The cache's arrays while a refresh writes them (under the cache lock)."""

    count: int = 0
    expected: int = 0  # rows a rebuild will hold, counted before it starts
    index: Array = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    digest: Array = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    dimension: Array = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    model: Array = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    segments: dict[int, Segment] = field(default_factory=dict)
    models: list[str | None] = field(default_factory=list)
    model_codes: dict[str | None, int] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        own = self.index.nbytes + self.digest.nbytes + self.dimension.nbytes + self.model.nbytes
        return int(own + sum(s.nbytes for s in self.segments.values()))

    def view(self) -> View:
        return View(
            self.count,
            self.index,
            self.digest,
            self.dimension,
            self.model,
            {d: (s, s.count, s.zeros) for d, s in self.segments.items()},
            tuple(self.models),
        )


class OverLimit(Exception):
    pass


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


def append_rows(build: Build, chunk: Sequence[Any], limit: int) -> None:
    """Decode ``chunk`` (rows after the cache's last one) into the arrays.

    Raises:
        OverLimit: the rows held would need more than ``limit`` bytes.
    """
    vectors = [_vector_scores.decode(bytes(row[1]), row[2]) for row in chunk]
    sizes = [_vector_scores.UNREADABLE if v is None else v.size for v in vectors]
    held = build.count * 24 + sum(row_bytes(size) for size in sizes)
    held += sum(13 * s.count + s.unit[: s.count].nbytes for s in build.segments.values())
    rest = max(0, build.expected - build.count - len(chunk))
    if held + rest * row_bytes(sizes[-1]) > limit:  # the rows still to come, if alike
        raise OverLimit
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
        build.digest[position] = hash_digest(row[4])
        build.dimension[position] = sizes[offset]
        build.model[position] = code
    by_size: dict[int, list[int]] = {}
    for offset, size in enumerate(sizes):
        by_size.setdefault(size, []).append(offset)
    for size, offsets in by_size.items():
        segment = build.segments.get(size)
        if segment is None:
            segment = build.segments[size] = Segment.empty(size, 0)
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
    segment: Segment,
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
        unit, usable = _vector_scores.unit_rows([vectors[o] for o in offsets])  # type: ignore[misc]
        segment.unit[begin:end] = unit
        segment.usable[begin:end] = usable
        segment.zeros += int(len(offsets) - usable.sum())
    else:
        segment.usable[begin:end] = False
        segment.zeros += len(offsets)
    segment.count = end
