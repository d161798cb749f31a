"""A service's months in an hour: the example service, and a load that opens objects per
request, swallows failed statements on ``conn``, holds read snapshots, re-embeds, and
migrates the schema half-way (see ``_soak_load``), for a chosen time.

Every ``--interval`` seconds it samples the service's process and the load's own (which
opens and closes the per-request objects): resident memory, open descriptors, threads;
and the WAL file, the requests done, the appends' p99 latency, and the errors. At the end:
the chain checked, and the goals: after the warm-up, memory grown by less than 10 MiB and
descriptors and threads flat in both processes; no error but the ones the load provokes;
the chain intact.

    python -m benchmarks.soak --seconds 3600 --plot soak.png --json-out soak.json

Run from the root of a clone with the ``examples`` extra (Starlette, uvicorn, httpx).
Linux only: processes are sampled through /proc.
"""

from __future__ import annotations

import _sqlite3
import argparse
import ctypes
import json
import logging
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from app import BlockStore, Database

from ._service import running_service
from ._soak_load import Load

MIB = 1024 * 1024
#: After the warm-up, what counts as flat: memory grown by less than this, descriptors and
#: threads by at most these (pools and helpers come and go by a few).
RSS_GROWTH_MIB = 10.0
FD_SLACK = 8
THREAD_SLACK = 2


@dataclass
class Sample:
    seconds: float
    service_rss: float
    service_fds: int
    service_threads: int
    load_rss: float
    load_fds: int
    load_threads: int
    load_cache: float  # MiB of it the similarity cache holds (it grows with the data)
    load_sqlite: float  # MiB SQLite's own allocator holds in it: page caches, statements
    wal_mib: float
    requests: int
    append_p99_ms: float | None
    errors: int
    provoked: int


def process_figures(pid: int) -> tuple[float, int, int]:
    """Resident MiB, open descriptors and threads of process ``pid`` (Linux /proc)."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads


def _sqlite_status() -> Callable[[], float]:
    """A reader of what SQLite's allocator holds in this process (``sqlite3_status64``), in
    MiB: each connection's page cache fills up to ``cache_size`` as the file grows. A
    reader of 0.0 where the library does not keep the figure or cannot be reached."""
    try:
        library = ctypes.CDLL(_sqlite3.__file__)
        status = library.sqlite3_status64
    except (OSError, AttributeError):
        return lambda: 0.0
    status.argtypes = [ctypes.c_int, *[ctypes.POINTER(ctypes.c_int64)] * 2, ctypes.c_int]
    status.restype = ctypes.c_int

    def used() -> float:
        current, highest = ctypes.c_int64(), ctypes.c_int64()
        if status(_SQLITE_STATUS_MEMORY_USED, ctypes.byref(current), ctypes.byref(highest), 0):
            return 0.0
        return current.value / MIB

    return used


_SQLITE_STATUS_MEMORY_USED = 0
sqlite_heap_mib = _sqlite_status()


def wal_size(url: str) -> float:
    path = _sqlite_path(url)
    if path is None:
        return 0.0
    try:
        return os.path.getsize(path + "-wal") / MIB
    except OSError:
        return 0.0


def _sqlite_path(url: str) -> str | None:
    from app import Settings

    return Settings(url=url).sqlite_path


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


class _Warnings(logging.Handler):
    """The layer's warnings in the load's process, counted by kind instead of printed (a
    writer that waited past slow_wait_threshold, say): the run's table stays readable."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        kind = str(record.msg)
        self.counts[kind] += 1
        self.examples.setdefault(kind, record.getMessage()[:300])


def run(url: str, seconds: float, interval: float, width: int, console: Console) -> dict[str, Any]:
    with Database(url, auto_upgrade=True) as db:  # the schema, before the service starts
        BlockStore(db).append("the soak's first block", keywords=["garden"])
    samples: list[Sample] = []
    warnings = _Warnings()
    layer = logging.getLogger("app")
    layer.addHandler(warnings)
    layer.propagate = False
    try:
        with running_service(url) as server:
            load = _run_load(url, server, seconds, interval, width, console, samples)
    finally:
        layer.removeHandler(warnings)
        layer.propagate = True
    with Database(url) as db:
        store = BlockStore(db)
        check = store.verify_chain()
        blocks = store.count()
    tally = load.tally
    return {
        "url": url,
        "seconds": seconds,
        "samples": [asdict(s) for s in samples],
        "done": dict(tally.done),
        "errors": dict(tally.errors),
        "provoked": dict(tally.provoked),
        "examples": tally.examples,
        "warnings": {warnings.examples[kind]: n for kind, n in warnings.counts.items()},
        "blocks": blocks,
        "chain": str(check),
        "chain_intact": check.ok,
    }


def _run_load(
    url: str,
    server: Any,
    seconds: float,
    interval: float,
    width: int,
    console: Console,
    samples: list[Sample],
) -> Load:
    """The load for ``seconds``, sampled every ``interval`` (a line printed per sample)."""
    load = Load(url, server.url, seconds, width)
    started = time.monotonic()
    load.start()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            time.sleep(min(interval, max(0.0, seconds - elapsed)))
            samples.append(_sample(server.process.pid, url, load, started))
            last = samples[-1]
            p99_ms = "-" if last.append_p99_ms is None else f"{last.append_p99_ms:.0f}"
            console.print(
                f"{last.seconds:6.0f}s service {last.service_rss:5.1f}M "
                f"{last.service_fds}fd {last.service_threads}thr | load "
                f"{last.load_rss:5.1f}M ({last.load_cache:.1f}M cache, "
                f"{last.load_sqlite:.1f}M sqlite) {last.load_fds}fd "
                f"{last.load_threads}thr | WAL {last.wal_mib:4.1f}M | {last.requests} done, "
                f"append p99 {p99_ms}ms, errors {last.errors}",
                highlight=False,
                soft_wrap=True,
            )
    finally:
        load.stop()
    return load


