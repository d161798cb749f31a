"""One DatabaseManager shared by many threads, and one file shared by many processes.

Every test asserts the outcome: the exact number of blocks, indices without gaps, a chain
whose hashes and links verify, and no error in any thread.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.legacy import DatabaseManager

from .helpers import in_thread, join_processes, run_threads
from .legacy_helpers import append_with_transaction, chain_is_intact, next_block, process_appender

WRITERS, BLOCKS_EACH, SEARCHERS = 100, 20, 10
PAUSE = 0.5  # seconds between two rounds of a search thread


@pytest.fixture
def shared(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatabaseManager]:
    monkeypatch.delenv("GREEUM_THREAD_SAFE", raising=False)
    db = DatabaseManager(db_url)
    yield db
    db.close()


def _keyword(db: DatabaseManager) -> None:
    for block in db.search_blocks_by_keyword(["w1"], limit=5):
        assert any("w1" in k for k in block["keywords"])


def _embedding(db: DatabaseManager) -> None:
    scores = [b["similarity"] for b in db.search_blocks_by_embedding([1.0, 3.0, 0.5], top_k=3)]
    assert scores == sorted(scores, reverse=True)


def _date_range(db: DatabaseManager) -> None:
    found = db.search_blocks_by_date_range("2024-05-01T10:00", "2024-05-01T11:00", limit=5)
    assert [b["timestamp"] for b in found] == sorted((b["timestamp"] for b in found), reverse=True)


def _since(db: DatabaseManager) -> None:
    found = db.get_blocks_since_time("2024-05-01T10:00:00", limit=5)
    assert [b["timestamp"] for b in found] == sorted((b["timestamp"] for b in found), reverse=True)


def _importance(db: DatabaseManager) -> None:
    assert all(b["importance"] >= 0.5 for b in db.filter_blocks_by_importance(0.5, limit=5))


def _page(db: DatabaseManager) -> None:
    # Each read is one snapshot of a chain that grows from 0: never a gap.
    found = [b["block_index"] for b in db.get_blocks(limit=5)]
    assert found == list(range(len(found)))
    recent = [b["block_index"] for b in db.get_recent_blocks(3)]
    assert recent == list(range(recent[0], recent[0] - len(recent), -1)) if recent else True


def _last(db: DatabaseManager) -> None:
    last = db.get_last_block_info()
    if last is not None:
        block = db.get_block(last["block_index"])
        assert block is not None and block["hash"] == last["hash"]


def _short_term(db: DatabaseManager) -> None:
    assert db.get_short_term_memory_by_id("none") is None
    assert db.get_recent_short_term_memories() == []


def _raw_sql(db: DatabaseManager) -> None:
    cursor = db.conn.cursor()
    count = cursor.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
    top = cursor.execute("SELECT MAX(block_index) AS top FROM blocks").fetchone()["top"]
    # A later statement may see more blocks, never fewer or a gap.
    assert 0 <= count <= WRITERS * BLOCKS_EACH
    assert top is None or top + 1 >= count


SEARCHES = [_keyword, _embedding, _date_range, _since, _importance, _page, _last, _short_term]


@pytest.mark.parametrize(
    "backend",
    # 2,000 units with a server round trip per statement: about 20 s on PostgreSQL.
    ["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])],
    indirect=True,
)
def test_hundred_threads_share_one_manager_with_the_transaction_pattern(
    shared: DatabaseManager,
) -> None:
    db = shared
    writers_left = [WRITERS]
    left_lock = threading.Lock()
    ran: list[str] = []

    def writer(number: int) -> None:
        try:
            for _ in range(BLOCKS_EACH):
                with db.transaction():
                    last = db.get_last_block_info()
                    # conn joins the unit: it sees the same head as the facade.
                    top = db.conn.execute("SELECT MAX(block_index) FROM blocks").fetchone()[0]
                    assert top == (None if last is None else last["block_index"])
                    block = next_block(
                        last,
                        keywords=[f"w{number}"],
                        tags=["load"],
                        embedding=[1.0, float(number), 0.5],
                    )
                    db.add_block(block)
        finally:
            with left_lock:
                writers_left[0] -= 1

    def searcher(number: int) -> None:
        # Each round, one search and one raw query, rotating so every thread runs every
        # search. Paced like request handlers rather than a busy loop: while other threads
        # compute, CPython gives the GIL back to a thread returning from SQLite only at the
        # switch interval, so busy loops would mostly measure that, not the layer.
        for round_ in itertools.count():
            with left_lock:
                done = writers_left[0] == 0
            search = SEARCHES[(number + round_) % len(SEARCHES)]
            search(db)
            _raw_sql(db)
            ran.append(search.__name__)
            if done:
                return
            time.sleep(PAUSE)

    def body(i: int) -> None:
        if i < WRITERS:
            writer(i)
        else:
            searcher(i - WRITERS)

    failures = run_threads(WRITERS + SEARCHERS, body)
    assert failures == []
    assert chain_is_intact(db) == (WRITERS * BLOCKS_EACH, None)
    per_writer = db.conn.execute(
        "SELECT keyword, COUNT(*) FROM block_keywords GROUP BY keyword"
    ).fetchall()
    assert {row[0]: row[1] for row in per_writer} == {f"w{n}": BLOCKS_EACH for n in range(WRITERS)}
    assert set(ran) == {search.__name__ for search in SEARCHES}


def test_append_block_and_the_transaction_pattern_interleave(shared: DatabaseManager) -> None:
    db = shared

    def body(i: int) -> None:
        if i < 40:
            for n in range(20):
                db.append_block(f"appended {i}-{n}", keywords=["append"])
        else:
            append_with_transaction(db, 10)

    assert run_threads(50, body) == []
    assert chain_is_intact(db) == (40 * 20 + 10 * 10, None)
    assert db.count_blocks() == 900


def test_raw_writes_through_conn_from_many_threads(shared: DatabaseManager) -> None:
    db = shared

    def body(i: int) -> None:
        for n in range(10):
            cursor = db.conn.cursor()
            cursor.execute(
                "INSERT INTO short_term_memories (id, timestamp, content) VALUES (?, ?, ?)",
                (f"t{i}-{n}", f"2024-01-01T00:{i:02d}:{n:02d}", "raw"),
            )
            assert cursor.rowcount == 1
            # Inside the thread's implicit unit, its own pending row is visible.
            assert db.get_short_term_memory_by_id(f"t{i}-{n}") is not None
            db.conn.commit()
            db.conn.execute("DELETE FROM short_term_memories WHERE id = ?", (f"t{i}-{n}",))
            db.conn.rollback()

    assert run_threads(20, body) == []
    assert db.conn.execute("SELECT COUNT(*) FROM short_term_memories").fetchone()[0] == 200


def test_thread_ending_with_uncommitted_raw_writes_rolls_back_and_frees_the_lock(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A leaked write lock would make the append below fail after 2 s instead of 30.
    monkeypatch.setenv("APP_RETRY_DEADLINE", "2")
    pending = []

    def forgetful() -> None:
        db.conn.execute(
            "INSERT INTO short_term_memories (id, timestamp, content) VALUES ('x', '2024', 'c')"
        )
        pending.append(db.conn.in_transaction)

    with DatabaseManager(db_url) as db:
        assert in_thread(forgetful) is None
        assert pending == [True]
        assert db.append_block("after") == 0
        assert db.get_short_term_memory_by_id("x") is None
        assert db.database.stats().units_rolled_back == 1


def test_four_processes_of_25_threads_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    DatabaseManager(path).close()  # create the schema once, before the race
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=process_appender, args=(path, 25, 5, start, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    start.set()
    failures = [results.get(timeout=120) for _ in processes]
    assert join_processes(processes, timeout=60) == [0, 0, 0, 0]
    assert failures == [[], [], [], []]
    with DatabaseManager(path) as db:
        assert chain_is_intact(db) == (4 * 25 * 5, None)
        assert db.count_blocks() == 500
