"""Runs one benchmark case in its own process (``python -m benchmarks.harness._child`` with the case
as JSON on stdin), so its peak memory and open connections belong to that case alone.

Prints ``PROGRESS <units done>`` lines while running and one ``RESULT <json>`` line at the end.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from collections import Counter
from typing import Any

from ._strategies import strategy
from ._target import Target
from ._workload import Verdict, check_chain, check_counter, make_block, percentiles

# A sample reads the target of every open descriptor, so its cost grows with them (a
# writer waiting for its turn holds one on Linux): sampled at most this often.
_SAMPLE_EVERY = 0.1
_REPORT_EVERY = 0.1


class _Monitor(threading.Thread):
    """Samples how many descriptors are open on the database file, and reports progress."""

    def __init__(self, path: str, done: list[int]) -> None:
        super().__init__(name="bench-monitor", daemon=True)
        self.path = os.path.realpath(path)
        self.done = done
        self.peak: int | None = 0 if os.path.isdir("/proc/self/fd") else None
        self.stopping = threading.Event()
        self._peak_lock = threading.Lock()
        self._last_finish_sample = float("-inf")

    def sample_at_finish(self) -> None:
        """:meth:`sample` for a worker that has finished, unless another finished worker
        sampled less than ``_SAMPLE_EVERY`` ago: the first to finish sees every connection
        that the workers' threads hold still open."""
        now = time.monotonic()
        if now - self._last_finish_sample >= _SAMPLE_EVERY:
            self._last_finish_sample = now
            self.sample()

    def sample(self) -> None:
        if self.peak is None:
            return
        count = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}") == self.path:
                    count += 1
            except OSError:
                continue  # closed between listdir and readlink
        with self._peak_lock:  # workers sample too, as they finish
            self.peak = max(self.peak, count)

    def run(self) -> None:
        last_report = 0.0
        while not self.stopping.wait(_SAMPLE_EVERY):
            self.sample()
            if time.monotonic() - last_report >= _REPORT_EVERY:
                last_report = time.monotonic()
                print(f"PROGRESS {sum(self.done)}", flush=True)

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.sample()


def _share(units: int, threads: int, worker: int) -> int:
    return units // threads + (1 if worker < units % threads else 0)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run ``case`` (workload, strategy, threads, units, path) here and measure it."""
    item = strategy(case["workload"], case["strategy"])
    threads, units, path = int(case["threads"]), int(case["units"]), str(case["path"])
    limit = case.get("max_seconds")
    done = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failures: list[Counter[str]] = [Counter() for _ in range(threads)]
    examples: dict[str, str] = {}
    monitor = _Monitor(path, done)
    monitor.start()
    target: Target = item.factory(path)
    monitor.sample()
    barrier = threading.Barrier(threads + 1)
    deadline = [float("inf")]

    def work(worker: int) -> None:
        mine, errors = latencies[worker], failures[worker]
        count = _share(units, threads, worker)
        barrier.wait()
        try:
            for seq in range(count):
                if time.perf_counter() >= deadline[0]:
                    break  # out of time: the case reports what it did so far
                block = make_block(worker, seq)
                started = time.perf_counter()
                try:
                    target.unit(block)
                except Exception as exc:  # noqa: BLE001 - every failure is counted, not raised
                    kind = type(exc).__name__
                    errors[kind] += 1
                    examples.setdefault(kind, " ".join(str(exc).split())[:200])
                else:
                    mine.append(time.perf_counter() - started)
                done[worker] += 1
        finally:
            # A short case can end between two samples, and thread-local connections
            # close with their thread: count them while this one is still open.
            monitor.sample_at_finish()
            target.thread_done()

    workers = [threading.Thread(target=work, args=(w,), name=f"bench-{w}") for w in range(threads)]
    for thread in workers:
        thread.start()
    started = time.perf_counter()
    if limit is not None:
        deadline[0] = started + float(limit)
    barrier.wait()
    started = time.perf_counter()
    for thread in workers:
        thread.join()
    seconds = time.perf_counter() - started
    monitor.sample()
    target.close()
    monitor.stop()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        peak_rss //= 1024  # bytes there, KiB on Linux
    succeeded = sum(len(x) for x in latencies)
    errors: Counter[str] = sum(failures, Counter())
    verdict: Verdict = (check_chain if item.workload == "append" else check_counter)(
        path, succeeded
    )
    return {
        "attempted": sum(done),
        "ok": succeeded,
        "errors": sum(errors.values()),
        "error_kinds": {kind: [n, examples.get(kind, "")] for kind, n in errors.items()},
        "seconds": seconds,
        "latency": percentiles([x for chunk in latencies for x in chunk]),
        "intact": verdict.intact,
        "problem": verdict.problem,
        "peak_rss_kib": peak_rss,
        "peak_connections": monitor.peak,
    }


def main() -> None:
    case = json.loads(sys.stdin.read())
    result = run_case(case)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
