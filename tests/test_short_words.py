"""Words of one and two characters through the 1-/2-gram index (revision 0006) give exactly
the full scan's results on both backends: Korean text, CJK, Latin, digits, punctuation and
spaces; indexed blocks, blocks waiting to be indexed, rows written by raw SQL (another
process); and the plans that serve them. The revision itself is tested in
``test_short_word_migrations``."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Connection

from app import BlockStore, Database
from app.engine._driver import raw_execute
from app.schema import _keyword_index as keyword_index
from app.schema import _short_grams as short_grams
from app.search import _keyword_search as keyword_search

from .helpers import postgres_schema
from .search_reference import need_backend, python_keywords, scan_keywords

# Hangul, Hanja, Latin letters of both cases, digits, ASCII punctuation and white space
# (escaped in the SQLite tokens: "x" and "2" "0" probe the escapes), letters SQLite's
# lower() leaves alone, one beyond the BMP, and a no-break space.
ALPHABET = "회의김치밥솥이다에漢字會議aAbBxX0279 !?.,'\"%_\\\n-*:()Üüİß🙂\u00a0"
SHORT = st.text(alphabet=ALPHABET, min_size=1, max_size=2)
WORDS = st.one_of(SHORT, SHORT, SHORT, st.text(alphabet=ALPHABET, min_size=3, max_size=5))


def _text(rng: random.Random, most: int = 6) -> str:
    return " ".join(
        "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 6)))
        for _ in range(rng.randint(0, most))
    )


def _fill(store: BlockStore, count: int, seed: int) -> None:
    rng = random.Random(seed)
    store.append_many(
        {"context": _text(rng), "keywords": list({_text(rng, 1) or "k" for _ in range(3)})}
        for _ in range(count)
    )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def searched(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """300 indexed blocks, 40 waiting to be indexed (SQLite), and rows another process wrote
    with plain SQL: new blocks and keywords, an indexed block's context and keyword
    rewritten (its old grams stay in the index), a NUL inside a text (SQLite)."""
    backend = str(request.param)
    need_backend(backend)
    if backend == "sqlite":
        db = Database(f"sqlite:///{tmp_path_factory.mktemp('short') / 'memory.db'}")
        yield from _searched(db)
        return
    with postgres_schema("short_") as url:
        yield from _searched(Database(url, auto_upgrade=True))


def _searched(db: Database) -> Iterator[Database]:
    store = BlockStore(db)
    _fill(store, 300, seed=1)
    store.refresh_search_index()
    _fill(store, 40, seed=2)
    rows = [(index, f"다른 process {index}의 메모! x20") for index in range(340, 346)]
    rewrites = (
        "UPDATE blocks SET context = '김치 밥솥 AB' WHERE block_index = 7",
        "UPDATE block_keywords SET keyword = '漢 z' || keyword WHERE block_index = 8",
    )
    path = db.settings.sqlite_path
    if path is not None:
        other = sqlite3.connect(path)  # another process: only the triggers see its rows
        for index, context in rows:
            other.execute(
                "INSERT INTO blocks VALUES (?, '2024-01-01T00:00:00', ?, 0.5, 'h', 'p')",
                (index, context.replace("x20", "nul\x00 x20")),
            )
            other.execute(
                "INSERT INTO block_keywords (block_index, keyword) VALUES (?, ?)", (index, "회")
            )
        for statement in rewrites:
            other.execute(statement)
        other.commit()
        other.close()
        with db.reading() as connection:
            assert keyword_index.sqlite_indexes(connection) == (True, True)
            assert keyword_index.pending_count(connection) == 48
    else:
        with db.unit_of_work() as session:
            for index, context in rows:
                session.execute(
                    text(
                        "INSERT INTO blocks VALUES (:i, '2024-01-01T00:00:00', :c, 0.5, 'h', 'p')"
                    ),
                    {"i": index, "c": context},
                )
                session.execute(
                    text("INSERT INTO block_keywords (block_index, keyword) VALUES (:i, '회')"),
                    {"i": index},
                )
            for statement in rewrites:
                session.execute(text(statement))
    try:
        yield db
    finally:
        db.dispose()


def _same(db: Database, words: list[str], limit: int) -> None:
    store = BlockStore(db)
    got = [b.block_index for b in store.search_keywords(words, limit=limit)]
    assert got == scan_keywords(db, words, limit), (words, limit)
    if db.settings.is_sqlite:
        assert got == python_keywords(db, words, limit)
    with db.reading() as connection:  # newest first, as hybrid search asks
        lists, _ = keyword_search.per_word(connection, words, limit)
    for word, newest in zip(words, lists, strict=True):
        assert newest == scan_keywords(db, [word], 10**6)[::-1][:limit], word


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(words=st.lists(WORDS, min_size=1, max_size=3), limit=st.integers(0, 30))
def test_random_short_words_match_the_full_scan(
    searched: Database, words: list[str], limit: int
) -> None:
    _same(searched, words, limit)


@pytest.mark.parametrize(
    "words",
    [
        ["김치"],
        ["치 "],
        ["회"],
        ["漢"],
        ["a"],
        ["AB"],
        ["x"],
        ["x2"],
        ["20"],
        [" "],
        ["!"],
        ["\n"],
        ["%"],
        ["_"],
        ['"'],
        ["ü"],
        ["Ü"],
        ["🙂"],
        ["\u00a0"],
        ["z"],
        ["메모"],
        ["의 "],
        ["l"],
        ["회", "x", "!?"],
    ],
)
def test_chosen_short_words_match_the_full_scan(searched: Database, words: list[str]) -> None:
    for limit in (1, 5, 1000):
        _same(searched, words, limit)


def test_the_pending_blocks_are_indexed_and_stay_found(searched: Database) -> None:
    """After the drain moves the waiting blocks (those other writers noted too) into the
    index, every word still finds what the scan finds."""
    BlockStore(searched).refresh_search_index()
    for word in ("메모", "회", "z", "x20", " x", "!", "김치", "漢 "):
        _same(searched, [word], 1000)


def test_tokens_are_one_per_gram_and_never_shared() -> None:
    grams = short_grams.tokens(["Ab c!", "회의\x00"]).split(" ")
    first = {"a", "b", "x20", "c", "x21", "ab", "bx20", "x20c", "cx21"}
    second = {"회", "의", "x00", "회의", "의x00"}
    assert sorted(grams) == sorted(first | second)  # grams never span two texts
    assert short_grams.query("A ") == '"ax20"' and short_grams.query("회") == '"회"'
    every = {chr(code) for code in range(128)} | set("회🙂\u00a0")
    tokens = {short_grams.query(a + b) for a in every for b in every} | {
        short_grams.query(a) for a in every
    }
    folded = {(a + b).lower() for a in every for b in every} | {a.lower() for a in every}
    assert len(tokens) == len(folded)  # distinct grams (ASCII folded): distinct tokens


# -- plans -----------------------------------------------------------------------------------


def test_sqlite_reads_the_gram_tables_through_their_index(sqlite_db: Database) -> None:
    BlockStore(sqlite_db).append_many({"context": f"메모 {i}"} for i in range(50))
    with sqlite_db.reading() as connection:
        assert keyword_index.sqlite_indexes(connection) == (True, True)
        statement = keyword_search._STATEMENTS["grams", False]
        plan = [
            str(row[-1])
            for row in connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement,
                ('"메모"', "메모", 5, '"메모"', "메모", 5, "메모", "메모", 5, 5),
            )
        ]
    scans = [step for step in plan if step.startswith("SCAN ") and "subquery" not in step]
    assert sorted(scans) == ["SCAN f VIRTUAL TABLE INDEX 64:M1"] * 2 + ["SCAN p"]


@pytest.mark.postgres
def test_postgres_uses_the_gram_indexes_and_plans_each_word() -> None:
    """With statistics (the revision analyzes; here after a bulk load), a rare word reads
    the gram indexes and a common one the blocks in order; a search leaves the caller's
    plan cache mode as it was."""
    need_backend("postgres")
    with postgres_schema("short_") as url, Database(url, auto_upgrade=True) as db:
        store = BlockStore(db)
        store.append_many(
            {"context": f"회의 {i} 메모" + (" 김치" if i % 500 == 0 else ""), "keywords": ["기록"]}
            for i in range(3000)
        )
        assert store.rebuild_search_index() == 0  # analyzes on PostgreSQL
        with db.reading() as connection:
            rare = _explain(connection, "김치")
            common = _explain(connection, "회")
        assert "Bitmap Index Scan on ix_blocks_context_grams" in rare
        assert "Bitmap Index Scan on ix_block_keywords_keyword_grams" in rare
        assert "Index Scan using pk_blocks on blocks" in common
        with db.read() as session:
            session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
            for _ in range(12):  # past psycopg's preparing and the server's first plans
                assert len(store.search_keywords(["김치"], limit=3)) == 3
            assert session.execute(text("SHOW plan_cache_mode")).scalar() == "force_generic_plan"


def _explain(connection: Connection, word: str) -> str:
    statement = keyword_search._STATEMENTS["postgres grams", False]
    parameters = (word,) * 4 + (10,) + (word,) * 4 + (10, 10)
    rows = raw_execute(connection, "EXPLAIN " + statement, parameters)
    return "\n".join(row[0] for row in rows)
