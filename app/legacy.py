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
  across threads and processes. ``conn`` is a :class:`~app._legacy_conn.ThreadConnection`
  that works from every thread (see its rules).
* ``false``: the old class's behaviour, kept so a deployment can switch back without a code
  change. One connection, owned by the thread that built the manager; any other thread gets
  ``sqlite3.ProgrammingError: SQLite objects created in a thread can only be used in that
  same thread`` (on PostgreSQL the same error, from the manager itself). The journal mode
  of the file is left as it is. On SQLite, ``conn`` is that one ``sqlite3.Connection``
  (``row_factory = sqlite3.Row``); statements on it outside ``transaction()`` take effect
  at once, as it runs in autocommit mode under the layer. On PostgreSQL, ``conn`` is the
  same ThreadConnection as in the thread-safe mode, refusing other threads likewise.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Self, TypeVar

import numpy as np
from sqlalchemy import delete, insert, inspect, select, text
from sqlalchemy.engine import URL, Connection

from . import errors
from ._block_sql import BlockRecord, index_value, insert_blocks
from ._block_values import PreparedBlock, encode_json, prepare_block
from ._hints import install_hint
from ._legacy_conn import ThreadConnection, UseTracker
from ._validate import check_index, check_text, check_timestamp
from .blocks import BlockStore
from .database import Database
from .jsonl_import import import_jsonl
from .models import LEGACY_TABLES, blocks_table, embeddings_table, metadata_table
from .settings import parse_flag
from .short_term import MemoryRecord

log = logging.getLogger(__name__)

R = TypeVar("R")

