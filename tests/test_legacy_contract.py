"""The legacy DatabaseManager contract, method by method, on every backend.

Expected values come from the documented behaviour of the old class (return shapes, orders,
defaults, fallbacks), and for existing databases from the rows read with plain sqlite3.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import make_url

from app import errors
from app.legacy import DatabaseManager
from app.schema import legacy_schema_differences

from .legacy_helpers import LEGACY_DDL, chain_is_intact, legacy_hash, next_block, row_counts

BLOCK_KEYS = ["block_index", "timestamp", "context", "importance", "hash", "prev_hash"]
ALL_KEYS = [*BLOCK_KEYS, "keywords", "tags", "metadata"]


@pytest.fixture
def manager(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatabaseManager]:
    monkeypatch.delenv("GREEUM_THREAD_SAFE", raising=False)
    db = DatabaseManager(db_url)
    yield db
    db.close()


def build_chain(db: DatabaseManager, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add one block per spec with the legacy pattern; returns the block dicts as added."""
    added = []
    for spec in specs:
        block = next_block(db.get_last_block_info(), **spec)
        assert db.add_block(block) == block["block_index"]
        added.append(block)
    return added


def indices(blocks: list[dict[str, Any]]) -> list[int]:
    return [b["block_index"] for b in blocks]


# -- construction ----------------------------------------------------------------------------


def test_default_path_is_data_memory_db_and_its_directory_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with DatabaseManager() as db:
        assert db.connection_string == os.path.join("data", "memory.db")
        assert db.db_type == "sqlite"
        assert db.append_block("x") == 0
    assert (tmp_path / "data" / "memory.db").is_file()


def test_file_path_in_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "memory.db"
    with DatabaseManager(str(path)) as db:
        assert db.connection_string == str(path)
        db.append_block("x")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT context FROM blocks").fetchall() == [("x",)]


def test_in_memory_database() -> None:
    with DatabaseManager(":memory:") as db:
        assert [db.append_block("a"), db.append_block("b")] == [0, 1]
        assert db.count_blocks() == 2


def test_unknown_db_type_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigurationError, match="db_type must be 'sqlite' or 'postgres'"):
        DatabaseManager(str(tmp_path / "x.db"), db_type="mysql")
    assert issubclass(errors.ConfigurationError, ValueError)
    assert not (tmp_path / "x.db").exists()


def test_postgres_db_type_with_a_sqlite_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigurationError, match="not a PostgreSQL URL"):
        DatabaseManager(f"sqlite:///{tmp_path / 'x.db'}", db_type="postgres")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_postgres_by_db_type_libpq_string_or_url(db_url: str) -> None:
    url = make_url(db_url)
    conninfo = (
        f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database} "
        f"options={url.query['options']}"
    )
    with DatabaseManager(conninfo, db_type="postgresql") as db:
        assert db.db_type == "postgres"
        assert db.append_block("on postgres") == 0
    with DatabaseManager(db_url) as db:  # the URL alone implies PostgreSQL
        assert db.db_type == "postgres"
        assert db.get_block(0)["context"] == "on postgres"  # type: ignore[index]


def test_new_database_has_exactly_the_legacy_tables(manager: DatabaseManager) -> None:
    with manager.database.engine.connect() as connection:
        assert legacy_schema_differences(connection) == []
    assert row_counts(manager) == dict.fromkeys(row_counts(manager), 0)


# -- add_block / get_block ------------------------------------------------------------------


def test_add_block_then_get_block_returns_the_legacy_shape(manager: DatabaseManager) -> None:
    block = next_block(
        None,
        keywords=["zeta", "Alpha", "zeta"],
        tags=["t2", "t1"],
        metadata={"source": "cli", "n": 1},
        embedding=[0.5, -1.25, 2.0],
        embedding_model="mini",
    )
    assert manager.add_block(block) == 0
    got = manager.get_block(0)
    assert got is not None
    assert list(got) == [*ALL_KEYS, "embedding", "embedding_model"]
    assert got == {
        **{k: block[k] for k in BLOCK_KEYS},
        "keywords": ["Alpha", "zeta"],
        "tags": ["t1", "t2"],
        "metadata": {"source": "cli", "n": 1},
        "embedding": [0.5, -1.25, 2.0],
        "embedding_model": "mini",
    }
    assert manager.get_block_by_index(0) == got


