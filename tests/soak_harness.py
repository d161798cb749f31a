"""The soak harness: the load (writers, readers, a long snapshot), what is sampled while
it runs, the report it writes, and the bounds that "flat" is measured against.

Durations come from environment variables (see test_soak.py), so that CI stays short.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app import BlockStore, Database

from .helpers import JOIN_TIMEOUT, increment_counter, open_fds, postgres_url

MIB = 1024 * 1024


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw is None or not raw.strip() else float(raw)


SOAK_SECONDS = {
    "sqlite": _env_number("APP_SOAK_SECONDS", 60),
    "postgres": _env_number("APP_SOAK_POSTGRES_SECONDS", 15),
}
CHURN_THREADS = {
    "sqlite": int(_env_number("APP_CHURN_THREADS", 10_000)),
    "postgres": int(_env_number("APP_CHURN_POSTGRES_THREADS", 2_000)),
}

WRITERS = 100
READERS = 20
POOL_SIZE = 5
MAX_OVERFLOW = 10
#: Small, so that a minute of appends outgrows it many times over. The layer empties the
#: WAL once a commit leaves it beyond max(limit / 2, 4 MiB) (see ``Database._bound_wal``).
WAL_LIMIT = 4 * MIB
#: Once the long snapshot is gone and the layer has had time to settle, every sample of
#: the WAL stays below this: the layer lets the WAL pass 4 MiB by one commit before it
#: empties it (measured: 4.6 MiB at most).
WAL_STEADY_BOUND = 2 * WAL_LIMIT
#: Settling time after the snapshot is gone. While it was held, every attempt of the layer
#: to empty the WAL failed, and the pause between attempts grew to its longest (2 s): one
#: more failure right after the release (a reader in the way) costs another 2 s of growth.
SETTLE_SECONDS = 5.0
#: The long reader holds its snapshot for this part of the soak.
PINNED_FRACTION = 1 / 3
#: Pause of a reader between two reads (pacing: 20 readers in a tight loop would only
#: measure the GIL).
READ_PAUSE = 0.01
SAMPLE_EVERY = 1.0
#: Every block has two keywords and one tag; the soak checks both tables' exact row counts.
KEYWORDS_PER_BLOCK = 2
TAGS = 8
BATCH = 5
#: The churn starts this many threads at a time, and waits for them before the next wave.
WAVE = 50
#: Upper bound on the block indices a soak can hand out (one byte each in a bitmap).
MAX_BLOCKS = 1 << 23


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()

# Flatness bounds, measured at rest (see at_rest). Only growth counts: a test that ran
# before may leave garbage whose collection frees more.
#: Descriptors: none of the pool's, so the figure is exact. A connection that never went
#: back to the pool keeps two (file and WAL) on SQLite, its socket on PostgreSQL.
FD_SLACK = 2
#: RSS: what may still grow are bounded caches that fill as new statements appear (the
#: layer's 256 multi-row INSERT texts of up to tens of KiB each, SQLAlchemy's 500 compiled
#: statements). Measured this way, the figure moved by -6 to +6 MiB in one-minute soaks
#: (about 40,000 operations) and by less than 1 MiB over a churn of 10,000 threads. Without
#: glibc's trim, the free pages malloc keeps count too, and the bound is looser. A few
#: hundred bytes leaked per operation, or a Session per thread, would pass it.
RSS_GROWTH = (16 if _LIBC is not None else 64) * MIB
#: The soak's bound is looser: in a whole test run the same process has first run hundreds
#: of other tests (10 MiB contexts among them), and the allocator's fragmentation then
#: added up to 27 MiB over the minute (about 40,000 operations, and the test's own record
#: of every block it appended). A leak of a connection, a Session or a thread per
#: operation is still far above it.
SOAK_RSS_GROWTH = 3 * RSS_GROWTH


def at_rest(db: Database) -> tuple[int, int]:
    """Open descriptors and resident memory with every worker gone and the pool emptied.

    The pool's idle connections are closed first: what SQLite keeps per connection (page
    cache, prepared statements, descriptors kept for reuse after another connection
    closed) goes with them, and what stays is what the layer and the threads could leak.
    A connection that never went back to the pool is not closed by ``dispose()``: it
    shows in both figures. With glibc, ``malloc_trim`` then hands back the free pages
    malloc keeps in its per-thread arenas: a hundred threads leave many behind, and
    without the trim the RSS creeps up by tens of MiB in a minute although nothing lives
    in them.
    """
    assert db.stats().connections_checked_out == 0
    db.engine.dispose()
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return open_fds(), int(psutil.Process().memory_info().rss)


def live_sessions() -> int:
    """Session objects alive in the process (after a collection)."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Session))


