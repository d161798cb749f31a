"""The legacy facade against a plain Python model: random sequences of calls must agree.

Blocks are added the legacy way (read the last block, build the next one with its hash,
``add_block``); short-term memories are added, replaced and deleted; metadata is replaced.
After every step the facade's reads (``get_block``, ``get_blocks`` with ranges, sorts and
pages, keyword and tag searches, counts, the last block) must equal the model's.
Text is drawn from an alphabet full of SQL and LIKE metacharacters.
"""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from app.errors import IntegrityViolationError
from app.legacy import DatabaseManager

from .legacy_helpers import legacy_hash

#: SQL and LIKE metacharacters, both cases of a few letters, and non-ASCII letters (which
#: SQLite's lower() leaves alone).
ALPHABET = "aAbBzZ%_\\'\"; -=*()ßÜü\t"
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

words = st.text(ALPHABET, max_size=6)
json_values = st.one_of(
    st.none(), st.booleans(), st.integers(-1000, 1000), st.text(ALPHABET, max_size=4)
)
metadata = st.dictionaries(st.text(ALPHABET, max_size=4), json_values, max_size=3)
# float32-exact values, so an embedding reads back equal.
embeddings = st.none() | st.lists(
    st.floats(-4, 4, width=32, allow_nan=False, allow_infinity=False), min_size=3, max_size=3
)
timestamps = st.builds(
    "2024-{:02d}-{:02d}T{:02d}:{:02d}:00".format,
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 23),
    st.integers(0, 59),
)
memory_ids = st.sampled_from(["m1", "m2", "'; DROP TABLE short_term_memories; --", "%", "_"])


def fold(text: str) -> str:
    """Case folding as the searches do it on SQLite (ASCII letters only)."""
    return text.translate(ASCII_LOWER)


