"""The block store: appends, every read, and refused inputs, on every backend."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import BlockStore, Database
from app.chain._block_sql import plan_chain, write_chain
from app.chain._block_values import prepare_block
from app.errors import InvalidInputError, TransactionStateError

from .legacy_helpers import legacy_hash


def table_counts(db: Database) -> dict[str, int]:
    tables = (
        "blocks",
        "block_keywords",
        "block_tags",
        "block_metadata",
        "block_embeddings",
        "short_term_memories",
    )
    with db.read() as session:
        return {t: session.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}


@pytest.fixture
def store(db: Database) -> BlockStore:
    return BlockStore(db)


def test_first_appends_start_the_chain(store: BlockStore) -> None:
    first = store.append(
        "hello",
        keywords=["a", "b", "a"],
        tags=["t"],
        importance=0.5,
        metadata={"k": [1, 2]},
        embedding=[1.0, 2.0, 3.0],
        timestamp="2026-01-01T10:00:00",
    )
    second = store.append("world", timestamp=datetime(2026, 1, 1, 11))
    assert (first.block_index, first.prev_hash) == (0, "")
    assert first.hash == legacy_hash(0, "2026-01-01T10:00:00", "hello", 0.5, "")
    assert (second.block_index, second.prev_hash) == (1, first.hash)
    assert second.timestamp == "2026-01-01T11:00:00"
    assert second.hash == legacy_hash(1, "2026-01-01T11:00:00", "world", 0.0, first.hash)
    assert first.keywords == ("a", "b")  # duplicates dropped
    assert store.get(0) == first  # what append returned is what is stored
    assert store.get(1) == second
    assert store.head() == (1, second.hash)
    assert store.count() == 2
    assert store.verify_chain().ok


@pytest.mark.parametrize(
    "embedding",
    [
        [0.1, -0.7, 3.3e38, 1e-45, -0.0],  # a list of floats (the fast path)
        (0.1, -0.7, 3.3e38, 1e-45, -0.0),
        [1, 2.5, True],  # mixed ints, floats and bools: numpy's path
        np.array([0.1, -0.7, 3.3e38, 1e-45, -0.0]),  # float64 array
    ],
    ids=["list", "tuple", "mixed", "float64-array"],
)
def test_embeddings_are_stored_as_numpy_float32_bytes(store: BlockStore, embedding: Any) -> None:
    expected = np.asarray(embedding, dtype=np.float64).astype(np.float32)
    stored = store.append("vector", embedding=embedding)
    assert stored.embedding == tuple(expected.tolist())
    assert store.get(stored.block_index) == stored
    with store.db.read() as session:
        raw = session.execute(
            text("SELECT embedding, embedding_dim FROM block_embeddings WHERE block_index = :i"),
            {"i": stored.block_index},
        ).one()
    assert (bytes(raw[0]), raw[1]) == (expected.tobytes(), expected.size)


def test_hashes_follow_the_legacy_formula_for_any_text_and_a_foreign_head(
    store: BlockStore,
) -> None:
    # The writer fills the index and prev_hash into text encoded when the block was
    # checked: every kind of character must come out as json.dumps writes it, after a head
    # whose hash is not hex (a chain adopted from the old class may hold anything there).
    with store.db.unit_of_work() as session:
        session.execute(
            text(
                "INSERT INTO blocks (block_index, timestamp, context, importance, hash,"
                " prev_hash) VALUES (41, 't', 'c', 1.0, :h, '')"
            ),
            {"h": 'legacy "hash" é\\'},
        )
    texts = ["plain", 'quote " back\\slash', "tab\tnew\nline \u2028", "메모 émoji 🙂", "\x7f\x01"]
    for number, context in enumerate(texts):
        importance = [0.0, 0.1, 1.0, 1 / 3, 0.5][number]
        previous = store.head()
        record = store.append(
            context, importance=importance, timestamp=f"2026-01-0{number + 1}T00:00"
        )
        assert previous is not None
        assert (record.block_index, record.prev_hash) == (previous.block_index + 1, previous.hash)
        assert record.hash == legacy_hash(
            record.block_index, record.timestamp, context, importance, previous.hash
        )
    records = store.append_many([{"context": c, "importance": 0.25} for c in texts])
    befores = [store.get(records[0].block_index - 1), *records[:-1]]
    for before, record in zip(befores, records, strict=True):
        assert before is not None
        assert record.hash == legacy_hash(
            record.block_index, record.timestamp, record.context, 0.25, before.hash
        )


def test_a_planned_chain_is_used_only_while_the_head_is_the_one_it_was_planned_after(
    store: BlockStore,
) -> None:
    # The helper that writes asyncio appends chains a batch before its unit starts, after
    # the batch it wrote last; another writer may append in between.
    first = store.append("first")
    blocks = [prepare_block(f"b{n}") for n in range(3)]
    planned = plan_chain(blocks, first.block_index + 1, first.hash)
    with store.db.writing() as connection:
        written = write_chain(connection, blocks, planned)
    assert all(a is b for a, b in zip(written, planned, strict=True))  # used as planned
    stale = plan_chain(blocks, written[-1].block_index + 1, written[-1].hash)
    between = store.append("another writer's block")
    with store.db.writing() as connection:
        rewritten = write_chain(connection, blocks, stale)
    assert rewritten[0].block_index == between.block_index + 1
    assert rewritten[0].prev_hash == between.hash
    befores = [between.hash, *[r.hash for r in rewritten[:-1]]]
    for before, row in zip(befores, rewritten, strict=True):
        assert row.hash == legacy_hash(
            row.block_index, row.block.timestamp, row.block.context, 0.0, before
        )
    assert store.verify_chain().ok
    assert store.count() == 1 + 3 + 1 + 3


@pytest.mark.parametrize(
    "metadata",
    [
        {"text": 'é \u2028 " \\ \n', "n": [1, 2.5, -0.0, 1e308, 10**30, None, True]},
        {1: "int key", 2.5: "float key", None: "None key", False: "bool key"},
        {"nested": {"deeper": [{"a": []}, {}]}},
        {},
    ],
)
def test_metadata_is_stored_as_json_dumps_writes_it(store: BlockStore, metadata: Any) -> None:
    stored = store.append("m", metadata=metadata)
    with store.db.read() as session:
        text_stored = session.execute(
            text("SELECT metadata FROM block_metadata WHERE block_index = :i"),
            {"i": stored.block_index},
        ).scalar()
    if metadata:
        assert text_stored == json.dumps(metadata, ensure_ascii=False, allow_nan=False)
    else:
        assert text_stored is None  # as the legacy class: empty metadata is not stored
    assert (
        stored.metadata
        == json.loads(json.dumps(metadata))
        == store.get(stored.block_index).metadata
    )


def test_round_trip_of_every_field(store: BlockStore) -> None:
    vector = np.linspace(-1, 1, 16, dtype=np.float32)
    stored = store.append(
        "컨텍스트 — context",
        keywords=("키워드", "x"),
        tags={"only"},
        importance=0.75,
        metadata={"nested": {"a": None}, "n": 1.5},
        embedding=vector,
        embedding_model="mini",
    )
    read = store.get(stored.block_index)
    assert read is not None
    assert read.context == "컨텍스트 — context"
    assert read.keywords == ("x", "키워드")
    assert read.tags == ("only",)
    assert read.importance == 0.75
    assert read.metadata == {"nested": {"a": None}, "n": 1.5}
    assert read.embedding == tuple(vector.tolist())
    assert read.embedding_model == "mini"
    bare = store.append("bare")
    assert store.get(bare.block_index) == bare
    assert (bare.metadata, bare.embedding, bare.embedding_model) == ({}, None, None)
    assert store.get(99) is None


def test_a_record_prints_its_embedding_as_a_count(store: BlockStore) -> None:
    """Printed results show the blocks: an embedding is shown by its size, not its floats."""
    with_vector = store.append("벡터 note", embedding=np.full(384, 0.123456, dtype=np.float32))
    shown = repr(store.get(with_vector.block_index))
    assert "embedding=<384 floats>" in shown and "0.123456" not in shown
    assert "context='벡터 note'" in shown and shown.startswith("BlockRecord(block_index=")
    bare = store.append("bare")
    assert "embedding=None, embedding_model=None)" in repr(bare)


def _fill(store: BlockStore, count: int = 10) -> list[Any]:
    start = datetime(2026, 3, 1)
    return [
        store.append(
            f"note {i} about {'apples' if i % 2 else 'Pears'}",
            keywords=[f"kw{i}", "Shared"],
            tags=["even" if i % 2 == 0 else "odd"],
            importance=(i % 5) / 4,
            timestamp=start + timedelta(hours=i),
            embedding=[1.0, float(i), 0.5],
        )
        for i in range(count)
    ]


def test_pages_sort_and_order(store: BlockStore) -> None:
    blocks = _fill(store)
    assert [b.block_index for b in store.page()] == list(range(10))
    assert [b.block_index for b in store.page(2, 5)] == [2, 3, 4, 5]
    assert [b.block_index for b in store.page(limit=3, offset=4)] == [4, 5, 6]
    assert [b.block_index for b in store.page(order="desc", limit=2)] == [9, 8]
    by_importance = store.page(sort_by="importance", order="desc")
    assert [b.importance for b in by_importance] == sorted(
        (b.importance for b in blocks), reverse=True
    )
    assert [b.block_index for b in store.recent(3)] == [9, 8, 7]


def test_searches(store: BlockStore) -> None:
    _fill(store)
    assert [b.block_index for b in store.search_keywords(["pears"])] == [0, 2, 4, 6, 8]
    assert [b.block_index for b in store.search_keywords(["KW3", "kw7"])] == [3, 7]
    assert len(store.search_keywords(["shared"], limit=4)) == 4
    assert store.search_keywords([]) == []
    assert [b.block_index for b in store.search_tags(["odd"])] == [1, 3, 5, 7, 9]
    window = store.date_range("2026-03-01T02:00:00", datetime(2026, 3, 1, 4))
    assert [b.block_index for b in window] == [4, 3, 2]  # newest first
    assert [b.block_index for b in store.since("2026-03-01T08:00:00")] == [9, 8]
    important = store.by_importance(0.75)
    assert sorted(b.block_index for b in important) == [3, 4, 8, 9]
    assert important[0].importance == 1.0


def test_like_wildcards_are_taken_literally(store: BlockStore) -> None:
    store.append("100% sure", keywords=["a_b"])
    store.append("1000 sure", keywords=["axb"])
    assert [b.context for b in store.search_keywords(["0%"])] == ["100% sure"]
    assert [b.keywords for b in store.search_keywords(["a_b"])] == [("a_b",)]


def test_similar_returns_best_first(store: BlockStore) -> None:
    store.append("x axis", embedding=[1.0, 0.0])
    store.append("diagonal", embedding=[1.0, 1.0])
    store.append("y axis", embedding=[0.0, 1.0])
    store.append("no vector")
    found = store.similar([1.0, 0.1], top_k=2)
    assert [s.block.context for s in found] == ["x axis", "diagonal"]
    assert found[0].similarity == pytest.approx(1 / np.sqrt(1.01), rel=1e-6)
    assert [s.block.context for s in store.similar([0, 1], min_similarity=0.5)] == [
        "y axis",
        "diagonal",
    ]
    with pytest.raises(InvalidInputError, match="dimension 3"):
        store.similar([1.0, 0.0, 0.0])
    with pytest.raises(InvalidInputError, match="length zero"):
        store.similar([0.0, 0.0])


def test_verify_chain_finds_the_first_bad_index(db: Database, store: BlockStore) -> None:
    _fill(store, 6)
    intact = store.verify_chain()
    assert intact and intact.ok
    assert (intact.first_bad_index, intact.checked, intact.problem) == (None, 6, "")
    assert str(intact) == "intact (6 blocks)"
    with db.unit_of_work() as session:
        session.execute(text("UPDATE blocks SET context = 'tampered' WHERE block_index = 4"))
    check = store.verify_chain()
    assert not check and not check.ok
    assert (check.first_bad_index, check.checked) == (4, 5)
    assert "block 4's hash does not match" in check.problem
    with db.unit_of_work() as session:
        session.execute(text("UPDATE blocks SET prev_hash = 'x' WHERE block_index = 2"))
    check = store.verify_chain()
    assert (check.first_bad_index, check.checked) == (2, 3)
    assert check.problem == "block 2's prev_hash is not block 1's hash"
    assert str(check) == "broken at block 2: block 2's prev_hash is not block 1's hash"


def _delete_block(db: Database, index: int) -> None:
    with db.unit_of_work() as session:
        for table in ("block_keywords", "block_tags", "block_metadata", "block_embeddings"):
            session.execute(text(f"DELETE FROM {table} WHERE block_index = {index}"))
        session.execute(text(f"DELETE FROM blocks WHERE block_index = {index}"))


def test_verify_chain_broken_at_block_zero_is_false(db: Database, store: BlockStore) -> None:
    # The old return value (the bad index) was 0 here, which read as "no problem".
    _fill(store, 3)
    with db.unit_of_work() as session:
        session.execute(text("UPDATE blocks SET context = 'tampered' WHERE block_index = 0"))
    check = store.verify_chain()
    assert not check  # `if not store.verify_chain():` now means "broken"
    assert (check.ok, check.first_bad_index, check.checked) == (False, 0, 1)


def test_verify_chain_names_a_missing_block(db: Database, store: BlockStore) -> None:
    _fill(store, 5)
    _delete_block(db, 2)
    check = store.verify_chain()
    assert (check.ok, check.first_bad_index, check.checked) == (False, 2, 3)
    assert check.problem == "block 2 is missing (the next block is 3)"
    _delete_block(db, 0)
    check = store.verify_chain()
    assert (check.first_bad_index, check.problem) == (0, "block 0 is missing (the next block is 1)")


def test_verify_chain_first_block_must_not_link(db: Database, store: BlockStore) -> None:
    _fill(store, 2)
    with db.unit_of_work() as session:
        session.execute(text("UPDATE blocks SET prev_hash = 'abc' WHERE block_index = 0"))
    check = store.verify_chain()
    assert (check.first_bad_index, check.checked) == (0, 1)
    assert "block 0's prev_hash is not empty" in check.problem


def test_verify_chain_of_an_empty_store(store: BlockStore) -> None:
    check = store.verify_chain()
    assert check and (check.checked, check.first_bad_index, check.problem) == (0, None, "")


def test_verify_chain_reports_progress(store: BlockStore) -> None:
    _fill(store, 3)
    seen: list[int] = []
    assert store.verify_chain(progress=seen.append).ok
    assert seen[-1] == 3


BAD_APPENDS: list[tuple[dict[str, Any], str]] = [
    ({"context": 42}, "context must be a string"),
    ({"context": "x", "keywords": "not-a-list"}, "keywords must be a list"),
    ({"context": "x", "keywords": ["ok", 7]}, r"keywords\[1\] must be a string"),
    ({"context": "x", "tags": [None]}, r"tags\[0\] must be a string"),
    ({"context": "x", "importance": float("nan")}, "importance must be finite"),
    ({"context": "x", "importance": "high"}, "importance must be a number"),
    ({"context": "x", "importance": 1.5}, r"importance must be between 0 and 1 \(inclusive\)"),
    ({"context": "x", "importance": -0.01}, r"between 0 and 1 \(inclusive\), got -0.01"),
    ({"context": "x", "importance": 7}, r"between 0 and 1 \(inclusive\), got 7$"),
    ({"context": "x", "metadata": {"bad": {1, 2}}}, "metadata is not JSON"),
    ({"context": "x", "metadata": {"nan": float("nan")}}, "metadata is not JSON"),
    ({"context": "x", "metadata": ["list"]}, "metadata must be a dict"),
    ({"context": "x", "embedding": [1.0, float("nan")]}, "NaN or infinite"),
    ({"context": "x", "embedding": [[1.0], [2.0, 3.0]]}, "ragged"),
    ({"context": "x", "embedding": []}, "must not be empty"),
    ({"context": "x", "embedding": "1,2,3"}, "list, tuple or numpy array"),
    ({"context": "x", "timestamp": "yesterday"}, "not an ISO-8601"),
    ({"context": "nul\x00byte"}, "NUL character"),
    ({"context": "lone \ud800 surrogate"}, "not valid Unicode"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_APPENDS)
def test_bad_input_is_refused_and_nothing_is_written(
    db: Database, store: BlockStore, arguments: dict[str, Any], message: str
) -> None:
    store.append("before")
    before = table_counts(db)
    arguments = dict(arguments)  # the parameter table is shared by both backends
    context = arguments.pop("context")
    with pytest.raises(InvalidInputError, match=message):
        store.append(context, **arguments)
    assert table_counts(db) == before
    assert store.verify_chain().ok


def test_importance_bounds_are_included(store: BlockStore) -> None:
    low, high, zero = (store.append(f"i{x}", importance=x) for x in (0, 1, -0.0))
    assert (low.importance, high.importance, zero.importance) == (0.0, 1.0, 0.0)
    assert store.verify_chain().ok


def test_importance_out_of_range_in_append_many_writes_nothing(
    db: Database, store: BlockStore
) -> None:
    with pytest.raises(InvalidInputError, match=r"blocks\[1\]: importance .* got 2"):
        store.append_many([{"context": "ok", "importance": 1}, {"context": "x", "importance": 2}])
    assert table_counts(db)["blocks"] == 0


def test_bad_block_in_append_many_writes_nothing(db: Database, store: BlockStore) -> None:
    with pytest.raises(InvalidInputError, match=r"blocks\[1\]"):
        store.append_many([{"context": "ok"}, {"context": "bad", "importance": "x"}])
    assert table_counts(db)["blocks"] == 0
    written = store.append_many({"context": f"bulk {i}", "keywords": ["b"]} for i in range(5))
    assert [b.block_index for b in written] == [0, 1, 2, 3, 4]
    assert store.verify_chain().ok


def test_bad_read_arguments(store: BlockStore) -> None:
    with pytest.raises(InvalidInputError, match="sort_by must be one of"):
        store.page(sort_by="hash; DROP TABLE blocks")
    with pytest.raises(InvalidInputError, match="order must be"):
        store.page(order="sideways")
    with pytest.raises(InvalidInputError, match="limit must be"):
        store.page(limit=-1)
    with pytest.raises(InvalidInputError, match="block_index must be an integer"):
        store.get("1")  # type: ignore[arg-type]


def test_append_inside_a_unit_joins_it(db: Database, store: BlockStore) -> None:
    with pytest.raises(RuntimeError), db.unit_of_work():
        store.append("rolled back with its unit")
        raise RuntimeError
    assert store.count() == 0
    with db.unit_of_work():
        first = store.append("kept")
        second = store.append("kept too")
    assert (first.block_index, second.prev_hash) == (0, first.hash)
    with pytest.raises(TransactionStateError), db.read():
        store.append("not in a read unit")


def test_short_term_memories(db: Database) -> None:
    memories = BlockStore(db).short_term
    now = datetime(2026, 5, 1, 12)
    for i in range(5):
        memories.add(
            f"m{i}",
            f"content {i}",
            timestamp=now - timedelta(minutes=10 * i),
            speaker="user" if i % 2 else None,
            metadata={"i": i} if i else None,
        )
    assert [m.id for m in memories.recent(3)] == ["m0", "m1", "m2"]
    found = memories.get("m1")
    assert found is not None
    assert (found.content, found.speaker, dict(found.metadata)) == ("content 1", "user", {"i": 1})
    assert memories.get("m0").metadata == {}  # type: ignore[union-attr]
    memories.add("m1", "replaced", timestamp=now)
    assert memories.get("m1").content == "replaced"  # type: ignore[union-attr]
    assert memories.delete("m4") is True
    assert memories.delete("m4") is False
    assert memories.expire(15 * 60, now=now) == 2  # m2 and m3: 20 and 30 minutes old
    assert memories.count() == 2
    assert memories.clear() == 2
    assert memories.recent() == []


def test_orm_page_loads_children_without_n_plus_one(db: Database, store: BlockStore) -> None:
    from sqlalchemy import event, select

    from app.models import Block

    _fill(store, 30)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.read() as session:
            page = session.scalars(select(Block).order_by(Block.block_index).limit(25)).all()
            seen = [(b.keywords[0].keyword, b.tags[0].tag, b.embedding is not None) for b in page]
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(seen) == 25
    queries = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 5  # blocks, then one query per child table, whatever the page size
