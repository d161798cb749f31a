"""Resources running out: a full disk, a file that turns read-only, vanishes or is replaced
while the database is open, an exhausted connection pool, and writers that die inside a unit.

Each fault must surface as one named :class:`~app.errors.AppError`, leave every block
committed before it intact and nothing half written, release every lock and connection,
and let the application carry on once the resource is back.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import app.blocks
import app.chain._block_sql
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
from app.operations.maintenance import backup

from .fault_harness import (
    WRITER_DEADLINE,
    OtherProcess,
    Outcomes,
    PageLimit,
    assert_chain_whole,
    assert_next_writers_proceed_at_once,
    assert_nothing_from,
    big_block,
    checkpointed_bytes,
    fill_from_threads,
    outcome,
    page_count,
    sqlite_url,
    timed_append,
    unwritable,
)
from .helpers import (
    JOIN_TIMEOUT,
    Background,
    assert_one_line_error,
    in_thread,
    run_cli,
    run_threads,
    wait_until,
)

# Fault injection: ``-m "not slow"`` leaves the whole module out.
pytestmark = pytest.mark.slow


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
        assert_chain_whole(db, count)
        assert_nothing_from(db, count)
        disk.lift()
        record = store.append(**big_block(f"after{round_}", round_))
        count += 1
        assert record.block_index == count - 1
        previous = store.get(count - 2)
        assert previous is not None and record.prev_hash == previous.hash
        assert store.get(record.block_index) == record
    assert_chain_whole(db, count)
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
    assert_chain_whole(db, 5)
    assert_nothing_from(db, 5)

    disk.lift()
    records = store.append_many(batch)
    assert [r.block_index for r in records] == list(range(5, 65))
    assert [r.context for r in records] == [b["context"] for b in batch]
    assert_chain_whole(db, 65)


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
    assert_chain_whole(db, 1 + written)
    assert_nothing_from(db, 1 + written)

    disk.lift()
    rest = store.append_many(blocks[written:])
    assert rest[0].block_index == 1 + written and rest[-1].block_index == len(blocks)
    assert_chain_whole(db, 1 + len(blocks))


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
    outcomes = fill_from_threads(db, store, threads, inside_unit)

    assert [type(e) for e in outcomes.errors] == [StorageFullError] * threads, outcomes.errors
    count = 1 + len(outcomes.records)
    assert_chain_whole(db, count)
    assert_nothing_from(db, count)
    assert sorted(r.block_index for r in outcomes.records) == list(range(1, count))
    stored = {r.block_index: r for r in store.page(limit=count)}
    assert all(stored[r.block_index] == r for r in outcomes.records)

    disk.lift()
    resumed = Outcomes()

    def append_once(worker: int) -> None:
        try:
            resumed.record(store.append(**big_block(f"again{worker}", worker)))
        except Exception as exc:  # noqa: BLE001 - checked below
            resumed.error(exc)

    assert run_threads(threads, append_once) == []
    assert (len(resumed.records), resumed.errors) == (threads, [])
    assert sorted(r.block_index for r in resumed.records) == list(range(count, count + threads))
    assert_chain_whole(db, count + threads)
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
            wait_until(lambda: db.stats().writers_queued == 1, "the filling unit queued", 10)
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
    assert sorted(results) == ["filling", "first"]  # both units reported
    assert type(results["filling"]) is StorageFullError
    first = results["first"]
    if isinstance(first, BaseException):
        assert type(first) is StorageFullError, first
        assert_chain_whole(db, 1)
        assert_nothing_from(db, 1)
    else:
        assert first.block_index == 1 and store.get(1) == first
        assert_chain_whole(db, 2)
        assert_nothing_from(db, 2)
    disk.lift()
    count = store.count()
    assert store.append("space again").block_index == count
    assert_chain_whole(db, count + 1)


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
                assert release.wait(JOIN_TIMEOUT)

        reader = Background(hold_a_read_unit, name="reader").start()
        try:
            assert holding.wait(JOIN_TIMEOUT)
            with pytest.raises(AppError) as failure:
                store.append(**big_block("refused", 0))
        finally:
            release.set()
            held = reader.outcome()
        assert held is None  # the reader's unit ended without an error
        assert type(failure.value) is ReadOnlyDatabaseError
        assert "read-only" in str(failure.value)
        assert_chain_whole(db, 3)

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
    assert_chain_whole(db, 7)
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
        assert_chain_whole(db, count)
    assert store.append(**big_block("after", 0)).block_index == count
    db.dispose()
    with Database(sqlite_url(directory / "memory.db"), journal_mode=journal_mode) as again:
        assert_chain_whole(again, count + 1)


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
        assert_chain_whole(copy, 20)


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
    original = checkpointed_bytes(db, path)
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
    original = checkpointed_bytes(db, path)
    db.dispose()
    with open(path, "r+b") as handle:
        handle.truncate(len(original) // 2)
    content = path.read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir())  # the file, and its -turn record

    with pytest.raises(AppError) as failure:
        Database(url).dispose()
    assert type(failure.value) is CorruptDatabaseError
    assert "corrupt" in assert_one_line_error(run_cli("--url", url, "stress", "-n", "4"))
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == files


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

    def hold_a_read_unit() -> None:
        with db.read() as session:
            session.execute(text("SELECT count(*) FROM blocks")).scalar_one()
            inside.wait(JOIN_TIMEOUT)
            assert release.wait(JOIN_TIMEOUT)

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
    # Each caller's report: the type of what it raised (None: it returned), and how long
    # it took. The callers start together (run_threads); what fails outside the call
    # itself is returned by run_threads.
    outcomes: dict[str, tuple[type[BaseException] | None, float]] = {}

    def call(name: str) -> None:
        began = time.monotonic()
        try:
            callers[name]()
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcomes[name] = (type(exc), time.monotonic() - began)
        else:
            outcomes[name] = (None, time.monotonic() - began)

    holding = [Background(hold_a_read_unit, name=f"holder {n}").start() for n in range(holders)]
    try:
        inside.wait(JOIN_TIMEOUT)  # both connections are in use from here on
        assert db.engine.pool.checkedout() == holders  # type: ignore[attr-defined]
        names = list(callers)
        assert run_threads(len(names), lambda i: call(names[i])) == []
    finally:
        release.set()
        held = [holder.outcome() for holder in holding]
    assert held == [None] * holders  # both holders' units ended without an error
    assert sorted(outcomes) == sorted(callers)  # every caller reported, once
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
    assert_chain_whole(db, 1)
    assert_nothing_from(db, 1)
    assert_next_writers_proceed_at_once(db, db_url, other_process, 1)
    assert_chain_whole(db, 3)


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
            wait_until(lambda: db.stats().writers_queued == 1, "the dying unit queued", 10)
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
    assert sorted(results) == ["dying", "first"]  # both units reported
    assert results["first"] == 1
    assert type(results["dying"]) is fatal
    assert_chain_whole(db, 2)
    assert_nothing_from(db, 2)
    assert_next_writers_proceed_at_once(db, db_url, other_process, 2)
    assert_chain_whole(db, 4)


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
    execute_all = app.chain._block_sql.raw_execute_all

    def interrupted(connection: Any, statements: Any) -> Any:
        for statement in statements:
            if statement[0].startswith("INSERT INTO block_keywords"):
                raise KeyboardInterrupt
            execute_all(connection, [statement])

    monkeypatch.setattr(app.chain._block_sql, "raw_execute_all", interrupted)

    def append() -> None:
        if inside_unit:
            with db.unit_of_work():
                store.append(**big_block("interrupted", 1))
        else:
            store.append(**big_block("interrupted", 1))

    assert type(in_thread(append)) is KeyboardInterrupt
    monkeypatch.setattr(app.chain._block_sql, "raw_execute_all", execute_all)
    assert_chain_whole(db, 1)
    assert_nothing_from(db, 1)
    assert_next_writers_proceed_at_once(db, db_url, other_process, 1)
    record = store.append(**big_block("after", 1))
    assert record.block_index == 3
    assert_chain_whole(db, 4)
