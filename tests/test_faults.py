"""Resources running out: a full disk, a file that turns read-only, vanishes or is replaced
while the database is open, an exhausted connection pool, and writers that die inside a unit.

Each fault must surface as one named :class:`~app.errors.AppError`, leave every block
committed before it intact and nothing half written, release every lock and connection,
and let the application carry on once the resource is back.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

import app.blocks
from app import BlockStore, Database
from app.errors import (
    AppError,
    CorruptDatabaseError,
    DatabaseUnavailableError,
    NotADatabaseError,
    PoolExhaustedError,
    ReadOnlyDatabaseError,
    StorageFullError,
)
from app.maintenance import backup

from .helpers import assert_one_line_error, in_thread, run_cli, run_threads

CHAIN_TABLES = ("blocks", "block_keywords", "block_tags", "block_metadata", "block_embeddings")
#: Far above any database a test builds: "no limit" for ``PRAGMA max_page_count``.
NO_PAGE_LIMIT = 1 << 30
#: Long enough for a loaded CI machine; a deadlock would hit it.
JOIN_TIMEOUT = 60.0


# -- helpers ---------------------------------------------------------------------------------


def big_block(tag: str, seq: int) -> dict[str, Any]:
    """Append arguments filling every chain table, large enough to need new pages often."""
    return {
        "context": f"{tag}#{seq} " + "lorem ipsum dolor " * (60 + seq % 50),
        "keywords": [f"{tag}-k{seq}-{j}" for j in range(seq % 9)],
        "tags": [f"t{seq % 5}", tag],
        "metadata": {"writer": tag, "seq": seq, "pad": "m" * (seq % 300)},
        "embedding": [((seq + j) % 17) / 17.0 + 0.01 for j in range(96)],
    }


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def page_count(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(text("PRAGMA page_count")).scalar_one())


def quick_check(db: Database) -> str:
    with db.read() as session:
        return str(session.execute(text("PRAGMA quick_check")).scalar_one())


def rows_from(db: Database, first_index: int) -> dict[str, int]:
    """Rows at or after ``first_index`` in every chain table."""
    with db.read() as session:
        return {
            table: int(
                session.execute(
                    text(f"SELECT count(*) FROM {table} WHERE block_index >= :first"),
                    {"first": first_index},
                ).scalar_one()
            )
            for table in CHAIN_TABLES
        }


def orphan_rows(db: Database) -> dict[str, int]:
    """Rows of the side tables whose block is not in ``blocks`` (a half-written block)."""
    with db.read() as session:
        return {
            table: int(
                session.execute(
                    text(
                        f"SELECT count(*) FROM {table} "
                        "WHERE block_index NOT IN (SELECT block_index FROM blocks)"
                    )
                ).scalar_one()
            )
            for table in CHAIN_TABLES[1:]
        }


def assert_chain_intact(db: Database, store: BlockStore, count: int) -> None:
    assert store.count() == count
    assert store.verify_chain().ok
    assert orphan_rows(db) == dict.fromkeys(CHAIN_TABLES[1:], 0)
    if db.settings.is_sqlite:
        assert quick_check(db) == "ok"


def outcome(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    """Store under ``name`` what ``fn()`` returned, or the exception it raised."""
    try:
        results[name] = fn()
    except BaseException as exc:  # noqa: BLE001 - checked by the caller
        results[name] = exc


def assert_nothing_from(db: Database, first_index: int) -> None:
    assert rows_from(db, first_index) == dict.fromkeys(CHAIN_TABLES, 0)


class PageLimit:
    """A disk that fills up: ``PRAGMA max_page_count`` on every connection the pool hands out.

    The pragma belongs to one connection, and the pool holds several, opened at different
    times; setting it at each checkout puts every unit (reads, writes, the group committer's
    batches) under the current limit.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.limit = NO_PAGE_LIMIT
        event.listen(db.engine, "checkout", self._apply)

    def _apply(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {int(self.limit)}")

    def leave(self, pages: int) -> None:
        """Allow only ``pages`` more pages than the database has now."""
        self.limit = NO_PAGE_LIMIT
        self.limit = page_count(self.db) + pages

    def lift(self) -> None:
        """Space is freed."""
        self.limit = NO_PAGE_LIMIT


@dataclass
class Outcomes:
    """What each of several threads got: its records, or the exception it met."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    records: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def record(self, value: Any) -> None:
        with self.lock:
            self.records.append(value)

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        pause.wait(0.001)


def timed_append(db: Database, context: str) -> tuple[float, int]:
    """Seconds a write unit took to append one block in this thread, and its index."""
    started = time.monotonic()
    with db.unit_of_work():
        record = BlockStore(db).append(context)
    return time.monotonic() - started, record.block_index


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make ``path`` (a file or a directory) unwritable while the database is open, even
    for root (who ignores permission bits): chmod for a normal user, the immutable
    attribute for root."""
    if os.geteuid() != 0:
        before = path.stat().st_mode
        path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            yield
        finally:
            path.chmod(before)
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(
            "running as root on a file system without chattr +i: cannot make the "
            "file read-only for root"
        )
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_DATABASE_URL", raising=False)


@pytest.fixture
def open_sqlite(tmp_path: Path) -> Iterator[Callable[..., Database]]:
    """Open SQLite Databases under ``tmp_path`` with given settings; disposed afterwards."""
    opened: list[Database] = []

    def factory(path: Path | None = None, **settings: Any) -> Database:
        database = Database(sqlite_url(path or tmp_path / "memory.db"), **settings)
        opened.append(database)
        return database

    yield factory
    for database in opened:
        database.dispose()


# -- another process -------------------------------------------------------------------------

_WRITER = r"""
import json, sys, time
from app import BlockStore, Database

for line in sys.stdin:
    request = json.loads(line)
    try:
        db = Database(request["url"], busy_timeout=30.0, retry_deadline=request["deadline"])
        try:
            started = time.monotonic()
            with db.unit_of_work():
                record = BlockStore(db).append(request["context"])
            reply = {"index": record.block_index, "seconds": time.monotonic() - started}
        finally:
            db.dispose()
    except Exception as exc:
        reply = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(reply), flush=True)
"""


class OtherProcess:
    """A writer in its own process, started once: it opens the database it is sent, times
    one write unit appending a block, and answers with the seconds it took (or the error)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WRITER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def append(self, url: str, context: str, *, deadline: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"url": url, "context": context, "deadline": deadline}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], JOIN_TIMEOUT)
        assert ready, "the other process did not answer"
        reply: dict[str, Any] = json.loads(self.process.stdout.readline())
        return reply

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def other_process() -> Iterator[OtherProcess]:
    writer = OtherProcess()
    yield writer
    writer.close()


# -- 1. the disk fills up (SQLite: max_page_count) -------------------------------------------


def test_append_on_a_full_disk_fails_alone_and_resumes_once_space_is_freed(
    open_sqlite: Callable[..., Database],
) -> None:
    db = open_sqlite()
    store = BlockStore(db)
    disk = PageLimit(db)
    for seq in range(3):
        store.append(**big_block("base", seq))
    count = 3
    # Several rounds with different room left, so the failure lands in different tables.
    for round_ in range(8):
        head = store.head()
        assert head is not None
        disk.leave(1 + round_ % 4)
        with pytest.raises(AppError) as failure:
            for seq in range(500):
                store.append(**big_block(f"r{round_}", seq))
                count += 1
        assert type(failure.value) is StorageFullError
        assert "full" in str(failure.value)
        assert_chain_intact(db, store, count)
        assert_nothing_from(db, count)
        disk.lift()
        record = store.append(**big_block(f"after{round_}", round_))
        count += 1
        assert record.block_index == count - 1
        previous = store.get(count - 2)
        assert previous is not None and record.prev_hash == previous.hash
        assert store.get(record.block_index) == record
    assert_chain_intact(db, store, count)
    assert db.stats().connections_checked_out == 0


def test_append_many_on_a_full_disk_writes_none_of_its_batch(
    open_sqlite: Callable[..., Database],
) -> None:
    db = open_sqlite()
    store = BlockStore(db)
    disk = PageLimit(db)
    store.append_many([big_block("base", seq) for seq in range(5)])
    batch = [big_block("batch", seq) for seq in range(60)]
    disk.leave(10)  # room for some of the batch, not all of it
    with pytest.raises(AppError) as failure:
        store.append_many(batch)
    assert type(failure.value) is StorageFullError
    assert_chain_intact(db, store, 5)
    assert_nothing_from(db, 5)

    disk.lift()
    records = store.append_many(batch)
    assert [r.block_index for r in records] == list(range(5, 65))
    assert [r.context for r in records] == [b["context"] for b in batch]
    assert_chain_intact(db, store, 65)


def test_append_many_over_several_batches_keeps_only_whole_batches(
    open_sqlite: Callable[..., Database],
) -> None:
    db = open_sqlite(max_batch=8)
    store = BlockStore(db)
    disk = PageLimit(db)
    store.append(**big_block("base", 0))
    blocks = [big_block("many", seq) for seq in range(200)]
    disk.leave(40)
    with pytest.raises(AppError) as failure:
        store.append_many(blocks)
    assert type(failure.value) is StorageFullError
    written = store.count() - 1
    # The batches before the full one are committed, whole and in order; nothing after.
    assert 0 < written < len(blocks) and written % 8 == 0
    stored = store.page(1, written, limit=written)
    assert [r.context for r in stored] == [b["context"] for b in blocks[:written]]
    assert_chain_intact(db, store, 1 + written)
    assert_nothing_from(db, 1 + written)

    disk.lift()
    rest = store.append_many(blocks[written:])
    assert rest[0].block_index == 1 + written and rest[-1].block_index == len(blocks)
    assert_chain_intact(db, store, 1 + len(blocks))


def _fill_from_threads(
    db: Database, store: BlockStore, threads: int, inside_unit: bool
) -> Outcomes:
    """Each thread appends until its first error (every thread must meet one)."""
    outcomes = Outcomes()
    start = threading.Barrier(threads)

    def append_until_full(worker: int) -> None:
        start.wait()
        for seq in range(1000):
            block = big_block(f"w{worker}", seq)
            try:
                if inside_unit:
                    with db.unit_of_work():
                        record = store.append(**block)
                else:
                    record = store.append(**block)
            except Exception as exc:  # noqa: BLE001 - checked by the test
                outcomes.error(exc)
                return
            outcomes.record(record)
        outcomes.error(AssertionError(f"worker {worker} never met a full disk"))

    assert run_threads(threads, append_until_full) == []
    return outcomes


@pytest.mark.parametrize(
    "inside_unit",
    [False, True],
    ids=["group-commit-appends", "units-sharing-a-commit"],
)
def test_concurrent_appends_on_a_full_disk_get_their_record_or_storage_full(
    open_sqlite: Callable[..., Database], inside_unit: bool
) -> None:
    """Threads append at once as the disk fills: through the chain's group commit (one
    batch for many callers), or each in its own unit_of_work (units handing one open
    transaction on and sharing its commit). A caller gets its committed record or
    StorageFullError, never another error, and the chain stays whole."""
    threads = 12
    db = open_sqlite()
    store = BlockStore(db)
    disk = PageLimit(db)
    store.append(**big_block("base", 0))
    disk.leave(60)
    outcomes = _fill_from_threads(db, store, threads, inside_unit)

    assert [type(e) for e in outcomes.errors] == [StorageFullError] * threads, outcomes.errors
    count = 1 + len(outcomes.records)
    assert_chain_intact(db, store, count)
    assert_nothing_from(db, count)
    assert sorted(r.block_index for r in outcomes.records) == list(range(1, count))
    stored = {r.block_index: r for r in store.page(limit=count)}
    assert all(stored[r.block_index] == r for r in outcomes.records)

    disk.lift()
    resumed = Outcomes()
    start = threading.Barrier(threads)

    def append_once(worker: int) -> None:
        start.wait()
        try:
            resumed.record(store.append(**big_block(f"again{worker}", worker)))
        except Exception as exc:  # noqa: BLE001 - checked below
            resumed.error(exc)

    assert run_threads(threads, append_once) == []
    assert resumed.errors == []
    assert sorted(r.block_index for r in resumed.records) == list(range(count, count + threads))
    assert_chain_intact(db, store, count + threads)
    assert db.stats().connections_checked_out == 0


def test_disk_filling_in_a_shared_transaction_fails_every_unit_in_it_as_storage_full(
    open_sqlite: Callable[..., Database],
) -> None:
    """A unit finishes and hands its open transaction to the next writer, whose append
    fills the disk. SQLite may then roll back the whole transaction, the first unit's work
    included: that unit must fail with StorageFullError too (its caller learns the disk is
    full), not with an error that hides the cause; if only the statement was rolled back,
    the first unit's block is committed."""
    db = open_sqlite()
    store = BlockStore(db)
    disk = PageLimit(db)
    store.append(**big_block("base", 0))
    first_inside = threading.Event()
    results: dict[str, Any] = {}

    def first_unit() -> Any:
        with db.unit_of_work():
            record = store.append("small enough to fit")
            disk.leave(0)  # the next writer's connection finds the disk full
            first_inside.set()
            wait_until(lambda: db.stats().writers_queued == 1)
        return record

    def filling_unit() -> Any:
        assert first_inside.wait(JOIN_TIMEOUT)
        with db.unit_of_work() as session:
            # The handed-on transaction keeps its connection: cap it here as well.
            session.execute(text(f"PRAGMA max_page_count = {page_count(db)}"))
            return store.append(**{**big_block("too big", 1), "context": "x" * 20_000})

    def either(number: int) -> None:
        if number == 0:
            outcome(results, "first", first_unit)
        else:
            outcome(results, "filling", filling_unit)

    assert run_threads(2, either) == []
    assert type(results["filling"]) is StorageFullError
    first = results["first"]
    if isinstance(first, BaseException):
        assert type(first) is StorageFullError, first
        assert_chain_intact(db, store, 1)
        assert_nothing_from(db, 1)
    else:
        assert first.block_index == 1 and store.get(1) == first
        assert_chain_intact(db, store, 2)
        assert_nothing_from(db, 2)
    disk.lift()
    count = store.count()
    assert store.append("space again").block_index == count
    assert_chain_intact(db, store, count + 1)