def _sample(pid: int, url: str, load: Load, started: float) -> Sample:
    service = process_figures(pid)
    own = process_figures(os.getpid())
    tally = load.tally
    with tally.lock:
        done, failed, provoked = (
            sum(tally.done.values()),
            sum(tally.errors.values()),
            sum(tally.provoked.values()),
        )
    return Sample(
        time.monotonic() - started,
        *service,
        *own,
        load.cache_mib(),
        sqlite_heap_mib(),
        wal_size(url),
        done,
        p99(tally.take_latencies()),
        failed,
        provoked,
    )


def goals(result: dict[str, Any], warmup: float) -> list[tuple[str, bool, str]]:
    """The soak's goals, each with whether it was met and the figures that say so."""
    after = [s for s in result["samples"] if s["seconds"] >= warmup]
    checks: list[tuple[str, bool, str]] = []
    if len(after) < 2:
        return [("enough samples after the warm-up", False, f"{len(after)} samples")]
    third = max(1, len(after) // 3)
    head, tail = after[:third], after[-third:]
    for who in ("service", "load"):
        # The similarity cache grows with the embeddings it holds, which is data, not churn.
        cache = f"{who}_cache"
        grown = statistics.median(s[f"{who}_rss"] - s.get(cache, 0.0) for s in tail) - (
            statistics.median(s[f"{who}_rss"] - s.get(cache, 0.0) for s in head)
        )
        label = "memory less its similarity cache" if who == "load" else "memory"
        checks.append(
            (
                f"{who}: {label} flat (< {RSS_GROWTH_MIB:.0f} MiB)",
                grown < RSS_GROWTH_MIB,
                f"{grown:+.1f} MiB",
            )
        )
        for figure, slack in (("fds", FD_SLACK), ("threads", THREAD_SLACK)):
            first = max(s[f"{who}_{figure}"] for s in head)
            last = max(s[f"{who}_{figure}"] for s in tail)
            checks.append(
                (f"{who}: {figure} flat (<= +{slack})", last <= first + slack, f"{first} -> {last}")
            )
    unexpected = sum(result["errors"].values())
    shown = ", ".join(f"{k} {v}" for k, v in result["errors"].items()) or "none"
    checks.append(("no error but the provoked ones", unexpected == 0, shown))
    checks.append(("chain intact", bool(result["chain_intact"]), result["chain"]))
    return checks


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    minutes = [s["seconds"] / 60 for s in samples]
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    panels = [
        ("resident memory (MiB)", "rss"),
        ("open descriptors", "fds"),
        ("threads", "threads"),
    ]
    for axis, (title, key) in zip(axes.flat, panels, strict=False):
        for who in ("service", "load"):
            axis.plot(minutes, [s[f"{who}_{key}"] for s in samples], label=who)
        if key == "rss":  # the goal's figure: the cache grows with the data, not with churn
            less = [s["load_rss"] - s["load_cache"] for s in samples]
            axis.plot(minutes, less, "--", label="load less its similarity cache")
        axis.set_title(title)
        axis.set_ylim(bottom=0)
        axis.legend()
    last = axes.flat[3]
    last.plot(minutes, [s["wal_mib"] for s in samples], label="WAL (MiB)")
    last.plot(minutes, [s["append_p99_ms"] or 0 for s in samples], label="append p99 (ms)")
    last.set_title("WAL size and append latency")
    last.set_ylim(bottom=0)
    last.legend()
    for axis in axes[1]:
        axis.set_xlabel("minutes")
    figure.suptitle(f"soak: {result['url']}, {result['seconds'] / 60:.0f} minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="how long (default 600)")
    parser.add_argument(
        "--interval", type=float, help="seconds between samples (default: 1/60 of the run, 1 to 60)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before memory must be flat (default: a tenth, at least 20)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="threads per kind of load (default 2)"
    )
    parser.add_argument("--url", help="the database (default: a new SQLite file of its own)")
    parser.add_argument("--json-out", help="write the samples and the outcome as JSON")
    parser.add_argument("--plot", help="draw the samples into a PNG file")
    options = parser.parse_args(argv)
    interval = options.interval or min(60.0, max(1.0, options.seconds / 60))
    warmup = options.warmup if options.warmup is not None else max(20.0, options.seconds / 10)
    console = Console(highlight=False)
    with tempfile.TemporaryDirectory(prefix="app-soak-") as folder:
        url = options.url or f"sqlite:///{Path(folder) / 'soak.db'}"
        console.print(f"soak: {options.seconds:.0f}s on {url}, a sample every {interval:.0f}s")
        result = run(url, options.seconds, interval, options.threads, console)
    result["goals"] = [
        {"goal": goal, "met": met, "figures": figures}
        for goal, met, figures in goals(result, warmup)
    ]
    table = Table("goal", "met", "figures", title="soak goals (after the warm-up)")
    for goal in result["goals"]:
        table.add_row(goal["goal"], "yes" if goal["met"] else "NO", goal["figures"])
    console.print(table)
    console.print(f"done: {json.dumps(result['done'])}")
    console.print(f"provoked (expected): {json.dumps(result['provoked'])}")
    for example, count in result["warnings"].items():
        console.print(f"logged {count} times, for example: {example}")
    for name, example in result["examples"].items():
        console.print(f"  {name}: {example}")
    if options.json_out:
        Path(options.json_out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    if options.plot:
        plot(result, options.plot)
        console.print(f"chart: {options.plot}")
    return 0 if all(goal["met"] for goal in result["goals"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
