"""Similarity search from the per-process embedding cache gives exactly the full scan's
results: randomized queries, ties, filters, bad dimensions, appends from other threads and
processes, older snapshots, a replaced file, a cache over its limit."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app import BlockStore, Database, errors
from app.search import _vector_cache as vector_cache
from app.search import _vector_scores as vector_scores

from .helpers import postgres_schema
from .search_reference import assert_top_k, embeddings, fsum_scores, need_backend

ROOT = Path(__file__).parent.parent


def ranking(store: BlockStore, query: Any, k: int, **options: Any) -> list[tuple[int, float]]:
    return [(s.block.block_index, s.similarity) for s in store.similar(query, k, **options)]


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def vectors(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Database, Database]]:
    """(cached, streaming): two Databases on one database of 300 embeddings of 6 small
    integers (many exact and near ties, some zero vectors), under two models."""
    backend = str(request.param)
    need_backend(backend)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('vec') / 'memory.db'}"
        yield from _vectors(url)
        return
    with postgres_schema("vec_") as url:
        yield from _vectors(url)


def _vectors(url: str) -> Iterator[tuple[Database, Database]]:
    cached = Database(url, auto_upgrade=True)
    streaming = Database(url, vector_cache_limit=0)
    rng = np.random.default_rng(7)
    values = rng.integers(-3, 4, size=(300, 6)).astype(np.float32)
    values[::37] = 0.0
    BlockStore(cached).append_many(
        {
            "context": f"v{i}",
            "embedding": values[i],
            "embedding_model": "m1" if i % 3 else "m2",
        }
        for i in range(300)
    )
    try:
        yield cached, streaming
    finally:
        cached.dispose()
        streaming.dispose()


QUERIES = st.lists(st.integers(-3, 3), min_size=6, max_size=6).filter(any)
FLOORS = st.none() | st.floats(min_value=-1.0, max_value=1.0)
MODELS = st.sampled_from([None, "m1", "m2", "absent"])


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=QUERIES, k=st.integers(0, 40), floor=FLOORS, model=MODELS)
def test_random_queries_match_the_full_scan(
    vectors: tuple[Database, Database],
    query: list[int],
    k: int,
    floor: float | None,
    model: str | None,
) -> None:
    cached, streaming = vectors
    got = ranking(BlockStore(cached), query, k, min_similarity=floor, model=model)
    # The same scores to the bit as the streaming path (same formula, same ties) ...
    assert got == ranking(BlockStore(streaming), query, k, min_similarity=floor, model=model)
    # ... and a correct top k of the correctly rounded reference.
    assert_top_k(got, fsum_scores(embeddings(cached), query, model), k, floor)
    assert vector_cache.cache_for(cached).rows == 300
    assert vector_cache.cache_for(streaming).rows == 0


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    query=QUERIES,
    k=st.integers(0, 40),
    floor=FLOORS,
    model=MODELS,
    rows_at_a_time=st.sampled_from([1, 7, 64, 299]),
)
def test_scoring_in_chunks_finds_the_same_top_k(
    vectors: tuple[Database, Database],
    query: list[int],
    k: int,
    floor: float | None,
    model: str | None,
    rows_at_a_time: int,
) -> None:
    """A store larger than one chunk of scoring (``SCORE_ROWS``), scaled down: the k-th best
    score is only known at the last chunk, and every chunk boundary falls somewhere else."""
    cached, streaming = vectors
    expected = ranking(BlockStore(streaming), query, k, min_similarity=floor, model=model)
    with mock.patch.object(vector_scores, "SCORE_ROWS", rows_at_a_time):
        got = ranking(BlockStore(cached), query, k, min_similarity=floor, model=model)
    assert got == expected


def test_the_scratch_of_a_query_does_not_grow_with_the_store(sqlite_db: Database) -> None:
    """Scratch the size of the store, freed after each query, stays with the allocator of
    each thread that searched: a service's memory would grow with its data."""
    rows, rows_at_a_time = 20_000, 1_000
    rng = np.random.default_rng(5)
    values = rng.standard_normal((rows, 16)).astype(np.float32)
    store = BlockStore(sqlite_db)
    store.append_many({"context": f"s{i}", "embedding": values[i]} for i in range(rows))
    query = rng.standard_normal(16).astype(np.float32)
    with mock.patch.object(vector_scores, "SCORE_ROWS", rows_at_a_time):
        expected = ranking(store, query, 10)  # the cache is filled here, not below
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            assert ranking(store, query, 10) == expected
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
    one_score_each = rows * np.dtype(np.float32).itemsize
    assert peak < one_score_each / 2, f"{peak} bytes of scratch for {rows} rows"