# -- 2. the file changes under an open database ----------------------------------------------


def test_file_made_read_only_while_open_refuses_writes_and_recovers(
    open_sqlite: Callable[..., Database], tmp_path: Path
) -> None:
    path = tmp_path / "memory.db"
    url = sqlite_url(path)
    db = open_sqlite(path, pool_size=1, max_overflow=1)
    store = BlockStore(db)
    for seq in range(3):
        store.append(**big_block("before", seq))
    assert db.stats().connections_open == 1
    with unwritable(path):
        # A reader holds the pooled connection (opened while the file was writable), so
        # the writer needs a connection opened now, which SQLite can only open read-only.
        holding, release = threading.Event(), threading.Event()

        def hold_a_read_unit() -> None:
            with db.read():
                holding.set()
                release.wait(JOIN_TIMEOUT)

        reader = threading.Thread(target=hold_a_read_unit)
        reader.start()
        try:
            assert holding.wait(JOIN_TIMEOUT)
            with pytest.raises(AppError) as failure:
                store.append(**big_block("refused", 0))
        finally:
            release.set()
            reader.join(JOIN_TIMEOUT)
        assert type(failure.value) is ReadOnlyDatabaseError
        assert "read-only" in str(failure.value)
        assert_chain_intact(db, store, 3)

        # The command line says so in one line (stress) or in its report (doctor).
        line = assert_one_line_error(
            run_cli("--url", url, "stress", "-t", "2", "-n", "4", "--existing")
        )
        assert "read-only" in line
        doctor = run_cli("--url", url, "doctor")
        assert doctor.exit_code == 1 and "Traceback" not in doctor.output
        assert "read-only" in doctor.output
    # Writable again: appending resumes on the same Database, the chain continues.
    records = [store.append(**big_block("after", seq)) for seq in range(4)]
    assert [r.block_index for r in records] == [3, 4, 5, 6]
    assert_chain_intact(db, store, 7)
    assert db.stats().connections_checked_out == 0


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_directory_made_read_only_while_open(
    open_sqlite: Callable[..., Database], tmp_path: Path, journal_mode: str
) -> None:
    """In WAL mode every file the database needs exists already, so writing goes on. With a
    rollback journal each write must create one in the directory: the write is refused
    (SQLite reports a directory it may not write to as read-only, but the EPERM of root's
    immutable directory as a file it cannot open) and nothing of it is kept."""
    directory = tmp_path / "data"
    db = open_sqlite(directory / "memory.db", journal_mode=journal_mode)
    store = BlockStore(db)
    store.append_many([big_block("before", seq) for seq in range(3)])
    with unwritable(directory):
        if journal_mode == "wal":
            assert store.append(**big_block("during", 0)).block_index == 3
            count = 4
        else:
            expected = DatabaseUnavailableError if os.geteuid() == 0 else ReadOnlyDatabaseError
            for attempt in (
                lambda: store.append(**big_block("refused", 0)),
                lambda: store.append_many([big_block("refused", 1), big_block("refused", 2)]),
            ):
                with pytest.raises(AppError) as failure:
                    attempt()
                assert type(failure.value) is expected
            count = 3
        assert_chain_intact(db, store, count)
    assert store.append(**big_block("after", 0)).block_index == count
    db.dispose()
    with Database(sqlite_url(directory / "memory.db"), journal_mode=journal_mode) as again:
        assert_chain_intact(again, BlockStore(again), count + 1)


