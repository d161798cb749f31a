"""app.aio: appends that join the group commit without a thread, reads and units on a bounded
pool of workers, and the rule for callers that stop waiting (cancelled, timed out, or past
their deadline), on every backend."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import weakref
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

import app.blocks
from app import BlockRecord, BlockStore, Database, errors
from app.aio import AsyncBlockStore, AsyncDatabase
from app.aio._appends import _Waiting as Waiting
from app.blocks._append_batcher import AppendRequest

from .aio_helpers import debug_log, eventually, run_async, turn_held, until_writers_queue
from .helpers import (
    assert_chain_intact,
    counter_value,
    increment_counter,
    make_counter_table,
    run_threads,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)


def queued(store: AsyncBlockStore) -> int:
    """Appends waiting in the batcher's queue (not yet taken into a batch)."""
    return len(store.sync.chain_batcher()._queue)


# -- appends -----------------------------------------------------------------------------------


def test_a_thousand_tasks_append_one_chain_on_a_few_threads(db: Database) -> None:
    tasks, appends = 1000, 3
    before = threading.active_count()
    peak = [before]

    async def main() -> list[list[int]]:
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)

            async def task(number: int) -> list[int]:
                indices = []
                for sequence in range(appends):
                    block = await store.append(
                        f"task {number} block {sequence}", tags=[f"t{number}"]
                    )
                    indices.append(block.block_index)
                    peak[0] = max(peak[0], threading.active_count())
                return indices

            return await asyncio.gather(*(task(number) for number in range(tasks)))

    per_task = run_async(main)
    # Each task's blocks come back in its order, and together they are the whole chain.
    assert all(indices == sorted(indices) for indices in per_task)
    assert sorted(i for indices in per_task for i in indices) == list(range(tasks * appends))
    assert_chain_intact(db, tasks * appends)
    with db.read() as session:
        per_tag = session.execute(text("SELECT count(*) FROM block_tags GROUP BY tag")).all()
    assert sorted(row[0] for row in per_tag) == [appends] * tasks
    # Appends need no worker: the batcher's one leader thread is all they add.
    assert peak[0] - before <= 1
    assert db.stats().connections_checked_out == 0


def test_async_tasks_and_threads_append_to_one_chain_together(db: Database) -> None:
    store = BlockStore(db)
    threads, per_thread, tasks, per_task = 20, 10, 200, 2
    go = threading.Event()

    returned: list[Any] = []  # what each append gave its caller (list.append is atomic)

    def thread(number: int) -> None:
        assert go.wait(30)
        for sequence in range(per_thread):
            returned.append(store.append(f"thread {number} block {sequence}", tags=["sync"]))

    async def main() -> None:
        async with AsyncDatabase.wrap(db) as adb:
            astore = AsyncBlockStore(adb)

            async def task(number: int) -> None:
                for sequence in range(per_task):
                    block = await astore.append(f"task {number} block {sequence}", tags=["async"])
                    returned.append(block)

            go.set()
            await asyncio.gather(*(task(number) for number in range(tasks)))

    failures: list[BaseException] = []
    runner = threading.Thread(target=lambda: failures.extend(run_threads(threads, thread)))
    runner.start()
    run_async(main)
    runner.join(60)
    assert not runner.is_alive() and failures == []
    assert_chain_intact(db, threads * per_thread + tasks * per_task)
    with db.read() as session:
        tags = dict(
            session.execute(text("SELECT tag, count(*) FROM block_tags GROUP BY tag")).all()
        )
    assert tags == {"sync": threads * per_thread, "async": tasks * per_task}
    # Whoever wrote an append's batch (a thread's leader or the helper), its caller got
    # the block's record as it reads back.
    assert all(isinstance(record, BlockRecord) for record in returned)
    assert sorted(returned) == store.page(limit=len(returned) + 1)