def test_add_block_defaults_and_what_is_not_stored(manager: DatabaseManager) -> None:
    manager.add_block(
        {"block_index": 0, "timestamp": "2024-01-01T00:00:00", "context": "c", "hash": "h"}
    )
    manager.add_block(
        {
            "block_index": 1,
            "timestamp": "2024-01-01T00:00:01",
            "context": "d",
            "hash": "h1",
            "metadata": {},
            "embedding": [],
        }
    )
    assert manager.get_block(0) == {
        "block_index": 0,
        "timestamp": "2024-01-01T00:00:00",
        "context": "c",
        "importance": 0.0,
        "hash": "h",
        "prev_hash": "",
        "keywords": [],
        "tags": [],
        "metadata": {},
    }
    counts = row_counts(manager)
    assert (counts["blocks"], counts["block_metadata"], counts["block_embeddings"]) == (2, 0, 0)


@pytest.mark.parametrize("importance", [-0.5, 1.5, 42.5, 1e300])
def test_add_block_keeps_accepting_any_finite_importance(
    manager: DatabaseManager, importance: float
) -> None:
    # The new API keeps importance within 0..1; the legacy call stores what it stored.
    block = next_block(None, importance=importance)
    manager.add_block(block)
    stored = manager.get_block(0)
    assert stored is not None and stored["importance"] == importance
    assert chain_is_intact(manager) == (1, None)
    assert manager.blocks.verify_chain().ok


#: Timestamps the old class stored as given (it never parsed them): second 60, a space
#: instead of the T, a bare date, a date out of range, free text and the empty string.
LEGACY_TIMESTAMPS = [
    "2025-08-05T06:00:60",
    "2025-08-05 06:00:00",
    "2025-08-05",
    "2025-13-40T25:61:61",
    "yesterday afternoon",
    "",
]


@pytest.mark.parametrize("timestamp", LEGACY_TIMESTAMPS)
def test_add_block_stores_any_timestamp_text_as_given(
    manager: DatabaseManager, timestamp: str
) -> None:
    block = next_block(None)
    block["timestamp"] = timestamp
    block["hash"] = legacy_hash(0, timestamp, block["context"], block["importance"], "")
    manager.add_block(block)
    stored = manager.get_block(0)
    assert stored is not None and stored["timestamp"] == timestamp
    assert chain_is_intact(manager) == (1, None)
    assert manager.blocks.verify_chain().ok


def test_date_range_queries_compare_legacy_timestamps_as_text(manager: DatabaseManager) -> None:
    """As before: bounds and stored values are compared as text, whatever they look like."""
    last = None
    for timestamp in ["2025-08-05T06:00:59", "2025-08-05T06:00:60", "2025-08-05T06:01:00"]:
        block = next_block(last)
        block["timestamp"] = timestamp
        block["hash"] = legacy_hash(
            block["block_index"],
            timestamp,
            block["context"],
            block["importance"],
            block["prev_hash"],
        )
        manager.add_block(block)
        last = manager.get_last_block_info()
    second_60 = manager.search_blocks_by_date_range("2025-08-05T06:00:60", "2025-08-05T06:00:60")
    assert [b["block_index"] for b in second_60] == [1]
    since = manager.get_blocks_since_time("2025-08-05T06:00:60")
    assert [b["block_index"] for b in since] == [2, 1]
    # The new API keeps to ISO-8601 and says so, without touching anything.
    with pytest.raises(errors.InvalidInputError, match="not an ISO-8601"):
        manager.blocks.date_range("2025-08-05T06:00:60", "2025-08-06")


