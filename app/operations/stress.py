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
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import create_engine, func, inspect, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from app._hints import command_hint
from app.blocks import BlockStore
from app.database import Database
from app.engine._sqlite_file import probe_sqlite_file, read_only, refuse_directory
from app.errors import AppError, ConfigurationError, InvalidInputError
from app.models import LEGACY_TABLES
from app.operations._stress_blocks import StressBlock, make_block, now, percentiles
from app.operations._stress_workers import (
    EMBEDDING_MODEL,
    TAG,
    in_process,
    in_processes,
    merge_stats,
)
from app.settings import Settings

log = logging.getLogger(__name__)

# The synthetic blocks, for the benchmarks too.
__all__ = ["StressBlock", "StressResult", "make_block", "now", "percentiles", "run_stress"]

DEFAULT_THREADS = 8
DEFAULT_BLOCKS = 2000
DEFAULT_READ_THREADS = 2
DEFAULT_READ_PAUSE = 0.01


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


def _read_loop(store: BlockStore, stop: threading.Event, pause: float, out: list[Any]) -> None:
    """Search, pause, repeat: mostly indexed look-ups, some scans, a few embedding searches
    (which read every stored vector, so they are kept rare as in an application)."""
    rng = random.Random()
    latencies: list[float] = []
    errors: dict[str, str] = {}
    failed = 0
    probe = make_block(0, 0).embedding
    try:
        head = store.head()
    except Exception as exc:  # noqa: BLE001 - counted and reported
        out.append(([], 1, {type(exc).__name__: " ".join(str(exc).split())[:200]}))
        return
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
            latencies, failures, stats, seconds = in_process(
                store, threads, blocks, progress, result.run_id
            )
        else:
            latencies, failures, stats, seconds = in_processes(
                db.settings.url, threads, blocks, processes, progress, result.run_id
            )
    finally:
        stop.set()
        for reader in readers:
            if reader.ident is not None:  # started (an interruption may come before)
                reader.join()  # bounded: a reader stops after its current search
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
    result.stats = merge_stats([*stats, asdict(db.stats())])


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
        refuse_directory(path)
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
    """Rows per data table that has any, on ``conn`` (the search index and the schema's
    bookkeeping are derived from them and not counted)."""
    present = set(inspect(conn).get_table_names())
    names = [name for name in LEGACY_TABLES if name in present]
    counts = {
        name: int(conn.execute(select(func.count()).select_from(table(name))).scalar_one())
        for name in names
    }
    conn.rollback()
    return {name: n for name, n in counts.items() if n}
