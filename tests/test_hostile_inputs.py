"""Hostile inputs fed to the legacy facade and to the block store, on every backend.

Each input either works (stored and read back exactly; ``%``, ``_`` and ``\\`` are matched
literally by searches) or is refused with :class:`~app.errors.InvalidInputError` whose
message names the argument, and the refused call leaves every table exactly as it was.

NUL characters: PostgreSQL cannot store them in text, so the layer refuses them in every
text argument on both backends alike; inside metadata they are written as JSON escapes
(``\\u0000``) and read back exactly, on both backends.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import errors
from app._validate import MAX_TEXT_BYTES
from app.legacy import DatabaseManager

from .helpers import postgres_schema, require_backend
from .legacy_helpers import legacy_hash, next_block

#: Every legacy table and the column its rows are ordered by in a snapshot.
TABLES = {
    "blocks": "block_index",
    "block_keywords": "id",
    "block_tags": "id",
    "block_metadata": "block_index",
    "block_embeddings": "block_index",
    "short_term_memories": "id",
}

Snapshot = dict[str, list[tuple[Any, ...]]]
#: A call on the manager; ``Any`` so that the table may pass the wrong types on purpose.
Call = Callable[[Any], object]


def snapshot(manager: DatabaseManager) -> Snapshot:
    """Every row of every legacy table, in a fixed order (BLOBs as bytes)."""
    with manager.database.read() as session:
        return {
            table: [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in session.execute(text(f"SELECT * FROM {table} ORDER BY {key}"))
            ]
            for table, key in TABLES.items()
        }


def nested(depth: int) -> dict[str, Any]:
    """A dict nested ``depth`` levels deep (too deep for ``json.dumps``)."""
    root: dict[str, Any] = {}
    level = root
    for _ in range(depth):
        level["a"] = {}
        level = level["a"]
    return root


def hashed_block(
    index: int, prev_hash: str, context: str, importance: float = 0.5, **extra: Any
) -> dict[str, Any]:
    """A complete legacy block with ``context`` as given and its correct hash."""
    timestamp = f"2024-05-01T10:{index // 60 % 60:02d}:{index % 60:02d}"
    block = {
        "block_index": index,
        "timestamp": timestamp,
        "context": context,
        "importance": importance,
        "prev_hash": prev_hash,
        "hash": legacy_hash(index, timestamp, context, importance, prev_hash),
    }
    block.update(extra)
    return block


_DROP = object()  # a field value meaning "leave the field out"


def block_with(manager: DatabaseManager, **fields: Any) -> dict[str, Any]:
    """The valid next block of the chain, with ``fields`` replaced (or dropped)."""
    block = next_block(
        manager.get_last_block_info(),
        keywords=["k"],
        tags=["t"],
        metadata={"m": 1},
        embedding=[1.0, 2.0, 3.0],
    )
    for key, value in fields.items():
        if value is _DROP:
            del block[key]
        else:
            block[key] = value
    return block


def memory_with(**fields: Any) -> dict[str, Any]:
    memory: dict[str, Any] = {
        "id": "new",
        "timestamp": "2024-01-01T00:00:00",
        "content": "c",
        "speaker": "user",
        "metadata": {"turn": 1},
    }
    for key, value in fields.items():
        if value is _DROP:
            del memory[key]
        else:
            memory[key] = value
    return memory


def _fresh_manager(backend: str, directory: Path) -> Iterator[DatabaseManager]:
    """A DatabaseManager on an empty database of ``backend`` (thread-safe mode)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("GREEUM_THREAD_SAFE", raising=False)
        if backend == "sqlite":
            manager = DatabaseManager(str(directory / "memory.db"))
            yield manager
            manager.close()
            return
        with postgres_schema("h_") as url:
            manager = DatabaseManager(url)
            yield manager
            manager.close()


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabaseManager]:
    """One database per backend for the whole refusal table (refusals never write, which
    every case checks): a short chain with embeddings of dimension 3, and two memories."""
    require_backend(str(request.param))
    for manager in _fresh_manager(str(request.param), tmp_path_factory.mktemp("hostile")):
        last = None
        for number in range(3):
            block = next_block(
                last,
                keywords=[f"k{number}", "100%"],
                tags=["t", "a_b"],
                metadata={"n": number},
                embedding=[1.0, float(number), 0.5],
            )
            manager.add_block(block)
            last = manager.get_last_block_info()
        manager.add_short_term_memory(memory_with(id="m1"))
        manager.add_short_term_memory(memory_with(id="m2", metadata={}))
        yield manager


@pytest.fixture
def manager(backend: str, tmp_path: Path) -> Iterator[DatabaseManager]:
    """An empty database of the current backend, for the cases that write."""
    yield from _fresh_manager(backend, tmp_path)


# -- the refusal table --------------------------------------------------------------------

INJECTION = "'; DROP TABLE blocks; --"


def refused(case_id: str, call: Call, argument: str, detail: str = "") -> Any:
    """A call that must raise InvalidInputError naming ``argument`` (and matching
    ``detail``, a regular expression) and change nothing."""
    return pytest.param(call, argument, detail, id=case_id)


def add_block_with(fields: dict[str, Any]) -> Call:
    """add_block of the valid next block with ``fields`` replaced."""

    def call(manager: DatabaseManager) -> object:
        return manager.add_block(block_with(manager, **fields))

    return call


