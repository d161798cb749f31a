"""The compact tier of the vector cache (int8 rows that pick candidates, their stored values
that score them) gives exactly the full scan's blocks and scores: randomized and hostile
data, both kernels, chunked scans, filters, change notes, appends from threads; and its
memory is bounded by the compact bytes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np
import pytest
from sqlalchemy import text

from app import BlockStore, Database
from app.search import _quantized, _vector_cache, _vector_quant

from .helpers import postgres_schema
from .search_reference import assert_top_k, embeddings, fsum_scores, need_backend


def ranking(db: Database, query: Any, k: int, **options: Any) -> list[tuple[int, float]]:
    found = BlockStore(db).similar(query, k, **options)
    return [(s.block.block_index, s.similarity) for s in found]


@pytest.fixture(autouse=True)
def compact_tier() -> Iterator[None]:
    """Every store here is served by the compact tier, however small."""
    with mock.patch.object(_vector_quant, "QUANTIZE_ABOVE", 0):
        yield


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    need_backend(str(request.param))
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'q.db'}"
        return
    with postgres_schema("quant_") as found:
        yield found


def hostile_rows(rng: np.random.Generator, dim: int) -> tuple[np.ndarray[Any, Any], Any]:
    """Rows that make the bounds work: near ties of a query, duplicates, zero rows, huge
    and tiny magnitudes, coordinates of one sign, sparse rows."""
    query = rng.standard_normal(dim).astype(np.float32)
    rows = [rng.standard_normal(dim).astype(np.float32) for _ in range(400)]
    rows += [query + rng.standard_normal(dim).astype(np.float32) * 1e-6 for _ in range(60)]
    rows += [rows[3]] * 12 + [query * 3] * 5 + [np.zeros(dim, np.float32)] * 4
    rows += [rng.standard_normal(dim).astype(np.float32) * np.float32(1e30) for _ in range(10)]
    rows += [rng.standard_normal(dim).astype(np.float32) * np.float32(1e-30) for _ in range(10)]
    rows += [np.abs(rng.standard_normal(dim)).astype(np.float32) for _ in range(20)]
    sparse = np.zeros((20, dim), np.float32)
    sparse[np.arange(20), rng.integers(0, dim, 20)] = 1.0
    rows += list(sparse)
    order = rng.permutation(len(rows))
    return np.stack(rows)[order], query


def _fill(db: Database, values: np.ndarray[Any, Any], model: str = "m") -> None:
    BlockStore(db).append_many(
        {"context": f"r{i}", "embedding": v, "embedding_model": model} for i, v in enumerate(values)
    )


@pytest.mark.parametrize("kernel", ["numkong", "numpy"])
def test_hostile_data_matches_the_full_scan(url: str, kernel: str) -> None:
    if kernel == "numkong" and _quantized._numkong is None:
        pytest.skip("numkong is not installed")
    rng = np.random.default_rng(21)
    values, near = hostile_rows(rng, 24)
    db, streaming = Database(url, auto_upgrade=True), Database(url, vector_cache_limit=0)
    try:
        _fill(db, values)
        # Another dimension under another model: refused unless filtered out.
        _fill(db, rng.standard_normal((30, 5)).astype(np.float32), model="five")
        queries = [near, -near, values[3], rng.standard_normal(24).astype(np.float32)]
        queries += [rng.standard_normal(24).astype(np.float32) * 1e20 for _ in range(2)]
        with mock.patch.object(_quantized, "KERNEL", kernel):
            for rows_at_a_time, threads in ((7, 3), (100, 2), (100, 1), (65_536, 2)):
                with (
                    mock.patch.object(_quantized, "SCAN_ROWS", rows_at_a_time),
                    mock.patch.object(_quantized, "SCAN_THREADS", threads),
                    mock.patch.object(_quantized, "PARALLEL_ROWS", 0),
                ):
                    for query in queries:
                        for k, floor in ((1, None), (10, None), (70, None), (10, 0.2), (600, -1.0)):
                            options = {"min_similarity": floor, "model": "m"}
                            got = ranking(db, query, k, **options)
                            assert got == ranking(streaming, query, k, **options)
                            reference = fsum_scores(embeddings(db), query, "m")
                            assert_top_k(got, reference, k, floor)
            five = rng.standard_normal(5).astype(np.float32)
            assert ranking(db, five, 7, model="five") == ranking(streaming, five, 7, model="five")
        cache = _vector_cache.cache_for(db)
        assert cache._quant is not None
        assert cache.rows == len(values) + 30
    finally:
        db.dispose()
        streaming.dispose()


def test_random_stores_and_queries(url: str) -> None:
    rng = np.random.default_rng(22)
    db, streaming = Database(url, auto_upgrade=True), Database(url, vector_cache_limit=0)
    try:
        for round_number in range(4):
            dim = int(rng.integers(1, 40))
            values = rng.standard_normal((int(rng.integers(50, 400)), dim)).astype(np.float32)
            if round_number % 2:
                values = np.round(values)  # small integers: exact and near ties
            _fill(db, values, model=f"d{dim}-{round_number}")
            for _ in range(15):
                query = rng.standard_normal(dim).astype(np.float32)
                if round_number % 2:
                    query = np.round(query) + 1
                k = int(rng.integers(0, 30))
                floor = None if rng.random() < 0.5 else float(rng.uniform(-1, 1))
                options = {"min_similarity": floor, "model": f"d{dim}-{round_number}"}
                assert ranking(db, query, k, **options) == ranking(streaming, query, k, **options)
    finally:
        db.dispose()
        streaming.dispose()


def test_bounds_hold_for_every_row() -> None:
    """The bound itself: every exact score lies within ``err`` of the approximate one."""
    rng = np.random.default_rng(23)
    for dim in (1, 2, 7, 384, 1100):
        rows = rng.standard_normal((300, dim)).astype(np.float32)
        rows[::17] *= np.float32(1e-35)
        rows[1::17] *= np.float32(1e35)
        codes, scale, residual = _quantized.quantize(rows)
        query = rng.standard_normal(dim).astype(np.float32)
        codes_q, step, rho = _quantized.quantize_query(query)
        approx = (codes.astype(np.float64) @ codes_q.astype(np.float64)) * scale * step
        err = residual.astype(np.float64) * (1 + rho) + rho + _quantized.SLACK
        wide, unit = rows.astype(np.float64), query.astype(np.float64)
        exact = (wide @ unit) / (np.linalg.norm(wide, axis=1) * np.linalg.norm(unit))
        assert (np.abs(exact - approx) <= err).all()


def test_a_failing_scan_thread_fails_the_query(tmp_path: Any) -> None:
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        _fill(db, np.random.default_rng(27).standard_normal((300, 8)).astype(np.float32))
        calls = {"n": 0}
        real = _quantized._dots

        def failing(codes: Any, query: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 3:
                raise MemoryError("injected")
            return real(codes, query)

        with (
            mock.patch.object(_quantized, "SCAN_ROWS", 50),
            mock.patch.object(_quantized, "SCAN_THREADS", 2),
            mock.patch.object(_quantized, "PARALLEL_ROWS", 0),
            mock.patch.object(_quantized, "_dots", failing),
            pytest.raises(MemoryError, match="injected"),
        ):
            ranking(db, np.ones(8), 3)
        assert ranking(db, np.ones(8), 3)  # the next query is fine
    finally:
        db.dispose()


@pytest.mark.parametrize("kernel", ["numkong", "numpy"])
@pytest.mark.parametrize("dim", [1, 384, 1100, 3000])
def test_the_kernels_give_exact_integers(kernel: str, dim: int) -> None:
    if kernel == "numkong" and _quantized._numkong is None:
        pytest.skip("numkong is not installed")
    rng = np.random.default_rng(dim)
    codes = rng.integers(-127, 128, size=(5000, dim), dtype=np.int8)
    codes[:10] = 127  # the largest sums
    query = np.full(dim, 127, dtype=np.int8)
    query[1::2] = rng.integers(-127, 128, size=dim // 2, dtype=np.int8)
    expected = codes.astype(np.int64) @ query.astype(np.int64)
    with mock.patch.object(_quantized, "KERNEL", kernel):
        got = _quantized._dots(codes, query)
    assert (got == expected).all()


def test_changed_embeddings_and_appends_are_seen(url: str) -> None:
    rng = np.random.default_rng(24)
    db, streaming = Database(url, auto_upgrade=True), Database(url, vector_cache_limit=0)
    try:
        _fill(db, rng.standard_normal((300, 12)).astype(np.float32))
        query = rng.standard_normal(12).astype(np.float32)
        assert ranking(db, query, 5) == ranking(streaming, query, 5)
        blob = (query * 2).astype(np.float32).tobytes()
        with db.unit_of_work() as session:  # an embedding rewritten in place
            session.execute(
                text("UPDATE block_embeddings SET embedding = :b WHERE block_index = 7"),
                {"b": blob},
            )
        got = ranking(db, query, 5)
        assert got[0] == (7, pytest.approx(1.0)) and got == ranking(streaming, query, 5)
        _fill(db, np.stack([query * 5, -query]))
        got = ranking(db, query, 3)
        assert [i for i, _ in got[:2]] == [7, 300] or [i for i, _ in got[:2]] == [300, 7]
        assert got == ranking(streaming, query, 3)
        assert _vector_cache.cache_for(db).rows == 302
    finally:
        db.dispose()
        streaming.dispose()


def test_memory_is_the_compact_bytes_and_the_limit_holds(url: str) -> None:
    rng = np.random.default_rng(25)
    values = rng.standard_normal((500, 64)).astype(np.float32)
    db = Database(url, auto_upgrade=True)
    try:
        _fill(db, values)
        query = rng.standard_normal(64)
        expected = ranking(db, query, 4)
        held = db.stats().vector_cache_bytes
        assert held == 500 * _quantized.row_bytes(64) < values.nbytes
        small = Database(url, vector_cache_limit=300 * _quantized.row_bytes(64))
        try:
            assert ranking(small, query, 4) == expected  # streamed
            assert small.stats().vector_cache_bytes == 0
        finally:
            small.dispose()
    finally:
        db.dispose()


def test_readers_and_writers_at_once(url: str) -> None:
    rng = np.random.default_rng(26)
    db = Database(url, auto_upgrade=True)
    failures: list[BaseException] = []
    try:
        _fill(db, rng.standard_normal((200, 16)).astype(np.float32))
        queries = [rng.standard_normal(16).astype(np.float32) for _ in range(4)]

        def reader(query: Any) -> None:
            try:
                for _ in range(10):
                    got = ranking(db, query, 5)
                    assert len(got) == 5
                    reference = fsum_scores(embeddings(db), query)
                    exact = dict(reference)
                    assert all(abs(exact[i] - s) < 1e-12 for i, s in got)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        def writer(seed: int) -> None:
            local = np.random.default_rng(seed)
            try:
                for _ in range(20):
                    BlockStore(db).append("w", embedding=local.standard_normal(16))
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
            got = ranking(db, query, 5)
            assert_top_k(got, fsum_scores(embeddings(db), query), 5, None)
        assert _vector_cache.cache_for(db).rows == 240
    finally:
        db.dispose()
