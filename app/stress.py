"""The stress run behind ``app stress``: many threads (in one or more processes) append blocks
through :meth:`BlockStore.append` while other threads search, then the chain is verified.

Stress writes thousands of test blocks, so by default it runs on a new file of its own in a
temporary directory (removed afterwards unless ``keep``). Given a URL, it is also an
end-to-end check of a deployment: a database that is missing or empty is used as it is,
one that already holds rows only when ``existing`` is set, and one whose chain does not
verify only when ``allow_broken_chain`` is set too. Every stress block is tagged ``stress``
and carries the run's id in its metadata, so test data can be told from real data.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import queue
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import create_engine, func, inspect, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from ._hints import command_hint
from ._sqlite_file import probe_sqlite_file, read_only
from ._stress_blocks import make_block, now, percentiles
from .blocks import BlockStore
from .database import Database
from .errors import AppError, ConfigurationError, DatabaseUnavailableError, InvalidInputError
from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_THREADS = 8
DEFAULT_BLOCKS = 2000
DEFAULT_READ_THREADS = 2
DEFAULT_READ_PAUSE = 0.01
_START_TIMEOUT = 60.0
#: Stress blocks carry their own embedding model, so embedding searches compare only with
#: them whatever else the database holds.
EMBEDDING_MODEL = "stress"
#: The tag every stress block carries.
TAG = "stress"


@dataclass
class StressResult:
    """What a stress run did. Latencies are in seconds; ``stats`` sums every process's
    ``db.stats()`` (``write_wait_max`` is the largest).

    Attributes:
        run_id: the id every block of this run carries in its metadata (``run``).
        fresh_file: the new file the run used when no database was named, else None.
        kept: that file was kept (``keep``); otherwise it was removed after the run.
        chain_problem: what the chain check after the run found wrong ('' when intact).
        broken_before: what was wrong with the chain before the run, when it was already
            broken and ``allow_broken_chain`` let the run go ahead ('' otherwise).
    """

    url: str
    threads: int
    processes: int
    read_threads: int
    blocks: int
    appended: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    throughput: float = 0.0
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    reads: int = 0
    read_errors: int = 0
    read_error_kinds: dict[str, str] = field(default_factory=dict)
    read_p99: float | None = None
    chain_intact: bool = False
    first_bad_block: int | None = None
    chain_problem: str = ""
    broken_before: str = ""
    run_id: str = ""
    fresh_file: str | None = None
    kept: bool = False
    blocks_before: int = 0
    blocks_after: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.read_errors == 0 and self.chain_intact

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class _Tally:
    """Latencies and error kinds of one group of appending threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()