class FacadeModel(RuleBasedStateMachine):
    """A DatabaseManager on an in-memory database, and what it should hold."""

    def __init__(self) -> None:
        super().__init__()
        self.db = DatabaseManager(":memory:")
        self.blocks: dict[int, dict[str, Any]] = {}
        self.memories: dict[str, dict[str, Any]] = {}

    indices = Bundle("indices")

    def teardown(self) -> None:
        self.db.close()

    # -- writes -----------------------------------------------------------------------------

    @rule(
        target=indices,
        context=words,
        keywords=st.lists(words, max_size=3),
        tags=st.lists(words, max_size=3),
        importance=st.floats(-1, 1),  # -0.0 included: SQLite stores it as 0
        meta=metadata,
        embedding=embeddings,
        timestamp=timestamps,
    )
    def add_block(
        self,
        context: str,
        keywords: list[str],
        tags: list[str],
        importance: float,
        meta: dict[str, Any],
        embedding: list[float] | None,
        timestamp: str,
    ) -> int:
        last = self.db.get_last_block_info()
        index = 0 if last is None else last["block_index"] + 1
        prev_hash = "" if last is None else last["hash"]
        digest = legacy_hash(index, timestamp, context, importance, prev_hash)
        block: dict[str, Any] = {
            "block_index": index,
            "timestamp": timestamp,
            "context": context,
            "importance": importance,
            "prev_hash": prev_hash,
            "hash": digest,
            "keywords": keywords,
            "tags": tags,
            "metadata": meta,
        }
        if embedding is not None:
            block["embedding"] = embedding
        assert self.db.add_block(block) == index
        expected: dict[str, Any] = {
            "block_index": index,
            "timestamp": timestamp,
            "context": context,
            "importance": importance,
            "hash": digest,
            "prev_hash": prev_hash,
            "keywords": sorted(set(keywords)),
            "tags": sorted(set(tags)),
            "metadata": dict(meta),
        }
        if embedding is not None:
            expected["embedding"] = embedding
            expected["embedding_model"] = "default"
        self.blocks[index] = expected
        return index

    @rule(index=indices, context=words)
    def add_block_with_a_taken_index(self, index: int, context: str) -> None:
        taken = self.blocks[index]
        clash = {
            "block_index": index,
            "timestamp": "2025-01-01T00:00:00",
            "context": context,
            "hash": "x",
            "keywords": ["clash"],
        }
        with pytest.raises(IntegrityViolationError):
            self.db.add_block(clash)
        assert self.db.get_block(index) == taken

    @rule(index=st.one_of(indices, st.integers(0, 40)), meta=metadata)
    def update_block_metadata(self, index: int, meta: dict[str, Any]) -> None:
        exists = index in self.blocks
        assert self.db.update_block_metadata(index, meta) is exists
        if exists:
            self.blocks[index]["metadata"] = dict(meta)

    @rule(
        memory_id=memory_ids,
        content=words,
        speaker=st.none() | words,
        meta=metadata,
        timestamp=timestamps,
    )
    def add_short_term_memory(
        self,
        memory_id: str,
        content: str,
        speaker: str | None,
        meta: dict[str, Any],
        timestamp: str,
    ) -> None:
        memory = {
            "id": memory_id,
            "timestamp": timestamp,
            "content": content,
            "speaker": speaker,
            "metadata": meta,
        }
        assert self.db.add_short_term_memory(memory) == memory_id
        self.memories[memory_id] = dict(memory, metadata=dict(meta))

    @rule(memory_id=memory_ids)
    def delete_short_term_memory(self, memory_id: str) -> None:
        assert self.db.delete_short_term_memory(memory_id) is (memory_id in self.memories)
        self.memories.pop(memory_id, None)

    @rule(index=consumes(indices))
    def forget_an_index(self, index: int) -> None:
        """Only thins the bundle, so later rules pick other indices (no call)."""

    # -- reads ------------------------------------------------------------------------------

    @rule(index=st.one_of(indices, st.integers(-3, 40)))
    def get_block(self, index: int) -> None:
        assert self.db.get_block(index) == self.blocks.get(index)

    @rule(
        start=st.none() | st.integers(-2, 25),
        end=st.none() | st.integers(-2, 25),
        limit=st.integers(0, 8),
        offset=st.integers(0, 5),
        sort_by=st.sampled_from(["block_index", "timestamp", "importance", "hash; --"]),
        order=st.sampled_from(["asc", "desc", "DESC", "sideways"]),
    )
    def get_blocks(
        self,
        start: int | None,
        end: int | None,
        limit: int,
        offset: int,
        sort_by: str,
        order: str,
    ) -> None:
        got = self.db.get_blocks(start, end, limit, offset, sort_by, order)
        if end is not None and end < 0:
            assert got == []
            return
        low = 0 if start is None or start < 0 else start
        chosen = [b for i, b in self.blocks.items() if i >= low and (end is None or i <= end)]
        field = sort_by if sort_by in ("timestamp", "importance") else "block_index"
        descending = order.lower() == "desc"
        # Ties are broken by index, ascending, whatever the order.
        chosen.sort(key=lambda b: b["block_index"])
        chosen.sort(key=lambda b: b[field], reverse=descending)
        assert got == chosen[offset : offset + limit]

    @rule(terms=st.lists(words, max_size=3), limit=st.integers(1, 10))
    def search_by_keyword(self, terms: list[str], limit: int) -> None:
        got = self.db.search_blocks_by_keyword(terms, limit)
        wanted = [fold(t) for t in terms if t]
        expected = [
            b
            for i, b in sorted(self.blocks.items())
            if any(
                w in fold(b["context"]) or any(w in fold(k) for k in b["keywords"]) for w in wanted
            )
        ]
        assert got == expected[:limit]

    @rule(terms=st.lists(words, max_size=3))
    def search_by_tag(self, terms: list[str]) -> None:
        got = [r.block_index for r in self.db.blocks.search_tags(terms)]
        assert got == [i for i, b in sorted(self.blocks.items()) if set(b["tags"]) & set(terms)]

    @rule(memory_id=memory_ids)
    def get_short_term_memory(self, memory_id: str) -> None:
        assert self.db.get_short_term_memory_by_id(memory_id) == self.memories.get(memory_id)

    @rule(count=st.integers(0, 6))
    def recent_short_term_memories(self, count: int) -> None:
        newest = sorted(self.memories.values(), key=lambda m: (m["timestamp"], m["id"]))[::-1]
        assert self.db.get_recent_short_term_memories(count) == newest[:count]

    @invariant()
    def counts_and_head_agree(self) -> None:
        assert self.db.count_blocks() == len(self.blocks)
        last = max(self.blocks, default=None)
        expected = (
            None if last is None else {"block_index": last, "hash": self.blocks[last]["hash"]}
        )
        assert self.db.get_last_block_info() == expected

    @invariant()
    def chain_verifies(self) -> None:
        assert self.db.blocks.verify_chain().ok


def test_facade_agrees_with_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREEUM_THREAD_SAFE", raising=False)
    run_state_machine_as_test(
        FacadeModel,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        ),
    )