def soak_block(writer: int, serial: int) -> dict[str, Any]:
    """Append arguments of block ``serial`` of ``writer`` (two keywords, one tag)."""
    return {
        "context": f"writer {writer} block {serial} " + "x" * 160,
        "keywords": [f"w{writer:03d}", f"s{serial % 50:02d}"],
        "tags": [f"tag{writer % TAGS}"],
        "importance": (serial % 10) / 10,
    }


def wal_size(db: Database) -> int | None:
    """Bytes in the SQLite WAL file (0 when there is none; None on PostgreSQL)."""
    path = db.settings.sqlite_path
    if path is None:
        return None
    try:
        return os.path.getsize(path + "-wal")
    except OSError:
        return 0


def assert_soak_chain(db: Database, store: BlockStore, blocks: int) -> None:
    """Exactly ``blocks`` blocks, indices 0..blocks-1, every hash and link right, and the
    keyword and tag rows each block brings."""
    with db.read() as session:
        count, low, high = session.execute(
            text("SELECT count(*), min(block_index), max(block_index) FROM blocks")
        ).one()
        keywords = session.execute(text("SELECT count(*) FROM block_keywords")).scalar_one()
        tags = session.execute(text("SELECT count(*) FROM block_tags")).scalar_one()
    assert (count, low, high) == (blocks, 0, blocks - 1)
    assert keywords == KEYWORDS_PER_BLOCK * blocks
    assert tags == blocks
    head = store.head()
    assert head is not None and head.block_index == blocks - 1
    assert store.verify_chain().ok


class Failures:
    """Exceptions and wrong answers of every thread, collected to be asserted empty."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._lock = threading.Lock()

    def add(self, where: str, problem: BaseException | str) -> None:
        message = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
        with self._lock:
            self.items.append(f"{where}: {message}")


def join_all(threads: list[threading.Thread]) -> None:
    """Join ``threads`` told to stop; fail naming those still running after JOIN_TIMEOUT."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert stuck == [], f"{stuck} still running {JOIN_TIMEOUT}s after being told to stop"


# -- the soak ----------------------------------------------------------------------------------