#: (case, fields replaced in a valid next block, argument named, message detail)
ADD_BLOCK_FIELDS: list[tuple[str, dict[str, Any], str, str]] = [
    ("context-NUL", {"context": "a\x00b"}, "context", "NUL"),
    ("context-lone-surrogate", {"context": "a\ud800b"}, "context", "not valid Unicode"),
    ("context-bytes", {"context": b"abc"}, "context", "must be a string"),
    ("context-int", {"context": 42}, "context", "must be a string"),
    ("keywords-dict", {"keywords": {"k": 1}}, "keywords", "must be a list"),
    ("keywords-str", {"keywords": "k1,k2"}, "keywords", "must be a list"),
    ("keywords-bytes", {"keywords": b"k"}, "keywords", "must be a list"),
    ("keywords-int-item", {"keywords": ["ok", 7]}, "keywords[1]", "must be a string"),
    ("keywords-bytes-item", {"keywords": [b"k"]}, "keywords[0]", "must be a string"),
    ("keywords-NUL-item", {"keywords": ["k\x00"]}, "keywords[0]", "NUL"),
    ("tags-surrogate-item", {"tags": ["\udfff"]}, "tags[0]", "not valid Unicode"),
    ("tags-None-item", {"tags": [None]}, "tags[0]", "must be a string"),
    ("tags-dict", {"tags": {"t": 1}}, "tags", "must be a list"),
    ("importance-NaN", {"importance": float("nan")}, "importance", "finite"),
    ("importance-inf", {"importance": float("inf")}, "importance", "finite"),
    ("importance--inf", {"importance": float("-inf")}, "importance", "finite"),
    ("importance-str", {"importance": "0.5"}, "importance", "must be a number"),
    ("importance-bool", {"importance": True}, "importance", "must be a number"),
    ("importance-None", {"importance": None}, "importance", "must be a number"),
    ("importance-huge-int", {"importance": 10**400}, "importance", "finite"),
    ("embedding-NaN", {"embedding": [1.0, float("nan")]}, "embedding", "NaN"),
    ("embedding-inf", {"embedding": [float("inf"), 1.0]}, "embedding", "infinite"),
    ("embedding-ragged", {"embedding": [[1.0], [2.0, 3.0]]}, "embedding", "ragged"),
    ("embedding-2d", {"embedding": [[1.0, 2.0], [3.0, 4.0]]}, "embedding", "one-dimen"),
    ("embedding-bools", {"embedding": [True, False]}, "embedding", "numbers"),
    ("embedding-str", {"embedding": "1,2,3"}, "embedding", "list, tuple or numpy"),
    ("embedding-bytes", {"embedding": b"\x00\x00\x80?"}, "embedding", "list, tuple"),
    ("embedding-dict", {"embedding": {"x": 1.0}}, "embedding", "list, tuple or numpy"),
    ("embedding-None-items", {"embedding": [None, None]}, "embedding", "numbers"),
    ("embedding-beyond-float32", {"embedding": [1e39]}, "embedding", "float32"),
    ("embedding-tuple-beyond-float32", {"embedding": (0.5, -1e39)}, "embedding", "float32"),
    ("embedding-inf-and-minus-inf", {"embedding": [math.inf, -math.inf]}, "embedding", "NaN"),
    ("embedding-float-then-str", {"embedding": [1.0, "2.0"]}, "embedding", "numbers"),
    ("embedding-float-then-list", {"embedding": [1.0, [2.0]]}, "embedding", "ragged"),
    ("embedding-scalar", {"embedding": 5.0}, "embedding", "one-dimensional"),
    ("embedding-huge-int", {"embedding": [10**400]}, "embedding", "numbers"),
    ("embedding_model-int", {"embedding_model": 5}, "embedding_model", "a string"),
    ("embedding_model-NUL", {"embedding_model": "m\x00"}, "embedding_model", "NUL"),
    ("metadata-list", {"metadata": [1, 2]}, "metadata", "must be a dict"),
    ("metadata-str", {"metadata": "{}x"}, "metadata", "must be a dict"),
    ("metadata-NaN", {"metadata": {"x": float("nan")}}, "metadata", "JSON"),
    ("metadata-set", {"metadata": {"x": {1, 2}}}, "metadata", "JSON"),
    ("metadata-surrogate", {"metadata": {"x": "\ud800"}}, "metadata", "Unicode"),
    ("metadata-too-deep", {"metadata": nested(100_000)}, "metadata", "too deeply"),
    ("timestamp-int", {"timestamp": 1_700_000_000}, "timestamp", "must be a string"),
    ("timestamp-NUL", {"timestamp": "2024-01-01\x00"}, "timestamp", "NUL"),
    ("block_index-str", {"block_index": "3"}, "block_index", "must be an integer"),
    ("block_index-injection", {"block_index": "3 OR 1=1"}, "block_index", "integer"),
    ("block_index-float", {"block_index": 3.0}, "block_index", "must be an integer"),
    ("block_index-bool", {"block_index": True}, "block_index", "must be an integer"),
    ("block_index-negative", {"block_index": -1}, "block_index", "between 0"),
    ("block_index-2**63", {"block_index": 2**63}, "block_index", "between 0"),
    ("block_index-huge", {"block_index": 10**5000}, "block_index", "between 0"),
    ("block_index-missing", {"block_index": _DROP}, "block_index", "no 'block_index'"),
    ("hash-missing", {"hash": _DROP}, "hash", "no 'hash'"),
    ("hash-int", {"hash": 123}, "hash", "must be a string"),
    ("hash-NUL", {"hash": "ab\x00"}, "hash", "NUL"),
    ("prev_hash-None", {"prev_hash": None}, "prev_hash", "must be a string"),
    ("prev_hash-surrogate", {"prev_hash": "\udc80"}, "prev_hash", "Unicode"),
]

ADD_BLOCK_REFUSALS = [
    refused(f"add_block-{name}", add_block_with(fields), argument, detail)
    for name, fields, argument, detail in ADD_BLOCK_FIELDS
] + [
    refused(
        "add_block-context-over-64MiB",
        lambda m: m.add_block(block_with(m, context="x" * (MAX_TEXT_BYTES + 1))),
        "context",
        "the limit is",
    ),
    refused("add_block-list", lambda m: m.add_block([1, 2]), "block_data", "must be a dict"),
    refused("add_block-None", lambda m: m.add_block(None), "block_data", "must be a dict"),
    refused("add_block-str", lambda m: m.add_block(INJECTION), "block_data", "must be a dict"),
]