def test_the_legacy_fixture_takes_a_legacy_timestamp_through_the_facade(
    legacy_copy: Path,
) -> None:
    with DatabaseManager(str(legacy_copy)) as manager:
        last = manager.get_last_block_info()
        block = next_block(last)
        block["timestamp"] = "2025-08-05T06:00:60"
        block["hash"] = legacy_hash(
            block["block_index"],
            block["timestamp"],
            block["context"],
            block["importance"],
            block["prev_hash"],
        )
        index = manager.add_block(block)
        assert index == 240
        assert manager.get_block(240)["timestamp"] == "2025-08-05T06:00:60"
        assert manager.blocks.verify_chain().ok
        assert manager.blocks.count() == 241


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_add_block_accepts_a_numpy_embedding(manager: DatabaseManager, dtype: Any) -> None:
    manager.add_block(next_block(None, embedding=np.array([0.25, 0.5, 1.0], dtype=dtype)))
    assert manager.get_block_embedding(0) == {
        "embedding": [0.25, 0.5, 1.0],
        "embedding_model": "default",
        "embedding_dim": 3,
    }
    assert manager.get_block(0)["embedding"] == [0.25, 0.5, 1.0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("embedding", ["x", 1.0]),
        ("embedding", np.array([[1.0, 2.0], [3.0, 4.0]])),
        ("embedding", [1.0, float("nan")]),
        ("keywords", ["fine", 7]),
        ("tags", ["fine", None]),
        ("metadata", {"when": object()}),
        ("importance", "high"),
        ("timestamp", ["2024-01-01"]),  # sqlite3 could not bind it either
    ],
    ids=[
        "embedding-text",
        "embedding-2d",
        "embedding-nan",
        "keyword-int",
        "tag-none",
        "metadata-object",
        "importance-text",
        "timestamp-list",
    ],
)
def test_add_block_refuses_bad_input_and_writes_nothing(
    manager: DatabaseManager, field: str, value: Any
) -> None:
    build_chain(manager, [{"keywords": ["k0"]}])
    before = row_counts(manager)
    bad = next_block(
        manager.get_last_block_info(),
        keywords=["k"],
        tags=["t"],
        metadata={"m": 1},
        embedding=[1.0, 2.0],
    )
    bad[field] = value
    with pytest.raises(ValueError) as info:
        manager.add_block(bad)
    assert type(info.value) is errors.InvalidInputError
    assert row_counts(manager) == before
    assert manager.get_block(1) is None


@pytest.mark.parametrize("missing", ["block_index", "timestamp", "context", "hash"])
def test_add_block_requires_its_identifying_fields(manager: DatabaseManager, missing: str) -> None:
    block = next_block(None)
    del block[missing]
    with pytest.raises(errors.InvalidInputError, match=missing):
        manager.add_block(block)
    assert manager.count_blocks() == 0


def test_duplicate_block_index_raises_integrity_error_and_leaves_nothing(
    manager: DatabaseManager,
) -> None:
    first = next_block(None, keywords=["a"], tags=["x"], metadata={"v": 1}, embedding=[1.0, 0.0])
    manager.add_block(first)
    stored = manager.get_block(0)
    before = row_counts(manager)
    duplicate = dict(
        first, context="other", keywords=["b", "c"], tags=["y"], metadata={"v": 2}, embedding=[0.0]
    )
    with pytest.raises(sqlite3.IntegrityError) as info:
        manager.add_block(duplicate)
    assert type(info.value) is errors.IntegrityViolationError
    assert row_counts(manager) == before
    assert manager.get_block(0) == stored


def test_add_block_failing_half_way_leaves_no_partial_block(tmp_path: Path) -> None:
    # An orphan metadata row (possible in legacy files: foreign keys were never enforced)
    # makes the metadata insert fail after the blocks row went in.
    path = tmp_path / "orphans.db"
    with DatabaseManager(str(path)) as db:
        build_chain(db, [{}])
    raw = sqlite3.connect(path)
    raw.execute("INSERT INTO block_metadata (block_index, metadata) VALUES (1, '{}')")
    raw.commit()
    raw.close()
    with DatabaseManager(str(path)) as db:
        block = next_block(db.get_last_block_info(), keywords=["k"], metadata={"m": 1})
        with pytest.raises(sqlite3.IntegrityError):
            db.add_block(block)
        assert (db.count_blocks(), db.get_block(1)) == (1, None)
        assert row_counts(db)["block_keywords"] == 0


def test_failed_call_inside_a_transaction_leaves_the_rest_of_it(
    manager: DatabaseManager,
) -> None:
    with manager.transaction():
        first = build_chain(manager, [{}])[0]
        with pytest.raises(sqlite3.IntegrityError):
            manager.add_block(first)
        build_chain(manager, [{}])
    assert manager.count_blocks() == 2
    assert chain_is_intact(manager) == (2, None)


def test_transaction_rolls_back_every_call_when_its_block_raises(
    manager: DatabaseManager,
) -> None:
    with pytest.raises(RuntimeError, match="abort"), manager.transaction():
        build_chain(manager, [{}, {}])
        manager.add_short_term_memory({"id": "m", "content": "c"})
        assert manager.count_blocks() == 2  # the unit sees its own writes
        raise RuntimeError("abort")
    assert manager.count_blocks() == 0
    assert manager.get_short_term_memory_by_id("m") is None


