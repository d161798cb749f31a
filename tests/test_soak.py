"""Soak and thread churn: many threads for a long while, then exact counts, an intact chain,
a bounded WAL, pool figures within the pool, and memory and file descriptors back where
they started.

Durations are set by environment variables, so that CI stays short:

* ``APP_SOAK_SECONDS`` (default 60): the SQLite soak; ``APP_SOAK_POSTGRES_SECONDS``
  (default 15): the PostgreSQL soak.
* ``APP_CHURN_THREADS`` (default 10000) and ``APP_CHURN_POSTGRES_THREADS`` (default 2000):
  the short-lived threads of the churn test.

Each soak writes what it sampled every second (WAL size, open fds, RSS, pool connections,
blocks appended) to ``soak-<backend>.json`` in the test's tmp dir, and prints it.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import BlockStore, Database
from app.operations.maintenance import checkpoint

from .helpers import JOIN_TIMEOUT, counter_value, increment_counter, make_counter_table
from .soak_harness import (
    CHURN_THREADS,
    FD_SLACK,
    MAX_OVERFLOW,
    MIB,
    PINNED_FRACTION,
    POOL_SIZE,
    RSS_GROWTH,
    SETTLE_SECONDS,
    SOAK_RSS_GROWTH,
    SOAK_SECONDS,
    WAL_LIMIT,
    WAL_STEADY_BOUND,
    WAVE,
    WRITERS,
    Failures,
    LongReader,
    Sampler,
    SoakReport,
    Workload,
    assert_soak_chain,
    at_rest,
    join_all,
    live_sessions,
    server_connections,
    soak_block,
    wal_size,
)

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300 + 2 * max(SOAK_SECONDS.values()))
def test_soak_writers_readers_and_a_long_snapshot(
    backend: str, make_db: Callable[..., Database], tmp_path: Path
) -> None:
    """100 writers and 20 readers for a minute (SQLite) while one reader holds a snapshot
    for the first third: no errors, every append in one intact chain, the WAL pinned by the
    snapshot and bounded again once it is gone, flat fds and memory."""
    seconds = SOAK_SECONDS[backend]
    sqlite = backend == "sqlite"
    db = make_db(pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, journal_size_limit=WAL_LIMIT)
    store = BlockStore(db)
    make_counter_table(db)
    failures = Failures()
    workload = Workload(db, store, failures)
    report = SoakReport(backend=backend, seconds=seconds)

    # Warm-up: the same load for a while, so that the pool, the caches and the interpreter
    # reach their working size before the baseline is taken.
    workload.start()
    workload.stop.wait(max(3.0, seconds / 10))
    workload.finish()
    assert failures.items == []
    if sqlite:
        assert db.checkpoint("truncate")[0] == 0
    report.fds_start, rss_start = at_rest(db)

    long_reader = LongReader(db, failures)
    sampler = Sampler(workload, failures)
    started = time.monotonic()
    long_reader.thread.start()
    assert long_reader.holding.wait(JOIN_TIMEOUT)
    workload.start()
    sampler.start()

    workload.stop.wait(seconds * PINNED_FRACTION)
    sampler.enter("releasing")
    report.wal_at_release = wal_size(db)
    long_reader.release.set()
    join_all([long_reader.thread])
    if sqlite:
        # The snapshot is gone: a checkpoint empties the WAL while the load goes on.
        result = checkpoint(db, "truncate")
        report.checkpoint_after_release = asdict(result)
        assert not result.busy, result
        assert result.wal_after <= WAL_LIMIT, result
    workload.stop.wait(SETTLE_SECONDS)
    sampler.enter("steady")

    workload.stop.wait(max(0.0, started + seconds - time.monotonic()))
    workload.finish()
    sampler.finish()
    report.run_seconds = time.monotonic() - started
    sampler.enter("after")
    sampler.take()
    stats = db.stats()

    report.fds_end, rss_end = at_rest(db)
    report.rss_start_mib, report.rss_end_mib = round(rss_start / MIB, 1), round(rss_end / MIB, 1)
    report.blocks = workload.blocks_appended
    report.increments = sum(workload.increments)
    report.reads = sum(workload.reads)
    report.pinned_blocks = long_reader.pinned_blocks
    report.long_reader_passes = long_reader.passes
    report.connections_open_max = max(
        [*workload.connections_seen, *(s.connections_open for s in sampler.samples)]
    )
    if sqlite:
        busy, _, _ = db.checkpoint("truncate")
        assert busy == 0
        report.wal_final = wal_size(db)
    report.samples = sampler.samples
    print(f"\n{report.summary()}\nreport: {report.save(tmp_path)}")

    assert failures.items == []
    # Every thread made progress, the long reader included.
    assert all(workload.appended[n] > 0 for n in range(WRITERS) if n % 10 != 1)
    assert all(workload.increments[n] > 0 for n in range(WRITERS) if n % 10 == 1)
    assert all(count > 0 for count in workload.reads)
    assert long_reader.passes > 0
    # Exactly the blocks whose append returned, each index once, in one intact chain.
    assert workload.seen[: report.blocks] == b"\x01" * report.blocks
    assert workload.seen.count(1) == report.blocks
    assert_soak_chain(db, store, report.blocks)
    assert counter_value(db) == report.increments
    assert stats.units_rolled_back == 0
    assert stats.connections_checked_out == 0 and stats.writers_queued == 0
    assert stats.connections_open <= POOL_SIZE
    # The pool never has (nor reports) more connections than it may open.
    assert report.connections_open_max <= POOL_SIZE + MAX_OVERFLOW
    if sqlite:
        # While the snapshot was held, nothing could empty or restart the WAL: it only grew
        # (from nothing: the baseline was taken after a truncating checkpoint).
        pinned = sampler.wal("pinned")
        assert report.wal_at_release is not None and report.wal_at_release > 0
        assert pinned == sorted(pinned) and max(pinned, default=0) <= report.wal_at_release
        # Without it, the layer keeps the WAL near journal_size_limit by itself.
        steady = sampler.wal("steady")
        assert max(steady, default=0) <= WAL_STEADY_BOUND, steady
        assert report.wal_final is not None and report.wal_final <= WAL_LIMIT
    # Flat: descriptors and memory at rest, after the soak as after the warm-up.
    assert report.fds_end <= report.fds_start + FD_SLACK
    assert rss_end - rss_start < SOAK_RSS_GROWTH


# -- slow reads --------------------------------------------------------------------------------

#: Each slow read holds its snapshot this long; they overlap, so that one is always running.
SLOW_READ = 0.3
SLOW_READERS = 4
#: The writer goes on until this much has gone through the WAL (five times the limit).
WAL_WRITTEN = 5 * WAL_LIMIT


@pytest.mark.timeout(120)
def test_overlapping_slow_reads_do_not_keep_the_wal_from_being_emptied(tmp_path: Path) -> None:
    """Reads of 300 ms each, overlapping so that one is always in progress, while a writer
    pushes five times ``journal_size_limit`` through the WAL: the layer still empties it
    each time it passes its bound. (Waiting a fixed 100 ms for the reads in progress, it
    never could, and the WAL grew for as long as such reads went on.)"""
    db = Database(f"sqlite:///{tmp_path / 'slow.db'}", journal_size_limit=WAL_LIMIT)
    store = BlockStore(db)
    failures = Failures()
    stop = threading.Event()
    reads = [0] * SLOW_READERS

    def slow_reader(number: int) -> None:
        try:
            stop.wait(number * SLOW_READ / SLOW_READERS)  # staggered starts
            while not stop.is_set():
                with db.read() as session:
                    session.execute(text("SELECT count(*) FROM blocks")).scalar_one()
                    stop.wait(SLOW_READ)  # the rest of a slow query
                reads[number] += 1
        except BaseException as exc:  # noqa: BLE001 - collected and asserted
            failures.add(f"reader {number}", exc)

    threads = [
        threading.Thread(target=slow_reader, args=(n,), name=f"slow-reader-{n}")
        for n in range(SLOW_READERS)
    ]
    for thread in threads:
        thread.start()
    sizes: list[int] = []
    try:
        written, serial = 0, 0
        while written < WAL_WRITTEN:
            batch = [soak_block(0, serial + i) | {"context": "y" * 4000} for i in range(50)]
            store.append_many(batch)
            serial += len(batch)
            size = wal_size(db) or 0
            written += max(0, size - (sizes[-1] if sizes else 0))
            sizes.append(size)
    finally:
        stop.set()
        join_all(threads)
        db.dispose()
    emptied = sum(1 for before, after in itertools.pairwise(sizes) if after < before)
    print(f"\nWAL after each batch, MiB: {' '.join(f'{size / MIB:.1f}' for size in sizes)}")
    assert failures.items == []
    assert all(count > 0 for count in reads)
    assert emptied >= 3
    assert max(sizes) <= WAL_STEADY_BOUND


# -- pool figures ------------------------------------------------------------------------------

#: How long the pool figures are watched while the pool is saturated.
WATCH_SECONDS = 3.0


@pytest.mark.timeout(120)
def test_pool_figures_stay_within_the_pool_while_it_is_saturated(
    make_db: Callable[..., Database],
) -> None:
    """``db.stats()`` read over and over while 30 threads take turns on 15 connections:
    it never reports more connections than the pool may open, nor more checked out than
    open. (Summing ``checkedout()`` and ``checkedin()`` read the pool's queue twice, and a
    connection returned in between was counted twice: up to 20 of 15.)"""
    db = make_db(pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
    failures = Failures()
    stop = threading.Event()

    def take_turns(number: int) -> None:
        try:
            while not stop.is_set():
                with db.read() as session:
                    session.execute(text("SELECT 1"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted
            failures.add(f"reader {number}", exc)

    threads = [
        threading.Thread(target=take_turns, args=(n,), name=f"pool-user-{n}")
        for n in range(2 * (POOL_SIZE + MAX_OVERFLOW))
    ]
    for thread in threads:
        thread.start()
    looks, wrong = 0, []
    try:
        deadline = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < deadline:
            stats = db.stats()
            looks += 1
            if not (
                0
                <= stats.connections_checked_out
                <= stats.connections_open
                <= POOL_SIZE + MAX_OVERFLOW
            ):
                wrong.append((stats.connections_checked_out, stats.connections_open))
    finally:
        stop.set()
        join_all(threads)
    assert failures.items == []
    assert looks > 1000
    assert wrong == [], f"{len(wrong)} of {looks} looks out of bounds, e.g. {wrong[:5]}"
    assert db.stats().connections_open == POOL_SIZE


# -- thread churn ------------------------------------------------------------------------------


@pytest.mark.timeout(300 + max(CHURN_THREADS.values()) // 100)
def test_short_lived_threads_in_waves_leave_nothing_behind(
    backend: str, db_url: str, tmp_path: Path
) -> None:
    """10,000 threads (2,000 on PostgreSQL), 50 at a time, each doing one write unit, one
    read unit or one append and ending without closing its Session: exact counts, an intact
    chain, and no connection, Session, thread, descriptor or memory left behind."""
    total = CHURN_THREADS[backend]
    url = db_url
    application_name = "churn_" + uuid.uuid4().hex[:8]
    if backend == "postgres":
        # Named, so that the server can be asked how many connections are really open.
        url = (
            make_url(db_url)
            .update_query_dict({"application_name": application_name})
            .render_as_string(hide_password=False)
        )
    db = Database(url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, auto_upgrade=True)
    try:
        _run_churn(db, backend, total, application_name)
    finally:
        db.dispose()


def _run_churn(db: Database, backend: str, total: int, application_name: str) -> None:
    store = BlockStore(db)
    make_counter_table(db)
    failures = Failures()
    done = bytearray(total)
    peak_lock = threading.Lock()
    peak = [0]

    def note_connections() -> None:
        opened = db.stats().connections_open
        with peak_lock:
            peak[0] = max(peak[0], opened)

    def unit(number: int) -> None:
        # Ends without db.session.remove(): the layer must close the Session itself.
        try:
            kind = number % 3
            if kind == 0:
                with db.unit_of_work() as session:
                    increment_counter(session)
                    note_connections()
            elif kind == 1:
                with db.read() as session:
                    session.execute(text("SELECT count(*) FROM blocks")).scalar_one()
                    note_connections()
            else:
                store.append(**soak_block(number % WRITERS, number))
            done[number] = 1
        except BaseException as exc:  # noqa: BLE001 - collected and asserted
            failures.add(f"thread {number}", exc)

    def waves(numbers: range) -> None:
        for first in range(numbers.start, numbers.stop, WAVE):
            threads = [
                threading.Thread(target=unit, args=(n,), name=f"churn-{n}")
                for n in range(first, min(first + WAVE, numbers.stop))
            ]
            for thread in threads:
                thread.start()
            join_all(threads)

    warm_up = min(total, 4 * WAVE)
    waves(range(warm_up))  # the caches and the interpreter reach their working size
    threads_before, sessions_before = threading.active_count(), live_sessions()
    fds_before, rss_before = at_rest(db)
    started = time.monotonic()
    waves(range(warm_up, total))
    seconds = time.monotonic() - started
    threads_after, sessions_after = threading.active_count(), live_sessions()
    stats = db.stats()
    pool: Any = db.engine.pool
    checked_out = pool.checkedout()
    if backend == "postgres":
        assert server_connections(application_name, stats.connections_open) == (
            stats.connections_open
        )
    fds_after, rss_after = at_rest(db)
    if backend == "postgres":  # the pool closed its connections: none is left on the server
        assert server_connections(application_name, 0) == 0
    print(
        f"\nchurn {backend}: {total} threads in {seconds:.1f}s; connections open at most "
        f"{peak[0]}, at rest {stats.connections_open}; fds {fds_before} -> {fds_after}; "
        f"RSS {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB; Sessions alive "
        f"{sessions_before} -> {sessions_after}"
    )

    assert failures.items == []
    assert done.count(1) == total
    writes = len(range(0, total, 3))
    appends = len(range(2, total, 3))
    assert counter_value(db) == writes
    assert_soak_chain(db, store, appends)
    assert stats.units_rolled_back == 0
    assert checked_out == 0 and stats.connections_checked_out == 0
    assert stats.connections_open <= POOL_SIZE
    assert peak[0] <= POOL_SIZE + MAX_OVERFLOW
    # Nothing of the dead threads is left: no thread, no Session, no descriptor, no memory.
    assert threads_after <= threads_before
    assert sessions_after <= sessions_before
    assert fds_after <= fds_before + FD_SLACK
    assert rss_after - rss_before < RSS_GROWTH