FACADE_READ_REFUSALS = [
    refused("get_block-str", lambda m: m.get_block("0"), "block_index", "integer"),
    refused("get_block-injection", lambda m: m.get_block("0 OR 1=1"), "block_index", "integer"),
    refused("get_block-float", lambda m: m.get_block(1.0), "block_index", "integer"),
    refused("get_block-bool", lambda m: m.get_block(True), "block_index", "integer"),
    refused("get_block-None", lambda m: m.get_block(None), "block_index", "integer"),
    refused("get_block-2**63", lambda m: m.get_block(2**63), "block_index", "between 0"),
    refused("get_block-huge", lambda m: m.get_block(10**5000), "block_index", "between 0"),
    refused(
        "get_blocks-start-injection", lambda m: m.get_blocks(INJECTION), "start_idx", "integer"
    ),
    refused("get_blocks-start-float", lambda m: m.get_blocks(0.5), "start_idx", "integer"),
    refused("get_blocks-start-bool", lambda m: m.get_blocks(True), "start_idx", "integer"),
    refused("get_blocks-end-str", lambda m: m.get_blocks(0, "2"), "end_idx", "integer"),
    refused("get_blocks-limit-negative", lambda m: m.get_blocks(limit=-1), "limit", ">= 0"),
    refused("get_blocks-limit-str", lambda m: m.get_blocks(limit="10"), "limit", "integer"),
    refused("get_blocks-limit-bool", lambda m: m.get_blocks(limit=True), "limit", "integer"),
    refused("get_blocks-limit-2**63", lambda m: m.get_blocks(limit=2**63), "limit", "2\\*\\*63"),
    refused("get_blocks-offset-negative", lambda m: m.get_blocks(offset=-5), "offset", ">= 0"),
    refused("get_blocks-offset-None", lambda m: m.get_blocks(offset=None), "offset", "integer"),
    refused(
        "search_keyword-str", lambda m: m.search_blocks_by_keyword(INJECTION), "keywords", "list"
    ),
    refused("search_keyword-bytes", lambda m: m.search_blocks_by_keyword(b"k"), "keywords", "list"),
    refused(
        "search_keyword-dict", lambda m: m.search_blocks_by_keyword({"k": 1}), "keywords", "list"
    ),
    refused("search_keyword-int", lambda m: m.search_blocks_by_keyword(5), "keywords", "list"),
    refused(
        "search_keyword-None-item",
        lambda m: m.search_blocks_by_keyword([None]),
        "keywords[0]",
        "string",
    ),
    refused(
        "search_keyword-bytes-item",
        lambda m: m.search_blocks_by_keyword([b"%"]),
        "keywords[0]",
        "string",
    ),
    refused(
        "search_keyword-NUL", lambda m: m.search_blocks_by_keyword(["k\x00"]), "keywords[0]", "NUL"
    ),
    refused(
        "search_keyword-surrogate",
        lambda m: m.search_blocks_by_keyword(["\ud800"]),
        "keywords[0]",
        "Unicode",
    ),
    refused(
        "search_keyword-limit-negative",
        lambda m: m.search_blocks_by_keyword(["k"], limit=-1),
        "limit",
        ">= 0",
    ),
    refused(
        "search_embedding-str",
        lambda m: m.search_blocks_by_embedding(INJECTION),
        "query embedding",
        "list",
    ),
    refused(
        "search_embedding-bytes",
        lambda m: m.search_blocks_by_embedding(b"\x00\x00\x80?"),
        "query embedding",
        "list",
    ),
    refused(
        "search_embedding-dict",
        lambda m: m.search_blocks_by_embedding({"x": 1.0}),
        "query embedding",
        "list",
    ),
    refused(
        "search_embedding-NaN",
        lambda m: m.search_blocks_by_embedding([float("nan"), 1, 0]),
        "query embedding",
        "NaN",
    ),
    refused(
        "search_embedding-inf",
        lambda m: m.search_blocks_by_embedding([float("inf"), 1, 0]),
        "query embedding",
        "infinite",
    ),
    refused(
        "search_embedding-ragged",
        lambda m: m.search_blocks_by_embedding([[1.0], [2.0, 3.0]]),
        "query embedding",
        "ragged",
    ),
    refused(
        "search_embedding-2d",
        lambda m: m.search_blocks_by_embedding([[1.0, 2.0, 3.0]] * 2),
        "query embedding",
        "one-dimensional",
    ),
    refused(
        "search_embedding-objects",
        lambda m: m.search_blocks_by_embedding([object()]),
        "query embedding",
        "numbers",
    ),
    refused(
        "search_embedding-huge-int",
        lambda m: m.search_blocks_by_embedding([10**400, 1, 0]),
        "query embedding",
        "numbers",
    ),
    refused(
        "search_embedding-wrong-dimension",
        lambda m: m.search_blocks_by_embedding([1.0, 0.0]),
        "query embedding",
        "dimension 2",
    ),
    refused(
        "search_embedding-top_k-negative",
        lambda m: m.search_blocks_by_embedding([1, 0, 0], top_k=-1),
        "top_k",
        ">= 0",
    ),
    refused(
        "search_embedding-top_k-bool",
        lambda m: m.search_blocks_by_embedding([1, 0, 0], top_k=True),
        "top_k",
        "integer",
    ),
    refused(
        "search_embedding-top_k-str",
        lambda m: m.search_blocks_by_embedding([1, 0, 0], top_k="5"),
        "top_k",
        "integer",
    ),
    refused(
        "search_embedding-min_similarity-str",
        lambda m: m.search_blocks_by_embedding([1, 0, 0], min_similarity="0.5"),
        "min_similarity",
        "number",
    ),
    refused(
        "search_embedding-min_similarity-NaN",
        lambda m: m.search_blocks_by_embedding([1, 0, 0], min_similarity=float("nan")),
        "min_similarity",
        "finite",
    ),
    refused(
        "filter_importance-str",
        lambda m: m.filter_blocks_by_importance("0.5"),
        "threshold",
        "number",
    ),
    refused(
        "filter_importance-NaN",
        lambda m: m.filter_blocks_by_importance(float("nan")),
        "threshold",
        "finite",
    ),
    refused(
        "filter_importance-huge-int",
        lambda m: m.filter_blocks_by_importance(10**400),
        "threshold",
        "finite",
    ),
    refused(
        "date_range-NUL",
        lambda m: m.search_blocks_by_date_range("2020-01-01", "2030\x00"),
        "end_date",
        "NUL",
    ),
    refused(
        "since-int", lambda m: m.get_blocks_since_time(1_700_000_000), "since_timestamp", "string"
    ),
]

