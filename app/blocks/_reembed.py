"""Writing new embeddings for stored blocks (re-embedding with another model).

A block's embedding is not part of its hash, so it may be replaced without touching the
chain. The writes go through the triggers of revision 0005, which note each change for the
similarity caches of every process (``_vector_changes``); the notes are pruned here to the
newest :data:`KEEP_NOTES` (a cache further behind rebuilds, which it notices).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.engine import Connection

from app.chain._block_values import encode_embedding
from app.chain._validate import check_index, check_text
from app.engine._driver import raw_execute
from app.errors import InvalidInputError
from app.search._vector_changes import log_head

#: Change notes kept: caches more than this many changes behind rebuild instead.
KEEP_NOTES = 200_000

Prepared = tuple[int, bytes | None, int | None]


def prepare(embeddings: Iterable[tuple[int, Any]] | Mapping[int, Any]) -> list[Prepared]:
    """Every ``(block index, vector or None)`` checked and encoded before anything is
    written; the last one given for an index counts.

    Raises:
        InvalidInputError: a bad index or vector (named by its index).
    """
    pairs = embeddings.items() if isinstance(embeddings, Mapping) else embeddings
    found: dict[int, Prepared] = {}
    try:
        for index, vector in pairs:
            position = check_index(index)
            if vector is None:
                found[position] = (position, None, None)
            else:
                raw, size = encode_embedding(vector, f"the embedding of block {position}")
                found[position] = (position, raw, size)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(
            "embeddings must be a mapping (or pairs) of block index to vector"
        ) from exc
    return list(found.values())


def check_model(model: Any) -> str:
    return check_text(model, "model", allow_empty=False)


def write(connection: Connection, rows: list[Prepared], model: str) -> int:
    """Store the rows in the caller's write unit: an embedding replaced or added per block
    that exists (a None removes it). Returns how many blocks exist among them."""
    if not rows:
        return 0
    sqlite = connection.dialect.name == "sqlite"
    mark = "?" if sqlite else "%s"
    among = "IN (SELECT value FROM json_each(?))" if sqlite else "= ANY(%s)"
    wanted: Any = [row[0] for row in rows]
    wanted = json.dumps(wanted) if sqlite else wanted
    present = f"SELECT block_index FROM blocks WHERE block_index {among}"
    blocks = {r[0] for r in raw_execute(connection, present, (wanted,))}
    embedded = f"SELECT block_index FROM block_embeddings WHERE block_index {among}"
    stored = {r[0] for r in raw_execute(connection, embedded, (wanted,))}
    update = (
        f"UPDATE block_embeddings SET embedding = {mark}, embedding_dim = {mark}, "
        f"embedding_model = {mark} WHERE block_index = {mark}"
    )
    insert = (
        "INSERT INTO block_embeddings (block_index, embedding, embedding_model, embedding_dim) "
        f"VALUES ({mark}, {mark}, {mark}, {mark})"
    )
    remove = f"DELETE FROM block_embeddings WHERE block_index = {mark}"
    for index, raw, size in rows:
        if raw is None:
            if index in stored:
                raw_execute(connection, remove, (index,))
        elif index in stored:
            raw_execute(connection, update, (raw, size, model, index))
        elif index in blocks:
            raw_execute(connection, insert, (index, raw, model, size))
    log = log_head(connection)
    if log is not None and log[1] > KEEP_NOTES:  # none while a migration is below 0005
        raw_execute(
            connection,
            f"DELETE FROM embedding_changes WHERE seq > 0 AND seq < {mark}",
            (log[1] - KEEP_NOTES,),
        )
    return len(blocks)
