"""Writers killed with SIGKILL at random moments: nothing they reported committed is lost,
and nothing half-written is ever visible.

A fresh writer process appends to the same database until it is killed; it reports each
commit after the call returns. After every kill the database is opened anew and checked:
``quick_check``, the hash chain, every reported block at its reported index, and every
stored block complete (keywords, tags, metadata and embedding exactly as its writer built
them). Blocks that were committed but not yet reported are allowed only for the writer
just killed, only as the one call it had in flight.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from multiprocessing.connection import wait
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import BlockStore, Database

from .fault_workers import (
    MAX_CALL,
    Reports,
    append_writer,
    context,
    expected_block,
    parse_context,
    read_loop,
    started,
)

pytestmark = pytest.mark.slow

KILLS = 30
KILLS_UNDER_LOAD = 10
#: Longest wait for a writer's report; generous, so a loaded CI machine does not fail.
REPORT_TIMEOUT = 60.0


def check_database(
    url: str, backend: str, writers: Mapping[str, Reports], killed: set[str]
) -> dict[str, int]:
    """Open the database and check everything; returns the number of blocks per writer."""
    db = Database(url)
    try:
        if backend == "sqlite":
            with db.read() as session:
                assert session.execute(text("PRAGMA quick_check")).scalar() == "ok"
        store = BlockStore(db)
        assert store.verify_chain().ok
        total = store.count()
        records = []
        for start in range(0, total, 2000):
            records.extend(store.page(start, start + 1999, limit=2000))
    finally:
        db.dispose()
    assert [r.block_index for r in records] == list(range(total))
    stored: dict[str, dict[int, int]] = {}
    for record in records:
        name, seq = parse_context(record.context)
        assert_complete(record, expected_block(name, seq))
        stored.setdefault(name, {})[seq] = record.block_index
    for name, reports in writers.items():
        mine = stored.get(name, {})
        reported = reports.committed
        # Every commit the writer reported is there, at the index it was given.
        assert {seq: mine.get(seq) for seq in reported} == reported, name
        unreported = sorted(set(mine) - set(reported))
        if name not in killed:
            assert unreported == [], name
            continue
        # Killed between its commit and its report: at most the one call it had in flight,
        # right after the last block it reported.
        first = max(reported, default=-1) + 1
        assert unreported == list(range(first, first + len(unreported))), name
        assert len(unreported) <= MAX_CALL, name
    return {name: len(blocks) for name, blocks in stored.items()}


def assert_complete(record: Any, expected: dict[str, Any]) -> None:
    """The stored block is exactly what its writer appended (no part missing)."""
    assert record.context == expected["context"]
    assert record.keywords == tuple(sorted(set(expected["keywords"])))
    assert record.tags == tuple(sorted(set(expected["tags"])))
    assert record.importance == expected["importance"]
    assert dict(record.metadata) == (expected["metadata"] or {})
    if expected["embedding"] is None:
        assert record.embedding is None
    else:
        assert record.embedding == tuple(np.float32(expected["embedding"]).tolist())
        assert record.embedding_model == "default"


def kill_at_random_moment(process: Any, reports: Reports, rnd: random.Random) -> None:
    """Kill the writer while it writes: usually some time after its first commit (so the
    moment falls anywhere in its loop), sometimes before it committed anything."""
    if rnd.random() < 0.85:
        assert reports.wait(REPORT_TIMEOUT), reports.error or "the writer never committed"
        deadline = time.monotonic() + rnd.uniform(0, 0.25)
        while (left := deadline - time.monotonic()) > 0:
            reports.wait(left)
    else:
        reports.wait(rnd.uniform(0, 0.05))
    process.kill()
    process.join(REPORT_TIMEOUT)
    reports.drain()
    assert process.exitcode == -9
    assert reports.error is None, reports.error


def test_killed_writers_lose_nothing_they_reported(db_url: str, backend: str) -> None:
    Database(db_url, auto_upgrade=True).dispose()
    rnd = random.Random(6)
    writers: dict[str, Reports] = {}
    killed_after_commits = 0
    for run in range(KILLS):
        name = f"w{run}"
        with started(append_writer, db_url, name) as (process, reports):
            writers[name] = reports
            kill_at_random_moment(process, reports, rnd)
        killed_after_commits += bool(reports.committed)
        counts = check_database(db_url, backend, writers, killed=set(writers))
        assert counts.get(name, 0) >= len(reports.committed)
    # Most kills hit a writer in full flow, not one still starting up.
    assert killed_after_commits >= KILLS // 2


def pump(reports: list[Reports], timeout: float) -> None:
    """Read whatever the running processes report, for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready = wait([r.connection for r in reports], left)
        for r in reports:
            if r.connection in ready:
                r.wait(0)


def test_killed_writers_among_running_readers_and_writers(db_url: str, backend: str) -> None:
    """Two writers and a reader keep going while writers next to them are killed: they see
    no error, and only the killed writers' unreported calls may be missing."""
    Database(db_url, auto_upgrade=True).dispose()
    rnd = random.Random(60)
    stop = context().Event()
    writers: dict[str, Reports] = {}
    with (
        started(append_writer, db_url, "steady0", stop) as (steady0, reports0),
        started(append_writer, db_url, "steady1", stop) as (steady1, reports1),
        started(read_loop, db_url, stop) as (reader, reader_reports),
    ):
        steady = [reports0, reports1]
        writers.update(steady0=reports0, steady1=reports1)
        for run in range(KILLS_UNDER_LOAD):
            name = f"victim{run}"
            with started(append_writer, db_url, name) as (process, reports):
                writers[name] = reports
                pump(steady, 0)
                kill_at_random_moment(process, reports, rnd)
            # The others carry on after the kill: each commits again.
            for survivor in steady:
                before = len(survivor.committed)
                deadline = time.monotonic() + REPORT_TIMEOUT
                while len(survivor.committed) == before and time.monotonic() < deadline:
                    pump(steady, 0.05)
                assert len(survivor.committed) > before, survivor.error
        stop.set()
        for process, reports in ((steady0, reports0), (steady1, reports1)):
            while not reports.done and reports.error is None and reports.wait(REPORT_TIMEOUT):
                pass
            process.join(REPORT_TIMEOUT)
            assert reports.error is None, reports.error
            assert reports.done and process.exitcode == 0
        assert reader_reports.wait(REPORT_TIMEOUT)
        reader.join(REPORT_TIMEOUT)
        assert reader.exitcode == 0
        assert reader_reports.summary["errors"] == []
        assert reader_reports.summary["reads"] > 0
    victims = {name for name in writers if name.startswith("victim")}
    counts = check_database(db_url, backend, writers, killed=victims)
    assert counts["steady0"] == len(reports0.committed) > 0
    assert counts["steady1"] == len(reports1.committed) > 0