FACADE_WRITE_REFUSALS = [
    refused(
        "update_metadata-index-str",
        lambda m: m.update_block_metadata("0", {}),
        "block_index",
        "integer",
    ),
    refused(
        "update_metadata-index-bool",
        lambda m: m.update_block_metadata(False, {}),
        "block_index",
        "integer",
    ),
    refused(
        "update_metadata-index-negative",
        lambda m: m.update_block_metadata(-1, {}),
        "block_index",
        "between 0",
    ),
    refused(
        "update_metadata-index-huge",
        lambda m: m.update_block_metadata(10**5000, {}),
        "block_index",
        "between 0",
    ),
    refused("update_metadata-None", lambda m: m.update_block_metadata(0, None), "metadata", "dict"),
    refused(
        "update_metadata-list", lambda m: m.update_block_metadata(0, [("a", 1)]), "metadata", "dict"
    ),
    refused(
        "update_metadata-injection",
        lambda m: m.update_block_metadata(0, INJECTION),
        "metadata",
        "dict",
    ),
    refused(
        "update_metadata-NaN",
        lambda m: m.update_block_metadata(0, {"x": float("nan")}),
        "metadata",
        "JSON",
    ),
    refused(
        "update_metadata-object",
        lambda m: m.update_block_metadata(0, {"x": object()}),
        "metadata",
        "JSON",
    ),
    refused(
        "update_metadata-tuple-key",
        lambda m: m.update_block_metadata(0, {(1, 2): "x"}),
        "metadata",
        "JSON",
    ),
    refused(
        "update_metadata-too-deep",
        lambda m: m.update_block_metadata(0, nested(100_000)),
        "metadata",
        "too deeply",
    ),
    refused(
        "update_metadata-surrogate",
        lambda m: m.update_block_metadata(0, {"\ud800": 1}),
        "metadata",
        "Unicode",
    ),
    refused(
        "add_memory-list", lambda m: m.add_short_term_memory([("id", "x")]), "memory_data", "dict"
    ),
    refused("add_memory-None", lambda m: m.add_short_term_memory(None), "memory_data", "dict"),
    refused(
        "add_memory-no-id", lambda m: m.add_short_term_memory(memory_with(id=_DROP)), "id", "string"
    ),
    refused(
        "add_memory-id-int", lambda m: m.add_short_term_memory(memory_with(id=1)), "id", "string"
    ),
    refused(
        "add_memory-id-empty", lambda m: m.add_short_term_memory(memory_with(id="")), "id", "empty"
    ),
    refused(
        "add_memory-id-NUL",
        lambda m: m.add_short_term_memory(memory_with(id="m1\x00")),
        "id",
        "NUL",
    ),
    refused(
        "add_memory-id-surrogate",
        lambda m: m.add_short_term_memory(memory_with(id="\ud800")),
        "id",
        "Unicode",
    ),
    refused(
        "add_memory-content-missing",
        lambda m: m.add_short_term_memory(memory_with(content=_DROP)),
        "content",
        "string",
    ),
    refused(
        "add_memory-content-bytes",
        lambda m: m.add_short_term_memory(memory_with(content=b"c")),
        "content",
        "string",
    ),
    refused(
        "add_memory-content-NUL",
        lambda m: m.add_short_term_memory(memory_with(content="c\x00")),
        "content",
        "NUL",
    ),
    refused(
        "add_memory-content-surrogate",
        lambda m: m.add_short_term_memory(memory_with(content="\udfff")),
        "content",
        "Unicode",
    ),
    refused(
        "add_memory-speaker-int",
        lambda m: m.add_short_term_memory(memory_with(speaker=7)),
        "speaker",
        "string",
    ),
    refused(
        "add_memory-speaker-NUL",
        lambda m: m.add_short_term_memory(memory_with(speaker="u\x00")),
        "speaker",
        "NUL",
    ),
    refused(
        "add_memory-timestamp-injection",
        lambda m: m.add_short_term_memory(memory_with(timestamp=INJECTION)),
        "timestamp",
        "ISO-8601",
    ),
    refused(
        "add_memory-timestamp-int",
        lambda m: m.add_short_term_memory(memory_with(timestamp=5)),
        "timestamp",
        "string",
    ),
    refused(
        "add_memory-metadata-str",
        lambda m: m.add_short_term_memory(memory_with(metadata="{}")),
        "metadata",
        "dict",
    ),
    refused(
        "add_memory-metadata-list",
        lambda m: m.add_short_term_memory(memory_with(metadata=[1])),
        "metadata",
        "dict",
    ),
    refused(
        "add_memory-metadata-NaN",
        lambda m: m.add_short_term_memory(memory_with(metadata={"x": float("inf")})),
        "metadata",
        "JSON",
    ),
    refused("get_memory-int", lambda m: m.get_short_term_memory_by_id(1), "id", "string"),
    refused("get_memory-None", lambda m: m.get_short_term_memory_by_id(None), "id", "string"),
    refused("get_memory-bytes", lambda m: m.get_short_term_memory_by_id(b"m1"), "id", "string"),
    refused("get_memory-NUL", lambda m: m.get_short_term_memory_by_id("m1\x00"), "id", "NUL"),
    refused(
        "get_memory-surrogate", lambda m: m.get_short_term_memory_by_id("\ud800"), "id", "Unicode"
    ),
    refused("delete_memory-None", lambda m: m.delete_short_term_memory(None), "id", "string"),
    refused("delete_memory-list", lambda m: m.delete_short_term_memory(["m1"]), "id", "string"),
    refused("delete_memory-NUL", lambda m: m.delete_short_term_memory("m1\x00"), "id", "NUL"),
    refused(
        "expire-NaN",
        lambda m: m.delete_expired_short_term_memories(float("nan")),
        "ttl_seconds",
        "finite",
    ),
    refused(
        "expire-str", lambda m: m.delete_expired_short_term_memories("60"), "ttl_seconds", "number"
    ),
    refused(
        "expire-bool", lambda m: m.delete_expired_short_term_memories(True), "ttl_seconds", "number"
    ),
    refused(
        "expire-huge-int",
        lambda m: m.delete_expired_short_term_memories(10**400),
        "ttl_seconds",
        "finite",
    ),
    refused(
        "recent_memories-negative", lambda m: m.get_recent_short_term_memories(-1), "count", ">= 0"
    ),
    refused(
        "recent_memories-str", lambda m: m.get_recent_short_term_memories("5"), "count", "integer"
    ),
]

