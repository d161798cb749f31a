"""The compact copy's file beside a SQLite database: a fresh process maps it instead of
building it, a torn, short or changed file is built again (never trusted), a replaced
database rebuilds it, processes that extend it at once leave it whole, and it is the
owner's alone."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from app import BlockStore, Database
from app.search import _quantized_file, _vector_cache, _vector_quant

from .search_reference import assert_top_k, embeddings, fsum_scores

ROOT = Path(__file__).parent.parent
DIM = 16
QUERY = [float(x) for x in np.random.default_rng(31).standard_normal(DIM)]

CHILD = """
import json, sys
from app import BlockStore, Database
from app.search import _vector_quant
_vector_quant.QUANTIZE_ABOVE = 0
url, query, appends = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
db = Database(url)
store = BlockStore(db)
rankings = []
for number in range(max(appends, 1)):
    if appends:
        store.append("child", embedding=[q * (1 + number % 3) + number for q in query])
    rankings.append([(s.block.block_index, s.similarity) for s in store.similar(query, 5)])
print(json.dumps({"builds": _vector_quant.builds, "rankings": rankings}))
db.dispose()
"""


def run_child(url: str, appends: int = 0) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", CHILD, url, json.dumps(QUERY), str(appends)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def child_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["rankings"] = [[tuple(entry) for entry in r] for r in result["rankings"]]
    return result


def ranking(db: Database, query: Any = QUERY, k: int = 5) -> list[tuple[int, float]]:
    return [(s.block.block_index, s.similarity) for s in BlockStore(db).similar(query, k)]


@pytest.fixture(autouse=True)
def compact_tier() -> Iterator[None]:
    with mock.patch.object(_vector_quant, "QUANTIZE_ABOVE", 0):
        yield


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[Database, Path]]:
    path = tmp_path / "q.db"
    db = Database(f"sqlite:///{path}")
    rng = np.random.default_rng(32)
    values = rng.standard_normal((700, DIM)).astype(np.float32)
    BlockStore(db).append_many({"context": "v", "embedding": v} for v in values)
    try:
        yield db, Path(_quantized_file.sidecar_path(str(path)))
    finally:
        db.dispose()


def test_a_fresh_process_maps_the_file(filled: tuple[Database, Path]) -> None:
    db, sidecar = filled
    expected = ranking(db)
    assert_top_k(expected, fsum_scores(embeddings(db), QUERY), 5, None)
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
    before = sidecar.stat()
    result = child_result(run_child(db.settings.url))
    assert result == {"builds": 0, "rankings": [expected]}
    after = sidecar.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def _damage_truncate(sidecar: Path) -> None:
    os.truncate(sidecar, sidecar.stat().st_size // 2)


def _damage_header(sidecar: Path) -> None:
    with open(sidecar, "r+b") as out:
        out.seek(40)
        out.write(b"\xff\xfe")


def _damage_codes(sidecar: Path) -> None:
    # A byte of the int8 codes of the first rows (the last column): only its CRC tells.
    with open(sidecar, "r+b") as out:
        places, _ = _quantized_file._layout(
            *_header_fields(sidecar)  # capacity, dimension
        )
        out.seek(places[-1][0] + 3)
        byte = out.read(1)
        out.seek(places[-1][0] + 3)
        out.write(bytes([byte[0] ^ 0x55]))


def _header_fields(sidecar: Path) -> tuple[int, int]:
    fields = _quantized_file._HEAD.unpack_from(sidecar.read_bytes()[: _quantized_file.HEADER])
    return fields[3], fields[2]


def _damage_empty(sidecar: Path) -> None:
    sidecar.write_bytes(b"")


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_header, _damage_codes, _damage_empty])
def test_a_damaged_file_is_built_again(filled: tuple[Database, Path], damage: Any) -> None:
    db, sidecar = filled
    expected = ranking(db)
    _vector_cache._forget_after_fork()  # this process maps it no more
    damage(sidecar)
    result = child_result(run_child(db.settings.url))
    assert result == {"builds": 1, "rankings": [expected]}
    # ... and the file it left is whole: the next process maps it.
    assert child_result(run_child(db.settings.url)) == {"builds": 0, "rankings": [expected]}


@pytest.mark.parametrize("how", ["restored over", "deleted and made again"])
@pytest.mark.parametrize("cached", [True, False], ids=["cache alive", "fresh process"])
def test_a_replaced_database_rebuilds_the_file(tmp_path: Path, how: str, cached: bool) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    rng = np.random.default_rng(33)
    db = Database(f"sqlite:///{second}")
    BlockStore(db).append_many(
        {"context": "x", "embedding": v} for v in rng.standard_normal((300, DIM))
    )
    db.dispose()
    db = Database(f"sqlite:///{first}")
    BlockStore(db).append_many(
        {"context": "y", "embedding": v} for v in rng.standard_normal((300, DIM))
    )
    before = ranking(db)
    sidecar = Path(_quantized_file.sidecar_path(str(first)))
    inode = sidecar.stat().st_ino
    if not cached:
        db.dispose()
        _vector_cache._forget_after_fork()
    if how == "restored over":
        with sqlite3.connect(second) as source, sqlite3.connect(first) as target:
            source.backup(target)
    else:
        if cached:
            db.dispose()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{first}{suffix}").unlink(missing_ok=True)
        other = Database(f"sqlite:///{first}")
        BlockStore(other).append_many(
            {"context": "z", "embedding": v} for v in rng.standard_normal((300, DIM))
        )
        other.dispose()
    if not cached or how != "restored over":
        db = Database(f"sqlite:///{first}")
    try:
        after = ranking(db)
        assert after != before
        assert_top_k(after, fsum_scores(embeddings(db), QUERY), 5, None)
        assert sidecar.stat().st_ino != inode  # built again, put in place by a rename
        assert child_result(run_child(db.settings.url)) == {"builds": 0, "rankings": [after]}
    finally:
        db.dispose()


def test_processes_extending_at_once_leave_it_whole(filled: tuple[Database, Path]) -> None:
    db, sidecar = filled
    ranking(db)
    children = [run_child(db.settings.url, appends=25) for _ in range(3)]
    results = [child_result(child) for child in children]
    assert all(r["builds"] == 0 for r in results)
    # Every ranking a child saw is a correct top 5 of its own snapshot's blocks: checked
    # at the end, each score is that block's own.
    exact = dict(fsum_scores(embeddings(db), QUERY))
    for result in results:
        for seen in result["rankings"]:
            assert len(seen) == 5 and all(abs(exact[i] - s) < 1e-12 for i, s in seen)
    final = ranking(db)
    assert_top_k(final, fsum_scores(embeddings(db), QUERY), 5, None)
    descriptor = os.open(sidecar, os.O_RDONLY)
    try:
        store = _quantized_file.QuantStore.load(descriptor)
    finally:
        os.close(descriptor)
    assert store.count == 700 + 75
    assert list(store.columns[0][: store.count]) == list(range(775))
    assert _vector_cache.cache_for(db).rows == 775


def test_blocks_another_process_appends_are_seen(filled: tuple[Database, Path]) -> None:
    db, _ = filled
    ranking(db)
    child_result(run_child(db.settings.url, appends=3))
    got = ranking(db)
    assert_top_k(got, fsum_scores(embeddings(db), QUERY), 5, None)
    assert _vector_cache.cache_for(db).rows == 703


def _forked_query(url: str, out: Any) -> None:
    db = Database(url)
    try:
        out.put(ranking(db))
    finally:
        db.dispose()


def test_a_forked_child_maps_its_own(filled: tuple[Database, Path]) -> None:
    db, _ = filled
    expected = ranking(db)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_forked_query, args=(db.settings.url, out))
    child.start()
    try:
        assert out.get(timeout=60) == expected
    finally:
        child.join(60)
    assert child.exitcode == 0


def test_an_unwritable_directory_keeps_the_copy_in_memory(filled: tuple[Database, Path]) -> None:
    db, sidecar = filled
    expected = ranking(db)
    _vector_cache._forget_after_fork()
    sidecar.unlink()
    with mock.patch.object(_vector_quant, "open_locked", side_effect=PermissionError("no")):
        other = Database(db.settings.url)
        try:
            assert ranking(other) == expected
            cache = _vector_cache.cache_for(other)
            assert cache.path is None and cache._quant is not None
        finally:
            other.dispose()


def test_doctor_describes_the_copy(filled: tuple[Database, Path]) -> None:
    from app.operations.doctor import diagnose

    db, sidecar = filled
    ranking(db)
    checks = {check.name: check.value for check in diagnose(db.settings.url).checks}
    assert checks["vector cache"].startswith("700 embeddings need about 0.0 MiB as an int8")
    assert checks["vector copy file"].startswith(f"{sidecar}: 700 rows of 16 dimensions")
    sidecar.write_bytes(b"torn")
    checks = {check.name: check.value for check in diagnose(db.settings.url).checks}
    assert "is not usable" in checks["vector copy file"]
    sidecar.unlink()
    checks = {check.name: check.value for check in diagnose(db.settings.url).checks}
    assert checks["vector copy file"].startswith("none at")


def test_a_file_others_may_write_is_built_again(filled: tuple[Database, Path]) -> None:
    db, sidecar = filled
    expected = ranking(db)
    _vector_cache._forget_after_fork()
    sidecar.chmod(0o666)
    assert child_result(run_child(db.settings.url)) == {"builds": 1, "rankings": [expected]}
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600


def test_more_models_than_the_header_holds_stream(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    streaming = Database(db.settings.url, vector_cache_limit=0)
    try:
        rng = np.random.default_rng(34)
        BlockStore(db).append_many(
            {"context": "m", "embedding": v, "embedding_model": f"model-with-a-long-name-{i:04}"}
            for i, v in enumerate(rng.standard_normal((300, DIM)))
        )
        assert ranking(db) == ranking(streaming)
        assert db.stats().vector_cache_bytes == 0
    finally:
        db.dispose()
        streaming.dispose()