def test_append_many_checks_every_block_first_and_writes_them_in_order(db: Database) -> None:
    async def main() -> tuple[BaseException, list[Any]]:
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)
            bad = [{"context": "fine"}] * 40 + [{"context": "bad", "importance": 2}]
            with pytest.raises(errors.InvalidInputError) as refused:
                await store.append_many(bad)
            records = await store.append_many({"context": f"b{n}"} for n in range(100))
            return refused.value, records

    refused, records = run_async(main)
    assert "blocks[40]" in str(refused)
    assert [r.block_index for r in records] == list(range(100))
    assert [r.context for r in records] == [f"b{n}" for n in range(100)]
    assert_chain_intact(db, 100)


def test_bad_input_is_refused_at_once_and_writes_nothing(db: Database) -> None:
    async def main() -> None:
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)
            with pytest.raises(errors.InvalidInputError, match="importance"):
                await store.append("x", importance=1.5)
            with pytest.raises(errors.InvalidInputError, match="embedding"):
                await store.append("x", embedding=[float("nan")])

    run_async(main)
    assert BlockStore(db).count() == 0


def test_an_append_inside_a_sync_unit_on_the_loop_thread_is_refused(db: Database) -> None:
    async def main() -> None:
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)
            with (
                db.unit_of_work(),
                pytest.raises(errors.TransactionStateError, match="sync unit"),
            ):
                await store.append("inside")
            await store.append("after")

    run_async(main)
    assert [r.context for r in BlockStore(db).page()] == ["after"]


# -- callers that stop waiting -----------------------------------------------------------------


async def append_within(
    store: AsyncBlockStore, context: str, how: str, expire: asyncio.Event
) -> Any:
    if how == "cancel":
        return await store.append(context)
    # asyncio.timeout() with a deadline moved to now once the test says so.
    async with asyncio.timeout(None) as deadline:
        waiter = asyncio.ensure_future(expire.wait())
        waiter.add_done_callback(lambda _: deadline.reschedule(asyncio.get_running_loop().time()))
        try:
            return await store.append(context)
        finally:
            waiter.cancel()


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_stopping_before_the_append_is_taken_writes_nothing_and_after_writes_it(
    db: Database, how: str
) -> None:
    """The turn is held elsewhere, so the batch holding "taken" waits for it while "queued"
    stays in the queue. Both callers stop waiting; once the turn is free, "taken" is
    written (and its outcome logged at DEBUG) and "queued" is not."""
    stopped = (asyncio.CancelledError, TimeoutError)

    async def main() -> list[str]:
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)
            with debug_log() as log, turn_held(db) as release:
                expire_taken, expire_queued = asyncio.Event(), asyncio.Event()
                taken = asyncio.create_task(append_within(store, "taken", how, expire_taken))
                await until_writers_queue(db, 1)  # its batch waits for the turn
                assert queued(store) == 0
                late = asyncio.create_task(append_within(store, "queued", how, expire_queued))
                await eventually(lambda: queued(store) == 1, "the second append queued")
                for task, expire in ((late, expire_queued), (taken, expire_taken)):
                    if how == "cancel":
                        task.cancel()
                    else:
                        expire.set()
                    with pytest.raises(stopped):
                        await asyncio.wait_for(task, 30)
                assert queued(store) == 0  # withdrawn
                release.set()
                await eventually(lambda: log.matching("committed"), "the outcome logged")
            return log.matching("committed")

    logged = run_async(main)
    assert logged == [
        "append whose caller stopped waiting after it was taken into a batch was committed: block 0"
    ]
    assert [r.context for r in BlockStore(db).page()] == ["taken"]
    assert_chain_intact(db, 1)


def test_an_append_whose_batch_waits_for_the_turn_past_the_deadline_is_busy(make_db: Any) -> None:
    db = make_db(retry_deadline=0.5)

    async def main() -> BaseException | None:
        async with AsyncDatabase.wrap(db) as adb:
            with turn_held(db):
                try:
                    await AsyncBlockStore(adb).append("waits")
                except errors.DatabaseBusyError as exc:
                    return exc
        return None

    error = run_async(main)
    assert type(error) is errors.DatabaseBusyError
    assert "stayed busy" in str(error)
    assert BlockStore(db).count() == 0