STORE_REFUSALS = [
    refused(
        "append-keywords-dict",
        lambda m: m.blocks.append("c", keywords={"k": 1}),
        "keywords",
        "list",
    ),
    refused("append-tags-bytes", lambda m: m.blocks.append("c", tags=b"t"), "tags", "list"),
    refused(
        "append-keyword-bytes-item",
        lambda m: m.blocks.append("c", keywords=[b"k"]),
        "keywords[0]",
        "string",
    ),
    refused(
        "append-tag-injection-NUL",
        lambda m: m.blocks.append("c", tags=[INJECTION + "\x00"]),
        "tags[0]",
        "NUL",
    ),
    refused("append-context-NUL", lambda m: m.blocks.append("a\x00"), "context", "NUL"),
    refused("append-context-None", lambda m: m.blocks.append(None), "context", "string"),
    refused(
        "append-embedding-inf",
        lambda m: m.blocks.append("c", embedding=[1.0, float("-inf")]),
        "embedding",
        "infinite",
    ),
    refused(
        "append-embedding-bools",
        lambda m: m.blocks.append("c", embedding=np.array([True])),
        "embedding",
        "numbers",
    ),
    refused(
        "append-embedding-beyond-float32",
        lambda m: m.blocks.append("c", embedding=[-1e39]),
        "embedding",
        "float32",
    ),
    refused(
        "append-embedding-scalar",
        lambda m: m.blocks.append("c", embedding=3.0),
        "embedding",
        "one-dimensional",
    ),
    refused(
        "append-embedding-empty", lambda m: m.blocks.append("c", embedding=[]), "embedding", "empty"
    ),
    refused(
        "append-embedding-empty-tuple",
        lambda m: m.blocks.append("c", embedding=()),
        "embedding",
        "empty",
    ),
    refused(
        "append-embedding_model-int",
        lambda m: m.blocks.append("c", embedding=[1.0], embedding_model=5),
        "embedding_model",
        "string",
    ),
    refused(
        "append-importance-bool",
        lambda m: m.blocks.append("c", importance=False),
        "importance",
        "number",
    ),
    refused(
        "append-importance-huge-int",
        lambda m: m.blocks.append("c", importance=-(10**400)),
        "importance",
        "finite",
    ),
    refused(
        "append-metadata-surrogate",
        lambda m: m.blocks.append("c", metadata={"\udc00": 1}),
        "metadata",
        "Unicode",
    ),
    refused(
        "append-metadata-too-deep",
        lambda m: m.blocks.append("c", metadata=nested(100_000)),
        "metadata",
        "too deeply",
    ),
    refused(
        "append-timestamp-date",
        lambda m: m.blocks.append("c", timestamp=date(2024, 1, 1)),
        "timestamp",
        "string",
    ),
    refused(
        "append-timestamp-injection",
        lambda m: m.blocks.append("c", timestamp=INJECTION),
        "timestamp",
        "ISO-8601",
    ),
    refused(
        "append_many-not-a-mapping",
        lambda m: m.blocks.append_many([{"context": "ok"}, INJECTION]),
        "blocks[1]",
        "mapping",
    ),
    refused(
        "append_many-no-context",
        lambda m: m.blocks.append_many([{"text": "x"}]),
        "blocks[0]",
        "context",
    ),
    refused(
        "append_many-unknown-argument",
        lambda m: m.blocks.append_many([{"context": "x", "sql": INJECTION}]),
        "blocks[0]",
        "sql",
    ),
    refused(
        "append_many-bad-second",
        lambda m: m.blocks.append_many([{"context": "ok"}, {"context": "\x00"}]),
        "blocks[1]",
        "NUL",
    ),
    refused(
        "search_keywords-str", lambda m: m.blocks.search_keywords(INJECTION), "keywords", "list"
    ),
    refused(
        "search_keywords-dict", lambda m: m.blocks.search_keywords({"%": 1}), "keywords", "list"
    ),
    refused(
        "search_keywords-bytes-item",
        lambda m: m.blocks.search_keywords([b"_"]),
        "keywords[0]",
        "string",
    ),
    refused(
        "search_keywords-NUL", lambda m: m.blocks.search_keywords(["%\x00"]), "keywords[0]", "NUL"
    ),
    refused(
        "search_keywords-limit-negative",
        lambda m: m.blocks.search_keywords(["k"], limit=-1),
        "limit",
        ">= 0",
    ),
    refused("search_tags-str", lambda m: m.blocks.search_tags("t"), "tags", "list"),
    refused("search_tags-dict", lambda m: m.blocks.search_tags({"t": 1}), "tags", "list"),
    refused("search_tags-int-item", lambda m: m.blocks.search_tags([1]), "tags[0]", "string"),
    refused(
        "search_tags-surrogate", lambda m: m.blocks.search_tags(["\ud800"]), "tags[0]", "Unicode"
    ),
    refused(
        "search_tags-limit-bool",
        lambda m: m.blocks.search_tags(["t"], limit=True),
        "limit",
        "integer",
    ),
    refused(
        "page-sort_by-injection",
        lambda m: m.blocks.page(sort_by="block_index; DROP TABLE blocks"),
        "sort_by",
        "one of block_index, timestamp, importance",
    ),
    refused(
        "page-sort_by-OR",
        lambda m: m.blocks.page(sort_by="1 OR 1=1"),
        "sort_by",
        "one of block_index, timestamp, importance",
    ),
    refused(
        "page-sort_by-other-column", lambda m: m.blocks.page(sort_by="hash"), "sort_by", "one of"
    ),
    refused("page-sort_by-None", lambda m: m.blocks.page(sort_by=None), "sort_by", "one of"),
    refused(
        "page-sort_by-list", lambda m: m.blocks.page(sort_by=["block_index"]), "sort_by", "one of"
    ),
    refused(
        "page-order-injection",
        lambda m: m.blocks.page(order="asc; DROP TABLE blocks"),
        "order",
        "'asc' or 'desc'",
    ),
    refused("page-order-None", lambda m: m.blocks.page(order=None), "order", "'asc' or 'desc'"),
    refused("page-start-str", lambda m: m.blocks.page(start="0"), "start", "integer"),
    refused("page-start-negative", lambda m: m.blocks.page(start=-1), "start", "between 0"),
    refused("page-end-float", lambda m: m.blocks.page(end=2.5), "end", "integer"),
    refused("page-limit-2**63", lambda m: m.blocks.page(limit=2**63), "limit", "2\\*\\*63"),
    refused("page-offset-bool", lambda m: m.blocks.page(offset=True), "offset", "integer"),
    refused("get-str", lambda m: m.blocks.get("0"), "block_index", "integer"),
    refused("get-negative", lambda m: m.blocks.get(-1), "block_index", "between 0"),
    refused("get-None", lambda m: m.blocks.get(None), "block_index", "integer"),
    refused("get-2**63", lambda m: m.blocks.get(2**63), "block_index", "between 0"),
    refused(
        "by_importance-sort_by-injection",
        lambda m: m.blocks.by_importance(0.0, sort_by=INJECTION),
        "sort_by",
        "one of block_index, timestamp, importance",
    ),
    refused(
        "by_importance-threshold-inf",
        lambda m: m.blocks.by_importance(float("inf")),
        "threshold",
        "finite",
    ),
    refused("similar-str", lambda m: m.blocks.similar("1,0,0"), "query embedding", "list"),
    refused(
        "similar-zero",
        lambda m: m.blocks.similar([0.0, 0.0, 0.0]),
        "query embedding",
        "length zero",
    ),
    refused("similar-model-int", lambda m: m.blocks.similar([1, 0, 0], model=3), "model", "string"),
    refused(
        "date_range-injection",
        lambda m: m.blocks.date_range(INJECTION, "2030-01-01"),
        "start",
        "ISO-8601",
    ),
    refused("since-int", lambda m: m.blocks.since(5), "timestamp", "string"),
    refused("short_term-add-id-int", lambda m: m.blocks.short_term.add(1, "c"), "id", "string"),
    refused(
        "short_term-add-content-None",
        lambda m: m.blocks.short_term.add("x", None),
        "content",
        "string",
    ),
    refused("short_term-get-None", lambda m: m.blocks.short_term.get(None), "id", "string"),
    refused("short_term-delete-bytes", lambda m: m.blocks.short_term.delete(b"m1"), "id", "string"),
    refused(
        "short_term-expire-NaN",
        lambda m: m.blocks.short_term.expire(float("nan")),
        "ttl_seconds",
        "finite",
    ),
    refused(
        "short_term-recent-negative", lambda m: m.blocks.short_term.recent(-1), "count", ">= 0"
    ),
]


