"""The old API's values: block dicts checked and prepared for ``insert_blocks``, records
returned as the old class's dicts, and its lenient readings of arguments (unknown sort
fields and orders, negative indexes, dates, blank vectors)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from app import errors
from app.blocks.short_term import MemoryRecord
from app.chain._block_sql import BlockRecord
from app.chain._block_values import PreparedBlock, prepare_block
from app.chain._validate import check_index, check_text

SORT_FIELDS = ("block_index", "timestamp", "importance")
#: ``blocks.block_index`` is a 4-byte INTEGER on PostgreSQL (8 bytes on SQLite).
POSTGRES_MAX_INDEX = 2**31 - 1


def fallback(value: Any, allowed: tuple[str, ...], default: str) -> str:
    # The old class replaced unknown sort fields and orders instead of refusing them.
    if isinstance(value, str) and value.lower() in allowed:
        return value.lower()
    return default


def is_negative(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value < 0)


def iso(value: Any) -> Any:
    # Dates, datetimes and anything else with isoformat(), as the old class accepted.
    return value.isoformat() if hasattr(value, "isoformat") else value


def is_blank_vector(value: Any) -> bool:
    if value is None:
        return True
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return False  # let the store refuse it with a clear message
    return bool(vector.size == 0 or (vector.ndim == 1 and not vector.any()))


def legacy_block(data: Any) -> tuple[int, str, str, PreparedBlock]:
    """Check a legacy block dict and prepare its row for insert_blocks."""
    if not isinstance(data, Mapping):
        raise errors.InvalidInputError(f"block_data must be a dict, got {type(data).__name__}")
    for required in ("block_index", "timestamp", "context", "hash"):
        if data.get(required) is None:
            raise errors.InvalidInputError(f"block_data has no {required!r}")
    embedding = data.get("embedding")
    if embedding is not None and is_empty(embedding):
        embedding = None  # the old class stored no embedding for an empty one
    prepared = prepare_block(
        data["context"],
        keywords=data.get("keywords", ()),
        tags=data.get("tags", ()),
        importance=data.get("importance", 0.0),
        metadata=data.get("metadata") or None,
        embedding=embedding,
        embedding_model=data.get("embedding_model", "default"),
        timestamp=iso(data["timestamp"]),
        legacy=True,  # the old add_block stored any importance and any timestamp text
    )
    return (
        check_index(data["block_index"]),
        check_text(data["hash"], "hash"),
        check_text(data.get("prev_hash", ""), "prev_hash"),
        prepared,
    )


def is_empty(value: Any) -> bool:
    if (type(value) is list or type(value) is tuple) and value and type(value[0]) is float:
        return False  # the usual embedding, without numpy's conversion of the whole list
    try:
        return bool(np.size(value) == 0)
    except (TypeError, ValueError, OverflowError):
        return False  # ragged or not numbers: prepare_block refuses it with a clear message


def block_dict(record: BlockRecord) -> dict[str, Any]:
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


def memory_dict(memory: MemoryRecord) -> dict[str, Any]:
    return {
        "id": memory.id,
        "timestamp": memory.timestamp,
        "content": memory.content,
        "speaker": memory.speaker,
        "metadata": dict(memory.metadata),
    }
