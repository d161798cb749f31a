"""`BlockStore`: the hash chain (atomic appends with group commit), its searches, and the
short-term memories.

Results are plain frozen records, not ORM objects: they can cross threads and outlive the
unit that read them without lazy loads opening transactions behind the caller's back.

Layer 7, the block store. May import: every layer below it (``app.search``,
``app.chain``, ``app.database``, ``app.writers``, ``app.schema``, ``app.engine``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import Connection

from app import errors
from app.blocks import _reembed
from app.blocks._append_batcher import AppendBatcher
from app.blocks.short_term import ShortTermMemories
from app.chain import _block_queries, _time_window
from app.chain._block_arguments import SORT_COLUMNS
from app.chain._block_results import ChainCheck, ChainHead, ScoredBlock, SearchHit, check_chain
from app.chain._block_sql import (
    HEAD_SQL,
    RECENT_SQL,
    BlockRecord,
    Written,
    chained_records,
    load_records,
    plan_chain,
    write_chain,
)
from app.chain._block_values import PreparedBlock, prepare_block, prepare_blocks
from app.chain._validate import check_index, check_limit, check_timestamp
from app.database import Database, UnitKind
from app.database._read_units import retried_reads
from app.engine._driver import placeholder, raw_execute
from app.schema import _keyword_index
from app.search import _block_search
from app.writers._shared_transaction import WriteOutcome

__all__ = [
    "SORT_COLUMNS",
    "BlockRecord",
    "BlockStore",
    "ChainCheck",
    "ChainHead",
    "ScoredBlock",
    "SearchHit",
]

log = logging.getLogger(__name__)


# Every method that opens read snapshots of its own (the others read through ``_load``).
@retried_reads(
    "head", "count", "get", "recent", "search_keywords", "similar", "verify_chain", "_load"
)
class BlockStore:
    """The block chain of one :class:`~app.Database`.

    Every method is safe to call from any thread. Writes made while the calling thread is
    inside ``db.unit_of_work()`` join that unit; otherwise each call is its own unit.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.short_term = ShortTermMemories(db)
        # The zone of timestamps written without an offset (time windows read them in it).
        #: For the layer's modules: the zone of timestamps written without an offset.
        self.zone = _time_window.zone_of(db.settings.timezone)

    # -- writing ----------------------------------------------------------------------------

    def append(
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
        """Append the next block of the chain and return it once committed.

        The index is the head's plus one (0 for the first block), ``prev_hash`` the head's
        hash ('' for the first) and ``hash`` the legacy formula; reading the head and writing
        the block are one atomic step, whatever other threads and processes do.

        Raises:
            InvalidInputError: a bad argument (nothing is written).
            DatabaseBusyError: another process kept the database locked past the deadline.
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
        return self._append_prepared([prepared])[0]

    def append_many(self, blocks: Iterable[Mapping[str, Any]]) -> list[BlockRecord]:
        """Append many blocks (each a mapping of :meth:`append`'s arguments), in order.

        Every block is checked before any is written. The blocks are written in batches of
        ``max_batch``; each batch is contiguous, and appends of other threads may fall
        between batches.
        """
        prepared = prepare_blocks(blocks)
        records: list[BlockRecord] = []
        size = self.db.settings.max_batch
        for start in range(0, len(prepared), size):
            records.extend(self._append_prepared(prepared[start : start + size]))
        return records

    def _append_prepared(self, blocks: Sequence[PreparedBlock]) -> list[BlockRecord]:
        kind = self.db.unit_kind()
        if kind is UnitKind.WRITE:
            # Inside the caller's own unit: write directly (the queue's leader would wait
            # for the lock this thread holds).
            with self.db.writing() as connection:
                return chained_records(write_chain(connection, list(blocks)))
        if kind is not None:
            raise errors.TransactionStateError("cannot append inside a read unit")
        self.db.check_may_wait_for_turn()
        return chained_records(self._committer().submit(blocks))

    def _committer(self) -> AppendBatcher[PreparedBlock, Written]:
        return self.db.process_local("chain", self._new_batcher)

    def chain_batcher(self) -> AppendBatcher[PreparedBlock, Written]:
        """For the layer's modules (``app.aio``): this process's append batcher of the chain,
        to queue prepared blocks without blocking (``AppendBatcher.enqueue``)."""
        return self._committer()

    def _new_batcher(self) -> AppendBatcher[PreparedBlock, Written]:
        db = self.db

        def write(
            items: list[PreparedBlock],
            outcome: WriteOutcome,
            planned: list[Written] | None,
            finished: bool,
        ) -> list[Written]:
            def body(connection: Connection) -> list[Written]:
                rows = write_chain(connection, items, planned)  # type: ignore[arg-type]
                outcome.value = chained_records(rows) if finished else rows
                return outcome.value  # type: ignore[no-any-return]

            return db.run_on_connection(body, outcome)

        def plan(items: list[PreparedBlock], after: list[Written]) -> list[Written]:
            last = after[-1]
            return list(plan_chain(items, last.block_index + 1, last.hash))

        telemetry, side = db.core.telemetry, db.core.side  # a forked child makes its own
        appended = None if telemetry is None else telemetry.appended
        limits = (db.settings.max_batch, db.settings.retry_deadline)
        return AppendBatcher(write, *limits, db.url, plan, appended, side.holder)

    # -- reading ----------------------------------------------------------------------------

    def head(self) -> ChainHead | None:
        """Index and hash of the last block, or None for an empty chain."""
        with self.db.reading() as connection:
            row = raw_execute(connection, HEAD_SQL).fetchone()
        return None if row is None else ChainHead(row[0], row[1])

    def count(self) -> int:
        with self.db.reading() as connection:
            return int(raw_execute(connection, "SELECT count(*) FROM blocks").fetchone()[0])

    def get(self, block_index: int) -> BlockRecord | None:
        """The block at ``block_index``, or None."""
        index = check_index(block_index)
        # Straight to the five loading queries: a block that is not there loads nothing.
        with self.db.reading() as connection:
            found = load_records(connection, [index])
        return found[0] if found else None

    def page(
        self,
        start: int | None = None,
        end: int | None = None,
        *,
        limit: int = 100,
        offset: int = 0,
        sort_by: str = "block_index",
        order: str = "asc",
    ) -> list[BlockRecord]:
        """Blocks with ``start <= index <= end``, sorted by ``sort_by`` (a column name from
        :data:`SORT_COLUMNS`) in ``order`` ('asc' or 'desc')."""
        return self._load(_block_queries.page_query(start, end, limit, offset, sort_by, order))

    def recent(self, limit: int = 10) -> list[BlockRecord]:
        """The newest blocks (highest index first)."""
        count = check_limit(limit)
        with self.db.reading() as connection:
            rows = raw_execute(connection, RECENT_SQL[placeholder(connection)], (count,))
            return load_records(connection, [row[0] for row in rows])

    def search_keywords(self, keywords: Iterable[str], *, limit: int = 100) -> list[BlockRecord]:
        """Blocks whose keywords or context contain any of ``keywords`` (case-insensitive
        substring match, ``%`` and ``_`` taken literally), lowest index first.

        Case is folded by the database's ``lower()`` on both sides: ASCII letters only on
        SQLite (as the legacy class's LIKE did), all letters on PostgreSQL. A word always
        finds itself, whatever its letters. A trigram index (revision 0003) narrows the
        blocks tested; words under three characters are found by a scan.
        """
        return _block_search.keyword_search(self.db, keywords, limit)

    def refresh_search_index(self) -> int:
        """Index the blocks that writers added since the last search did (SQLite).

        Searches do this by themselves once enough blocks wait, and find waiting blocks by a
        scan meanwhile; call it after a bulk import to spare the next search that work.

        Returns:
            How many blocks were indexed (0 on PostgreSQL, whose indexes the server keeps).

        Raises:
            DatabaseBusyError: another writer kept the database locked past the deadline.
        """
        return _block_search.refresh_keyword_index(self.db)

    def set_embedding(self, block_index: int, embedding: Any, *, model: str = "default") -> bool:
        """Store ``embedding`` as block ``block_index``'s, replacing the one it had (or
        remove it with None). The block's hash does not cover its embedding: the chain is
        untouched. The next similarity search of every Database, in every process, sees it.

        Returns:
            True when the block exists (and was updated), else False.

        Raises:
            InvalidInputError: a bad index, vector or model (nothing is written).
        """
        return self.reembed([(block_index, embedding)], model=model) == 1

    def reembed(
        self, embeddings: Iterable[tuple[int, Any]] | Mapping[int, Any], *, model: str = "default"
    ) -> int:
        """Store new embeddings (made by ``model``) for many blocks in one write unit: a
        batch of a re-embedding while the service runs (see the recipe in
        docs/guide/search.md). Every vector is checked before anything is written; None
        removes a block's embedding.

        Returns:
            How many of the blocks exist (those that do not are skipped).

        Raises:
            InvalidInputError: a bad index, vector or model (nothing is written).
        """
        name = _reembed.check_model(model)
        rows = _reembed.prepare(embeddings)
        return self.db.run_on_connection(lambda connection: _reembed.write(connection, rows, name))

    def rebuild_search_index(self) -> int:
        """Rebuild the search indexes: put back whatever of them is missing (the keyword
        index's triggers and tables and the timestamp index, which a migration that rebuilt
        ``blocks`` may have dropped; on PostgreSQL the indexes) and, on SQLite, put every
        block in the keyword index afresh.

        Searches stay exact without it; ``app doctor`` says when it is needed, and
        ``app reindex`` runs it.

        Returns:
            How many blocks were indexed (0 on PostgreSQL).

        Raises:
            DatabaseBusyError: another writer kept the database locked past the deadline.
        """
        return self.db.run_on_connection(_keyword_index.reindex)[1]

    def search_tags(self, tags: Iterable[str], *, limit: int = 100) -> list[BlockRecord]:
        """Blocks carrying any of ``tags`` (exact match), lowest index first."""
        query = _block_queries.tags_query(tags, limit)
        return [] if query is None else self._load(query)

    def date_range(
        self, start: str | datetime, end: str | datetime, *, limit: int = 100
    ) -> list[BlockRecord]:
        """Blocks stamped from ``start`` to ``end`` inclusive (ISO strings or datetimes,
        with or without a UTC offset), newest first.

        Instants are compared, whatever zone each timestamp was written in: one without an
        offset is a time in ``Settings.timezone`` (the local zone by default). A stored
        timestamp that is not ISO-8601 is compared as text, as the old class did.
        """
        low, high = check_timestamp(start, "start"), check_timestamp(end, "end")
        return _block_search.time_window(self.db, self.zone, low, high, limit)

    def since(self, timestamp: str | datetime, *, limit: int = 100) -> list[BlockRecord]:
        """Blocks stamped at or after ``timestamp``, newest first (instants compared, as
        :meth:`date_range` does)."""
        return _block_search.time_window(
            self.db, self.zone, check_timestamp(timestamp), None, limit
        )

    def by_importance(
        self,
        threshold: float,
        *,
        limit: int = 100,
        sort_by: str = "importance",
        order: str = "desc",
    ) -> list[BlockRecord]:
        """Blocks with ``importance >= threshold``."""
        return self._load(_block_queries.importance_query(threshold, limit, sort_by, order))

    def similar(
        self,
        query_embedding: Any,
        top_k: int = 5,
        *,
        min_similarity: float | None = None,
        model: str | None = None,
    ) -> list[ScoredBlock]:
        """The ``top_k`` blocks whose embeddings are most cosine-similar to the query, best
        first (equal scores: lowest index first).

        Exact: the process keeps the embeddings in memory (up to ``vector_cache_limit``),
        refreshed from the blocks appended since, and scores the few rows that can be in the
        top k from their stored values; past the limit, embeddings are streamed in chunks.

        Args:
            model: compare only with embeddings of this ``embedding_model``.

        Raises:
            InvalidInputError: the query is not a finite, non-zero vector, or its dimension
                differs from a stored embedding's (a ``ValueError`` as in the legacy class).
        """
        return _block_search.similar(self.db, query_embedding, top_k, min_similarity, model)

    def search(
        self,
        text: str | None = None,
        embedding: Any = None,
        *,
        top_k: int = 10,
        weights: tuple[float, float] = (1.0, 1.0),
        depth: int | None = None,
        model: str | None = None,
    ) -> list[SearchHit]:
        """Find blocks about ``text`` and/or near ``embedding``, ranked together.

        Two ranked lists are fused by reciprocal rank: a block scores
        ``weights[0] / (60 + keyword_rank) + weights[1] / (60 + vector_rank)`` (a list it is
        not in adds nothing). The keyword list: the newest blocks that each word of
        ``text`` finds as :meth:`search_keywords` would (words split at non-word characters;
        words under two characters are dropped), ranked by how many of the words they
        contain, then newest first. The vector list is :meth:`similar`'s order. Equal scores:
        newest first. Both lists are read in one snapshot.

        Args:
            weights: (keyword, vector) weights, each >= 0, not both 0.
            depth: how many blocks of each list take part (default ``max(20, top_k)``;
                a block further down either list adds at most ``weight / (60 + depth)``).
            model: compare only with embeddings of this ``embedding_model``.

        Raises:
            InvalidInputError: neither ``text`` nor ``embedding`` given, or a bad argument
                (as for :meth:`search_keywords` and :meth:`similar`).
        """
        return _block_search.hybrid(self.db, text, embedding, top_k, weights, depth, model)

    def verify_chain(self, progress: Callable[[int], None] | None = None) -> ChainCheck:
        """Recompute every hash and link, and say where the chain first goes wrong.

        Streams the chain in index order inside one read snapshot, so memory stays bounded.

        Args:
            progress: called with the number of blocks checked so far, every few thousand.

        Returns:
            A :class:`ChainCheck`, true when every block's hash is right, each links to its
            predecessor's hash and the indices run 0, 1, 2, ... without gaps; otherwise it
            names the first index that does not and what is wrong there.
        """
        with self.db.reading() as connection:
            return check_chain(connection, progress)

    def _load(self, query: Select[Any]) -> list[BlockRecord]:
        with self.db.reading() as connection:
            indices = list(connection.execute(query).scalars())
            return load_records(connection, indices)
