"""Revision 0006 (the 1-/2-gram index) up, down and up again on both backends and on the old
class's database, with blocks waiting to be indexed; what a hand drops of it is reported by
``app doctor`` and restored by ``app reindex``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from app import BlockStore, Database, schema
from app.operations.doctor import FAIL, diagnose
from app.schema import _keyword_index as keyword_index

from .helpers import postgres_schema, run_cli
from .legacy_helpers import LEGACY_FIXTURE
from .search_reference import need_backend, scan_keywords


def _gram_objects(db: Database) -> set[str]:
    with db.read() as session:
        if db.settings.is_sqlite:
            query = "SELECT name FROM sqlite_master WHERE name IN ('search_context_grams', "
            query += "'search_keyword_grams')"
        else:
            query = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            query += "AND indexname LIKE '%%grams' UNION SELECT proname FROM pg_proc "
            query += "WHERE proname = 'app_short_grams' "
            query += "AND pronamespace = current_schema()::regnamespace"
        return {row[0] for row in session.execute(text(query.replace("%%", "%")))}


def _statistics(db: Database) -> set[int]:
    """The statistics targets of the gram indexes' expressions."""
    with db.read() as session:
        rows = session.execute(
            text(
                "SELECT attstattarget FROM pg_attribute WHERE attrelid IN "
                "('ix_blocks_context_grams'::regclass, 'ix_block_keywords_keyword_grams'::regclass)"
            )
        )
        return {row[0] for row in rows}


def _pending_limits(db: Database) -> dict[str, str | None]:
    """The GIN indexes' gin_pending_list_limit (None: the server's default)."""
    with db.read() as session:
        rows = session.execute(
            text(
                "SELECT c.relname, (SELECT split_part(o, '=', 2) FROM unnest(c.reloptions) o "
                "WHERE o LIKE 'gin_pending_list_limit=%') FROM pg_class c "
                "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'gin' "
                "AND c.relnamespace = current_schema()::regnamespace"
            )
        )
        return {row[0]: row[1] for row in rows}


GRAM_OBJECTS = {
    "sqlite": {"search_context_grams", "search_keyword_grams"},
    "postgres": {"ix_blocks_context_grams", "ix_block_keywords_keyword_grams", "app_short_grams"},
}


def test_upgrade_downgrade_upgrade(db: Database, backend: str) -> None:
    store = BlockStore(db)
    schema.downgrade(db, "0005")
    assert _gram_objects(db) == set()
    store.append_many({"context": f"메모 {i} 김치", "keywords": [f"키{i}"]} for i in range(30))
    for words in (["김치"], ["키"], ["4"]):  # scanned meanwhile, still exact
        assert [b.block_index for b in store.search_keywords(words)] == scan_keywords(
            db, words, 100
        )
    if db.settings.is_sqlite:
        store.refresh_search_index()  # 30 indexed by trigrams, 10 waiting at the upgrade
        store.append_many({"context": f"later {i} 김치"} for i in range(10))
    schema.upgrade(db)
    assert _gram_objects(db) == GRAM_OBJECTS[backend]
    with db.reading() as connection:
        assert "1-/2-gram" in keyword_index.status(connection)
    if backend == "postgres":
        assert _pending_limits(db) == {
            "ix_blocks_context_trgm": "512",
            "ix_blocks_context_grams": "512",
            "ix_block_keywords_keyword_trgm": "128",
            "ix_block_keywords_keyword_grams": "128",
        }
        assert _statistics(db) == {500}
    for words in (["김치"], ["키"], ["4"], ["r "], ["메모 1"]):
        assert [b.block_index for b in store.search_keywords(words)] == scan_keywords(
            db, words, 100
        )
    schema.downgrade(db, "0005")
    assert _gram_objects(db) == set()
    if backend == "postgres":  # the trigram indexes' default pending list again
        assert _pending_limits(db) == {
            "ix_blocks_context_trgm": None,
            "ix_block_keywords_keyword_trgm": None,
        }
    schema.upgrade(db)
    assert _gram_objects(db) == GRAM_OBJECTS[backend]
    assert [b.block_index for b in store.search_keywords(["치"])] == scan_keywords(db, ["치"], 100)


