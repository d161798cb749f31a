"""Exact cosine top-k without reading the chain per query: the embeddings kept in memory.

Each process keeps, per database (shared by its Database objects on it), the embeddings as
float32 unit vectors in one matrix per dimension (:class:`VectorCache`), which a query ranks
exactly as ``_vector_scores`` explains (:func:`~app.search._vector_scores.unit_top_k`).

The chain is append-only, so the cache is refreshed by reading only the embeddings past the
last block index it holds, inside the snapshot of the query that needs them. A snapshot
older than the cache uses the cache's prefix up to its own last index. A short digest of
each block's hash is kept: when the hash at the snapshot's last index (or at the cache's,
before extending) differs, the file was replaced or rewritten (a restored backup, a copy)
and the cache is rebuilt. An embedding rewritten in place, deleted, or inserted below the
last index is noted by the database (revision 0005), and the cache searches such blocks
apart, from their current values (``_vector_changes``).

A store whose float32 rows would pass ``_vector_quant.QUANTIZE_ABOVE`` is held instead as
a compact int8 copy (``_vector_quant``; beside a SQLite file, in a file its processes
share) that picks candidates whose stored values are then scored exactly: the same
results, a quarter of the memory.

Memory is bounded by the ``vector_cache_limit`` setting: a cache that would grow past it is
dropped and queries stream the embeddings from the database, as before (exact as well).

The float32 arrays, and the rows decoded into them, are ``_vector_arrays``'s; a state of
either tier is searched by ``_vector_search``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import weakref

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from app import _process
from app.chain._block_sql import index_value
from app.database import Database, add_stats_contributor
from app.engine._driver import raw_execute
from app.models import blocks_table, embeddings_table
from app.search import _quantized, _vector_changes, _vector_quant, _vector_scores
from app.search._quantized_file import Corrupt, QuantStore, sidecar_path
from app.search._vector_arrays import (
    NO_HASH,
    Build,
    OverLimit,
    View,
    append_rows,
    hash_digest,
    row_bytes,
)
from app.search._vector_scores import Array
from app.search._vector_search import search_view

log = logging.getLogger(__name__)


class VectorCache:
    """The embeddings of one Database, in this process (see the module notes)."""

    def __init__(self, limit: int, path: str | None = None) -> None:
        self.limit = limit
        # Where the compact tier's file goes (None: in memory; see _vector_quant).
        self.path = path
        self._lock = threading.Lock()
        self._build: Build | None = None
        self._quant: QuantStore | None = None
        self._overlay: Build | None = None
        self._view: View | None = None
        # The last index of the snapshot that found the embeddings too big for the limit.
        self._over_limit_at: int | None = None

    @property
    def nbytes(self) -> int:
        build, quant, overlay = self._build, self._quant, self._overlay
        return sum(0 if part is None else part.nbytes for part in (build, quant, overlay))

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
            need it: :func:`~app.search._vector_scores.complete_scores` computes it from the
            block's loaded record.
        """
        last, digest = _snapshot_head(connection)
        if last is None:
            return []  # no embedding in this snapshot
        log_state = _vector_changes.log_head(connection)
        view = self._usable_view(connection, last, digest, log_state, wait)
        if view is None:
            return _vector_scores.stream_top_k(connection, query, k, floor, model)
        count = view.rows_through(last)
        ranked = search_view(connection, view, count, query, k, floor, model, view.excluded)
        overlay = view.overlay
        if overlay is None or overlay.count == 0:
            return ranked
        apart = search_view(connection, overlay, overlay.count, query, k, floor, model)
        return _vector_changes.merge(connection, [ranked, apart], query, k, model)

    def _usable_view(
        self,
        connection: Connection,
        last: int,
        digest: np.uint64,
        log_state: tuple[int, int] | None,
        wait: float,
    ) -> View | None:
        """A view holding the snapshot's embeddings (refreshed when needed), or None when the
        query must stream (cache off, over its limit, busy past ``wait``, or the snapshot
        older than the changes the cache has applied)."""
        if self.limit <= 0:
            return None
        view = self._view
        if view is not None and _holds(view, last, digest) and _current(view, log_state):
            return view
        if view is not None and _older(view, log_state):
            return None  # the cache holds changes this snapshot must not see
        if self._over_limit_at is not None and last >= self._over_limit_at:
            return None
        started = time.monotonic()
        if not self._lock.acquire(timeout=max(0.0, wait)):
            log.info("the vector cache stayed busy for %.1fs: this query streams", wait)
            return None
        try:
            view = self._view
            if view is not None and _holds(view, last, digest) and _current(view, log_state):
                return view
            if view is not None and _older(view, log_state):
                return None
            try:
                self._refresh(
                    connection, last, digest, log_state, wait - time.monotonic() + started
                )
            except (OverLimit, Corrupt):  # Corrupt: too many models for the copy's file
                self._build = self._quant = self._overlay = self._view = None
                self._over_limit_at = last
                log.info(
                    "the embeddings need more than vector_cache_limit (%d bytes): "
                    "similarity searches stream them",
                    self.limit,
                )
                return None
            except _vector_quant.Busy:
                log.info("another process kept the vector copy busy: this query streams")
                return None
            self._over_limit_at = None
            return self._view
        finally:
            self._lock.release()

    def _refresh(
        self,
        connection: Connection,
        last: int,
        digest: np.uint64,
        log_state: tuple[int, int] | None,
        wait: float,
    ) -> None:
        """Bring the cache to the snapshot: its arrays to the ``last`` index (extended, or
        rebuilt), then the change notes up to the snapshot's applied (``log_state``: the
        change log's name and newest note; see ``_vector_changes``)."""
        before = self._view
        name, seq = log_state or (0, 0)
        # Another change log (made again by a migration): its numbers are not those applied.
        other_log = before is not None and log_state is not None and before.log_name != name
        kept = np.empty(0, dtype=np.int64) if before is None else before.excluded
        # The note the arrays' rows are current as of (None: read in this snapshot).
        base: int | None = None if before is None else before.seen
        if before is not None and not other_log and _holds(before, last, digest):
            # Only change notes to apply, to the arrays as they are.
            quant = self._quant
            arrays = self._build.view() if quant is None else _vector_quant.view_of(quant)  # type: ignore[union-attr]
        elif self._compact(connection, last):
            arrays, mode = self._bring_quant(connection, last, digest, log_state, wait, other_log)
            if mode != "extended":
                kept = np.empty(0, dtype=np.int64)
                base = None if mode == "rebuilt" else self._quant.base_seq  # type: ignore[union-attr]
        else:
            rebuilt = self._bring_arrays_to(connection, last, rebuild=before is None or other_log)
            base = None if rebuilt else base
            arrays = self._build.view()  # type: ignore[union-attr]
        if log_state is None or base is None:
            # Rows read in this snapshot are current: every change noted so far is in them.
            self._overlay = None
            self._view = dataclasses.replace(arrays, seen=seq, log_name=name, overlay=None)
            return
        changed = _vector_changes.changed_since(connection, base)
        count = arrays.count
        if changed is None or len(changed.union(kept.tolist())) > (
            _vector_changes.overlay_limit(count)
        ):
            if self._quant is not None:
                arrays, _ = self._bring_quant(connection, last, digest, log_state, wait, True)
            else:
                self._bring_arrays_to(connection, last, rebuild=True)
                arrays = self._build.view()  # type: ignore[union-attr]
            self._overlay = None
            self._view = dataclasses.replace(arrays, seen=seq, log_name=name, overlay=None)
            return
        excluded = np.array(sorted(changed.union(kept.tolist())), dtype=np.int64)
        overlay = Build()
        rows = _vector_changes.rows_of(connection, excluded, last)
        if rows:
            held = self._quant.nbytes if self._quant is not None else self._build.nbytes  # type: ignore[union-attr]
            append_rows(overlay, rows, max(0, self.limit - held))
        self._overlay = overlay
        self._view = dataclasses.replace(
            arrays, seen=seq, log_name=name, excluded=excluded, overlay=overlay.view()
        )

    def _compact(self, connection: Connection, last: int) -> bool:
        """True when the compact tier serves the snapshot: it does already, or the float32
        rows (as many as its last index allows) would pass ``QUANTIZE_ABOVE``."""
        if self._quant is not None:
            return True
        size = connection.execute(
            select(
                embeddings_table.c.embedding_dim, func.length(embeddings_table.c.embedding)
            ).where(embeddings_table.c.block_index == last)
        ).first()
        dimension = 0 if size is None else int(size[0] or (size[1] or 0) // 4)
        return (last + 1) * row_bytes(dimension) > _vector_quant.QUANTIZE_ABOVE

    def _bring_quant(
        self,
        connection: Connection,
        last: int,
        digest: np.uint64,
        log_state: tuple[int, int] | None,
        wait: float,
        force: bool,
    ) -> tuple[View, str]:
        self._build = None  # the float32 rows give way to the compact ones
        try:
            store, mode = _vector_quant.bring(
                self._quant, connection, last, digest, self.path, self.limit, log_state, wait, force
            )
        except OSError as exc:
            if self.path is None:
                raise
            log.info("no vector copy file at %s (%s): kept in memory", self.path, exc)
            self.path = None
            store, mode = _vector_quant.bring(
                None, connection, last, digest, None, self.limit, log_state, wait, True
            )
        self._quant = store
        return _vector_quant.view_of(store), mode

    def _bring_arrays_to(self, connection: Connection, last: int, *, rebuild: bool = False) -> bool:
        """Bring the arrays to the snapshot's ``last`` index: extend them when their own
        last block is unchanged in this snapshot, else rebuild them. True when rebuilt."""
        build, view = self._build, self._view
        start = None
        if (
            not rebuild
            and build is not None
            and view is not None
            and view.head is not None
            and view.head <= last
        ):
            digest = _hash_at(connection, view.head)
            if digest == view.digest[view.count - 1]:
                start = view.head
        index = embeddings_table.c.block_index
        if start is None:
            build = Build()
            self._build, self._view = build, None
            # Counted first, so the arrays are made at their size (no growth by copies, no
            # spare capacity) and a chain too big for the limit is known after one chunk.
            counted = select(func.count()).where(index <= index_value(last))
            build.expected = int(connection.execute(counted).scalar_one())
        assert build is not None
        for chunk in _vector_scores.rows_between(connection, start, last):
            append_rows(build, chunk, self.limit)
        self._view = build.view()
        return start is None


def _snapshot_head(connection: Connection) -> tuple[int | None, np.uint64]:
    row = raw_execute(
        connection,
        "SELECT e.block_index, b.hash FROM "
        "(SELECT block_index FROM block_embeddings ORDER BY block_index DESC LIMIT 1) e "
        "LEFT JOIN blocks b ON b.block_index = e.block_index",
    ).fetchone()
    if row is None:
        return None, NO_HASH
    return int(row[0]), hash_digest(row[1])


def _hash_at(connection: Connection, index: int) -> np.uint64:
    stmt = select(blocks_table.c.hash).where(blocks_table.c.block_index == index_value(index))
    return hash_digest(connection.execute(stmt).scalar())


def _current(view: View, log_state: tuple[int, int] | None) -> bool:
    """True when the view has applied every change noted in the snapshot."""
    return log_state is None or (view.log_name, view.seen) == log_state


def _older(view: View, log_state: tuple[int, int] | None) -> bool:
    """True when the snapshot is older than the changes the view has applied."""
    return log_state is not None and view.log_name == log_state[0] and log_state[1] < view.seen


def _holds(view: View, last: int, digest: np.uint64) -> bool:
    """True when the view holds the snapshot's embeddings up to ``last`` unchanged."""
    position = view.rows_through(last) - 1
    return position >= 0 and int(view.index[position]) == last and view.digest[position] == digest


# -- one cache per database per process -------------------------------------------------------

# Every Database of the process on one database (with one limit) shares a cache: what it
# holds depends on the database's contents only, and a Database opened per request then
# searches the rows cached by the ones before it instead of reading them all again. The
# caches used last are kept a while after their last Database closes, for the next request.
_CACHES: weakref.WeakKeyDictionary[Database, VectorCache] = weakref.WeakKeyDictionary()
_SHARED: weakref.WeakValueDictionary[tuple[str, int], VectorCache] = weakref.WeakValueDictionary()
_RECENT: collections.OrderedDict[tuple[str, int], VectorCache] = collections.OrderedDict()
_KEPT = 4  # caches of databases no Database has open that stay: the most recently used
_CACHES_LOCK = threading.Lock()


def cache_for(db: Database) -> VectorCache:
    with _CACHES_LOCK:
        key = (db.key, db.settings.vector_cache_limit)
        cache = _CACHES.get(db)
        if cache is None:
            cache = _SHARED.get(key)
            if cache is None:
                path = db.settings.sqlite_path
                sidecar = None if path is None else sidecar_path(path)
                cache = _SHARED[key] = VectorCache(key[1], sidecar)
            _CACHES[db] = cache  # held while the Database lives
        _RECENT[key] = cache
        _RECENT.move_to_end(key)
        while len(_RECENT) > _KEPT:
            _RECENT.popitem(last=False)
        return cache


def cache_bytes(db: Database) -> int:
    """Memory the process's vector cache of ``db`` holds (0 when it has none)."""
    cache = _CACHES.get(db)
    return 0 if cache is None else cache.nbytes


add_stats_contributor(cache_bytes)  # db.stats().vector_cache_bytes


def _forget_after_fork() -> None:
    # The parent's caches may be mid-refresh, their locks held by threads that do not exist
    # here: start afresh (a child rebuilds on its first query).
    global _CACHES_LOCK
    _CACHES_LOCK = threading.Lock()
    _CACHES.clear()
    _SHARED.clear()
    _RECENT.clear()
    _quantized.reset_after_fork()


_process.on_fork("vector caches", after_in_child=_forget_after_fork)