class Workload:
    """100 writers and 20 readers on one database, from ``start()`` until ``finish()``.

    Writers: nine in ten append one block at a time, every tenth appends batches of
    ``BATCH``, every tenth runs read-modify-write units on a counter. Readers check what
    they read: contiguous, linked pages; searches that match; a head that never goes back.
    """

    def __init__(self, db: Database, store: BlockStore, failures: Failures) -> None:
        self.db = db
        self.store = store
        self.failures = failures
        self.stop = threading.Event()
        # One byte per block index an append returned: a duplicate is caught at once.
        self.seen = bytearray(MAX_BLOCKS)
        self._seen_lock = threading.Lock()
        self.appended = [0] * WRITERS
        self.increments = [0] * WRITERS
        self.reads = [0] * READERS
        # The most connections db.stats() reported open, as seen by each reader after each
        # read (thousands of looks while the pool is at its busiest).
        self.connections_seen = [0] * READERS
        self._threads: list[threading.Thread] = []

    @property
    def blocks_appended(self) -> int:
        return sum(self.appended)

    def start(self) -> None:
        self.stop.clear()
        self._threads = [
            threading.Thread(target=self._writer, args=(n,), name=f"writer-{n}")
            for n in range(WRITERS)
        ] + [
            threading.Thread(target=self._reader, args=(n,), name=f"reader-{n}")
            for n in range(READERS)
        ]
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        join_all(self._threads)

    def _record(self, where: str, indices: list[int]) -> None:
        with self._seen_lock:
            for index in indices:
                if index >= MAX_BLOCKS:
                    self.failures.add(where, f"block index {index} is past MAX_BLOCKS")
                elif self.seen[index]:
                    self.failures.add(where, f"block index {index} was returned twice")
                else:
                    self.seen[index] = 1

    def _writer(self, number: int) -> None:
        where = f"writer {number}"
        serial = 0
        try:
            while not self.stop.is_set():
                if number % 10 == 1:
                    self.db.run(increment_counter)
                    self.increments[number] += 1
                    continue
                if number % 10 == 0:
                    batch = [soak_block(number, serial + i) for i in range(BATCH)]
                    indices = [record.block_index for record in self.store.append_many(batch)]
                    if indices != list(range(indices[0], indices[0] + BATCH)):
                        self.failures.add(where, f"a batch is not contiguous: {indices}")
                else:
                    indices = [self.store.append(**soak_block(number, serial)).block_index]
                self.appended[number] += len(indices)
                serial += len(indices)
                self._record(where, indices)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted
            self.failures.add(where, exc)

    def _reader(self, number: int) -> None:
        where = f"reader {number}"
        rng = random.Random(number)
        store = self.store
        last_head = -1
        try:
            while not self.stop.is_set():
                choice = rng.randrange(6)
                if choice == 0:
                    head = store.head()
                    index = -1 if head is None else head.block_index
                    if index < last_head:
                        self.failures.add(where, f"head went back from {last_head} to {index}")
                    last_head = max(last_head, index)
                elif choice == 1:
                    recent = store.recent(10)
                    indices = [block.block_index for block in recent]
                    newest = indices[0] if indices else -1
                    expected = list(range(newest, max(newest - 10, -1), -1))
                    if newest < last_head or indices != expected:
                        self.failures.add(where, f"recent() gave {indices} after {last_head}")
                    for newer, older in itertools.pairwise(recent):
                        if newer.prev_hash != older.hash:
                            self.failures.add(where, f"broken link at {newer.block_index}")
                    last_head = max(last_head, newest)
                elif choice == 2 and last_head >= 0:
                    index = rng.randint(0, last_head)
                    block = store.get(index)
                    if block is None or block.block_index != index:
                        self.failures.add(where, f"get({index}) returned {block}")
                elif choice == 3 and last_head >= 0:
                    start = rng.randint(0, last_head)
                    got = [block.block_index for block in store.page(start, start + 49)]
                    expected = list(range(start, min(start + 49, last_head) + 1))
                    if got[: len(expected)] != expected:
                        self.failures.add(where, f"page({start}) starts {got[:5]}")
                elif choice == 4:
                    tag = f"tag{rng.randrange(TAGS)}"
                    for block in store.search_tags([tag], limit=20):
                        if tag not in block.tags:
                            self.failures.add(where, f"{tag} found {block.tags}")
                elif choice == 5:
                    word = f"w{rng.randrange(WRITERS):03d}"
                    for block in store.search_keywords([word], limit=20):
                        if word not in block.keywords:
                            self.failures.add(where, f"{word} found {block.keywords}")
                self.reads[number] += 1
                stats = self.db.stats()
                if not 0 <= stats.connections_checked_out <= stats.connections_open:
                    self.failures.add(where, f"inconsistent pool figures in {stats}")
                self.connections_seen[number] = max(
                    self.connections_seen[number], stats.connections_open
                )
                self.stop.wait(READ_PAUSE)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted
            self.failures.add(where, exc)


class LongReader:
    """One read unit kept open, walking the chain over and over, until ``release`` is set.

    Its snapshot must not move: the chain it walks ends where it started, and the count
    stays the one it read first, whatever the writers append meanwhile.
    """

    def __init__(self, db: Database, failures: Failures) -> None:
        self.db = db
        self.failures = failures
        self.holding = threading.Event()
        self.release = threading.Event()
        self.pinned_blocks = -1
        self.passes = 0
        self.thread = threading.Thread(target=self._run, name="long-reader")

    def _run(self) -> None:
        count = text("SELECT count(*) FROM blocks")
        chunk = text(
            "SELECT block_index, hash, prev_hash FROM blocks WHERE block_index >= :start "
            "ORDER BY block_index LIMIT 500"
        )
        try:
            with self.db.read() as session:
                self.pinned_blocks = session.execute(count).scalar_one()
                self.holding.set()
                start, previous = 0, ""
                while not self.release.is_set():
                    rows = session.execute(chunk, {"start": start}).all()
                    for index, digest, prev_hash in rows:
                        if prev_hash != previous:
                            self.failures.add("long reader", f"broken link at {index}")
                        previous = digest
                    if rows:
                        start = rows[-1][0] + 1
                    else:  # the end of the chain as the snapshot sees it
                        if start != self.pinned_blocks:
                            self.failures.add("long reader", f"its chain ended at {start}")
                        if session.execute(count).scalar_one() != self.pinned_blocks:
                            self.failures.add("long reader", "its snapshot moved")
                        start, previous = 0, ""
                        self.passes += 1
                    self.release.wait(0.02)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted
            self.failures.add("long reader", exc)
        finally:
            self.holding.set()  # never leave the main thread waiting