def test_run_serialized_returns_the_result_and_is_one_unit(manager: DatabaseManager) -> None:
    assert manager.run_serialized(lambda: build_chain(manager, [{}])[0]["block_index"]) == 0

    def add_then_fail() -> None:
        build_chain(manager, [{}])
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        manager.run_serialized(add_then_fail)
    assert manager.count_blocks() == 1


def test_get_block_missing_or_negative_is_none(manager: DatabaseManager) -> None:
    build_chain(manager, [{}])
    assert manager.get_block(1) is None
    assert manager.get_block(-1) is None


# -- listing and searching ------------------------------------------------------------------

IMPORTANCES = [0.3, 0.9, 0.1, 0.9, 0.5, 0.7]


@pytest.fixture
def six(manager: DatabaseManager) -> list[dict[str, Any]]:
    return build_chain(manager, [{"importance": i} for i in IMPORTANCES])


def test_get_blocks_range_paging_and_sorting(manager: DatabaseManager, six: Any) -> None:
    assert indices(manager.get_blocks()) == [0, 1, 2, 3, 4, 5]
    assert indices(manager.get_blocks(1, 3)) == [1, 2, 3]
    assert indices(manager.get_blocks(start_idx=4)) == [4, 5]
    assert indices(manager.get_blocks(end_idx=1)) == [0, 1]
    assert indices(manager.get_blocks(limit=2, offset=3)) == [3, 4]
    assert indices(manager.get_blocks(sort_by="importance", order="desc")) == [1, 3, 5, 4, 0, 2]
    assert indices(manager.get_blocks(sort_by="timestamp", order="DESC")) == [5, 4, 3, 2, 1, 0]
    assert manager.get_blocks(0, 0) == [manager.get_block(0)]


def test_get_blocks_falls_back_on_unknown_sort_and_order(
    manager: DatabaseManager, six: Any
) -> None:
    assert indices(manager.get_blocks(sort_by="hash; DROP TABLE blocks", order="up")) == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    assert manager.count_blocks() == 6


def test_filter_blocks_by_importance(manager: DatabaseManager, six: Any) -> None:
    assert indices(manager.filter_blocks_by_importance(0.5)) == [1, 3, 5, 4]
    assert indices(manager.filter_blocks_by_importance(0.7)) == [1, 3, 5]
    assert indices(manager.filter_blocks_by_importance(0.5, limit=2)) == [1, 3]
    assert indices(
        manager.filter_blocks_by_importance(0.5, sort_by="block_index", order="asc")
    ) == [
        1,
        3,
        4,
        5,
    ]
    assert indices(manager.filter_blocks_by_importance(0.5, sort_by="?", order="?")) == [1, 3, 5, 4]


def test_last_block_count_and_recent(manager: DatabaseManager) -> None:
    assert manager.get_last_block_info() is None
    assert (manager.count_blocks(), manager.get_recent_blocks()) == (0, [])
    blocks = build_chain(manager, [{}, {}, {}, {}])
    assert manager.get_last_block_info() == {"block_index": 3, "hash": blocks[3]["hash"]}
    assert manager.count_blocks() == 4
    recent = manager.get_recent_blocks(limit=3)
    assert indices(recent) == [3, 2, 1]
    assert recent[0] == manager.get_block(3)


def test_search_blocks_by_keyword(manager: DatabaseManager) -> None:
    build_chain(
        manager,
        [
            {"context": "Morning coffee", "keywords": ["Drink"]},
            {"context": "Write report", "keywords": ["work", "deadline"]},
            {"context": "100% done_ok"},
            {"context": "evening walk", "keywords": ["Health"]},
        ],
    )
    search = manager.search_blocks_by_keyword
    assert indices(search(["drink"])) == [0]
    assert indices(search(["REPORT"])) == [1]
    assert indices(search(["health", "work"])) == [1, 3]
    assert indices(search(["%"])) == [2]
    assert indices(search(["_"])) == [2]
    assert indices(search(["o"], limit=2)) == [0, 1]
    assert search([]) == []
    assert search(["nothing like it"]) == []
    assert search(["drink"])[0] == manager.get_block(0)


