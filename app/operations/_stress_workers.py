"""The appending side of ``app stress``: threads in this process, or processes of threads
(started with ``spawn``, so no connection crosses a fork), each appending its share of the
blocks through :meth:`BlockStore.append` and timing every append."""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from app.blocks import BlockStore
from app.database import Database
from app.errors import DatabaseUnavailableError
from app.operations._stress_blocks import make_block, now

#: Longest the appending threads and processes wait for one another to start.
START_TIMEOUT = 60.0
#: Stress blocks carry their own embedding model, so embedding searches compare only with
#: them whatever else the database holds.
EMBEDDING_MODEL = "stress"
#: The tag every stress block carries.
TAG = "stress"


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
    stop: Any,
) -> _Tally:
    """Append ``blocks`` blocks from ``threads`` threads; return once all are done, or once
    ``stop`` is set (each thread ends after its current append).

    An interruption of the calling thread (Ctrl-C) sets ``stop`` and waits for the threads
    to end before it goes on: the run stops at once instead of finishing every append.
    """
    tally = _Tally()
    barrier = threading.Barrier(threads)

    def work(worker: int, count: int) -> None:
        mine: list[float] = []
        failed: Counter[str] = Counter()
        try:
            barrier.wait(START_TIMEOUT)
        except threading.BrokenBarrierError:
            return  # stopped before the start
        for seq in range(count):
            if stop.is_set():
                break
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
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()  # bounded: each append gives up at retry_deadline
    except BaseException:
        stop.set()
        barrier.abort()
        for thread in workers:
            if thread.ident is not None:
                thread.join()  # bounded: each ends after its current append
        raise
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
    stop: Any,
) -> None:
    """One appending process (started with ``spawn``: no connection crosses ``fork``).

    Ctrl-C reaches every process of the terminal's group: this one was started ignoring it
    (see in_processes) and leaves it to the parent, which sets ``stop``: no traceback per
    process, and the run ends at once."""
    with Database(url) as db:
        store = BlockStore(db)
        ready.put(True)
        deadline = time.monotonic() + START_TIMEOUT
        while not start.wait(0.1):
            if stop.is_set() or time.monotonic() > deadline:
                return  # stopped, or the parent went away: nothing to do

        def tick() -> None:
            with counter.get_lock():
                counter.value += 1

        tally = _append_threads(store, threads, blocks, first_worker, tick, run_id, stop)
        if stop.is_set():
            results.cancel_join_thread()  # nobody reads the results of a stopped run
            return
        results.put((tally.latencies, dict(tally.errors), asdict(db.stats())))


def merge_stats(all_stats: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for item in all_stats:
        for name, value in item.items():
            if not isinstance(value, int | float):
                continue  # each replica's record: they belong to one process each
            if name == "write_wait_max":
                merged[name] = max(merged.get(name, 0.0), value)
            else:
                merged[name] = merged.get(name, 0) + value
    return merged


def in_process(
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
        tally = _append_threads(store, threads, blocks, 0, tick, run_id, threading.Event())
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


def in_processes(
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
    start, stop = context.Event(), context.Event()
    shares = [blocks // processes + (1 if i < blocks % processes else 0) for i in range(processes)]
    children = [
        context.Process(
            target=_process_main,
            args=(
                url,
                threads,
                shares[i],
                i * threads,
                counter,
                ready,
                start,
                results,
                run_id,
                stop,
            ),
            name=f"stress-{i}",
        )
        for i in range(processes)
    ]
    # Started with Ctrl-C ignored, which they keep from their first instruction: the parent
    # alone handles it, and stops them (see _process_main).
    main = threading.current_thread() is threading.main_thread()  # signal() needs it
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for child in children:
            child.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)
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
    except BaseException:
        stop.set()  # an interruption (Ctrl-C): every process ends after its current appends
        raise
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    return latencies, failures, stats, seconds


def _wait_ready(ready: Any, children: list[Any]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
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
