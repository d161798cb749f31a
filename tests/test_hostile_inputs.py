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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import errors
from app.legacy import DatabaseManager

from .helpers import postgres_schema, require_backend
from .hostile_cases import (
    ADD_BLOCK_REFUSALS,
    FACADE_READ_REFUSALS,
    FACADE_WRITE_REFUSALS,
    HOSTILE_STRINGS,
    INJECTION,
    STORE_REFUSALS,
    Call,
    memory_with,
)
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


# -- refusals ------------------------------------------------------------------------------


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
