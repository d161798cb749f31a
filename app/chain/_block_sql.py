"""A block's rows in SQL: the chain written (the head read once, hashes chained, multi-row
inserts of the five tables in one driver call) and blocks loaded back as records."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import BigInteger, Table, literal
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from app.chain._block_values import PreparedBlock, chained_hash, decode_json_object, float32_values
from app.engine._driver import pipeline, placeholder, raw_execute, raw_execute_all
from app.models import blocks_table, embeddings_table, keywords_table, metadata_table, tags_table


class BlockRecord(NamedTuple):
    """A stored block with its keywords, tags, metadata and embedding (immutable).

    A named tuple rather than a dataclass: records are built by the thousand on the append
    and read paths, and a tuple is several times cheaper to make.
    """

    block_index: int
    timestamp: str
    context: str
    importance: float
    hash: str
    prev_hash: str
    keywords: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = MappingProxyType({})
    embedding: tuple[float, ...] | None = None
    embedding_model: str | None = None

    def __repr__(self) -> str:
        # An embedding is hundreds of floats: printed search results should show the blocks,
        # not screens of numbers (``.embedding`` holds them).
        vector = "None" if self.embedding is None else f"<{len(self.embedding)} floats>"
        values = ", ".join(
            f"{name}={vector if name == 'embedding' else repr(value)}"
            for name, value in zip(self._fields, self, strict=True)
        )
        return f"BlockRecord({values})"


HEAD_SQL = "SELECT block_index, hash FROM blocks ORDER BY block_index DESC LIMIT 1"
# Readers call these often: plain SQL skips building and caching a Core statement per call.
RECENT_SQL = {
    "?": "SELECT block_index FROM blocks ORDER BY block_index DESC LIMIT ?",
    "%s": "SELECT block_index FROM blocks ORDER BY block_index DESC LIMIT %s",
}

# The write path runs plain multi-row INSERTs (``VALUES (...), (...), ...``) through
# ``exec_driver_sql``: one statement per table per batch. Compiling ORM or Core statements
# costs more per row than storing it, and executemany() would release and retake the GIL
# once per row, which lets every waiting thread cut in while the batch holds the write lock.
# Table and column names are constants; every value is a bound parameter.
_INSERTS = (
    (blocks_table, ("block_index", "timestamp", "context", "importance", "hash", "prev_hash")),
    (keywords_table, ("block_index", "keyword")),
    (tags_table, ("block_index", "tag")),
    (metadata_table, ("block_index", "metadata")),
    (embeddings_table, ("block_index", "embedding", "embedding_model", "embedding_dim")),
)
# Bound parameters per statement: SQLite >= 3.32 allows 32766 (older builds 999).
_MAX_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


@functools.lru_cache(maxsize=256)
def _insert_statement(table: str, columns: tuple[str, ...], rows: int, placeholder: str) -> str:
    row = "(" + ", ".join([placeholder] * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([row] * rows)


def _insert_statements(
    table: Table, columns: tuple[str, ...], values: list[Any], marker: str
) -> Iterator[tuple[str, list[Any]]]:
    """The INSERTs of ``values`` (the rows' values one after another) into ``table``."""
    width = len(columns)
    per_statement = _MAX_PARAMETERS // width * width
    for start in range(0, len(values), per_statement):
        chunk = values[start : start + per_statement] if len(values) > per_statement else values
        yield _insert_statement(table.name, columns, len(chunk) // width, marker), chunk


class ChainedBlock(NamedTuple):
    """A block as :func:`write_chain` wrote it: its place in the chain and what it holds."""

    block_index: int
    hash: str
    prev_hash: str
    block: PreparedBlock


def write_chain(
    connection: Connection,
    blocks: list[PreparedBlock],
    planned: Sequence[ChainedBlock] | None = None,
) -> list[ChainedBlock]:
    """Chain ``blocks`` onto the current head and insert them (inside a write unit).

    ``planned``: the blocks already chained (:func:`plan_chain`) onto the head their
    planner expected; used when the head is that one, else the chain is worked out again.

    Returns the written blocks, which :func:`chained_records` turns into records (see the
    append batcher for who does it when).
    """
    head = raw_execute(connection, HEAD_SQL).fetchone()
    index, previous = (head[0] + 1, head[1]) if head is not None else (0, "")
    if (
        planned
        and len(planned) == len(blocks)
        and planned[0].block_index == index
        and planned[0].prev_hash == previous
    ):
        rows = list(planned)
    else:
        rows = plan_chain(blocks, index, previous)
    insert_blocks(connection, rows)
    return rows


def plan_chain(blocks: Sequence[PreparedBlock], index: int, previous: str) -> list[ChainedBlock]:
    """``blocks`` chained after the block ``index - 1`` whose hash is ``previous``."""
    rows = []
    for block in blocks:
        digest = chained_hash(index, previous, block)
        rows.append(ChainedBlock(index, digest, previous, block))
        previous = digest
        index += 1
    return rows


#: A block :func:`write_chain` wrote, as a writer hands it over: as written, or as its
#: record already (see :func:`chained_records`).
Written = ChainedBlock | BlockRecord


def chained_records(rows: Sequence[Written]) -> list[BlockRecord]:
    """The records of blocks :func:`write_chain` wrote, as they read back (a record given
    is kept as it is)."""
    return [row if isinstance(row, BlockRecord) else _prepared_record(*row) for row in rows]


def insert_blocks(
    connection: Connection, rows: Sequence[tuple[int, str, str, PreparedBlock]]
) -> None:
    """Insert complete blocks, each ``(index, hash, prev_hash, block)``, with multi-row inserts."""
    values: tuple[list[Any], ...] = ([], [], [], [], [])
    block_values, keyword_values, tag_values, metadata_values, embedding_values = values
    for index, digest, previous, block in rows:
        block_values += (index, block.timestamp, block.context, block.importance, digest, previous)
        for keyword in block.keywords:
            keyword_values += (index, keyword)
        for tag in block.tags:
            tag_values += (index, tag)
        if block.metadata_json is not None:
            metadata_values += (index, block.metadata_json)
        if block.embedding is not None:
            embedding_values += (index, block.embedding, block.embedding_model, block.embedding_dim)
    marker = placeholder(connection)
    statements = [
        statement
        for (table, columns), table_values in zip(_INSERTS, values, strict=True)
        if table_values
        for statement in _insert_statements(table, columns, table_values, marker)
    ]
    # One round trip for all five tables on PostgreSQL (no-op on SQLite).
    with pipeline(connection):
        raw_execute_all(connection, statements)


def _prepared_record(index: int, digest: str, previous: str, block: PreparedBlock) -> BlockRecord:
    return BlockRecord(
        block_index=index,
        timestamp=block.timestamp,
        context=block.context,
        importance=block.importance,
        hash=digest,
        prev_hash=previous,
        keywords=tuple(sorted(block.keywords)),
        tags=tuple(sorted(block.tags)),
        # Decoded from the stored text: a private copy, as it will read back.
        metadata=decode_json_object(block.metadata_json),
        embedding=None if block.embedding is None else float32_values(block.embedding),
        embedding_model=block.embedding_model if block.embedding is not None else None,
    )


# -- reading helpers -------------------------------------------------------------------------


def load_records(connection: Connection, indices: Sequence[int]) -> list[BlockRecord]:
    """Blocks in the order of ``indices``: one query per table (no N+1), whatever their number.

    Plain SQL on the driver: loading pages of blocks is the read path's hot loop, and
    building ORM objects only to copy them into records would double its cost.
    """
    loaded: dict[int, BlockRecord] = {}
    # Bound the IN list: SQLite allows 32766 parameters, PostgreSQL 65535.
    for start in range(0, len(indices), 10000):
        loaded.update(_load_chunk(connection, tuple(indices[start : start + 10000])))
    return [loaded[i] for i in indices if i in loaded]


def _load_chunk(connection: Connection, wanted: tuple[int, ...]) -> dict[int, BlockRecord]:
    where = f"WHERE block_index IN ({', '.join([placeholder(connection)] * len(wanted))})"

    def rows(columns: str, table: str) -> list[Any]:
        return list(raw_execute(connection, f"SELECT {columns} FROM {table} {where}", wanted))

    keywords: dict[int, list[str]] = {}
    for index, keyword in rows("block_index, keyword", "block_keywords"):
        keywords.setdefault(index, []).append(keyword)
    tags: dict[int, list[str]] = {}
    for index, tag in rows("block_index, tag", "block_tags"):
        tags.setdefault(index, []).append(tag)
    metadata = dict(rows("block_index, metadata", "block_metadata"))
    embeddings = {
        row[0]: row[1:]
        for row in rows(
            "block_index, embedding, embedding_dim, embedding_model", "block_embeddings"
        )
    }
    loaded = {}
    for index, timestamp, context, importance, digest, previous in rows(
        "block_index, timestamp, context, importance, hash, prev_hash", "blocks"
    ):
        stored = embeddings.get(index)
        loaded[index] = BlockRecord(
            block_index=index,
            timestamp=timestamp,
            context=context,
            importance=importance,
            hash=digest,
            prev_hash=previous,
            # Sorted in Python (code-point order, as the legacy class returned them on
            # SQLite), so every backend agrees whatever its collation.
            keywords=tuple(sorted(keywords.get(index, ()))),
            tags=tuple(sorted(tags.get(index, ()))),
            metadata=decode_json_object(metadata.get(index)),
            embedding=None
            if stored is None
            else tuple(_decode_vector(bytes(stored[0]), stored[1]).tolist()),
            embedding_model=None if stored is None else stored[2],
        )
    return loaded


def _decode_vector(blob: bytes, dimension: int | None) -> np.ndarray[Any, Any]:
    vector = np.frombuffer(blob, dtype=np.float32)
    return vector[:dimension] if dimension else vector


def index_value(index: int) -> ColumnElement[int]:
    """A block index bound as BIGINT: ``block_index`` is a 4-byte INTEGER on PostgreSQL,
    where comparing it with a larger index must find nothing rather than fail."""
    return literal(index, BigInteger())
