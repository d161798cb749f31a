"""`ThreadSafeDatabaseManager`: the legacy block-store API, on the thread-safe layer, and
`DatabaseManager`, the old class's name for it.

The methods, arguments, defaults and return shapes are those of the old class (Greeum
2.1.0 and the calls later releases added). Every method is written once, on top of
:class:`~app.Database`, :class:`~app.BlockStore` and :class:`~app.ShortTermMemories`; the
two modes below differ only in the Database underneath.

Modes, chosen when the manager is built from the environment variable
``GREEUM_THREAD_SAFE`` (``true`` by default; ``1/yes/on`` and ``0/no/off`` also accepted):

* ``true``: a pooled Database (WAL, fair write lock). Any thread may call any method.
  Outside :meth:`ThreadSafeDatabaseManager.transaction` each call is its own unit of work:
  reads see one snapshot, each write commits alone or not at all. Inside it, the calls of
  the same thread join that write unit, so ``read last block, add the next one`` is atomic
  across threads and processes. ``conn`` is a :class:`~app.legacy._conn.ThreadConnection`
  that works from every thread (see its rules).
* ``false``: the old class's behaviour, kept so a deployment can switch back without a code
  change. One connection, owned by the thread that built the manager; any other thread gets
  ``sqlite3.ProgrammingError: SQLite objects created in a thread can only be used in that
  same thread`` (on PostgreSQL the same error, from the manager itself). The journal mode
  of the file is left as it is. On SQLite, ``conn`` is that one ``sqlite3.Connection``
  (``row_factory = sqlite3.Row``); statements on it outside ``transaction()`` take effect
  at once, as it runs in autocommit mode under the layer. On PostgreSQL, ``conn`` is the
  same ThreadConnection as in the thread-safe mode, refusing other threads likewise.

Layer 8, the legacy facade. May import: the block store and every layer below it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Self, TypeVar

from sqlalchemy.engine import Connection

from app.blocks import BlockStore
from app.chain._block_sql import insert_blocks
from app.database import Database
from app.legacy import _lifetime as lifetime
from app.legacy import _reads as reads
from app.legacy import _writes as writes
from app.legacy._conn import ThreadConnection, UseTracker
from app.legacy._lifetime import THREAD_SAFE_ENV as THREAD_SAFE_ENV
from app.legacy._values import block_dict, memory_dict

R = TypeVar("R")


class ThreadSafeDatabaseManager:
    """The thread-safe manager with the old class's API: the legacy ``DatabaseManager``
    methods, safe to call from every thread.

    Args:
        connection_string: a SQLite file path (default ``data/memory.db``; its directory is
            created; ``:memory:`` for an in-memory database), a SQLAlchemy URL
            (``sqlite:///...``, ``postgresql+psycopg://...``) or, with ``db_type='postgres'``,
            a libpq string such as ``"dbname=app user=app host=db"``.
        db_type: ``'sqlite'`` or ``'postgres'`` (``'postgresql'``); a PostgreSQL URL implies
            ``'postgres'``.

    Attributes:
        connection_string: as given (or the default path).
        db_type: ``'sqlite'`` or ``'postgres'``.
        thread_safe: the mode read from ``GREEUM_THREAD_SAFE`` (see the module docstring).
        database: the underlying :class:`~app.Database`.
        blocks: the :class:`~app.BlockStore` the methods use.

    Raises:
        ConfigurationError: unknown ``db_type``, a bad URL or ``GREEUM_THREAD_SAFE`` value.
    """

    def __init__(
        self, connection_string: str | os.PathLike[str] | None = None, db_type: str = "sqlite"
    ) -> None:
        self.connection_string = connection_string or os.path.join("data", "memory.db")
        url, self.db_type = lifetime.resolve_url(self.connection_string, db_type)
        self.thread_safe = lifetime.thread_safe_from_env()
        self.database = Database(url, **lifetime.database_settings(self.thread_safe))
        self.blocks = BlockStore(self.database)
        self._short_term = self.blocks.short_term
        owner = None if self.thread_safe else threading.get_ident()
        self._users = UseTracker(
            self.database, self.database.url, self.database.dispose, owner, kind=type(self).__name__
        )
        self._raw: sqlite3.Connection | None = None
        self._proxy: ThreadConnection | None = None
        if self.thread_safe or not self.database.settings.is_sqlite:
            self._proxy = ThreadConnection(self.database, self._users)
            return
        self._raw = lifetime.single_connection(self.database)

    def __repr__(self) -> str:
        mode = "thread-safe" if self.thread_safe else "single-connection"
        name = type(self).__name__
        return f"{name}({self.connection_string!r}, db_type={self.db_type!r}, {mode})"

    # -- lifetime ---------------------------------------------------------------------------

    @property
    def conn(self) -> Any:
        """A DB-API connection with ``sqlite3.Row`` rows for the calling thread.

        Raises:
            ClosedError: the manager was closed.
        """
        self._users.check_open()
        return self._raw if self._raw is not None else self._proxy

    def close(self) -> None:
        """Release this thread's resources; the pool closes when the last call in progress
        (in any thread) is done. Afterwards every call raises :class:`~app.errors.ClosedError`.
        Calling it again does nothing.
        """
        lifetime.close_manager(self._users, self._proxy, self.database)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Self]:
        """A write unit (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL).

        Every call of this manager (and every statement on ``conn``) made by the same thread
        inside the ``with`` block joins the unit; it commits at the end of the block, or
        rolls back if an exception leaves it. Nested, it becomes a SAVEPOINT.

        Raises:
            DatabaseBusyError: another writer kept the database past the deadline.
        """
        with self._users, self.database.unit_of_work():
            yield self

    def run_serialized(self, fn: Callable[[], R]) -> R:
        """Run ``fn()`` inside :meth:`transaction` and return its result."""
        with self.transaction():
            return fn()

    def _write(self, fn: Callable[[Connection], R]) -> R:
        """Run ``fn(connection)`` as one write (its own unit, or a SAVEPOINT of an open one)."""
        with self._users:
            result = self.database.run_on_connection(fn)
            if self._proxy is not None:
                self._proxy.commit_after_write()
            return result

    # -- blocks: writing --------------------------------------------------------------------

    def add_block(self, block_data: Mapping[str, Any]) -> int:
        """Insert a complete block whose index and hash the caller computed.

        Args:
            block_data: ``block_index``, ``timestamp``, ``context``, ``hash`` (required),
                ``importance`` (0.0), ``prev_hash`` (''), ``keywords``, ``tags``,
                ``metadata`` (stored when not empty), ``embedding`` (list, tuple or numpy
                array) and ``embedding_model`` ('default').

        Returns:
            The block's index.

        Raises:
            InvalidInputError: a missing or bad field (nothing is written).
            IntegrityViolationError: the index exists already (a ``sqlite3.IntegrityError``;
                nothing is written).
        """
        row = writes.block_row(block_data, self.database.settings.is_sqlite)
        self._write(lambda connection: insert_blocks(connection, [row]))
        return row[0]

    def append_block(
        self,
        context: str,
        keywords: Iterable[str] = (),
        tags: Iterable[str] = (),
        importance: float = 0.0,
        metadata: Mapping[str, Any] | None = None,
        embedding: Any = None,
        embedding_model: str = "default",
        timestamp: Any = None,
    ) -> int:
        """Append the next block of the chain (index, ``prev_hash`` and hash computed here,
        atomically), and return its index.

        Raises:
            InvalidInputError: a bad argument (nothing is written).
        """
        with self._users:
            record = self.blocks.append(
                context,
                keywords=keywords,
                tags=tags,
                importance=importance,
                metadata=metadata,
                embedding=embedding,
                embedding_model=embedding_model,
                timestamp=timestamp,
            )
            if self._proxy is not None:
                self._proxy.commit_after_write()
            return record.block_index

    def update_block_metadata(self, block_index: int, metadata: Mapping[str, Any]) -> bool:
        """Replace a block's metadata.

        Returns:
            True when the block exists (and its metadata was stored), else False.

        Raises:
            InvalidInputError: ``metadata`` is not a JSON-serialisable dict.
        """
        return self._write(writes.metadata_replacement(block_index, metadata))

    def update_block_embedding(
        self, block_index: int, embedding: Any, embedding_model: str = "default"
    ) -> bool:
        """Replace a block's embedding (re-embedding with another model); None removes it.
        Every similarity search, in every process, sees it from its next query.

        Returns:
            True when the block exists (and was updated), else False.

        Raises:
            InvalidInputError: a bad index, vector or model (nothing is written).
        """
        return writes.new_embedding(
            self._users, self.blocks, self._proxy, block_index, embedding, embedding_model
        )

    def migrate_from_jsonl(self, block_file_path: str) -> int:
        """Import blocks from a JSON-lines file, one block dict per line (see add_block).

        Lines that are not JSON objects, and blocks that add_block refuses (bad fields, an
        index that exists already), are skipped with a warning; so is a block already stored
        (the same timestamp and context), so importing a file again adds nothing.

        Returns:
            How many blocks were imported; 0 when the file does not exist.

        Raises:
            InvalidInputError: the path is not a str or path object.
        """
        return writes.migrate_jsonl(self._users, self.database, self._proxy, block_file_path)

    # -- blocks: reading --------------------------------------------------------------------

    def get_block(self, block_index: int) -> dict[str, Any] | None:
        """The block as a dict, or None."""
        return reads.block(self._users, self.blocks, block_index)

    def get_block_by_index(self, block_index: int) -> dict[str, Any] | None:
        """Same as :meth:`get_block`."""
        return self.get_block(block_index)

    def get_blocks(
        self,
        start_idx: int | None = None,
        end_idx: int | None = None,
        limit: int = 100,
        offset: int = 0,
        sort_by: str = "block_index",
        order: str = "asc",
    ) -> list[dict[str, Any]]:
        """Blocks with ``start_idx <= index <= end_idx``, sorted by ``sort_by`` (block_index,
        timestamp or importance; anything else means block_index) in ``order`` ('asc' or
        'desc'; anything else means 'asc')."""
        return reads.page(
            self._users, self.blocks, start_idx, end_idx, limit, offset, sort_by, order
        )

    def get_recent_blocks(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest blocks (highest index first), as block dicts."""
        with self._users:
            return [block_dict(r) for r in self.blocks.recent(limit)]

    def count_blocks(self) -> int:
        with self._users:
            return self.blocks.count()

    def get_last_block_info(self) -> dict[str, Any] | None:
        """``{'block_index': ..., 'hash': ...}`` of the last block, or None."""
        return reads.last_block_info(self._users, self.blocks)

    def get_block_embedding(self, block_index: int) -> dict[str, Any] | None:
        """``{'embedding', 'embedding_model', 'embedding_dim'}`` of a block, or None."""
        return reads.embedding_of(self._users, self.database, block_index)

    def search_blocks_by_keyword(
        self, keywords: Iterable[str], limit: int = 100
    ) -> list[dict[str, Any]]:
        """Blocks whose keywords or context contain any of ``keywords`` (case-insensitive
        substring), lowest index first; ``[]`` for no keywords."""
        return reads.by_keyword(self._users, self.blocks, keywords, limit)

    def search_blocks_by_embedding(
        self, query_embedding: Any, top_k: int = 5, min_similarity: float | None = None
    ) -> list[dict[str, Any]]:
        """The ``top_k`` blocks most cosine-similar to the query, best first, each with a
        ``similarity`` key; ``[]`` for an empty or all-zero query.

        Raises:
            InvalidInputError: a stored embedding has another dimension (a ValueError).
        """
        return reads.by_embedding(self._users, self.blocks, query_embedding, top_k, min_similarity)

    def search_blocks_hybrid(
        self,
        query_text: str | None = None,
        query_embedding: Any = None,
        top_k: int = 5,
        keyword_weight: float = 1.0,
        vector_weight: float = 1.0,
    ) -> list[dict[str, Any]]:
        """Blocks about ``query_text`` and/or near ``query_embedding``, best first, each with
        ``score`` (reciprocal-rank fusion, see :meth:`BlockStore.search`), ``keyword_rank``,
        ``vector_rank`` and ``similarity`` (None where the block was not in that list);
        ``[]`` when both are empty (an all-zero embedding counts as empty).

        Raises:
            InvalidInputError: a bad argument, or a stored embedding of another dimension.
        """
        return reads.hybrid(
            self._users,
            self.blocks,
            query_text,
            query_embedding,
            top_k,
            keyword_weight,
            vector_weight,
        )

    def search_blocks_by_date_range(
        self, start_date: Any, end_date: Any, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Blocks stamped within ``[start_date, end_date]`` (dates, datetimes or ISO
        strings), newest first."""
        return reads.by_date_range(self._users, self.blocks, start_date, end_date, limit)

    def get_blocks_since_time(self, since_timestamp: Any, limit: int = 100) -> list[dict[str, Any]]:
        """Blocks stamped at or after ``since_timestamp``, newest first; ``[]`` if it is empty."""
        return reads.since(self._users, self.blocks, since_timestamp, limit)

    def filter_blocks_by_importance(
        self, threshold: float, limit: int = 100, sort_by: str = "importance", order: str = "desc"
    ) -> list[dict[str, Any]]:
        """Blocks with ``importance >= threshold``, sorted by ``sort_by`` (anything unknown
        means importance) in ``order`` (anything unknown means 'desc')."""
        return reads.by_importance(self._users, self.blocks, threshold, limit, sort_by, order)

    # -- short-term memories ----------------------------------------------------------------

    def add_short_term_memory(self, memory_data: Mapping[str, Any]) -> str:
        """Insert, or replace the memory with the same ``id``; returns the id.

        Raises:
            InvalidInputError: no ``id`` or ``content``, or metadata that is not JSON.
        """
        return self._write(writes.memory_addition(self._short_term, memory_data))

    def get_recent_short_term_memories(self, count: int = 10) -> list[dict[str, Any]]:
        """The newest memories first, as dicts (id, timestamp, content, speaker, metadata)."""
        with self._users:
            return [memory_dict(m) for m in self._short_term.recent(count)]

    def get_short_term_memory_by_id(self, memory_id: str) -> dict[str, Any] | None:
        """The memory as a dict, or None; unreadable metadata reads as ``{}``."""
        with self._users:
            memory = self._short_term.get(memory_id)
        return None if memory is None else memory_dict(memory)

    def delete_short_term_memory(self, memory_id: str) -> bool:
        """Delete one memory; True if it existed."""
        return self._write(lambda connection: self._short_term.delete(memory_id))

    def delete_expired_short_term_memories(self, ttl_seconds: float) -> int:
        """Delete memories older than ``ttl_seconds``; returns how many."""
        return self._write(lambda connection: self._short_term.expire(ttl_seconds))

    def clear_short_term_memories(self) -> int:
        """Delete every memory; returns how many there were."""
        return self._write(lambda connection: self._short_term.clear())

    # -- health -----------------------------------------------------------------------------

    def health_check(self) -> bool:
        """True when the database answers, has every legacy table and (SQLite) passes
        ``PRAGMA quick_check``. Never raises: any problem, a closed manager included, is
        logged and reported as False."""
        return reads.health_check(self._users, self.database)


class DatabaseManager(ThreadSafeDatabaseManager):
    """The old class's name, kept so that existing code (``DatabaseManager(path)``,
    ``isinstance`` checks, subclasses) goes on working: the same manager, nothing added."""