@pytest.mark.parametrize(
    ("call", "argument", "detail"),
    ADD_BLOCK_REFUSALS + FACADE_READ_REFUSALS + FACADE_WRITE_REFUSALS + STORE_REFUSALS,
)
def test_bad_input_is_refused_and_changes_nothing(
    seeded: DatabaseManager, call: Call, argument: str, detail: str
) -> None:
    assert_refused(seeded, call, argument, detail)


def assert_refused(manager: DatabaseManager, call: Call, argument: str, detail: str) -> None:
    before = snapshot(manager)
    with pytest.raises(errors.InvalidInputError) as info:
        call(manager)
    assert type(info.value) is errors.InvalidInputError
    assert isinstance(info.value, ValueError)  # the legacy class raised ValueError
    message = str(info.value)
    assert re.search(rf"(?<![\w.]){re.escape(argument)}(?!\w)", message), message
    assert re.search(detail, message), message
    assert snapshot(manager) == before
    assert manager.blocks.verify_chain().ok
    assert manager.health_check() is True


# -- inputs that are stored and read back exactly ------------------------------------------

ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)

HOSTILE_STRINGS = [
    pytest.param("'; DROP TABLE blocks; --", id="drop-table"),
    pytest.param("' OR 1=1 --", id="or-1-1"),
    pytest.param('" OR "1"="1', id="double-quoted-or"),
    pytest.param("x'); DELETE FROM short_term_memories; --", id="stacked-delete"),
    pytest.param("%", id="percent"),
    pytest.param("_", id="underscore"),
    pytest.param("\\", id="backslash"),
    pytest.param("%_\\%", id="like-escapes"),
    pytest.param("? :name %s %(x)s $1", id="placeholders"),
    pytest.param("/* c */ -- d", id="comments"),
    pytest.param("\t\r\n\x01\x1f\x7f", id="control-chars"),
    pytest.param("Über ß 🙂 \u202e", id="unicode"),
]