def test_near_ties_below_float32_precision_are_ranked_exactly(db: Database) -> None:
    """Vectors closer to each other than float32 can tell apart: the cache must hand all of
    them to the exact scoring."""
    rng = np.random.default_rng(3)
    query = rng.standard_normal(64).astype(np.float32)
    rows = [
        query + rng.standard_normal(64).astype(np.float32) * np.float32(1e-6) for _ in range(200)
    ]
    rows += [rng.standard_normal(64).astype(np.float32) for _ in range(300)]
    store = BlockStore(db)
    store.append_many({"context": f"n{i}", "embedding": row} for i, row in enumerate(rows))
    streaming = Database(db.settings.url, vector_cache_limit=0)
    try:
        for k in (1, 10, 150, 250):
            got = ranking(store, query, k)
            assert got == ranking(BlockStore(streaming), query, k)
            assert_top_k(got, fsum_scores(embeddings(db), query), k, None)
    finally:
        streaming.dispose()


def test_other_dimensions_are_refused_as_by_the_full_scan(db: Database) -> None:
    store = BlockStore(db)
    store.append("three", embedding=[1.0, 0.0, 0.0], embedding_model="a")
    store.append("four", embedding=[1.0, 0.0, 0.0, 0.0], embedding_model="b")
    store.append("four again", embedding=[0.0, 1.0, 0.0, 0.0], embedding_model="b")
    for limit in (None, 0):
        options = {} if limit is None else {"vector_cache_limit": 0}
        other = Database(db.settings.url, **options)
        try:
            with pytest.raises(
                errors.InvalidInputError, match=r"block 1's embedding \(model 'b'\) has 4"
            ):
                BlockStore(other).similar([1.0, 0.0, 0.0])
            with pytest.raises(
                errors.InvalidInputError, match=r"block 0's embedding \(model 'a'\) has 3"
            ):
                BlockStore(other).similar([1.0, 0.0, 0.0, 0.0], top_k=0)
            assert ranking(BlockStore(other), [1, 1, 0, 0], 5, model="b") == [
                (1, pytest.approx(0.5**0.5)),
                (2, pytest.approx(0.5**0.5)),
            ]
        finally:
            other.dispose()


def test_an_unreadable_blob_is_named(sqlite_db: Database) -> None:
    BlockStore(sqlite_db).append("ok", embedding=[1.0, 2.0])
    path = sqlite_db.settings.sqlite_path
    assert path is not None
    legacy = sqlite3.connect(path)
    legacy.execute("INSERT INTO blocks VALUES (1, '2024', 'odd', 0.1, 'h', 'p')")
    legacy.execute("INSERT INTO block_embeddings VALUES (1, x'0000803f00', 'odd', NULL)")
    legacy.commit()
    legacy.close()
    with pytest.raises(errors.InvalidInputError, match=r"block 1's embedding .* float32"):
        BlockStore(sqlite_db).similar([1.0, 2.0])
    assert ranking(BlockStore(sqlite_db), [1.0, 2.0], 3, model="default") == [
        (0, pytest.approx(1.0))
    ]


def test_appends_extend_the_cache(db: Database) -> None:
    store = BlockStore(db)
    rng = np.random.default_rng(5)
    store.append_many({"context": "a", "embedding": rng.standard_normal(16)} for _ in range(50))
    query = rng.standard_normal(16)
    assert_top_k(ranking(store, query, 5), fsum_scores(embeddings(db), query), 5, None)
    cache = vector_cache.cache_for(db)
    assert cache.rows == 50
    held = db.stats().vector_cache_bytes
    assert held > 0
    store.append_many({"context": "b", "embedding": query * (i + 1)} for i in range(3))
    got = ranking(store, query, 5)
    assert [i for i, _ in got[:3]] == [50, 51, 52]
    assert_top_k(got, fsum_scores(embeddings(db), query), 5, None)
    assert cache.rows == 53
    assert db.stats().vector_cache_bytes >= held