def test_search_blocks_by_embedding(manager: DatabaseManager) -> None:
    build_chain(
        manager,
        [
            {"embedding": [1.0, 0.0, 0.0]},
            {"embedding": [0.0, 1.0, 0.0]},
            {"embedding": [1.0, 1.0, 0.0]},
            {},
            {"embedding": [-1.0, 0.0, 0.0]},
        ],
    )
    found = manager.search_blocks_by_embedding([1.0, 0.0, 0.0], top_k=5)
    assert indices(found) == [0, 2, 1, 4]
    assert [b["similarity"] for b in found] == pytest.approx([1.0, 2**-0.5, 0.0, -1.0])
    assert {k: v for k, v in found[0].items() if k != "similarity"} == manager.get_block(0)
    assert indices(manager.search_blocks_by_embedding(np.array([2.0, 0.0, 0.0]))) == [0, 2, 1, 4]
    assert indices(manager.search_blocks_by_embedding([1.0, 0.0, 0.0], top_k=2)) == [0, 2]
    assert indices(
        manager.search_blocks_by_embedding([1.0, 0.0, 0.0], top_k=5, min_similarity=0.5)
    ) == [0, 2]
    assert manager.search_blocks_by_embedding([]) == []
    assert manager.search_blocks_by_embedding([0.0, 0.0, 0.0]) == []
    with pytest.raises(ValueError, match="dimension"):
        manager.search_blocks_by_embedding([1.0, 0.0])


def test_search_blocks_by_date_range_and_since(manager: DatabaseManager, six: Any) -> None:
    # next_block stamps block i at 2024-05-01T10:00:0i.00000i
    start, end = datetime(2024, 5, 1, 10, 0, 1), datetime(2024, 5, 1, 10, 0, 3, 3)
    assert indices(manager.search_blocks_by_date_range(start, end)) == [3, 2, 1]
    assert indices(
        manager.search_blocks_by_date_range(start.isoformat(), end.isoformat(), limit=2)
    ) == [3, 2]
    assert indices(manager.search_blocks_by_date_range(date(2024, 5, 1), date(2024, 5, 2))) == [
        5,
        4,
        3,
        2,
        1,
        0,
    ]
    assert manager.search_blocks_by_date_range("2025-01-01", "2025-12-31") == []
    assert indices(manager.get_blocks_since_time("2024-05-01T10:00:04")) == [5, 4]
    assert indices(manager.get_blocks_since_time("2024-05-01T10:00:00", limit=1)) == [5]
    assert manager.get_blocks_since_time("") == []


def test_get_block_embedding_and_update_block_metadata(manager: DatabaseManager) -> None:
    build_chain(manager, [{"metadata": {"old": True}}, {"embedding": [3.0, 4.0]}])
    assert manager.get_block_embedding(0) is None
    assert manager.get_block_embedding(1) == {
        "embedding": [3.0, 4.0],
        "embedding_model": "default",
        "embedding_dim": 2,
    }
    assert manager.update_block_metadata(0, {"new": [1, 2]}) is True
    assert manager.update_block_metadata(1, {"first": "yes"}) is True
    assert manager.get_block(0)["metadata"] == {"new": [1, 2]}  # type: ignore[index]
    assert manager.get_block(1)["metadata"] == {"first": "yes"}  # type: ignore[index]
    assert manager.update_block_metadata(99, {"x": 1}) is False
    assert row_counts(manager)["block_metadata"] == 2
    with pytest.raises(ValueError):
        manager.update_block_metadata(0, {"bad": object()})
    assert manager.get_block(0)["metadata"] == {"new": [1, 2]}  # type: ignore[index]


# -- short-term memories --------------------------------------------------------------------