@pytest.mark.parametrize("word", HOSTILE_STRINGS)
def test_hostile_strings_round_trip_and_match_literally(
    manager: DatabaseManager, word: str
) -> None:
    block = hashed_block(
        0,
        "",
        word,
        keywords=[word, "plain"],
        tags=[word],
        metadata={word: word, "nested": [word]},
        embedding=[1.0, 2.0],
        embedding_model=word,
    )
    assert manager.add_block(block) == 0
    decoy = hashed_block(1, block["hash"], "decoy text", keywords=["decoy"], tags=["decoy"])
    manager.add_block(decoy)
    expected = {
        **{k: block[k] for k in ("block_index", "timestamp", "context", "importance")},
        "hash": block["hash"],
        "prev_hash": "",
        "keywords": sorted([word, "plain"]),
        "tags": [word],
        "metadata": {word: word, "nested": [word]},
        "embedding": [1.0, 2.0],
        "embedding_model": word,
    }
    assert manager.get_block(0) == expected
    # Searches take the word literally: '%' or '_' as wildcards would find the decoy too.
    assert [b["block_index"] for b in manager.search_blocks_by_keyword([word])] == [0]
    assert [b.block_index for b in manager.blocks.search_tags([word])] == [0]
    shouted = word.translate(ASCII_UPPER)  # case is folded for ASCII letters everywhere
    assert [b.block_index for b in manager.blocks.search_keywords([shouted])] == [0]
    # Unknown sort fields and orders fall back (the legacy contract), whatever they hold.
    assert manager.get_blocks(sort_by=word, order=word) == manager.get_blocks()

    assert manager.update_block_metadata(0, {word: [word]}) is True
    assert manager.get_block(0)["metadata"] == {word: [word]}  # type: ignore[index]

    manager.add_short_term_memory(memory_with(id="decoy"))
    memory = memory_with(id=word, content=word, speaker=word, metadata={word: word})
    assert manager.add_short_term_memory(memory) == word
    assert manager.get_short_term_memory_by_id(word) == memory
    assert manager.delete_short_term_memory(word) is True
    assert manager.get_short_term_memory_by_id(word) is None
    assert [m["id"] for m in manager.get_recent_short_term_memories()] == ["decoy"]

    record = manager.blocks.append(word, keywords=[word], tags=[word], metadata={word: word})
    assert manager.blocks.get(record.block_index) == record
    assert (record.context, record.keywords, record.tags) == (word, (word,), (word,))
    assert dict(record.metadata) == {word: word}
    assert manager.blocks.verify_chain().ok
    assert {table: len(rows) for table, rows in snapshot(manager).items()} == {
        "blocks": 3,
        "block_keywords": 4,
        "block_tags": 3,
        "block_metadata": 2,
        "block_embeddings": 1,
        "short_term_memories": 1,
    }


def test_like_metacharacters_match_only_themselves(manager: DatabaseManager) -> None:
    contexts = [
        "100% sure",  # 0
        "1000 sure",  # 1
        "a_b",  # 2
        "axb",  # 3
        "C:\\temp",  # 4
        "C:temp",  # 5
        "it's",  # 6
        "its",  # 7
        "50\\% off",  # 8
    ]
    last = None
    for index, context in enumerate(contexts):
        manager.add_block(hashed_block(index, last or "", context, keywords=[f"kw{index}"]))
        last = manager.get_last_block_info()["hash"]  # type: ignore[index]
    search = manager.search_blocks_by_keyword

    def found(*words: str) -> list[int]:
        return [b["block_index"] for b in search(list(words))]

    assert found("%") == [0, 8]
    assert found("0%") == [0]
    assert found("_") == [2]
    assert found("A_B") == [2]  # case folded, '_' still literal
    assert found("\\") == [4, 8]
    assert found(":\\t") == [4]
    assert found("\\%") == [8]
    assert found("'") == [6]
    assert found("%%") == []
    assert found("' OR '1'='1") == []
    assert found("_", "'") == [2, 6]
    assert [b.block_index for b in manager.blocks.search_tags(["%"])] == []


def test_nul_is_refused_in_text_and_kept_inside_metadata(manager: DatabaseManager) -> None:
    """The same outcome on both backends: PostgreSQL cannot store NUL in text, so it is
    refused in every text argument; JSON metadata stores it as an escape."""
    with pytest.raises(errors.InvalidInputError, match="context contains a NUL"):
        manager.add_block(hashed_block(0, "", "before\x00after"))
    assert manager.count_blocks() == 0
    weird = {"k\x00ey": "va\x00lue", "list": ["\x00"]}
    manager.add_block(hashed_block(0, "", "plain", metadata=weird))
    assert manager.get_block(0)["metadata"] == weird  # type: ignore[index]
    manager.add_short_term_memory(memory_with(id="n", metadata=weird))
    assert manager.get_short_term_memory_by_id("n")["metadata"] == weird  # type: ignore[index]
    assert manager.update_block_metadata(0, {"\x00": "\x00"}) is True
    assert manager.get_block(0)["metadata"] == {"\x00": "\x00"}  # type: ignore[index]
    stored = snapshot(manager)
    assert stored["block_metadata"] == [(0, '{"\\u0000": "\\u0000"}')]
    assert "\x00" not in str(stored)


