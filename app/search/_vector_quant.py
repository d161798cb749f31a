"""The vector cache's compact tier: the int8 copy of ``_quantized`` kept in the file or map of
``_quantized_file``, brought to a query's snapshot and searched exactly.

The cache (``_vector_cache``) keeps small stores as float32 unit vectors and moves to this
tier once those would pass :data:`QUANTIZE_ABOVE` bytes: then each row costs ``D + 32``
bytes instead of ``4 * D + 37``, a SQLite file's copy is shared by its processes through a
file beside it (a new process maps it instead of reading every embedding), and a query
reads from the database only the stored embeddings of its candidates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Connection

from app.chain._block_sql import index_value
from app.models import blocks_table, embeddings_table
from app.search import _quantized, _vector_scores
from app.search._quantized_file import Corrupt, QuantStore, open_locked, unlock
from app.search._vector_arrays import OverLimit, View, hash_digest
from app.search._vector_scores import Array

log = logging.getLogger(__name__)

#: The float32 cache's size (by the snapshot's last index) past which the compact tier
#: serves a database: below it the float32 rows are small and need no file.
QUANTIZE_ABOVE = 64 * 1024 * 1024
#: Room a new copy leaves past the rows it starts with (the file is sparse, the map lazy).
_ROOM = 1.25

Mode = Literal["rebuilt", "extended", "opened"]

#: Copies this process built from every row (a file it mapped instead is not counted).
builds = 0


class Busy(Exception):
    """Another process held the copy's file lock past the query's wait: it streams."""


def view_of(store: QuantStore) -> View:
    rows = store.rows()
    return View(
        rows.count, rows.index, rows.digest, rows.sizes, rows.model, {}, rows.models, quant=rows
    )


def bring(
    current: QuantStore | None,
    connection: Connection,
    last: int,
    digest: np.uint64,
    path: str | None,
    limit: int,
    log_state: tuple[int, int] | None,
    wait: float,
    force: bool = False,
) -> tuple[QuantStore, Mode]:
    """The compact copy holding the snapshot's rows through ``last``: ``current`` (or the
    file's, which other processes may have extended) extended, or built again when it is
    not this database's (another chain at its last row, another change log) or ``force``.

    Returns:
        The store, and how its rows relate to the snapshot's change notes: "rebuilt" (all
        read in this snapshot), "extended" (``current``'s, whose notes the caller knows),
        "opened" (the file's: current as of its ``base_seq``).

    Raises:
        OverLimit: the copy would need more than ``limit`` bytes.
        Busy: another process held the file's lock for ``wait`` seconds.
    """
    name = 0 if log_state is None else log_state[0]
    if path is None:
        if current is not None and not force and _matches(connection, current, last, digest, name):
            return _extend(connection, current, last, limit), "extended"
        return _build(connection, None, last, limit, log_state), "rebuilt"
    fd = open_locked(path, wait)
    if fd is None:
        raise Busy
    try:
        store, mode = None, "opened"
        if not force and current is not None and current.inode == _inode(fd):
            try:
                current.reload()
                store, mode = current, "extended"
            except Corrupt:
                store = None
        if store is None and not force:
            try:
                store = QuantStore.load(fd)
            except Corrupt as exc:
                log.info("the vector copy at %s is not usable (%s): building it again", path, exc)
        if store is not None and not _matches(connection, store, last, digest, name):
            store = None
        if store is None:
            try:
                return _build(connection, path, last, limit, log_state), "rebuilt"
            except BaseException:
                if os.fstat(fd).st_size == 0:
                    os.unlink(path)  # the empty file open_locked made: leave nothing behind
                raise
        if store.nbytes > limit:
            raise OverLimit  # another process's limit let the file grow past this one's
        return _extend(connection, store, last, limit, path), mode  # type: ignore[return-value]
    finally:
        unlock(fd)


def _inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def _matches(
    connection: Connection, store: QuantStore, last: int, digest: np.uint64, name: int
) -> bool:
    """True when ``store`` holds this database's rows: its last row's block has the same
    hash in the snapshot (or, if the snapshot ends before it, its row at ``last`` has the
    snapshot's last hash), and its change notes are the same log's."""
    count = store.count
    if count == 0 or store.log_name != name:
        return False
    index, digests = store.columns[0], store.columns[1]
    head = int(index[count - 1])
    if head <= last:
        stmt = select(blocks_table.c.hash).where(blocks_table.c.block_index == index_value(head))
        return bool(hash_digest(connection.execute(stmt).scalar()) == digests[count - 1])
    position = int(np.searchsorted(index[:count], last, "right")) - 1
    return position >= 0 and int(index[position]) == last and digests[position] == digest


def _build(
    connection: Connection,
    path: str | None,
    last: int,
    limit: int,
    log_state: tuple[int, int] | None,
) -> QuantStore:
    """A new copy of the snapshot's rows; a file's is put in place once whole."""
    global builds
    builds += 1
    name, seq = log_state or (0, 0)
    store: QuantStore | None = None
    try:
        for chunk in _vector_scores.rows_between(connection, None, last):
            decoded = _decode(chunk)
            if store is None:
                dimension = _newest_size(connection, last) or _dominant(decoded[1])
                capacity = max(int((last + 1) * _ROOM), 1024)
                store = _new_store(path, dimension, capacity, name, seq)
            store = _append(store, chunk, decoded, limit, path)
        if store is None:
            store = _new_store(path, 1, 1024, name, seq)
        if path is not None:
            store.publish(path)
        return store
    except BaseException:
        if store is not None:
            store.discard()
        raise


def _new_store(path: str | None, dimension: int, capacity: int, name: int, seq: int) -> QuantStore:
    if path is None:
        return QuantStore.in_memory(dimension, capacity, name, seq)
    return QuantStore.new_file(path, dimension, capacity, name, seq)


def _extend(
    connection: Connection, store: QuantStore, last: int, limit: int, path: str | None = None
) -> QuantStore:
    """``store`` with the snapshot's rows past its last one (a larger copy if it is full)."""
    head = int(store.columns[0][store.count - 1])
    if head >= last:
        return store
    grown = store
    try:
        for chunk in _vector_scores.rows_between(connection, head, last):
            grown = _append(grown, chunk, _decode(chunk), limit, path)
        if grown is not store and path is not None:
            grown.publish(path)
        else:
            grown.write_header()
        return grown
    except BaseException:
        if grown is not store:
            grown.discard()
        raise


def _decode(chunk: Sequence[Any]) -> tuple[list[Array | None], list[int]]:
    vectors = [_vector_scores.decode(bytes(row[1]), row[2]) for row in chunk]
    sizes = [_vector_scores.UNREADABLE if v is None else v.size for v in vectors]
    return vectors, sizes


def _newest_size(connection: Connection, last: int) -> int:
    """The dimension of the snapshot's last embedding (the model in use, most likely)."""
    stmt = select(*_vector_scores.EMBEDDING_COLUMNS).where(
        embeddings_table.c.block_index == index_value(last)
    )
    row = connection.execute(stmt).first()
    vector = None if row is None else _vector_scores.decode(bytes(row[1]), row[2])
    return 0 if vector is None else int(vector.size)


def _dominant(sizes: list[int]) -> int:
    """The dimension the copy quantizes: the most common among the first rows read."""
    usable = [size for size in sizes if size > 0]
    if not usable:
        return 1
    values, counts = np.unique(usable, return_counts=True)
    return int(values[int(np.argmax(counts))])


def _append(
    store: QuantStore,
    chunk: Sequence[Any],
    decoded: tuple[list[Array | None], list[int]],
    limit: int,
    path: str | None,
) -> QuantStore:
    """``chunk``'s rows appended (to a larger copy when ``store`` is full)."""
    vectors, sizes = decoded
    rows = len(chunk)
    if (store.count + rows) * _quantized.row_bytes(store.dimension) > limit:
        raise OverLimit
    if store.count + rows > store.capacity:
        capacity = max(store.count + rows, int(store.capacity * 2))
        bigger = _new_store(path, store.dimension, capacity, store.log_name, store.base_seq)
        store.copy_to(bigger)
        store = bigger
    dimension = store.dimension
    ours = [o for o, size in enumerate(sizes) if size == dimension]
    codes = np.zeros((rows, dimension), dtype=np.int8)
    scale = np.zeros(rows, dtype=np.float32)
    residual = np.zeros(rows, dtype=np.float32)
    if ours:
        quantized = _quantized.quantize(np.stack([vectors[o] for o in ours]))  # type: ignore[misc]
        codes[ours], scale[ours], residual[ours] = quantized
    store.append(
        [
            np.array([row[0] for row in chunk], dtype=np.int64),
            np.array([hash_digest(row[4]) for row in chunk], dtype=np.uint64),
            np.array(sizes, dtype=np.int32),
            np.array([store.code_of(row[3]) for row in chunk], dtype=np.int32),
            scale,
            residual,
            codes,
        ]
    )
    return store


def search(
    connection: Connection,
    view: View,
    count: int,
    query: Array,
    k: int,
    floor: float | None,
    model: str | None,
    ruled_out: Array | None,
) -> list[tuple[int, float | None]]:
    """Exact top-k of the copy's first ``count`` rows (``ruled_out`` rows left out, and
    rows of another model already in it): candidates from the int8 rows, scored from their
    stored values in the snapshot. Rows of a dimension the copy does not quantize are all
    candidates."""
    rows = view.quant
    assert rows is not None
    if query.size == rows.dimension:
        positions = _quantized.candidates(rows, count, query, ruled_out, k, floor)
    else:
        mine = rows.sizes[:count] == query.size
        if ruled_out is not None:
            mine &= ~ruled_out
        positions = np.flatnonzero(mine)
    if positions.size == 0:
        return []
    scored = _vector_scores.exact_of(connection, rows.index[positions], query, model)
    if not scored:
        return []
    indices = np.array([i for i, _ in scored], dtype=np.int64)
    scores = np.array([s for _, s in scored], dtype=np.float64)
    return _vector_scores.best(indices, scores, k, floor)