def test_short_term_memories(manager: DatabaseManager) -> None:
    add = manager.add_short_term_memory
    first = {
        "id": "m1",
        "timestamp": "2024-01-01T00:00:00",
        "content": "hi",
        "speaker": "user",
        "metadata": {"turn": 1},
    }
    assert add(first) == "m1"
    assert add({"id": "m2", "timestamp": "2024-01-01T00:01:00", "content": "two"}) == "m2"
    assert add({"id": "m3", "timestamp": "2024-01-01T00:02:00", "content": "three"}) == "m3"
    assert add(dict(first, content="hello again")) == "m1"  # insert or replace
    assert manager.get_short_term_memory_by_id("m1") == dict(first, content="hello again")
    assert manager.get_recent_short_term_memories(2) == [
        {
            "id": "m3",
            "timestamp": "2024-01-01T00:02:00",
            "content": "three",
            "speaker": None,
            "metadata": {},
        },
        {
            "id": "m2",
            "timestamp": "2024-01-01T00:01:00",
            "content": "two",
            "speaker": None,
            "metadata": {},
        },
    ]
    assert [m["id"] for m in manager.get_recent_short_term_memories()] == ["m3", "m2", "m1"]
    assert manager.get_short_term_memory_by_id("nope") is None

    manager.conn.execute(
        "INSERT INTO short_term_memories (id, timestamp, content, metadata) VALUES (?, ?, ?, ?)",
        ("broken", "2024-01-01T00:03:00", "x", "{not json"),
    )
    manager.conn.commit()
    assert manager.get_short_term_memory_by_id("broken")["metadata"] == {}  # type: ignore[index]

    assert manager.delete_short_term_memory("m2") is True
    assert manager.delete_short_term_memory("m2") is False
    fresh = (datetime.now() - timedelta(seconds=5)).isoformat()
    add({"id": "fresh", "timestamp": fresh, "content": "now"})
    assert manager.delete_expired_short_term_memories(3600) == 3  # m1, m3, broken
    assert [m["id"] for m in manager.get_recent_short_term_memories()] == ["fresh"]
    assert manager.clear_short_term_memories() == 1
    assert manager.get_recent_short_term_memories() == []


def test_add_short_term_memory_refuses_bad_input(manager: DatabaseManager) -> None:
    with pytest.raises(errors.InvalidInputError):
        manager.add_short_term_memory({"content": "no id"})
    with pytest.raises(errors.InvalidInputError):
        manager.add_short_term_memory({"id": "x", "content": "c", "metadata": {"o": object()}})
    assert manager.get_recent_short_term_memories() == []


# -- migration, health, lifetime ------------------------------------------------------------


def test_migrate_from_jsonl(manager: DatabaseManager, tmp_path: Path) -> None:
    b0 = next_block(None, keywords=["k"])
    b1 = next_block(b0)
    b2 = next_block(b1, metadata={"m": 1})
    no_hash = {k: v for k, v in b2.items() if k != "hash"}
    lines = [
        json.dumps(b0),
        "not json",
        json.dumps([1, 2]),
        "",
        json.dumps(b1),
        json.dumps(b0),  # a duplicate index
        json.dumps(no_hash),
        json.dumps(b2, ensure_ascii=False),
    ]
    source = tmp_path / "blocks.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert manager.migrate_from_jsonl(str(source)) == 3
    assert chain_is_intact(manager) == (3, None)
    assert manager.get_block(2)["metadata"] == {"m": 1}  # type: ignore[index]
    assert manager.migrate_from_jsonl(str(tmp_path / "missing.jsonl")) == 0


def test_health_check(manager: DatabaseManager) -> None:
    assert manager.health_check() is True
    manager.conn.execute("DROP TABLE short_term_memories")
    manager.conn.commit()
    assert manager.health_check() is False
    manager.close()
    assert manager.health_check() is False


def test_append_block_continues_the_same_chain(manager: DatabaseManager) -> None:
    first = manager.append_block(
        "first", keywords=["k"], importance=0.25, timestamp="2024-01-01T00:00:00"
    )
    second = manager.append_block("second", metadata={"a": 1}, embedding=np.array([1.0, 2.0]))
    assert (first, second) == (0, 1)
    block0, block1 = manager.get_block(0), manager.get_block(1)
    assert block0 is not None and block1 is not None
    assert block0["hash"] == legacy_hash(0, "2024-01-01T00:00:00", "first", 0.25, "")
    assert block1["prev_hash"] == block0["hash"]
    assert (block1["metadata"], block1["embedding"]) == ({"a": 1}, [1.0, 2.0])
    build_chain(manager, [{}])
    assert chain_is_intact(manager) == (3, None)


def test_context_manager_closes_and_later_calls_raise_closed_error(db_url: str) -> None:
    with DatabaseManager(db_url) as db:
        db.append_block("x")
    assert db.database.closed
    with pytest.raises(errors.ClosedError, match="was closed; create a new DatabaseManager"):
        db.count_blocks()
    db.close()  # a second close does nothing