THREAD_SAFE_ENV = "GREEUM_THREAD_SAFE"
_SORT_FIELDS = ("block_index", "timestamp", "importance")
#: ``blocks.block_index`` is a 4-byte INTEGER on PostgreSQL (8 bytes on SQLite).
_POSTGRES_MAX_INDEX = 2**31 - 1


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
        url, self.db_type = _resolve_url(self.connection_string, db_type)
        self.thread_safe = _thread_safe_from_env()
        settings: dict[str, Any] = {}
        if "APP_AUTO_UPGRADE" not in os.environ:
            # The old class created its tables when absent, on every backend.
            settings["auto_upgrade"] = True
        if not self.thread_safe:
            settings["single_connection"] = True
        self.database = Database(url, **settings)
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
        try:
            pooled = self.database.engine.raw_connection()
            self._raw = pooled.dbapi_connection  # type: ignore[assignment]
            pooled.close()  # back to the single-connection pool; the connection stays open
        except BaseException:
            self.database.dispose()
            raise
        assert self._raw is not None
        # The old class set it on its one connection; SQLAlchemy reads sqlite3.Row rows fine.
        self._raw.row_factory = sqlite3.Row

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
        self._users.check_thread()
        if self._users.closed:
            return
        if self._proxy is not None:
            self._proxy.close()
        if not self.database.in_write_unit():
            self.database.session.remove()
        self._users.close()

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
        row = _legacy_block(block_data)
        if row[0] > _POSTGRES_MAX_INDEX and not self.database.settings.is_sqlite:
            raise errors.InvalidInputError(
                f"block_index must be at most {_POSTGRES_MAX_INDEX} on PostgreSQL (its "
                f"block_index column is a 4-byte INTEGER), got {row[0]}"
            )
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
        index = check_index(block_index)
        encoded = encode_json(metadata, "metadata")

        def replace(connection: Connection) -> bool:
            found = connection.execute(
                select(blocks_table.c.block_index).where(
                    blocks_table.c.block_index == index_value(index)
                )
            ).first()
            if found is None:
                return False
            connection.execute(delete(metadata_table).where(metadata_table.c.block_index == index))
            connection.execute(insert(metadata_table).values(block_index=index, metadata=encoded))
            return True

        return self._write(replace)

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
        with self._users:
            found = self.blocks.set_embedding(block_index, embedding, model=embedding_model)
            if self._proxy is not None:
                self._proxy.commit_after_write()
            return found

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
        if not isinstance(block_file_path, str | os.PathLike):
            raise errors.InvalidInputError(
                f"block_file_path must be a path, got {type(block_file_path).__name__}"
            )
        if not os.path.exists(block_file_path):
            log.warning("%s does not exist: nothing to migrate", block_file_path)
            return 0
        with self._users:
            result = import_jsonl(self.database, os.fspath(block_file_path), as_given=_legacy_block)
        for example in result.examples:
            log.warning("%s %s: skipped", block_file_path, example)
        if result.skipped > len(result.examples):
            log.warning("%s: %d lines skipped in all", block_file_path, result.skipped)
        if self._proxy is not None:
            self._proxy.commit_after_write()
        return result.kept

    # -- blocks: reading --------------------------------------------------------------------

    def get_block(self, block_index: int) -> dict[str, Any] | None:
        """The block as a dict, or None."""
        if _is_negative(block_index):
            return None
        with self._users:
            record = self.blocks.get(block_index)
        return None if record is None else _block_dict(record)

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
        if end_idx is not None and _is_negative(end_idx):
            return []
        if start_idx is not None and _is_negative(start_idx):
            start_idx = None
        # Checked here so that a refusal names this method's arguments.
        if start_idx is not None:
            start_idx = check_index(start_idx, "start_idx")
        if end_idx is not None:
            end_idx = check_index(end_idx, "end_idx")
        with self._users:
            records = self.blocks.page(
                start_idx,
                end_idx,
                limit=limit,
                offset=offset,
                sort_by=_fallback(sort_by, _SORT_FIELDS, "block_index"),
                order=_fallback(order, ("asc", "desc"), "asc"),
            )
        return [_block_dict(r) for r in records]

    def get_recent_blocks(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest blocks (highest index first), as block dicts."""
        with self._users:
            return [_block_dict(r) for r in self.blocks.recent(limit)]

    def count_blocks(self) -> int:
        with self._users:
            return self.blocks.count()

    def get_last_block_info(self) -> dict[str, Any] | None:
        """``{'block_index': ..., 'hash': ...}`` of the last block, or None."""
        with self._users:
            head = self.blocks.head()
        return None if head is None else {"block_index": head.block_index, "hash": head.hash}

    def get_block_embedding(self, block_index: int) -> dict[str, Any] | None:
        """``{'embedding', 'embedding_model', 'embedding_dim'}`` of a block, or None."""
        index = check_index(block_index)
        stmt = select(
            embeddings_table.c.embedding,
            embeddings_table.c.embedding_model,
            embeddings_table.c.embedding_dim,
        ).where(embeddings_table.c.block_index == index_value(index))
        with self._users, self.database.read() as session:
            row = session.execute(stmt).first()
        if row is None:
            return None
        vector = np.frombuffer(row[0], dtype=np.float32)
        if row[2]:
            vector = vector[: row[2]]
        return {"embedding": vector.tolist(), "embedding_model": row[1], "embedding_dim": row[2]}

    def search_blocks_by_keyword(
        self, keywords: Iterable[str], limit: int = 100
    ) -> list[dict[str, Any]]:
        """Blocks whose keywords or context contain any of ``keywords`` (case-insensitive
        substring), lowest index first; ``[]`` for no keywords."""
        if isinstance(keywords, np.ndarray):
            keywords = keywords.tolist()  # it has no truth value; its items are checked below
        if not keywords:
            return []
        with self._users:
            return [_block_dict(r) for r in self.blocks.search_keywords(keywords, limit=limit)]

    def search_blocks_by_embedding(
        self, query_embedding: Any, top_k: int = 5, min_similarity: float | None = None
    ) -> list[dict[str, Any]]:
        """The ``top_k`` blocks most cosine-similar to the query, best first, each with a
        ``similarity`` key; ``[]`` for an empty or all-zero query.

        Raises:
            InvalidInputError: a stored embedding has another dimension (a ValueError).
        """
        if _is_blank_vector(query_embedding):
            return []
        with self._users:
            scored = self.blocks.similar(query_embedding, top_k, min_similarity=min_similarity)
        results = []
        for block, similarity in scored:
            found = _block_dict(block)
            found["similarity"] = similarity
            results.append(found)
        return results

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
        text = query_text or None
        embedding = None if _is_blank_vector(query_embedding) else query_embedding
        if text is None and embedding is None:
            return []
        with self._users:
            hits = self.blocks.search(
                text, embedding, top_k=top_k, weights=(keyword_weight, vector_weight)
            )
        results = []
        for hit in hits:
            found = _block_dict(hit.block)
            found.update(
                score=hit.score,
                keyword_rank=hit.keyword_rank,
                vector_rank=hit.vector_rank,
                similarity=hit.similarity,
            )
            results.append(found)
        return results

    def search_blocks_by_date_range(
        self, start_date: Any, end_date: Any, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Blocks stamped within ``[start_date, end_date]`` (dates, datetimes or ISO
        strings), newest first."""
        with self._users:
            records = self.blocks._date_range(
                check_timestamp(_iso(start_date), "start_date", legacy=True),
                check_timestamp(_iso(end_date), "end_date", legacy=True),
                limit,
            )
        return [_block_dict(r) for r in records]

    def get_blocks_since_time(self, since_timestamp: Any, limit: int = 100) -> list[dict[str, Any]]:
        """Blocks stamped at or after ``since_timestamp``, newest first; ``[]`` if it is empty."""
        if not since_timestamp:
            return []
        with self._users:
            low = check_timestamp(_iso(since_timestamp), "since_timestamp", legacy=True)
            return [_block_dict(r) for r in self.blocks._since(low, limit)]

    def filter_blocks_by_importance(
        self, threshold: float, limit: int = 100, sort_by: str = "importance", order: str = "desc"
    ) -> list[dict[str, Any]]:
        """Blocks with ``importance >= threshold``, sorted by ``sort_by`` (anything unknown
        means importance) in ``order`` (anything unknown means 'desc')."""
        with self._users:
            records = self.blocks.by_importance(
                threshold,
                limit=limit,
                sort_by=_fallback(sort_by, _SORT_FIELDS, "importance"),
                order=_fallback(order, ("asc", "desc"), "desc"),
            )
        return [_block_dict(r) for r in records]

    # -- short-term memories ----------------------------------------------------------------

    def add_short_term_memory(self, memory_data: Mapping[str, Any]) -> str:
        """Insert, or replace the memory with the same ``id``; returns the id.

        Raises:
            InvalidInputError: no ``id`` or ``content``, or metadata that is not JSON.
        """
        if not isinstance(memory_data, Mapping):
            raise errors.InvalidInputError(
                f"memory_data must be a dict, got {type(memory_data).__name__}"
            )
        memory_id = check_text(memory_data.get("id"), "id", allow_empty=False)
        timestamp = memory_data.get("timestamp")

        def add(connection: Connection) -> str:
            return self._short_term.add(
                memory_id,
                memory_data.get("content"),  # type: ignore[arg-type]  # checked by add()
                timestamp=None if timestamp is None else _iso(timestamp),
                speaker=memory_data.get("speaker"),
                metadata=memory_data.get("metadata") or None,
            )

        return self._write(add)

    def get_recent_short_term_memories(self, count: int = 10) -> list[dict[str, Any]]:
        """The newest memories first, as dicts (id, timestamp, content, speaker, metadata)."""
        with self._users:
            return [_memory_dict(m) for m in self._short_term.recent(count)]

    def get_short_term_memory_by_id(self, memory_id: str) -> dict[str, Any] | None:
        """The memory as a dict, or None; unreadable metadata reads as ``{}``."""
        with self._users:
            memory = self._short_term.get(memory_id)
        return None if memory is None else _memory_dict(memory)

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
        if self._users.closed:
            return False
        try:
            with self._users, self.database.read() as session:
                session.execute(text("SELECT 1"))
                present = set(inspect(session.connection()).get_table_names())
                missing = sorted(set(LEGACY_TABLES) - present)
                if missing:
                    log.error("health check: table(s) %s missing", ", ".join(missing))
                    return False
                if self.database.settings.is_sqlite:
                    verdict = session.execute(text("PRAGMA quick_check")).scalar()
                    if verdict != "ok":
                        log.error("health check: quick_check reported %r", verdict)
                        return False
            return True
        except Exception:
            log.exception("health check failed")
            return False


class DatabaseManager(ThreadSafeDatabaseManager):
    """The old class's name, kept so that existing code (``DatabaseManager(path)``,
    ``isinstance`` checks, subclasses) goes on working: the same manager, nothing added."""


# -- helpers --------------------------------------------------------------------------------


def _thread_safe_from_env() -> bool:
    raw = os.environ.get(THREAD_SAFE_ENV, "")
    flag = parse_flag(raw) if raw.strip() else True
    if flag is not None:
        return flag
    raise errors.ConfigurationError(
        f"{THREAD_SAFE_ENV}={os.environ[THREAD_SAFE_ENV]!r} is not understood: set it to "
        "'true' (the default, thread-safe) or 'false' (the single-connection legacy mode)"
    )


def _resolve_url(connection_string: Any, db_type: Any) -> tuple[str, str]:
    """The SQLAlchemy URL and the normalised db_type ('sqlite' or 'postgres')."""
    kind = db_type.lower() if isinstance(db_type, str) else db_type
    if kind in ("postgres", "postgresql"):
        kind = "postgres"
    elif kind not in ("sqlite", "sqlite3"):
        raise errors.ConfigurationError(f"db_type must be 'sqlite' or 'postgres', got {db_type!r}")
    target = os.fspath(connection_string)
    if not isinstance(target, str):
        raise errors.ConfigurationError(f"connection_string must be a str, got {target!r}")
    if "://" in target:
        scheme = target.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme in ("postgres", "postgresql"):
            return target, "postgres"
        if kind == "postgres":
            raise errors.ConfigurationError(
                f"db_type is 'postgres' but the URL {target.split('://')[0]}://... is not a "
                "PostgreSQL URL; pass postgresql+psycopg://user@host/dbname"
            )
        return target, "sqlite"
    if kind == "postgres":
        return _libpq_to_url(target), "postgres"
    if target == ":memory:":
        return "sqlite://", "sqlite"
    return f"sqlite:///{target}", "sqlite"


def _libpq_to_url(conninfo: str) -> str:
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:  # pragma: no cover - psycopg is an optional dependency
        raise errors.ConfigurationError(
            f"PostgreSQL needs psycopg 3: install the 'postgres' extra ({install_hint('postgres')})"
        ) from exc
    try:
        parts = {k: str(v) for k, v in conninfo_to_dict(conninfo).items() if v is not None}
    except Exception as exc:
        raise errors.ConfigurationError(
            f"cannot parse the PostgreSQL connection string: {exc}; pass a URL "
            "(postgresql+psycopg://user@host/dbname) or 'dbname=... user=... host=...'"
        ) from exc
    port = parts.pop("port", None)
    url = URL.create(
        "postgresql+psycopg",
        username=parts.pop("user", None),
        password=parts.pop("password", None),
        host=parts.pop("host", None),
        port=int(port) if port else None,
        database=parts.pop("dbname", None),
        query=parts,
    )
    return url.render_as_string(hide_password=False)


def _fallback(value: Any, allowed: tuple[str, ...], default: str) -> str:
    # The old class replaced unknown sort fields and orders instead of refusing them.
    if isinstance(value, str) and value.lower() in allowed:
        return value.lower()
    return default


def _is_negative(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value < 0)


def _iso(value: Any) -> Any:
    # Dates, datetimes and anything else with isoformat(), as the old class accepted.
    return value.isoformat() if hasattr(value, "isoformat") else value


def _is_blank_vector(value: Any) -> bool:
    if value is None:
        return True
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return False  # let the store refuse it with a clear message
    return bool(vector.size == 0 or (vector.ndim == 1 and not vector.any()))


def _legacy_block(data: Any) -> tuple[int, str, str, PreparedBlock]:
    """Check a legacy block dict and prepare its row for insert_blocks."""
    if not isinstance(data, Mapping):
        raise errors.InvalidInputError(f"block_data must be a dict, got {type(data).__name__}")
    for required in ("block_index", "timestamp", "context", "hash"):
        if data.get(required) is None:
            raise errors.InvalidInputError(f"block_data has no {required!r}")
    embedding = data.get("embedding")
    if embedding is not None and _is_empty(embedding):
        embedding = None  # the old class stored no embedding for an empty one
    prepared = prepare_block(
        data["context"],
        keywords=data.get("keywords", ()),
        tags=data.get("tags", ()),
        importance=data.get("importance", 0.0),
        metadata=data.get("metadata") or None,
        embedding=embedding,
        embedding_model=data.get("embedding_model", "default"),
        timestamp=_iso(data["timestamp"]),
        legacy=True,  # the old add_block stored any importance and any timestamp text
    )
    return (
        check_index(data["block_index"]),
        check_text(data["hash"], "hash"),
        check_text(data.get("prev_hash", ""), "prev_hash"),
        prepared,
    )


def _is_empty(value: Any) -> bool:
    if (type(value) is list or type(value) is tuple) and value and type(value[0]) is float:
        return False  # the usual embedding, without numpy's conversion of the whole list
    try:
        return bool(np.size(value) == 0)
    except (TypeError, ValueError, OverflowError):
        return False  # ragged or not numbers: prepare_block refuses it with a clear message


def _block_dict(record: BlockRecord) -> dict[str, Any]:
    block: dict[str, Any] = {
        "block_index": record.block_index,
        "timestamp": record.timestamp,
        "context": record.context,
        "importance": record.importance,
        "hash": record.hash,
        "prev_hash": record.prev_hash,
        "keywords": list(record.keywords),
        "tags": list(record.tags),
        "metadata": dict(record.metadata),
    }
    if record.embedding is not None:
        block["embedding"] = list(record.embedding)
        block["embedding_model"] = record.embedding_model
    return block


def _memory_dict(memory: MemoryRecord) -> dict[str, Any]:
    return {
        "id": memory.id,
        "timestamp": memory.timestamp,
        "content": memory.content,
        "speaker": memory.speaker,
        "metadata": dict(memory.metadata),
    }