def test_directory_removed_while_open_refuses_writes_and_the_data_can_be_rescued(
    open_sqlite: Callable[..., Database], tmp_path: Path
) -> None:
    directory = tmp_path / "data"
    db = open_sqlite(directory / "memory.db")
    store = BlockStore(db)
    written = store.append_many([big_block("kept", seq) for seq in range(20)])
    shutil.rmtree(directory)

    attempts: list[Callable[[], Any]] = [
        lambda: store.append(**big_block("lost", 0)),
        lambda: store.append_many([big_block("lost", 1), big_block("lost", 2)]),
        lambda: timed_append(db, "lost in a unit"),
    ]
    for attempt in attempts:
        with pytest.raises(AppError) as failure:
            attempt()
        assert type(failure.value) is DatabaseUnavailableError
        assert "removed" in str(failure.value)
    # Nothing was recreated in its place (an empty database there would take new writes).
    assert not directory.exists()
    # The open connection still reaches the data: a backup saves every committed block.
    rescue = tmp_path / "rescue.db"
    assert backup(db, str(rescue)).blocks == 20
    with Database(sqlite_url(rescue)) as copy:
        saved = BlockStore(copy)
        assert saved.page(limit=100) == written
        assert_chain_intact(copy, saved, 20)


def _checkpointed_bytes(db: Database, path: Path) -> bytes:
    db.checkpoint("truncate")  # every page in the file itself, none in the WAL
    return path.read_bytes()


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [("garbage", NotADatabaseError), ("truncated", CorruptDatabaseError)],
)
def test_file_replaced_while_open_is_refused_and_left_untouched(
    open_sqlite: Callable[..., Database],
    tmp_path: Path,
    replacement: str,
    expected: type[AppError],
) -> None:
    path = tmp_path / "memory.db"
    url = sqlite_url(path)
    db = open_sqlite(path)
    store = BlockStore(db)
    store.append_many([big_block("before", seq) for seq in range(50)])
    original = _checkpointed_bytes(db, path)
    if replacement == "garbage":
        content = b"this is not a database, it is a shopping list\n" * 2000
    else:
        content = original[: len(original) // 2]
    # Another program moves a different file into place (mv, an editor's save, a restore).
    staged = tmp_path / "staged"
    staged.write_bytes(content)
    os.replace(staged, path)

    for attempt in (
        lambda: store.append(**big_block("after", 0)),
        lambda: timed_append(db, "after in a unit"),
    ):
        with pytest.raises(AppError) as failure:
            attempt()
        assert type(failure.value) is DatabaseUnavailableError
        assert "replaced" in str(failure.value)
    db.dispose()
    assert path.read_bytes() == content

    # Opened anew, the file is named for what it is, and still left as it was.
    with pytest.raises(AppError) as reopened, Database(url) as again:
        BlockStore(again).verify_chain()
    assert type(reopened.value) is expected
    line = assert_one_line_error(run_cli("--url", url, "stress", "-t", "2", "-n", "4"))
    assert ("not a SQLite database" if replacement == "garbage" else "corrupt") in line
    assert path.read_bytes() == content


def test_truncated_file_is_refused_at_open_and_left_untouched(
    open_sqlite: Callable[..., Database], tmp_path: Path
) -> None:
    path = tmp_path / "memory.db"
    url = sqlite_url(path)
    db = open_sqlite(path)
    BlockStore(db).append_many([big_block("before", seq) for seq in range(50)])
    original = _checkpointed_bytes(db, path)
    db.dispose()
    with open(path, "r+b") as handle:
        handle.truncate(len(original) // 2)
    content = path.read_bytes()

    with pytest.raises(AppError) as failure:
        Database(url).dispose()
    assert type(failure.value) is CorruptDatabaseError
    assert "corrupt" in assert_one_line_error(run_cli("--url", url, "stress", "-n", "4"))
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.db"]


# -- 3. the pool runs dry --------------------------------------------------------------------

POOL_TIMEOUT = 0.3


def test_exhausted_pool_makes_extra_callers_wait_then_fail_and_recovers(
    make_db: Callable[..., Database],
) -> None:
    db = make_db(pool_size=2, max_overflow=0, pool_timeout=POOL_TIMEOUT)
    store = BlockStore(db)
    store.append("before")
    holders = 2
    inside = threading.Barrier(holders + 1)
    release = threading.Event()
    held: list[BaseException] = []

    def hold_a_read_unit() -> None:
        try:
            with db.read() as session:
                session.execute(text("SELECT count(*) FROM blocks")).scalar_one()
                inside.wait(JOIN_TIMEOUT)
                release.wait(JOIN_TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - checked below
            held.append(exc)

    def read_unit() -> None:
        with db.read() as session:
            session.execute(text("SELECT 1"))

    def write_unit() -> None:
        with db.unit_of_work() as session:
            session.execute(text("SELECT 1"))

    callers: dict[str, Callable[[], Any]] = {
        "read unit": read_unit,
        "count": store.count,
        "get": lambda: store.get(0),
        "append": lambda: store.append("no connection for me"),
        "write unit": write_unit,
    }
    outcomes: dict[str, tuple[type[BaseException] | None, float]] = {}
    start = threading.Barrier(len(callers))

    def call(name: str) -> None:
        start.wait(JOIN_TIMEOUT)
        began = time.monotonic()
        try:
            callers[name]()
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcomes[name] = (type(exc), time.monotonic() - began)
        else:
            outcomes[name] = (None, time.monotonic() - began)

    holding = [threading.Thread(target=hold_a_read_unit) for _ in range(holders)]
    for thread in holding:
        thread.start()
    try:
        inside.wait(JOIN_TIMEOUT)  # both connections are in use from here on
        assert db.engine.pool.checkedout() == holders  # type: ignore[attr-defined]
        names = list(callers)
        assert run_threads(len(names), lambda i: call(names[i])) == []
    finally:
        release.set()
        for thread in holding:
            thread.join(JOIN_TIMEOUT)
    assert held == []
    for name, (error, seconds) in outcomes.items():
        assert error is PoolExhaustedError, (name, error)
        assert seconds >= POOL_TIMEOUT * 0.9, (name, seconds)  # it did wait for the pool
    # Every connection came back; the next units find one at once.
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert db.stats().connections_checked_out == 0
    assert db.stats().writers_queued == 0
    assert store.append("after").block_index == 1
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM blocks")).scalar_one() == 2
    assert store.verify_chain().ok


# -- 4. writers that die inside a unit -------------------------------------------------------


class Cancelled(BaseException):
    """Neither an Exception nor KeyboardInterrupt: what a framework may throw to stop a task."""


FATAL = [RuntimeError, KeyboardInterrupt, Cancelled]
#: A writer gives up after this long; one still blocked by a held lock fails with
#: DatabaseBusyError. busy_timeout is far longer, so only the deadline could cut a wait short.
WRITER_DEADLINE = 3.0
AT_ONCE = 1.5


def assert_next_writers_proceed_at_once(
    db: Database, url: str, other_process: OtherProcess, count: int
) -> None:
    """A writer in another thread, then one in another process, get the lock at once."""
    outcome = in_thread(lambda: timed_append(db, "next thread"))
    assert not isinstance(outcome, BaseException), outcome
    seconds, index = outcome
    assert index == count and seconds < AT_ONCE
    reply = other_process.append(url, "next process", deadline=WRITER_DEADLINE)
    assert "error" not in reply, reply
    assert reply["index"] == count + 1 and reply["seconds"] < AT_ONCE, reply
    assert db.stats().connections_checked_out == 0


@pytest.mark.parametrize("fatal", FATAL, ids=lambda e: e.__name__)
def test_unit_dying_in_a_thread_leaves_no_lock_held(
    make_db: Callable[..., Database],
    db_url: str,
    other_process: OtherProcess,
    fatal: type[BaseException],
) -> None:
    db = make_db(busy_timeout=30.0, retry_deadline=WRITER_DEADLINE)
    store = BlockStore(db)
    store.append("before")

    def doomed_unit() -> None:
        with db.unit_of_work() as session:
            store.append(**big_block("doomed", 0))
            session.execute(text("DELETE FROM blocks WHERE block_index = 0"))
            raise fatal("the thread dies here")

    outcome = in_thread(doomed_unit)
    assert type(outcome) is fatal
    assert_chain_intact(db, store, 1)
    assert_nothing_from(db, 1)
    assert_next_writers_proceed_at_once(db, db_url, other_process, 1)
    assert_chain_intact(db, store, 3)


@pytest.mark.parametrize("fatal", FATAL, ids=lambda e: e.__name__)
def test_unit_dying_in_a_shared_transaction_leaves_no_lock_held(
    make_db: Callable[..., Database],
    db_url: str,
    other_process: OtherProcess,
    fatal: type[BaseException],
) -> None:
    """The dying unit was handed the open transaction of a unit that finished before it
    (their work shares one commit): it rolls back alone, the other's work is committed."""
    db = make_db(busy_timeout=30.0, retry_deadline=WRITER_DEADLINE)
    store = BlockStore(db)
    store.append("before")
    first_inside = threading.Event()

    def first_unit() -> int:
        with db.unit_of_work():
            record = store.append("committed with the dying unit")
            first_inside.set()
            # Finish only once the dying unit waits for its turn: the transaction is
            # then handed to it instead of being committed at once.
            wait_until(lambda: db.stats().writers_queued == 1)
        return record.block_index

    def dying_unit() -> None:
        assert first_inside.wait(JOIN_TIMEOUT)
        with db.unit_of_work():
            store.append(**big_block("doomed", 0))
            raise fatal("the thread dies here")

    results: dict[str, Any] = {}

    def either(number: int) -> None:
        if number == 0:
            outcome(results, "first", first_unit)
        else:
            outcome(results, "dying", dying_unit)

    assert run_threads(2, either) == []
    assert results["first"] == 1
    assert type(results["dying"]) is fatal
    assert_chain_intact(db, store, 2)
    assert_nothing_from(db, 2)
    assert_next_writers_proceed_at_once(db, db_url, other_process, 2)
    assert_chain_intact(db, store, 4)


@pytest.mark.parametrize("inside_unit", [False, True], ids=["append", "append-in-unit"])
def test_interrupt_between_the_tables_of_an_append_leaves_nothing_half_written(
    make_db: Callable[..., Database],
    db_url: str,
    other_process: OtherProcess,
    monkeypatch: pytest.MonkeyPatch,
    inside_unit: bool,
) -> None:
    """Ctrl-C after the block's row went in and before its keywords did."""
    db = make_db(busy_timeout=30.0, retry_deadline=WRITER_DEADLINE)
    store = BlockStore(db)
    store.append("before")
    execute_all = app.blocks.raw_execute_all

    def interrupted(connection: Any, statements: Any) -> Any:
        for statement in statements:
            if statement[0].startswith("INSERT INTO block_keywords"):
                raise KeyboardInterrupt
            execute_all(connection, [statement])

    monkeypatch.setattr(app.blocks, "raw_execute_all", interrupted)

    def append() -> None:
        if inside_unit:
            with db.unit_of_work():
                store.append(**big_block("interrupted", 1))
        else:
            store.append(**big_block("interrupted", 1))

    assert type(in_thread(append)) is KeyboardInterrupt
    monkeypatch.setattr(app.blocks, "raw_execute_all", execute_all)
    assert_chain_intact(db, store, 1)
    assert_nothing_from(db, 1)
    assert_next_writers_proceed_at_once(db, db_url, other_process, 1)
    record = store.append(**big_block("after", 1))
    assert record.block_index == 3
    assert_chain_intact(db, store, 4)