# -- databases written by the legacy class --------------------------------------------------


def _legacy_get_block(conn: sqlite3.Connection, index: int) -> dict[str, Any]:
    """get_block as the 2.1.0 class computed it, from the raw tables."""
    conn.row_factory = sqlite3.Row
    block = dict(conn.execute("SELECT * FROM blocks WHERE block_index = ?", (index,)).fetchone())
    where = "WHERE block_index = ? ORDER BY 1"
    block["keywords"] = [
        r[0] for r in conn.execute(f"SELECT keyword FROM block_keywords {where}", (index,))
    ]
    block["tags"] = [r[0] for r in conn.execute(f"SELECT tag FROM block_tags {where}", (index,))]
    meta = conn.execute("SELECT metadata FROM block_metadata WHERE block_index = ?", (index,))
    row = meta.fetchone()
    block["metadata"] = json.loads(row[0]) if row else {}
    emb = conn.execute(
        "SELECT embedding, embedding_dim, embedding_model FROM block_embeddings "
        "WHERE block_index = ?",
        (index,),
    ).fetchone()
    if emb:
        vector = np.frombuffer(emb[0], dtype=np.float32)
        block["embedding"] = (vector[: emb[1]] if emb[1] else vector).tolist()
        block["embedding_model"] = emb[2]
    return block


def test_database_built_with_the_legacy_ddl_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    for statement in LEGACY_DDL:
        raw.execute(statement)
    b0 = next_block(None)
    b1 = next_block(b0)
    for block in (b0, b1):
        raw.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)", [block[k] for k in BLOCK_KEYS])
    raw.executemany(
        "INSERT INTO block_keywords (block_index, keyword) VALUES (0, ?)", [("b",), ("a",)]
    )
    raw.execute("INSERT INTO block_tags (block_index, tag) VALUES (0, 't')")
    raw.execute("INSERT INTO block_metadata VALUES (0, ?)", (json.dumps({"source": "old"}),))
    vector = np.array([0.5, 1.5], dtype=np.float32)
    raw.execute("INSERT INTO block_embeddings VALUES (0, ?, 'default', 2)", (vector.tobytes(),))
    raw.executemany(
        "INSERT INTO short_term_memories VALUES (?, ?, ?, ?, ?)",
        [
            ("s1", "2024-01-01T00:00:00", "null meta", None, None),
            ("s2", "2024-01-01T00:01:00", "empty meta", "user", "{}"),
            ("s3", "2024-01-01T00:02:00", "meta", "bot", '{"turn": 3}'),
        ],
    )
    raw.commit()
    expected = [_legacy_get_block(raw, 0), _legacy_get_block(raw, 1)]
    raw.close()

    with DatabaseManager(str(path)) as db:
        assert [db.get_block(0), db.get_block(1)] == expected
        assert expected[0]["keywords"] == ["a", "b"]
        assert "embedding" not in expected[1] and expected[1]["metadata"] == {}
        assert [(m["id"], m["metadata"]) for m in db.get_recent_short_term_memories()] == [
            ("s3", {"turn": 3}),
            ("s2", {}),
            ("s1", {}),
        ]
        build_chain(db, [{}])
        assert chain_is_intact(db) == (3, None)
        assert db.health_check() is True


def test_real_legacy_fixture_keeps_every_row(legacy_copy: Path) -> None:
    raw = sqlite3.connect(legacy_copy)
    expected = [_legacy_get_block(raw, i) for i in range(240)]
    memories = raw.execute("SELECT id FROM short_term_memories ORDER BY timestamp DESC").fetchall()
    raw.close()
    with DatabaseManager(str(legacy_copy)) as db:
        assert db.count_blocks() == 240
        assert db.get_blocks(limit=1000) == expected
        assert sum("embedding" in b for b in expected) == 180
        assert sum(bool(b["metadata"]) for b in expected) == 160
        assert chain_is_intact(db) == (240, None)
        recent = db.get_recent_short_term_memories(100)
        assert [m["id"] for m in recent] == [r[0] for r in memories]
        assert len(recent) == 30
        assert db.get_short_term_memory_by_id("stm-000")["metadata"] == {}  # type: ignore[index]
        build_chain(db, [{}])
        assert db.get_last_block_info()["block_index"] == 240  # type: ignore[index]
        assert chain_is_intact(db) == (241, None)