def test_the_legacy_fixture_is_indexed_for_short_words(legacy_copy: Path) -> None:
    """The old class's database, adopted (upgraded through every revision in batch mode),
    down to 0005 and up again: every 1- and 2-character piece of its texts is found as
    the scan finds it."""
    db = Database(f"sqlite:///{legacy_copy}")
    try:
        store = BlockStore(db)
        with db.read() as session:
            texts = [r[0] for r in session.execute(text("SELECT context FROM blocks LIMIT 30"))]
        pieces = sorted({t[i : i + n] for t in texts for n in (1, 2) for i in range(0, 12, 3)})
        for _ in range(2):
            with db.reading() as connection:
                assert keyword_index.sqlite_indexes(connection) == (True, True)
                assert keyword_index.pending_count(connection) == 0
            for word in pieces:
                assert [b.block_index for b in store.search_keywords([word], limit=50)] == (
                    scan_keywords(db, [word], 50)
                ), word
            schema.downgrade(db, "0005")
            schema.upgrade(db)
    finally:
        db.dispose()
    assert LEGACY_FIXTURE.exists()


def test_a_missing_gram_table_is_reported_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    shutil.copyfile(LEGACY_FIXTURE, path)
    url = f"sqlite:///{path}"
    Database(url).dispose()
    with Database(url) as db, db.writing() as connection:
        connection.exec_driver_sql("DROP TABLE search_keyword_grams")
    with Database(url, auto_upgrade=False) as db:
        store = BlockStore(db)
        store.append("나중에 쓴 메모", keywords=["밥"])
        found = [b.block_index for b in store.search_keywords(["밥"])]  # scanned
        assert 240 in found and found == scan_keywords(db, ["밥"], 100)
    report = diagnose(url)
    (check,) = [c for c in report.checks if c.name == "search indexes"]
    assert check.status == FAIL and "search_keyword_grams" in check.value
    result = run_cli("--url", url, "reindex")
    assert result.exit_code == 0 and "241 blocks indexed" in result.output, result.output
    assert diagnose(url).ok
    with Database(url) as db:
        for word in ("밥", "메", "쓴 "):
            assert [b.block_index for b in BlockStore(db).search_keywords([word])] == (
                scan_keywords(db, [word], 100)
            )


@pytest.mark.postgres
def test_a_dropped_gram_index_and_function_are_reported_and_restored() -> None:
    need_backend("postgres")
    with postgres_schema("short_") as url:
        with Database(url, auto_upgrade=True) as db:
            BlockStore(db).append("찾을 메모", keywords=["밥"])
            with db.writing() as connection:
                connection.exec_driver_sql("DROP INDEX ix_block_keywords_keyword_grams")
                connection.exec_driver_sql("DROP FUNCTION app_short_grams(text) CASCADE")
            assert BlockStore(db).search_keywords(["밥"])  # scanned meanwhile
        (check,) = [c for c in diagnose(url).checks if c.name == "search indexes"]
        assert check.status == FAIL and "app_short_grams" in check.value
        assert run_cli("--url", url, "reindex").exit_code == 0
        assert diagnose(url).ok
        with Database(url) as db:
            assert _gram_objects(db) == GRAM_OBJECTS["postgres"] and _statistics(db) == {500}
            assert [b.block_index for b in BlockStore(db).search_keywords(["밥"])] == [0]


def _reltuples(db: Database) -> dict[str, float]:
    """pg_class.reltuples of the block tables (-1: never analyzed)."""
    with db.read() as session:
        rows = session.execute(
            text(
                "SELECT relname, reltuples FROM pg_class WHERE relname IN ('blocks', "
                "'block_keywords') AND relnamespace = current_schema()::regnamespace"
            )
        )
        return {row[0]: row[1] for row in rows}


@pytest.mark.postgres
def test_empty_tables_are_not_analyzed_and_filled_ones_are() -> None:
    """Statistics of an empty table tell the planner it stays empty, and a connection's
    prepared statements then keep plans that read the whole table (appends found the
    chain's head by a sequential scan, at a quarter of their speed): the revision analyzes
    the tables that hold rows only."""
    need_backend("postgres")
    with postgres_schema("short_") as url:
        migrating = Database(url, check_schema=False)
        schema.upgrade(migrating, "0005")
        BlockStore(migrating).append("첫 메모")  # blocks filled, block_keywords empty
        schema.upgrade(migrating)
        assert _reltuples(migrating) == {"blocks": 1, "block_keywords": -1}
        migrating.dispose()
    with postgres_schema("short_") as url, Database(url, auto_upgrade=True) as db:
        assert _reltuples(db) == {"blocks": -1, "block_keywords": -1}
        assert run_cli("--url", url, "reindex").exit_code == 0  # analyzes filled ones
        assert _reltuples(db) == {"blocks": -1, "block_keywords": -1}
