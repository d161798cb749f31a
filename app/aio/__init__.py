"""asyncio callers: the layer's guarantees without blocking the event loop.

``AsyncDatabase`` wraps a :class:`~app.Database` (the same engine, write turn, group commit
and deadlines) and ``AsyncBlockStore`` its block chain::

    from app.aio import AsyncBlockStore, AsyncDatabase

    async with AsyncDatabase("sqlite:///data/memory.db") as db:
        store = AsyncBlockStore(db)
        block = await store.append("met Ana about the garden", keywords=["garden"])
        found = await store.search_keywords(["garden"])
        total = await db.run(lambda session: session.scalar(text("SELECT count(*) FROM blocks")))

* Appends go into the same group commit as the sync callers' (one transaction for many
  appends). The waiting task holds no thread: the thread that commits the batch resolves
  the task's future on its loop.
* Reads and units (``run``, ``read_run``, the store's searches) run on a small pool of
  worker threads (``workers``, 4 by default), never on the event loop's thread.
* Cancellation, ``asyncio.timeout()`` and deadlines follow one rule: a call that stopped
  waiting before its work started (an append not yet taken into a batch, a call not yet
  picked up by a worker) never runs; once started, it runs to its end, whether committed
  or failed, and the outcome is logged at DEBUG on the ``app.aio`` logger.

So a program needs at most ``workers`` + 1 threads for the layer (the workers and the
batcher's leader), whatever the number of tasks.

Layer 9, asyncio. May import: the block store and every layer below it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from app import errors
from app.aio._appends import append_without_thread
from app.aio._workers import Workers
from app.blocks import BlockRecord, BlockStore
from app.chain._block_sql import Written, chained_records
from app.chain._block_values import PreparedBlock, prepare_block, prepare_blocks
from app.database import Database, Stats
from app.settings import Settings

__all__ = ["AsyncBlockStore", "AsyncDatabase"]

P = ParamSpec("P")
R = TypeVar("R")

#: Default number of worker threads for reads and units.
DEFAULT_WORKERS = 4
# append_many prepares more blocks than this in a worker: checking and encoding thousands
# of blocks would hold the loop.
_PREPARE_ON_LOOP = 32


class AsyncDatabase:
    """A :class:`~app.Database` for asyncio code.

    Args:
        url: as for :class:`~app.Database`.
        workers: most worker threads for reads and units (started as needed).
        **settings: any field of :class:`app.Settings`.

    Opening a Database checks (on SQLite, may upgrade) the schema, which is blocking I/O:
    open it before the loop serves requests, or with ``await AsyncDatabase.open(...)``.

    Raises:
        ConfigurationError: a bad setting, or ``workers`` not a whole number >= 1.
    """

    def __init__(
        self, url: str | None = None, /, *, workers: int = DEFAULT_WORKERS, **settings: Any
    ):
        _check_workers(workers)
        self._setup(Database(url, **settings), workers, owned=True)

    def _setup(self, db: Database, workers: int, *, owned: bool) -> None:
        self.sync = db
        self._owned = owned
        self._workers = Workers(workers, db.settings.retry_deadline, db.url)

    @classmethod
    def wrap(cls, db: Database, *, workers: int = DEFAULT_WORKERS) -> AsyncDatabase:
        """An AsyncDatabase sharing ``db`` (its engine, turn and group commit). Closing it
        stops its workers but leaves ``db`` open.

        Raises:
            InvalidInputError: ``db`` is not a Database.
            ConfigurationError: ``workers`` is not a whole number >= 1.
        """
        if not isinstance(db, Database):
            raise errors.InvalidInputError(
                f"AsyncDatabase.wrap needs an app.Database, got {type(db).__name__}"
            )
        _check_workers(workers)
        wrapped = cls.__new__(cls)
        wrapped._setup(db, workers, owned=False)
        return wrapped

    @classmethod
    async def open(
        cls, url: str | None = None, /, *, workers: int = DEFAULT_WORKERS, **settings: Any
    ) -> AsyncDatabase:
        """``AsyncDatabase(url, ...)`` opened in a thread, so the loop goes on meanwhile."""
        _check_workers(workers)
        db = await asyncio.to_thread(functools.partial(Database, url, **settings))
        opened = cls.__new__(cls)
        opened._setup(db, workers, owned=True)
        return opened

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncDatabase:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncDatabase({self.url!r})"

    @property
    def url(self) -> str:
        """The URL, password hidden."""
        return self.sync.url

    @property
    def settings(self) -> Settings:
        return self.sync.settings

    @property
    def workers(self) -> int:
        """The most worker threads this object uses."""
        return self._workers.count

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def aclose(self) -> None:
        """Stop taking calls; calls in progress finish. Disposes the Database when this
        object opened it (in a worker, since closing connections is I/O). Safe twice."""
        if self._owned and not self.sync.closed:
            await self._workers.call("dispose", self.sync.dispose)
        self._workers.close()

    # -- units -----------------------------------------------------------------------------

    async def run(
        self, fn: Callable[Concatenate[Session, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``fn(session, *args, **kwargs)`` in a write unit in a worker thread, re-run while
        busy until ``retry_deadline``, as :meth:`Database.run`.

        Return plain values: ORM objects that lazy-load afterwards would load on the
        loop's thread.

        Raises:
            DatabaseBusyError: busy past the deadline, or no worker was free within it.
            ClosedError: closed.
        """
        return await self._workers.call(_name(fn, "run"), self.sync.run, fn, *args, **kwargs)

    async def read_run(
        self, fn: Callable[Concatenate[Session, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``fn(session, *args, **kwargs)`` in a read unit (a snapshot; writes are refused
        with ``ReadOnlyUnitError``) in a worker thread."""
        return await self._workers.call(
            _name(fn, "read_run"), _read_unit, self.sync, fn, *args, **kwargs
        )

    async def offload(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Any other sync call of the layer, ``fn(*args, **kwargs)``, in a worker thread
        (e.g. ``await db.offload(store.sync.short_term.add, "m1", "call Ana")``)."""
        return await self._workers.call(_name(fn, "offload"), fn, *args, **kwargs)

    async def checkpoint(self, mode: str = "passive") -> tuple[int, int, int]:
        """:meth:`Database.checkpoint` in a worker thread."""
        return await self._workers.call("checkpoint", self.sync.checkpoint, mode)

    def stats(self) -> Stats:
        """:meth:`Database.stats` (counters only: no I/O, fine on the loop)."""
        return self.sync.stats()


def _offloaded(
    method: Callable[Concatenate[BlockStore, P], R],
) -> Callable[Concatenate[AsyncBlockStore, P], Awaitable[R]]:
    """An async method running the BlockStore ``method`` in a worker thread."""
    name = method.__name__

    async def offloaded(self: AsyncBlockStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.db._workers.call(name, method, self.sync, *args, **kwargs)

    offloaded.__name__ = name
    offloaded.__qualname__ = f"AsyncBlockStore.{name}"
    offloaded.__doc__ = f":meth:`BlockStore.{name}`, in a worker thread.\n\n{method.__doc__ or ''}"
    return offloaded


class AsyncBlockStore:
    """The block chain of an :class:`AsyncDatabase`.

    ``append`` and ``append_many`` join the group commit without a thread; the reads run in
    the database's worker threads. ``sync`` is the :class:`~app.BlockStore` underneath.

    Raises:
        InvalidInputError: ``db`` is not an AsyncDatabase (use ``AsyncDatabase.wrap(db)``).
    """

    def __init__(self, db: AsyncDatabase) -> None:
        if not isinstance(db, AsyncDatabase):
            raise errors.InvalidInputError(
                f"AsyncBlockStore needs an app.aio.AsyncDatabase, got {type(db).__name__}; "
                "for an app.Database use AsyncDatabase.wrap(db)"
            )
        self.db = db
        self.sync = BlockStore(db.sync)

    async def append(
        self,
        context: str,
        *,
        keywords: Iterable[str] = (),
        tags: Iterable[str] = (),
        importance: float = 0.0,
        metadata: Mapping[str, Any] | None = None,
        embedding: Any = None,
        embedding_model: str = "default",
        timestamp: str | datetime | None = None,
    ) -> BlockRecord:
        """:meth:`BlockStore.append`, awaited: the next block, once committed.

        If the call stops waiting (cancelled, ``asyncio.timeout()``) before its block was
        taken into a batch, the block is not written; after, it is written (or fails) all
        the same, and the outcome is logged at DEBUG on ``app.aio``.

        Raises:
            InvalidInputError: a bad argument (nothing is written).
            DatabaseBusyError: still queued at ``retry_deadline`` (not written).
            CommitTimeoutError: taken, but not written a ``retry_deadline`` later (may still
                be committed).
            TransactionStateError: called inside a sync unit on the loop's thread.
        """
        prepared = prepare_block(
            context,
            keywords=keywords,
            tags=tags,
            importance=importance,
            metadata=metadata,
            embedding=embedding,
            embedding_model=embedding_model,
            timestamp=timestamp,
        )
        return (await self._append_prepared([prepared]))[0]

    async def append_many(self, blocks: Iterable[Mapping[str, Any]]) -> list[BlockRecord]:
        """:meth:`BlockStore.append_many`, awaited: every block is checked first, then they
        are written in batches of ``max_batch``, each contiguous, one after another.

        Stopping (cancelled, ``asyncio.timeout()``) leaves the batches already committed,
        the current one by :meth:`append`'s rule, and writes none of the rest.
        """
        listed = list(blocks)
        if len(listed) > _PREPARE_ON_LOOP:
            prepared = await self.db.offload(prepare_blocks, listed)
        else:
            prepared = prepare_blocks(listed)
        records: list[BlockRecord] = []
        size = self.db.settings.max_batch
        for start in range(0, len(prepared), size):
            records.extend(await self._append_prepared(prepared[start : start + size]))
        return records

    async def _append_prepared(self, blocks: list[PreparedBlock]) -> list[BlockRecord]:
        db = self.db.sync
        if db.closed:
            raise errors.ClosedError(f"{db.url} was disposed; create a new Database")
        if db.unit_kind() is not None:
            raise errors.TransactionStateError(
                "an async append cannot join a sync unit open on the event loop's thread; "
                "write inside the unit with the sync BlockStore, or use AsyncDatabase.run"
            )
        db.check_may_wait_for_turn()
        written = await append_without_thread(
            self.sync.chain_batcher(),
            blocks,
            deadline=db.settings.retry_deadline,
            database=db.url,
            describe=_describe_written,
        )
        return chained_records(written)

    # -- reads (and the writes that are not appends), in the database's worker threads ---

    head = _offloaded(BlockStore.head)
    count = _offloaded(BlockStore.count)
    get = _offloaded(BlockStore.get)
    page = _offloaded(BlockStore.page)
    recent = _offloaded(BlockStore.recent)
    search_keywords = _offloaded(BlockStore.search_keywords)
    search_tags = _offloaded(BlockStore.search_tags)
    date_range = _offloaded(BlockStore.date_range)
    since = _offloaded(BlockStore.since)
    by_importance = _offloaded(BlockStore.by_importance)
    similar = _offloaded(BlockStore.similar)
    search = _offloaded(BlockStore.search)
    refresh_search_index = _offloaded(BlockStore.refresh_search_index)
    rebuild_search_index = _offloaded(BlockStore.rebuild_search_index)
    set_embedding = _offloaded(BlockStore.set_embedding)
    reembed = _offloaded(BlockStore.reembed)
    verify_chain = _offloaded(BlockStore.verify_chain)


def _read_unit(db: Database, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    with db.read() as session:
        return fn(session, *args, **kwargs)


def _describe_written(written: list[Written]) -> str:
    indices = [block.block_index for block in written]
    if not indices:
        return "no blocks"
    return f"block {indices[0]}" if len(indices) == 1 else f"blocks {indices[0]}-{indices[-1]}"


def _name(fn: Callable[..., Any], kind: str) -> str:
    return f"{kind}({getattr(fn, '__qualname__', type(fn).__name__)})"


def _check_workers(workers: Any) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise errors.ConfigurationError(
            f"workers must be a whole number >= 1 (threads for reads and units); got {workers!r}"
        )
