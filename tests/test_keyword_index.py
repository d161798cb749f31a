"""Keyword search through the trigram index gives exactly the full scan's results, on every
backend, for indexed blocks, blocks still waiting to be indexed, rows written by other
writers (the legacy class, raw SQL), and hostile words."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app import BlockStore, Database, errors, schema
from app.schema import _keyword_index as keyword_index
from app.search import _keyword_search as keyword_search

from .helpers import postgres_schema
from .legacy_helpers import LEGACY_FIXTURE
from .search_reference import need_backend, python_keywords, scan_keywords

# Characters that stress the exact test and the index alike: LIKE wildcards, quotes, FTS5
# syntax, letters that SQLite's lower() does not fold but FTS5 does, and one beyond the BMP.
ALPHABET = "aAbBcC%_'\"\\ *:^()-\nÜüßẞİi🙂"
WORDS = st.text(alphabet=ALPHABET, min_size=1, max_size=6)


def _fill(store: BlockStore, count: int, seed: int, start: int = 0) -> None:
    import random

    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 8)))

    store.append_many(
        {
            "context": " ".join(word() for _ in range(rng.randint(0, 6))),
            "keywords": list({word() for _ in range(rng.randint(0, 3))}),
        }
        for _ in range(count)
    )


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def searched(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """A database with 400 indexed blocks and 60 waiting to be indexed (SQLite), some of
    them written by raw SQL as another writer would; on SQLite also 10 texts holding NUL and
    4 keywords of blocks that do not exist, as only the legacy class could write them."""
    backend = str(request.param)
    need_backend(backend)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('kw') / 'memory.db'}"
        db = Database(url)
        yield from _searched(db)
        return
    with postgres_schema("kw_") as url:
        db = Database(url, auto_upgrade=True)
        yield from _searched(db)


def _searched(db: Database) -> Iterator[Database]:
    store = BlockStore(db)
    _fill(store, 400, seed=1)
    assert store.refresh_search_index() == (400 if db.settings.is_sqlite else 0)
    _fill(store, 50, seed=2)
    with db.unit_of_work() as session:
        for index in range(450, 460):
            session.execute(
                text("INSERT INTO blocks VALUES (:i, '2024-01-01T00:00:00', :c, 0.5, 'h', 'p')"),
                {"i": index, "c": f"raw AbC{index} ü_%"},
            )
            session.execute(
                text("INSERT INTO block_keywords (block_index, keyword) VALUES (:i, :k)"),
                {"i": index, "k": f"Raw'{index}"},
            )
    path = db.settings.sqlite_path
    if path is not None:
        # What only the legacy class could write: NUL inside texts, and keywords of blocks
        # that do not exist (it never enabled foreign keys).
        legacy = sqlite3.connect(path)
        for index in range(460, 470):
            legacy.execute(
                "INSERT INTO blocks VALUES (?, '2024-01-01T00:00:00', ?, 0.5, 'h', 'p')",
                (index, f"nul\x00AbC{index} ü_%\x00 tail"),
            )
            legacy.execute(
                "INSERT INTO block_keywords (block_index, keyword) VALUES (?, ?)",
                (index, f"k\x00{index}"),
            )
        for index in range(1000, 1004):
            legacy.execute(
                "INSERT INTO block_keywords (block_index, keyword) VALUES (?, ?)",
                (index, f"orphan bB{index}"),
            )
        legacy.commit()
        legacy.close()
        with db.reading() as connection:  # the searches below see both kinds of blocks
            assert keyword_index.sqlite_index_ready(connection)
            assert keyword_index.pending_count(connection) == 74
    try:
        yield db
    finally:
        db.dispose()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    words=st.lists(WORDS, min_size=1, max_size=4),
    limit=st.integers(min_value=0, max_value=40),
)
def test_random_searches_match_the_full_scan(
    searched: Database, words: list[str], limit: int
) -> None:
    store = BlockStore(searched)
    got = [b.block_index for b in store.search_keywords(words, limit=limit)]
    assert got == scan_keywords(searched, words, limit)
    if searched.settings.is_sqlite:
        assert got == python_keywords(searched, words, limit)


@pytest.mark.parametrize(
    "words",
    [
        ["%"],
        ["_"],
        ["'"],
        ['"'],
        ["\\"],
        ['" OR "'],
        ["AND"],
        ["abc*"],
        ["^a"],
        ["a:b"],
        ["(a"],
        ["ÜÜ"],
        ["ẞ"],
        ["İ"],
        ["🙂🙂🙂"],
        ["raw abc45"],
        ["RAW'45"],
        ["abc465 "],
        ["tail"],
        ["orphan bb1002"],
        ["K"],
        ["L" * 60_000],
        ["ab" * 30_000],
        [f"w{i}" for i in range(600)],
    ],
)
def test_hostile_words_match_the_full_scan(searched: Database, words: list[str]) -> None:
    store = BlockStore(searched)
    for limit in (1, 5, 1000):
        got = [b.block_index for b in store.search_keywords(words, limit=limit)]
        assert got == scan_keywords(searched, words, limit)


def test_refused_words_change_nothing(searched: Database) -> None:
    store = BlockStore(searched)
    for bad, name in ((["a\x00"], "NUL"), (["\ud800"], "Unicode")):
        with pytest.raises(errors.InvalidInputError, match=name):
            store.search_keywords(bad)


# -- the index on SQLite ---------------------------------------------------------------------


def _pending(db: Database) -> int:
    with db.reading() as connection:
        return keyword_index.pending_count(connection)


def test_the_index_is_used_and_searches_drain_pending_blocks(sqlite_db: Database) -> None:
    store = BlockStore(sqlite_db)
    store.append_many(
        {"context": f"note {i} about gardens", "keywords": [f"k{i}"]} for i in range(300)
    )
    assert _pending(sqlite_db) == 300
    assert [b.block_index for b in store.search_keywords(["note 29"])] == [29, *range(290, 300)]
    assert _pending(sqlite_db) == 0  # 300 >= DRAIN_AT: that search indexed them
    store.append_many({"context": f"later {i}"} for i in range(10))
    assert [b.block_index for b in store.search_keywords(["LATER 7"])] == [307]
    assert _pending(sqlite_db) == 10  # below DRAIN_AT: found by a scan of the pending rows
    with sqlite_db.reading() as connection:
        indexed = keyword_search._STATEMENTS["indexed", False]
        plan = [
            str(row[-1])
            for row in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + indexed,
                ('"not"', "not", 5, '"not"', "not", 5, "not", "not", 5, 5),
            )
        ]
    # Both FTS5 tables answer through their index; blocks and keywords are only looked up
    # by key (the one plain scan is of the few pending rows).
    assert sum(step.startswith("SCAN f VIRTUAL TABLE INDEX") for step in plan) == 2
    scans = [step for step in plan if step.startswith("SCAN ") and "subquery" not in step]
    assert sorted(scans) == ["SCAN f VIRTUAL TABLE INDEX 64:M1"] * 2 + ["SCAN p"]


def test_refresh_search_index_indexes_everything_waiting(sqlite_db: Database) -> None:
    store = BlockStore(sqlite_db)
    store.append_many({"context": f"bulk {i}"} for i in range(keyword_index.DRAIN_BATCH + 7))
    assert store.refresh_search_index() == keyword_index.DRAIN_BATCH + 7
    assert store.refresh_search_index() == 0
    assert [b.block_index for b in store.search_keywords(["bulk 5006"])] == [5006]


def test_other_writers_are_indexed_too(tmp_path: Path) -> None:
    """Rows the legacy class (plain sqlite3, its own statements) writes while the layer
    runs, including INSERT OR IGNORE / OR FAIL, an UPDATE and a NUL inside a context."""
    path = tmp_path / "memory.db"
    db = Database(f"sqlite:///{path}")
    store = BlockStore(db)
    store.append("first block")
    store.refresh_search_index()
    legacy = sqlite3.connect(path)
    legacy.execute(
        "INSERT INTO blocks VALUES (1, '2024-01-01', 'written by the OLD class', 0.1, 'h', 'p')"
    )
    legacy.execute(
        "INSERT OR IGNORE INTO block_keywords (block_index, keyword) VALUES (1, 'Legacy')"
    )
    legacy.execute("INSERT OR FAIL INTO block_keywords (block_index, keyword) VALUES (1, 'second')")
    legacy.execute(
        "INSERT INTO block_keywords (block_index, keyword) VALUES (1, 'nul' || char(0) || 'kw')"
    )
    legacy.execute(
        "INSERT INTO blocks VALUES "
        "(2, '2024-01-01', 'before' || char(0) || 'after NUL', 0.1, 'h', 'p')"
    )
    legacy.execute("UPDATE blocks SET context = 'renamed memory' WHERE block_index = 0")
    legacy.commit()
    legacy.close()
    assert _pending(db) == 3
    for _ in range(2):  # found while pending, and after indexing
        assert [b.block_index for b in store.search_keywords(["old CLASS"])] == [1]
        assert [b.block_index for b in store.search_keywords(["legacy"])] == [1]
        assert [b.block_index for b in store.search_keywords(["AFTER nul"])] == [2]
        assert [b.block_index for b in store.search_keywords(["KW"])] == [1]
        assert [b.block_index for b in store.search_keywords(["renamed"])] == [0]
        assert store.search_keywords(["first block"]) == []  # the old text no longer matches
        assert store.refresh_search_index() in (3, 0)
    assert _pending(db) == 0
    db.dispose()


def test_writers_keep_working_with_trusted_schema_off(sqlite_db: Database) -> None:
    with sqlite_db.read() as session:
        assert session.execute(text("PRAGMA trusted_schema")).scalar() == 0
    record = BlockStore(sqlite_db).append("triggers need no trust", keywords=["x"])
    assert _pending(sqlite_db) == 1
    assert BlockStore(sqlite_db).search_keywords(["NEED NO"]) == [record]


def test_a_failed_catch_up_leaves_searches_exact(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlockStore(sqlite_db)
    store.append_many({"context": f"item {i}"} for i in range(300))

    def refuse(connection: Any, batch: int = 0) -> int:
        raise errors.ReadOnlyDatabaseError("read-only for this test")

    monkeypatch.setattr(keyword_index, "drain", refuse)
    assert [b.block_index for b in store.search_keywords(["item 12"])] == [12, *range(120, 130)]
    assert _pending(sqlite_db) == 300
    with pytest.raises(errors.ReadOnlyDatabaseError):
        store.refresh_search_index()


def test_searches_scan_when_the_index_is_missing(sqlite_db: Database) -> None:
    store = BlockStore(sqlite_db)
    store.append_many({"context": f"row {i}", "keywords": ["kw"]} for i in range(50))
    schema.downgrade(sqlite_db, "0002")
    with sqlite_db.reading() as connection:
        assert not keyword_index.sqlite_index_ready(connection)
    assert [b.block_index for b in store.search_keywords(["ROW 4"])] == [4, *range(40, 50)]
    assert store.refresh_search_index() == 0


# -- the migration -----------------------------------------------------------------------------


def _search_objects(db: Database) -> set[str]:
    with db.read() as session:
        if db.settings.is_sqlite:
            rows = session.execute(text("SELECT name FROM sqlite_master WHERE name LIKE 'search%'"))
        else:
            rows = session.execute(
                text(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
                    "AND indexname LIKE '%trgm'"
                )
            )
        return {row[0] for row in rows}


def test_upgrade_fills_the_index_and_downgrade_removes_it(db: Database) -> None:
    store = BlockStore(db)
    schema.downgrade(db, "0002")
    assert _search_objects(db) == set()
    store.append_many(
        {"context": f"before the index {i}", "keywords": [f"Key{i}"]} for i in range(30)
    )
    schema.upgrade(db)
    objects = _search_objects(db)
    if db.settings.is_sqlite:
        assert {"search_context_fts", "search_keyword_fts", "search_pending"} <= objects
        assert {f"search_pending_{n}" for n in ("block_insert", "block_update")} <= objects
        assert _pending(db) == 0  # filled by the migration itself
    else:
        assert objects == {"ix_blocks_context_trgm", "ix_block_keywords_keyword_trgm"}
    for words in (["INDEX 2"], ["key1"], ["x"]):
        assert [b.block_index for b in store.search_keywords(words)] == scan_keywords(
            db, words, 100
        )
    schema.downgrade(db, "0002")
    assert _search_objects(db) == set()
    assert [b.block_index for b in store.search_keywords(["key2"])] == scan_keywords(
        db, ["key2"], 100
    )
    schema.upgrade(db)


def test_the_legacy_fixture_is_indexed_on_adoption(legacy_copy: Path) -> None:
    db = Database(f"sqlite:///{legacy_copy}")
    with db.reading() as connection:
        assert keyword_index.sqlite_index_ready(connection)
        assert keyword_index.pending_count(connection) == 0
    store = BlockStore(db)
    with db.read() as session:
        samples = [
            row[0] for row in session.execute(text("SELECT keyword FROM block_keywords LIMIT 40"))
        ]
        contexts = [row[0] for row in session.execute(text("SELECT context FROM blocks LIMIT 20"))]
    words = samples + [c[3:9] for c in contexts if len(c) > 9] + ["a", "the", "zzzz"]
    for word in words:
        for limit in (3, 1000):
            got = [b.block_index for b in store.search_keywords([word], limit=limit)]
            assert got == scan_keywords(db, [word], limit), word
    db.dispose()
    assert LEGACY_FIXTURE.exists()


def test_texts_with_nul_are_indexed_on_adoption(tmp_path: Path) -> None:
    from .legacy_helpers import LEGACY_DDL

    path = tmp_path / "legacy.db"
    legacy = sqlite3.connect(path)
    for statement in LEGACY_DDL:
        legacy.execute(statement)
    legacy.execute(
        "INSERT INTO blocks VALUES (0, '2024-01-01', ?, 0.5, 'h', '')", ("a\x00hidden words",)
    )
    legacy.execute(
        "INSERT INTO block_keywords (block_index, keyword) VALUES (0, ?)", ("x\x00secret",)
    )
    legacy.execute("INSERT INTO blocks VALUES (1, '2024-01-01', 'plain words', 0.5, 'h2', 'h')")
    legacy.commit()
    legacy.close()
    db = Database(f"sqlite:///{path}")
    with db.reading() as connection:
        assert keyword_index.pending_count(connection) == 0
    store = BlockStore(db)
    for word, expected in (("HIDDEN", [0]), ("secret", [0]), ("words", [0, 1])):
        assert [b.block_index for b in store.search_keywords([word])] == expected
        assert scan_keywords(db, [word], 100) == expected
    db.dispose()