def _append_threads(
    store: BlockStore,
    threads: int,
    blocks: int,
    first_worker: int,
    tick: Callable[[], None],
    run_id: str,
) -> _Tally:
    """Append ``blocks`` blocks from ``threads`` threads; return once all are done."""
    tally = _Tally()
    barrier = threading.Barrier(threads)

    def work(worker: int, count: int) -> None:
        mine: list[float] = []
        failed: Counter[str] = Counter()
        barrier.wait()
        for seq in range(count):
            block = make_block(worker, seq)
            started = time.perf_counter()
            try:
                store.append(
                    block.context,
                    keywords=block.keywords,
                    tags=(TAG, *block.tags[1:]),
                    importance=block.importance,
                    metadata={**block.metadata, "source": "app stress", "run": run_id},
                    embedding=block.embedding,
                    embedding_model=EMBEDDING_MODEL,
                    timestamp=now(),
                )
            except Exception as exc:  # noqa: BLE001 - counted and reported, not raised
                failed[type(exc).__name__] += 1
            else:
                mine.append(time.perf_counter() - started)
            tick()
        store.db.session.remove()
        with tally.lock:
            tally.latencies.extend(mine)
            tally.errors.update(failed)

    shares = [blocks // threads + (1 if i < blocks % threads else 0) for i in range(threads)]
    workers = [
        threading.Thread(target=work, args=(first_worker + i, shares[i]), name=f"append-{i}")
        for i in range(threads)
    ]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return tally


def _process_main(
    url: str,
    threads: int,
    blocks: int,
    first_worker: int,
    counter: Any,
    ready: Any,
    start: Any,
    results: Any,
    run_id: str,
) -> None:
    """One appending process (started with ``spawn``: no connection crosses ``fork``)."""
    with Database(url) as db:
        store = BlockStore(db)
        ready.put(True)
        start.wait()

        def tick() -> None:
            with counter.get_lock():
                counter.value += 1

        tally = _append_threads(store, threads, blocks, first_worker, tick, run_id)
        results.put((tally.latencies, dict(tally.errors), asdict(db.stats())))


def _merge_stats(all_stats: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for item in all_stats:
        for name, value in item.items():
            if name == "write_wait_max":
                merged[name] = max(merged.get(name, 0.0), value)
            else:
                merged[name] = merged.get(name, 0) + value
    return merged


def _read_loop(store: BlockStore, stop: threading.Event, pause: float, out: list[Any]) -> None:
    """Search, pause, repeat: mostly indexed look-ups, some scans, a few embedding searches
    (which read every stored vector, so they are kept rare as in an application)."""
    rng = random.Random()
    latencies: list[float] = []
    errors: dict[str, str] = {}
    failed = 0
    probe = make_block(0, 0).embedding
    head = store.head()
    while not stop.is_set():
        choice = rng.random()
        started = time.perf_counter()
        try:
            if choice < 0.4:
                store.get(rng.randrange(head.block_index + 1) if head else 0)
            elif choice < 0.6:
                store.recent(10)
            elif choice < 0.8:
                store.search_tags([TAG], limit=10)
            elif choice < 0.95:
                store.search_keywords([rng.choice(("weather", "budget", "n7"))], limit=10)
            else:
                store.similar(probe, top_k=5, model=EMBEDDING_MODEL)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            failed += 1
            errors.setdefault(type(exc).__name__, " ".join(str(exc).split())[:200])
        else:
            latencies.append(time.perf_counter() - started)
        # Without a pause, R readers are R busy CPU-bound threads competing for the GIL,
        # which measures the interpreter more than the database.
        stop.wait(pause)
    store.db.session.remove()
    out.append((latencies, failed, errors))


def run_stress(
    url: str | None = None,
    *,
    threads: int = DEFAULT_THREADS,
    blocks: int = DEFAULT_BLOCKS,
    processes: int = 1,
    read_threads: int = DEFAULT_READ_THREADS,
    read_pause: float = DEFAULT_READ_PAUSE,
    existing: bool = False,
    allow_broken_chain: bool = False,
    keep: bool = False,
    directory: str | None = None,
    announce: Callable[[str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> StressResult:
    """Append ``blocks`` blocks from ``threads`` threads in each of ``processes`` processes
    while ``read_threads`` threads search, then verify the whole chain.

    Args:
        url: the database to stress. None: a new file in a new temporary directory.
        read_pause: seconds each reading thread waits between two searches.
        existing: let the run append to a database that already holds rows.
        allow_broken_chain: let it append to a chain that does not verify (with
            ``existing``; the check after the run then reports the chain broken).
        keep: keep the new file when ``url`` is None (it is removed otherwise).
        directory: where that new file's temporary directory goes (the system's default).
        announce: called once, before the appends start, with a line saying where they go.
        progress: called about ten times a second with the number of appends finished.

    Raises:
        InvalidInputError: a count below its minimum.
        ConfigurationError: the database holds rows and ``existing`` is not set, or its
            chain is broken and ``allow_broken_chain`` is not set (nothing was written).
        AppError: the database cannot be opened (see :class:`app.Database`).
    """
    for name, value, minimum in (
        ("threads", threads, 1),
        ("blocks", blocks, 1),
        ("processes", processes, 1),
        ("read_threads", read_threads, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if not isinstance(read_pause, int | float) or read_pause < 0:
        raise InvalidInputError(f"read_pause must be a number >= 0, got {read_pause!r}")
    result = StressResult("", threads, processes, read_threads, blocks)
    run = functools.partial(
        _run, result=result, read_pause=read_pause, announce=announce, progress=progress
    )
    if url is not None:
        return run(url, existing=existing, allow_broken_chain=allow_broken_chain)
    with _fresh_file(directory, keep) as path:
        result.fresh_file, result.kept = path, keep
        return run(f"sqlite:///{path}", existing=False, allow_broken_chain=False)


@contextlib.contextmanager
def _fresh_file(directory: str | None, keep: bool) -> Iterator[str]:
    """A path for a new database in a new temporary directory, removed afterwards unless
    ``keep``."""
    folder = tempfile.mkdtemp(prefix="app-stress-", dir=directory)
    try:
        yield os.path.join(folder, "stress.db")
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _run(
    url: str,
    *,
    result: StressResult,
    existing: bool,
    allow_broken_chain: bool,
    read_pause: float,
    announce: Callable[[str], None] | None,
    progress: Callable[[int], None] | None,
) -> StressResult:
    settings = Settings.resolve(url)
    held = _rows_held(settings)
    if held and not existing:
        raise ConfigurationError(
            f"{settings.safe_url()} already holds data ({_describe(held)}) and stress would "
            f"add {result.blocks:,} test blocks to it (nothing was written): name no database "
            "(no --url, no APP_DATABASE_URL) to run on a new file of its own, or add "
            "--existing (existing=True) to append the test blocks to this one"
        )
    result.run_id = uuid.uuid4().hex[:12]
    with Database(url) as db:
        store = BlockStore(db)
        result.url = db.url
        result.blocks_before = store.count()
        if result.blocks_before:
            before = store.verify_chain()
            if not before and not allow_broken_chain:
                raise ConfigurationError(
                    f"the chain of {db.url} is already broken at block {before.first_bad_index} "
                    f"({before.problem}); find out why with "
                    f"`{command_hint(db.url, 'doctor', '--verify-chain')}`, or add "
                    "--allow-broken-chain (allow_broken_chain=True) to stress it anyway "
                    "(nothing was written)"
                )
            result.broken_before = "" if before else str(before)
        target = (
            f"a new file {result.fresh_file}"
            if result.fresh_file is not None
            else f"{db.url}, which holds {_describe(held)} (--existing)"
            if held
            else db.url
        )
        line = (
            f"stress: appending {result.blocks:,} test blocks (tag {TAG!r}, run "
            f"{result.run_id}) to {target}"
        )
        if announce is not None:
            announce(line)
        else:
            log.info("%s", line)
        _append_and_search(db, store, result, read_pause, progress)
    return result


def _append_and_search(
    db: Database,
    store: BlockStore,
    result: StressResult,
    read_pause: float,
    progress: Callable[[int], None] | None,
) -> None:
    threads, blocks, processes = result.threads, result.blocks, result.processes
    stop = threading.Event()
    reads: list[Any] = []
    readers = [
        threading.Thread(target=_read_loop, args=(store, stop, read_pause, reads), name=f"read-{i}")
        for i in range(result.read_threads)
    ]
    try:
        for reader in readers:
            reader.start()
        if processes == 1:
            latencies, failures, stats, seconds = _in_process(
                store, threads, blocks, progress, result.run_id
            )
        else:
            latencies, failures, stats, seconds = _in_processes(
                db.settings.url, threads, blocks, processes, progress, result.run_id
            )
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    result.seconds = seconds
    result.appended = len(latencies)
    result.errors = sum(failures.values())
    result.error_kinds = dict(failures)
    result.throughput = result.appended / seconds if seconds > 0 else 0.0
    spread = percentiles(latencies)
    result.p50, result.p99, result.max = spread["p50"], spread["p99"], spread["max"]
    read_latencies = [x for chunk, _, _ in reads for x in chunk]
    result.reads = len(read_latencies)
    result.read_errors = sum(n for _, n, _ in reads)
    for _, _, kinds in reads:
        for kind, example in kinds.items():
            result.read_error_kinds.setdefault(kind, example)
    result.read_p99 = percentiles(read_latencies)["p99"]
    check = store.verify_chain()
    result.chain_intact, result.first_bad_block = check.ok, check.first_bad_index
    result.chain_problem = check.problem
    result.blocks_after = store.count()
    result.stats = _merge_stats([*stats, asdict(db.stats())])


#: Tables whose rows belong to a block (counted as part of it).
_BLOCK_PARTS = ("block_keywords", "block_tags", "block_metadata", "block_embeddings")


def _describe(held: dict[str, int]) -> str:
    """What a database holds, in words: its blocks, short-term memories and other rows."""
    parts = []
    if held.get("blocks"):
        parts.append(f"{held['blocks']:,} blocks")
    if held.get("short_term_memories"):
        parts.append(f"{held['short_term_memories']:,} short-term memories")
    others = ("blocks", "short_term_memories", *(_BLOCK_PARTS if held.get("blocks") else ()))
    parts += [f"{n:,} rows in {name}" for name, n in held.items() if name not in others]
    return ", ".join(parts)


def _rows_held(settings: Settings) -> dict[str, int]:
    """Rows per table of the database, for the tables that have any (the schema's own
    bookkeeping aside), read without changing anything.

    A SQLite file is read through a read-only connection, before the layer opens it: opening
    would switch its journal mode and upgrade its schema, lasting changes to a database the
    run may refuse.
    """
    if settings.is_memory:
        return {}
    path = settings.sqlite_path
    if path is not None:
        if not os.path.exists(path):
            return {}
        problem = probe_sqlite_file(path)
        if isinstance(problem, AppError):
            raise problem
        if problem is True:
            return {}  # an empty file: a new database
        reader = create_engine("sqlite://", creator=lambda: read_only(path), poolclass=NullPool)
        try:
            with reader.connect() as conn:
                return _counts(conn)
        finally:
            reader.dispose()
    with (
        Database(settings.url, check_schema=False, auto_upgrade=False) as db,
        db.engine.connect() as conn,
    ):
        return _counts(conn)


def _counts(conn: Connection) -> dict[str, int]:
    """Rows per table that has any, on ``conn`` (names quoted by SQLAlchemy)."""
    names = sorted(n for n in inspect(conn).get_table_names() if n != "alembic_version")
    counts = {
        name: int(conn.execute(select(func.count()).select_from(table(name))).scalar_one())
        for name in names
    }
    conn.rollback()
    return {name: n for name, n in counts.items() if n}


def _in_process(
    store: BlockStore,
    threads: int,
    blocks: int,
    progress: Callable[[int], None] | None,
    run_id: str,
) -> tuple[list[float], Counter[str], list[dict[str, Any]], float]:
    done = [0]
    lock = threading.Lock()

    def tick() -> None:
        with lock:
            done[0] += 1

    finished = threading.Event()
    if progress is not None:
        threading.Thread(
            target=_report, args=(lambda: done[0], progress, finished), daemon=True
        ).start()
    started = time.perf_counter()
    try:
        tally = _append_threads(store, threads, blocks, 0, tick, run_id)
    finally:
        finished.set()
    seconds = time.perf_counter() - started
    if progress is not None:
        progress(done[0])
    return tally.latencies, tally.errors, [], seconds


def _report(
    count: Callable[[], int], progress: Callable[[int], None], done: threading.Event
) -> None:
    while not done.wait(0.1):
        progress(count())


def _in_processes(
    url: str,
    threads: int,
    blocks: int,
    processes: int,
    progress: Callable[[int], None] | None,
    run_id: str,
) -> tuple[list[float], Counter[str], list[dict[str, Any]], float]:
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    ready, results = context.Queue(), context.Queue()
    start = context.Event()
    shares = [blocks // processes + (1 if i < blocks % processes else 0) for i in range(processes)]
    children = [
        context.Process(
            target=_process_main,
            args=(url, threads, shares[i], i * threads, counter, ready, start, results, run_id),
            name=f"stress-{i}",
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()
    try:
        _wait_ready(ready, children)
        start.set()
        started = time.perf_counter()
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        stats: list[dict[str, Any]] = []
        while len(stats) < processes:
            try:
                chunk, failed, child_stats = results.get(timeout=0.1)
            except queue.Empty:
                if progress is not None:
                    progress(counter.value)
                if not any(c.is_alive() for c in children) and results.empty():
                    raise DatabaseUnavailableError(
                        "a stress process exited without reporting (run `app doctor` on the "
                        "database)"
                    ) from None
                continue
            latencies.extend(chunk)
            failures.update(failed)
            stats.append(child_stats)
        seconds = time.perf_counter() - started
        if progress is not None:
            progress(counter.value)
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    return latencies, failures, stats, seconds


def _wait_ready(ready: Any, children: list[Any]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    waiting = len(children)
    while waiting:
        try:
            ready.get(timeout=0.2)
            waiting -= 1
        except queue.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise DatabaseUnavailableError(
                    "a stress process failed to open the database (run `app doctor` on it)"
                ) from None