def test_deadlines_a_queued_append_is_withdrawn_and_a_taken_one_times_out_then_is_logged(
    make_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch's write hangs: the append queued behind it is withdrawn at the
    deadline (DatabaseBusyError, never written); the one being written gives up at twice
    the deadline (CommitTimeoutError), is committed once the write goes on, and that is
    logged at DEBUG."""
    db = make_db(retry_deadline=0.5)
    write_chain = app.blocks.write_chain
    writing, leave = threading.Event(), threading.Event()

    def stuck(connection: Any, blocks: Any, *planned: Any) -> Any:
        writing.set()
        assert leave.wait(30)
        return write_chain(connection, blocks, *planned)

    monkeypatch.setattr(app.blocks, "write_chain", stuck)

    async def main() -> tuple[list[Any], list[str]]:
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)
            with debug_log() as log:
                taken = asyncio.create_task(store.append("taken"))
                await eventually(writing.is_set, "the first batch is being written")
                late = asyncio.create_task(store.append("queued"))
                outcomes = await asyncio.gather(taken, late, return_exceptions=True)
                leave.set()
                await eventually(lambda: log.matching("committed"), "the outcome logged")
                return outcomes, log.matching("committed")

    (taken, late), logged = run_async(main)
    assert type(late) is errors.DatabaseBusyError
    assert "it was not written" in str(late)
    assert type(taken) is errors.CommitTimeoutError
    assert "may still be committed" in str(taken)
    assert logged and logged[0].endswith("committed: block 0")
    assert [r.context for r in BlockStore(db).page()] == ["taken"]


# -- units and reads on the workers ------------------------------------------------------------


def test_units_run_on_a_few_worker_threads_never_on_the_loop(db: Database) -> None:
    make_counter_table(db)
    seen: set[int] = set()

    def increment(session: Session, by: int) -> int:
        seen.add(threading.get_ident())
        for _ in range(by):
            increment_counter(session)
        return by

    def read(session: Session) -> int:
        seen.add(threading.get_ident())
        return int(session.execute(text("SELECT value FROM counter")).scalar_one())

    async def main() -> tuple[list[int], int, int]:
        async with AsyncDatabase.wrap(db, workers=3) as adb:
            done = await asyncio.gather(*(adb.run(increment, 1) for _ in range(200)))
            value = await adb.read_run(read)
            return done, value, threading.get_ident()

    done, value, loop_thread = run_async(main)
    assert done == [1] * 200
    assert value == counter_value(db) == 200
    assert loop_thread not in seen
    assert 1 <= len(seen) <= 3


def test_a_failing_unit_rolls_back_alone_and_a_read_unit_refuses_writes(db: Database) -> None:
    make_counter_table(db)

    def fail(session: Session) -> None:
        increment_counter(session)
        raise KeyError("boom")

    def write_in_read(session: Session) -> None:
        session.execute(text("UPDATE counter SET value = 5"))
        session.flush()

    async def main() -> None:
        async with AsyncDatabase.wrap(db) as adb:
            with pytest.raises(KeyError):
                await adb.run(fail)
            await adb.run(increment_counter)
            with pytest.raises(errors.ReadOnlyUnitError):
                await adb.read_run(write_in_read)

    run_async(main)
    assert counter_value(db) == 1


def test_a_unit_cancelled_before_it_starts_never_runs_and_one_cancelled_after_runs_to_its_end(
    db: Database,
) -> None:
    make_counter_table(db)
    started, leave = threading.Event(), threading.Event()

    def slow(session: Session) -> str:
        started.set()
        assert leave.wait(30)
        increment_counter(session)
        return "slow done"

    async def main() -> list[str]:
        async with AsyncDatabase.wrap(db, workers=1) as adb:
            with debug_log() as log:
                running = asyncio.create_task(adb.run(slow))
                await eventually(started.is_set, "the first unit started")
                waiting = asyncio.create_task(adb.run(increment_counter))
                await asyncio.sleep(0)  # submitted behind the running one
                for task in (waiting, running):
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await asyncio.wait_for(task, 30)
                leave.set()
                await eventually(lambda: log.matching("finished"), "the outcome logged")
                return log.matching("not run") + log.matching("finished")

    logged = run_async(main)
    assert len(logged) == 2
    assert "cancelled before it started" in logged[0]
    assert "'slow done'" in logged[1]
    assert counter_value(db) == 1  # the running unit committed; the waiting one never ran


def test_a_call_waiting_for_a_worker_past_the_deadline_is_busy_and_never_runs(
    make_db: Any,
) -> None:
    db = make_db(retry_deadline=0.3)
    make_counter_table(db)
    started, leave = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        assert leave.wait(30)

    async def main() -> BaseException | None:
        async with AsyncDatabase.wrap(db, workers=1) as adb:
            blocker = asyncio.create_task(adb.offload(block))
            await eventually(started.is_set, "the only worker is busy")
            try:
                await adb.run(increment_counter)
            except errors.DatabaseBusyError as exc:
                return exc
            finally:
                leave.set()
                await blocker
        return None

    error = run_async(main)
    assert type(error) is errors.DatabaseBusyError
    assert "it was not run" in str(error)
    assert counter_value(db) == 0


def test_reads_give_what_the_sync_store_gives(db: Database) -> None:
    sync = BlockStore(db)
    for n in range(30):
        sync.append(
            f"note {n} about the garden" if n % 3 == 0 else f"note {n}",
            keywords=[f"k{n % 5}"],
            tags=["even" if n % 2 == 0 else "odd"],
            importance=n / 30,
            embedding=[1.0, float(n), 0.5],
        )

    async def main() -> dict[str, Any]:
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)
            return {
                "get": await store.get(7),
                "missing": await store.get(99),
                "recent": await store.recent(5),
                "keywords": await store.search_keywords(["garden", "k2"]),
                "tags": await store.search_tags(["odd"], limit=4),
                "similar": await store.similar([1.0, 3.0, 0.5], top_k=3),
                "page": await store.page(3, 9, order="desc"),
                "importance": await store.by_importance(0.5, limit=3),
                "head": await store.head(),
                "count": await store.count(),
                "check": await store.verify_chain(),
            }

    got = run_async(main)
    assert got == {
        "get": sync.get(7),
        "missing": None,
        "recent": sync.recent(5),
        "keywords": sync.search_keywords(["garden", "k2"]),
        "tags": sync.search_tags(["odd"], limit=4),
        "similar": sync.similar([1.0, 3.0, 0.5], top_k=3),
        "page": sync.page(3, 9, order="desc"),
        "importance": sync.by_importance(0.5, limit=3),
        "head": sync.head(),
        "count": 30,
        "check": sync.verify_chain(),
    }
    assert got["check"].ok and len(got["keywords"]) > 0


def test_every_read_of_the_block_store_has_an_async_counterpart() -> None:
    """A read added to BlockStore needs its line in AsyncBlockStore (``_offloaded``)."""
    writes = {"append", "append_many", "chain_batcher"}
    reads = {
        name
        for name, member in inspect.getmembers(BlockStore, inspect.isfunction)
        if not name.startswith("_") and name not in writes
    }
    missing = sorted(name for name in reads if not hasattr(AsyncBlockStore, name))
    assert missing == [], f"add `name = _offloaded(BlockStore.name)` to AsyncBlockStore: {missing}"
    for name in reads:
        assert inspect.iscoroutinefunction(getattr(AsyncBlockStore, name)), name


# -- lifetime and arguments --------------------------------------------------------------------


def test_an_owned_database_is_closed_with_it_and_a_wrapped_one_is_left_open(
    db_url: str, db: Database
) -> None:
    async def main() -> AsyncDatabase:
        async with await AsyncDatabase.open(db_url, workers=2) as owned:
            store = AsyncBlockStore(owned)
            await store.append("one")
        with pytest.raises(errors.ClosedError):
            await store.append("two")
        with pytest.raises(errors.ClosedError):
            await owned.run(increment_counter)
        async with AsyncDatabase.wrap(db) as wrapped:
            await AsyncBlockStore(wrapped).append("two")
        return owned

    owned = run_async(main)
    assert owned.closed and not db.closed
    assert [r.context for r in BlockStore(db).page()] == ["one", "two"]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "4"])
def test_bad_worker_counts_are_refused(sqlite_db: Database, workers: Any) -> None:
    with pytest.raises(errors.ConfigurationError, match="workers"):
        AsyncDatabase.wrap(sqlite_db, workers=workers)


def test_the_store_needs_an_async_database(sqlite_db: Database) -> None:
    with pytest.raises(errors.InvalidInputError, match=r"AsyncDatabase\.wrap"):
        AsyncBlockStore(sqlite_db)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidInputError, match=r"app\.Database"):
        AsyncDatabase.wrap("sqlite://")  # type: ignore[arg-type]


def test_the_batchers_helper_thread_ends_when_idle(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.blocks._append_batcher

    monkeypatch.setattr(app.blocks._append_batcher, "_HELPER_IDLE", 0.1)

    async def main() -> None:
        async with AsyncDatabase.wrap(db) as adb:
            await AsyncBlockStore(adb).append("one")

    run_async(main)
    helper = [t for t in threading.enumerate() if t.name.startswith("append leader")]
    for thread in helper:
        thread.join(30)
        assert not thread.is_alive()
    # And it comes back when needed.
    run_async(main)
    assert_chain_intact(db, 2)


def test_a_finished_event_loop_is_not_kept_alive(db: Database) -> None:
    """Nothing the layer keeps per loop (its inbox, its deadline queue) holds the loop, or
    the appends and results of its tasks, once the loop is gone."""
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)
            await asyncio.gather(*(store.append(f"b{n}") for n in range(50)))
            assert await store.count() == 50

    run_async(main)
    # The worker and the batcher's helper may still be returning from handing over the
    # last outcomes: freed soon, not at once.
    wait_until(lambda: gc.collect() >= 0 and loops[0]() is None, "the loop freed", timeout=30)


def test_appends_leave_no_reference_cycles_for_the_garbage_collector(db: Database) -> None:
    """An append's objects are freed by reference counting as soon as it is done, written
    or withdrawn: with a thousand tasks in flight, garbage left for the collector makes its
    passes longer, and each pass stops the event loop."""
    ours = (AppendRequest, Waiting, asyncio.Future)

    def left_for_the_collector() -> int:
        gc.collect()
        found = sum(isinstance(thing, ours) for thing in gc.garbage)
        gc.garbage.clear()
        return found

    async def main() -> tuple[int, int, int]:
        async with AsyncDatabase.wrap(db) as adb:
            store = AsyncBlockStore(adb)
            await store.append("warm up")
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what a pass would free is kept to be looked at
            try:
                await asyncio.gather(
                    *(
                        store.append(f"b{n}", keywords=["k"], metadata={"n": n}, embedding=[0.5])
                        for n in range(200)
                    )
                )
                written = left_for_the_collector()
                await asyncio.gather(
                    *(
                        store.append_many([{"context": f"m{n}"}, {"context": "x"}])
                        for n in range(50)
                    )
                )
                many = left_for_the_collector()
                with turn_held(db) as release:
                    taken = asyncio.create_task(store.append("taken"))
                    await until_writers_queue(db, 1)  # its batch waits for the turn
                    stopped = [asyncio.create_task(store.append(f"s{n}")) for n in range(20)]
                    await eventually(lambda: queued(store) == 20, "20 appends queued")
                    for task in stopped:
                        task.cancel()
                    await asyncio.gather(*stopped, return_exceptions=True)
                    assert queued(store) == 0  # withdrawn
                    release.set()
                    await taken
                withdrawn = left_for_the_collector()
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            return written, many, withdrawn

    assert run_async(main) == (0, 0, 0)
    assert_chain_intact(db, 1 + 200 + 100 + 1)