def _append_in_another_process(url: str, vector: list[float]) -> None:
    code = (
        "import sys; from app import Database, BlockStore; "
        f"db = Database({url!r}); BlockStore(db).append('other process', embedding={vector!r}); "
        "db.dispose()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_blocks_of_other_processes_are_seen(db: Database) -> None:
    store = BlockStore(db)
    store.append("mine", embedding=[1.0, 0.0, 0.0])
    assert ranking(store, [0.0, 1.0, 0.0], 2) == [(0, 0.0)]
    _append_in_another_process(db.settings.url, [0.0, 1.0, 0.0])
    assert ranking(store, [0.0, 1.0, 0.0], 2) == [(1, 1.0), (0, 0.0)]
    if db.settings.is_sqlite:
        # The legacy class, writing with its own statements.
        legacy = sqlite3.connect(str(db.settings.sqlite_path))
        legacy.execute("INSERT INTO blocks VALUES (2, '2024', 'legacy', 0.1, 'h', 'p')")
        legacy.execute(
            "INSERT INTO block_embeddings VALUES (2, ?, 'default', 3)",
            (np.array([0.0, 2.0, 0.0], dtype=np.float32).tobytes(),),
        )
        legacy.commit()
        legacy.close()
        assert ranking(store, [0.0, 1.0, 0.0], 2) == [(1, 1.0), (2, 1.0)]


def test_a_replaced_file_rebuilds_the_cache(tmp_path: Path) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    other = Database(f"sqlite:///{second}")
    rng = np.random.default_rng(11)
    BlockStore(other).append_many(
        {"context": "x", "embedding": rng.standard_normal(8)} for _ in range(40)
    )
    other.dispose()
    db = Database(f"sqlite:///{first}")
    store = BlockStore(db)
    store.append_many({"context": "y", "embedding": rng.standard_normal(8)} for _ in range(40))
    query = rng.standard_normal(8)
    before = ranking(store, query, 5)
    assert_top_k(before, fsum_scores(embeddings(db), query), 5, None)
    # Restore the other database over this one (same number of blocks, other chain).
    with sqlite3.connect(second) as source, sqlite3.connect(first) as target:
        source.backup(target)
    after = ranking(store, query, 5)
    assert after != before
    assert_top_k(after, fsum_scores(embeddings(db), query), 5, None)
    db.dispose()


def test_a_rewritten_chain_rebuilds_the_cache(db: Database) -> None:
    store = BlockStore(db)
    rng = np.random.default_rng(12)
    store.append_many({"context": "old", "embedding": rng.standard_normal(8)} for _ in range(20))
    query = rng.standard_normal(8)
    before = ranking(store, query, 3)
    with db.unit_of_work() as session:
        for table in (
            "block_keywords",
            "block_embeddings",
            "block_metadata",
            "block_tags",
            "blocks",
        ):
            session.execute(text(f"DELETE FROM {table}"))
    store.append_many({"context": "new", "embedding": rng.standard_normal(8)} for _ in range(20))
    after = ranking(store, query, 3)
    assert after != before
    assert_top_k(after, fsum_scores(embeddings(db), query), 3, None)


def test_an_older_snapshot_sees_only_its_own_blocks(db: Database) -> None:
    store = BlockStore(db)
    rng = np.random.default_rng(13)
    store.append_many({"context": "a", "embedding": rng.standard_normal(8)} for _ in range(30))
    query = rng.standard_normal(8)
    outcome: dict[str, Any] = {}
    started, appended = threading.Event(), threading.Event()

    def old_reader() -> None:
        try:
            with db.read():
                outcome["first"] = ranking(store, query, 5)
                started.set()
                assert appended.wait(30)
                outcome["again"] = ranking(store, query, 5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc
            started.set()

    thread = threading.Thread(target=old_reader)
    thread.start()
    assert started.wait(30)
    store.append_many({"context": "new", "embedding": query} for _ in range(3))
    newest = ranking(store, query, 5)
    appended.set()
    thread.join(30)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert [i for i, _ in newest[:3]] == [30, 31, 32]
    assert outcome["again"] == outcome["first"]
    assert all(i < 30 for i, _ in outcome["again"])
    assert vector_cache.cache_for(db).rows == 33


def test_a_cache_over_its_limit_streams(make_db: Callable[..., Database]) -> None:
    db = make_db(vector_cache_limit=20_000)
    store = BlockStore(db)
    rng = np.random.default_rng(14)
    store.append_many({"context": "a", "embedding": rng.standard_normal(32)} for _ in range(200))
    query = rng.standard_normal(32)
    got = ranking(store, query, 7)
    assert_top_k(got, fsum_scores(embeddings(db), query), 7, None)
    assert db.stats().vector_cache_bytes == 0
    assert vector_cache.cache_for(db).rows == 0
    roomy = make_db(vector_cache_limit=10**8)
    assert ranking(BlockStore(roomy), query, 7) == got
    assert 200 * 32 * 4 <= roomy.stats().vector_cache_bytes <= 10**8


def test_readers_and_writers_at_once(db: Database) -> None:
    store = BlockStore(db)
    rng = np.random.default_rng(15)
    store.append_many({"context": "seed", "embedding": rng.standard_normal(12)} for _ in range(100))
    queries = [rng.standard_normal(12) for _ in range(8)]
    failures: list[BaseException] = []

    def reader(query: np.ndarray[Any, Any]) -> None:
        try:
            for _ in range(15):
                found = store.similar(query, 5)
                scores = [s.similarity for s in found]
                assert scores == sorted(scores, reverse=True) and len(found) == 5
                for scored in found:  # each score is that block's own
                    exact = fsum_scores(
                        [(0, np.array(scored.block.embedding, np.float32).tobytes(), None, None)],
                        query,
                    )
                    assert abs(exact[0][1] - scored.similarity) < 1e-12
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    def writer(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(40):
                store.append("w", embedding=local.standard_normal(12))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(q,)) for q in queries]
    threads += [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[0]
    for query in queries:
        assert_top_k(ranking(store, query, 5), fsum_scores(embeddings(db), query), 5, None)
    assert vector_cache.cache_for(db).rows == 180


def _child_query(url: str, query: list[float], out: Any) -> None:
    db = Database(url)
    try:
        out.put([(s.block.block_index, s.similarity) for s in BlockStore(db).similar(query, 3)])
    finally:
        db.dispose()


def test_a_forked_child_starts_its_own_cache(sqlite_db: Database) -> None:
    store = BlockStore(sqlite_db)
    store.append_many({"context": "f", "embedding": [float(i), 1.0, 0.5]} for i in range(20))
    expected = ranking(store, [3.0, 1.0, 0.5], 3)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(
        target=_child_query, args=(sqlite_db.settings.url, [3.0, 1.0, 0.5], out)
    )
    child.start()
    try:
        assert out.get(timeout=60) == expected
    finally:
        child.join(60)
    assert child.exitcode == 0


def test_stats_and_doctor_show_the_search_machinery(db: Database) -> None:
    from app.operations.doctor import diagnose

    store = BlockStore(db)
    store.append("x", keywords=["k"], embedding=[1.0, 2.0])
    assert db.stats().vector_cache_bytes == 0  # nothing searched yet in this process
    store.similar([1.0, 1.0])
    assert db.stats().vector_cache_bytes > 0
    checks = {check.name: check.value for check in diagnose(db.settings.url).checks}
    expected_index = "FTS5 trigram, 1 blocks" if db.settings.is_sqlite else "pg_trgm GIN indexes"
    assert checks["keyword index"].startswith(expected_index)
    assert checks["vector cache"].startswith("1 embeddings need about 0.0 MiB")
    assert "within vector_cache_limit 1,024.0 MiB" in checks["vector cache"]
    assert checks["vector extension"].endswith("(exact search in numpy)")
    assert "vector cache" in checks["stats"]
