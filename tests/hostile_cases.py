"""The hostile-input cases: calls that must be refused, as tables, and strings that must be
stored and matched literally. test_hostile_inputs.py runs them.

A refusal is ``pytest.param(call, argument, detail)``: ``call(manager)`` must raise
InvalidInputError naming ``argument`` with a message matching ``detail`` (a regular
expression), and change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np
import pytest

from app.chain._validate import MAX_TEXT_BYTES
from app.legacy import DatabaseManager

from .legacy_helpers import next_block

#: A call on the manager; ``Any`` so that the table may pass the wrong types on purpose.
Call = Callable[[Any], object]

INJECTION = "'; DROP TABLE blocks; --"


def nested(depth: int) -> dict[str, Any]:
    """A dict nested ``depth`` levels deep (too deep for ``json.dumps``)."""
    root: dict[str, Any] = {}
    level = root
    for _ in range(depth):
        level["a"] = {}
        level = level["a"]
    return root


def containing_itself() -> dict[str, Any]:
    """A dict that holds itself (json.dumps: "Circular reference detected")."""
    loop: dict[str, Any] = {"x": 1}
    loop["self"] = loop
    return loop


#: A field value meaning "leave the field out".
DROP = object()


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
        if value is DROP:
            del block[key]
        else:
            block[key] = value
    return block


def memory_with(**fields: Any) -> dict[str, Any]:
    """A valid short-term memory, with ``fields`` replaced (or dropped)."""
    memory: dict[str, Any] = {
        "id": "new",
        "timestamp": "2024-01-01T00:00:00",
        "content": "c",
        "speaker": "user",
        "metadata": {"turn": 1},
    }
    for key, value in fields.items():
        if value is DROP:
            del memory[key]
        else:
            memory[key] = value
    return memory


# -- the refusal tables ---------------------------------------------------------------------


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
    ("metadata-contains-itself", {"metadata": containing_itself()}, "metadata", "itself"),
    ("timestamp-int", {"timestamp": 1_700_000_000}, "timestamp", "must be a string"),
    ("timestamp-NUL", {"timestamp": "2024-01-01\x00"}, "timestamp", "NUL"),
    ("block_index-str", {"block_index": "3"}, "block_index", "must be an integer"),
    ("block_index-injection", {"block_index": "3 OR 1=1"}, "block_index", "integer"),
    ("block_index-float", {"block_index": 3.0}, "block_index", "must be an integer"),
    ("block_index-bool", {"block_index": True}, "block_index", "must be an integer"),
    ("block_index-negative", {"block_index": -1}, "block_index", "between 0"),
    ("block_index-2**63", {"block_index": 2**63}, "block_index", "between 0"),
    ("block_index-huge", {"block_index": 10**5000}, "block_index", "between 0"),
    ("block_index-missing", {"block_index": DROP}, "block_index", "no 'block_index'"),
    ("hash-missing", {"hash": DROP}, "hash", "no 'hash'"),
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
        "add_memory-no-id", lambda m: m.add_short_term_memory(memory_with(id=DROP)), "id", "string"
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
        lambda m: m.add_short_term_memory(memory_with(content=DROP)),
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


# -- inputs that are stored and read back exactly ------------------------------------------

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
