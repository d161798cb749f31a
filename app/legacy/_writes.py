"""What the old API's writes do beside the chain append (``ThreadSafeDatabaseManager`` calls
them): a complete block checked for insert, a block's metadata or embedding replaced, a
short-term memory added, and blocks imported from a JSON-lines file (``migrate_from_jsonl``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from app import errors
from app.blocks import BlockStore
from app.blocks.jsonl_import import import_jsonl
from app.blocks.short_term import ShortTermMemories
from app.chain._block_sql import index_value
from app.chain._block_values import PreparedBlock, encode_json
from app.chain._validate import check_index, check_text
from app.database import Database
from app.legacy._conn import ThreadConnection, UseTracker
from app.legacy._values import POSTGRES_MAX_INDEX, iso, legacy_block
from app.models import blocks_table, metadata_table

# Messages keep the logger of the manager they are about.
log = logging.getLogger("app.legacy")


def block_row(
    block_data: Mapping[str, Any], is_sqlite: bool
) -> tuple[int, str, str, PreparedBlock]:
    """``add_block``'s row, checked (PostgreSQL's narrower index included)."""
    row = legacy_block(block_data)
    if row[0] > POSTGRES_MAX_INDEX and not is_sqlite:
        raise errors.InvalidInputError(
            f"block_index must be at most {POSTGRES_MAX_INDEX} on PostgreSQL (its "
            f"block_index column is a 4-byte INTEGER), got {row[0]}"
        )
    return row


def metadata_replacement(
    block_index: int, metadata: Mapping[str, Any]
) -> Callable[[Connection], bool]:
    """``update_block_metadata``'s write, its arguments checked."""
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

    return replace


def memory_addition(
    short_term: ShortTermMemories, memory_data: Mapping[str, Any]
) -> Callable[[Connection], str]:
    """``add_short_term_memory``'s write, its arguments checked."""
    if not isinstance(memory_data, Mapping):
        raise errors.InvalidInputError(
            f"memory_data must be a dict, got {type(memory_data).__name__}"
        )
    memory_id = check_text(memory_data.get("id"), "id", allow_empty=False)
    timestamp = memory_data.get("timestamp")

    def add(connection: Connection) -> str:
        return short_term.add(
            memory_id,
            memory_data.get("content"),  # type: ignore[arg-type]  # checked by add()
            timestamp=None if timestamp is None else iso(timestamp),
            speaker=memory_data.get("speaker"),
            metadata=memory_data.get("metadata") or None,
        )

    return add


def new_embedding(
    users: UseTracker,
    blocks: BlockStore,
    proxy: ThreadConnection | None,
    block_index: int,
    embedding: Any,
    embedding_model: str,
) -> bool:
    """The work of the manager's ``update_block_embedding``."""
    with users:
        found = blocks.set_embedding(block_index, embedding, model=embedding_model)
        if proxy is not None:
            proxy.commit_after_write()
        return found


def migrate_jsonl(
    users: UseTracker,
    database: Database,
    proxy: ThreadConnection | None,
    block_file_path: str,
) -> int:
    """The work of the manager's ``migrate_from_jsonl``."""
    if not isinstance(block_file_path, str | os.PathLike):
        raise errors.InvalidInputError(
            f"block_file_path must be a path, got {type(block_file_path).__name__}"
        )
    if not os.path.exists(block_file_path):
        log.warning("%s does not exist: nothing to migrate", block_file_path)
        return 0
    with users:
        result = import_jsonl(database, os.fspath(block_file_path), as_given=legacy_block)
    for example in result.examples:
        log.warning("%s %s: skipped", block_file_path, example)
    if result.skipped > len(result.examples):
        log.warning("%s: %d lines skipped in all", block_file_path, result.skipped)
    if proxy is not None:
        proxy.commit_after_write()
    return result.kept