@dataclass
class Sample:
    second: float
    phase: str
    wal_bytes: int | None
    fds: int
    rss_mib: float
    connections_open: int
    blocks_appended: int


class Sampler:
    """Samples the WAL size, fds, RSS, open connections and progress every second.

    Phase changes are made under ``lock``, so each sample belongs wholly to one phase.
    """

    def __init__(self, workload: Workload, failures: Failures) -> None:
        self.workload = workload
        self.failures = failures
        self.phase = "pinned"
        self.lock = threading.Lock()
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._process = psutil.Process()
        self._thread = threading.Thread(target=self._run, name="sampler")

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def finish(self) -> None:
        self._stop.set()
        join_all([self._thread])

    def enter(self, phase: str) -> None:
        """Start a phase; samples taken from now on belong to it."""
        with self.lock:
            self.phase = phase

    def take(self) -> None:
        db = self.workload.db
        with self.lock:
            self.samples.append(
                Sample(
                    second=round(time.monotonic() - self._started, 1),
                    phase=self.phase,
                    wal_bytes=wal_size(db),
                    fds=open_fds(),
                    rss_mib=round(self._process.memory_info().rss / MIB, 1),
                    connections_open=db.stats().connections_open,
                    blocks_appended=self.workload.blocks_appended,
                )
            )

    def wal(self, phase: str) -> list[int]:
        return [s.wal_bytes for s in self.samples if s.phase == phase and s.wal_bytes is not None]

    def _run(self) -> None:
        try:
            while not self._stop.wait(SAMPLE_EVERY):
                self.take()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted
            self.failures.add("sampler", exc)


@dataclass
class SoakReport:
    backend: str
    seconds: float
    writers: int = WRITERS
    readers: int = READERS
    pool_size: int = POOL_SIZE
    max_overflow: int = MAX_OVERFLOW
    journal_size_limit: int = WAL_LIMIT
    run_seconds: float = 0.0
    blocks: int = 0
    increments: int = 0
    reads: int = 0
    pinned_blocks: int = 0
    long_reader_passes: int = 0
    wal_at_release: int | None = None
    checkpoint_after_release: dict[str, Any] | None = None
    wal_final: int | None = None
    connections_open_max: int = 0
    fds_start: int = 0
    fds_end: int = 0
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    def save(self, directory: Path) -> Path:
        target = directory / f"soak-{self.backend}.json"
        target.write_text(json.dumps(asdict(self), indent=1))
        return target

    def summary(self) -> str:
        def mib(size: int | None) -> str:
            return "-" if size is None else f"{size / MIB:.2f}"

        series = " ".join(f"{s.second:.0f}s={mib(s.wal_bytes)}{s.phase[0]}" for s in self.samples)
        return "\n".join(
            [
                f"soak {self.backend}: {self.run_seconds:.1f}s, {self.blocks} blocks, "
                f"{self.increments} increments, {self.reads} reads, long reader pinned "
                f"{self.pinned_blocks} blocks for {self.long_reader_passes} passes",
                f"WAL MiB per second (p pinned, r released and settling, s steady, a after; "
                f"journal_size_limit "
                f"{mib(self.journal_size_limit)} MiB): {series}",
                f"WAL at release {mib(self.wal_at_release)} MiB, checkpoint after release "
                f"{self.checkpoint_after_release}, final {mib(self.wal_final)} MiB",
                f"fds {self.fds_start} -> {self.fds_end}, RSS {self.rss_start_mib} -> "
                f"{self.rss_end_mib} MiB, connections open at most {self.connections_open_max}",
            ]
        )


# -- thread churn ------------------------------------------------------------------------------


def server_connections(application_name: str, expected: int) -> int:
    """How many server connections carry ``application_name``, once that is ``expected``
    or after 5 s. A backend leaves ``pg_stat_activity`` shortly after its client closed
    the connection, not at once."""
    # Autocommit: within one transaction the server would answer from one snapshot.
    admin = create_engine(postgres_url() or "", poolclass=NullPool, isolation_level="AUTOCOMMIT")
    deadline = time.monotonic() + 5.0
    try:
        with admin.connect() as connection:
            while True:
                count = int(
                    connection.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                        {"n": application_name},
                    ).scalar_one()
                )
                if count == expected or time.monotonic() >= deadline:
                    return count
                threading.Event().wait(0.05)
    finally:
        admin.dispose()