def test_negative_zero_importance_keeps_the_chain_verifiable(manager: DatabaseManager) -> None:
    """SQLite stores REAL -0.0 as 0 (PostgreSQL keeps the sign): a hash over "-0.0" must
    still verify, and an append must hash what is stored."""
    block = hashed_block(0, "", "minus zero", importance=-0.0)
    manager.add_block(block)
    record = manager.blocks.append("appended", importance=-0.0)
    assert manager.blocks.get(1) == record
    assert [manager.get_block(i)["importance"] for i in (0, 1)] == [0.0, 0.0]  # type: ignore[index]
    assert manager.get_block(0)["hash"] == block["hash"]  # type: ignore[index]
    assert math.copysign(1.0, record.importance) == 1.0  # the append hashed +0.0, as stored
    assert manager.blocks.verify_chain().ok


def test_huge_context_is_stored_and_read_back_exactly(manager: DatabaseManager) -> None:
    big = "0123456789abcdef" * (10 * 1024 * 1024 // 16)  # 10 MiB
    needle = "needle-%_-in-the-haystack"
    context = big[: len(big) // 2] + needle + big[len(big) // 2 :]
    manager.add_block(hashed_block(0, "", context, keywords=["big"]))
    assert manager.get_block(0)["context"] == context  # type: ignore[index]
    record = manager.blocks.append(context)
    assert manager.blocks.get(1) == record and record.context == context
    assert [b.block_index for b in manager.blocks.search_keywords([needle.upper()])] == [0, 1]
    manager.add_short_term_memory(memory_with(id="big", content=context))
    assert manager.get_short_term_memory_by_id("big")["content"] == context  # type: ignore[index]
    assert manager.blocks.verify_chain().ok


def test_search_with_many_and_very_long_keywords(manager: DatabaseManager) -> None:
    long_word = "L" * 60_000  # beyond SQLite's 50,000-byte LIKE pattern limit
    manager.add_block(hashed_block(0, "", "short", keywords=[long_word]))
    last = manager.get_last_block_info()
    manager.add_block(hashed_block(1, last["hash"], "w599 is here"))  # type: ignore[index]
    assert [b["block_index"] for b in manager.search_blocks_by_keyword([long_word])] == [0]
    assert manager.search_blocks_by_keyword([long_word + "x"]) == []
    many = [f"w{i}" for i in range(600)]  # more than SQLite's 500 terms of a compound SELECT
    assert [b["block_index"] for b in manager.search_blocks_by_keyword(many)] == [1]
    assert [b["block_index"] for b in manager.search_blocks_by_keyword([*many, "sho"])] == [0, 1]
    assert [b.block_index for b in manager.blocks.search_keywords([*many, "S"], limit=1)] == [0]
    assert manager.blocks.search_tags([f"t{i}" for i in range(5000)]) == []


def test_numpy_keyword_arrays_and_empty_inputs(manager: DatabaseManager) -> None:
    manager.add_block(hashed_block(0, "", "numpy", keywords=["np"]))
    assert [b["block_index"] for b in manager.search_blocks_by_keyword(np.array(["NP"]))] == [0]
    assert manager.search_blocks_by_keyword(np.array([], dtype=str)) == []
    assert manager.search_blocks_by_keyword([]) == []
    assert manager.search_blocks_by_keyword([""]) == []
    assert manager.search_blocks_by_embedding([]) == []
    assert manager.search_blocks_by_embedding([0.0, 0.0]) == []
    assert manager.search_blocks_by_embedding(None) == []
    with pytest.raises(errors.InvalidInputError, match=r"keywords\[0\] must be a string"):
        manager.search_blocks_by_keyword(np.array([[1, 2]]))


def test_block_index_beyond_the_column(manager: DatabaseManager, backend: str) -> None:
    """block_index is an 8-byte integer on SQLite and a 4-byte INTEGER on PostgreSQL:
    an index beyond the column is stored (SQLite) or refused by name (PostgreSQL), and
    reads of it find nothing on both instead of failing."""
    manager.add_block(hashed_block(0, "", "first", embedding=[1.0]))
    before = snapshot(manager)
    big = 2**31
    assert manager.get_block(big) is None
    assert manager.get_blocks(big) == []
    assert manager.get_blocks(0, big) == manager.get_blocks()
    assert manager.update_block_metadata(big, {"x": 1}) is False
    assert manager.get_block_embedding(2**62) is None
    assert manager.blocks.page(start=2**63 - 1) == []
    assert snapshot(manager) == before
    block = hashed_block(big, before["blocks"][0][4], "far away")
    if backend == "sqlite":
        assert manager.add_block(block) == big
        assert manager.get_block(big)["context"] == "far away"  # type: ignore[index]
        assert manager.add_block(dict(block, block_index=2**63 - 1)) == 2**63 - 1
        assert manager.count_blocks() == 3
        return
    with pytest.raises(errors.InvalidInputError, match="block_index must be at most 2147483647"):
        manager.add_block(block)
    assert snapshot(manager) == before
    assert manager.add_block(dict(block, block_index=big - 1)) == big - 1
    with pytest.raises(errors.InvalidInputError, match="out of range"):
        manager.append_block("the next index does not fit the column")
    assert manager.count_blocks() == 2


def test_injection_text_as_a_legacy_timestamp_is_only_text(manager: DatabaseManager) -> None:
    """The old class stored any timestamp text, and so does its facade: as a bound value,
    an injection attempt is text like any other, stored and compared as given."""
    before = snapshot(manager)
    assert manager.search_blocks_by_date_range(INJECTION, INJECTION) == []
    assert manager.get_blocks_since_time(INJECTION) == []
    assert snapshot(manager) == before
    block = hashed_block(0, "", "plain")
    block["timestamp"] = INJECTION
    block["hash"] = legacy_hash(0, INJECTION, "plain", block["importance"], "")
    assert manager.add_block(block) == 0
    assert manager.get_block(0)["timestamp"] == INJECTION  # type: ignore[index]
    found = manager.search_blocks_by_date_range(INJECTION, INJECTION)
    assert [b["block_index"] for b in found] == [0]
    assert {table: len(rows) for table, rows in snapshot(manager).items()}["blocks"] == 1
    assert manager.blocks.verify_chain().ok
