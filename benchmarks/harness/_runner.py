"""Runs benchmark cases, each on a fresh database file in a fresh process, and gathers results."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from app.database import Database

from ._strategies import FLOOR, strategy, unavailable

#: Thread counts and units per case that fit a laptop (the whole default run in ~2 minutes).
DEFAULT_THREADS = (1, 10, 100)
DEFAULT_UNITS = 2000
DEFAULT_MAX_SECONDS = 15.0
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Case:
    """One strategy at one thread count: ``units`` units of work shared by ``threads`` threads,
    stopped early (no new unit starts) after ``max_seconds`` when set."""

    workload: str
    strategy: str
    threads: int
    units: int
    max_seconds: float | None = None


@dataclass
class CaseResult:
    """What one case measured. Times are in seconds; ``None`` where nothing was measured."""

    workload: str
    strategy: str
    label: str
    threads: int
    units: int
    attempted: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    throughput: float = 0.0
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    intact: bool | None = None
    problem: str = ""
    peak_rss_mib: float | None = None
    peak_connections: int | None = None
    vs_one_thread: float | None = None
    vs_floor: float | None = None
    skipped: str = ""
    rounds: int = 1  # runs of the case this result is the median of

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressFn = Callable[[Case, int], None]


def default_cases(
    strategies: Iterable[str],
    *,
    workload: str = "append",
    threads: Sequence[int] = DEFAULT_THREADS,
    units: int = DEFAULT_UNITS,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> list[Case]:
    """Every strategy at every thread count, thread counts in the outer loop."""
    keys = list(strategies)
    for key in keys:
        strategy(workload, key)  # fail early on a typo
    return [Case(workload, key, n, units, max_seconds) for n in threads for key in keys]


def run_cases(
    cases: Sequence[Case],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_start: Callable[[Case], None] | None = None,
    on_progress: ProgressFn | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
    directory: str | None = None,
) -> list[CaseResult]:
    """Run ``cases`` one after another and return their results, ratios filled in.

    Args:
        timeout: seconds a case may take before its process is killed (reported as an error).
        on_start, on_progress, on_result: callbacks for a progress display.
        directory: where the case files go (a temporary directory by default; removed).
    """
    results = []
    with workspace(directory) as root:
        templates: dict[str, str] = {}
        for number, case in enumerate(cases):
            if on_start is not None:
                on_start(case)
            item = strategy(case.workload, case.strategy)
            reason = unavailable(item)
            if reason is not None:
                result = CaseResult(
                    case.workload, case.strategy, item.label, case.threads, case.units
                )
                result.skipped = reason
            else:
                if case.workload not in templates:
                    templates[case.workload] = _template(root, case.workload)
                case_dir = os.path.join(root, f"case-{number:03d}")
                os.mkdir(case_dir)
                path = os.path.join(case_dir, "memory.db")
                if not item.own_schema:
                    shutil.copyfile(templates[case.workload], path)
                try:
                    result = _run_child(case, item.label, path, timeout, on_progress)
                finally:
                    shutil.rmtree(case_dir, ignore_errors=True)
            results.append(result)
            if on_result is not None:
                on_result(result)
    add_ratios(results)
    return results


@contextmanager
def workspace(directory: str | None, prefix: str = "app-bench-") -> Iterator[str]:
    """``directory`` (made if missing, kept), or a temporary one removed afterwards."""
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        yield root


def _template(root: str, workload: str) -> str:
    """An empty database at the current schema revision, copied for every case."""
    path = os.path.join(root, f"template-{workload}.db")
    # Closing the last connection checkpoints the WAL into the file, so one file is a copy.
    Database(f"sqlite:///{path}", auto_upgrade=True).dispose()
    return path


_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_child(
    case: Case, label: str, path: str, timeout: float, on_progress: ProgressFn | None
) -> CaseResult:
    result = CaseResult(case.workload, case.strategy, label, case.threads, case.units)
    spec = {**asdict(case), "path": path}
    # The child runs in the case's own directory; the repository root goes on its path so
    # that it imports this harness wherever the benchmark was started from.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (_REPOSITORY, env.get("PYTHONPATH"))))
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.harness._child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(path),
        env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    try:
        process.stdin.write(json.dumps(spec))
        process.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once; its stderr, read below, says why
    lines: queue.Queue[str | None] = queue.Queue()
    # The last lines of stderr explain a crash; older ones are dropped so a chatty
    # strategy (one log line per failed append) cannot fill memory or block on the pipe.
    tail: deque[str] = deque(maxlen=20)
    readers = [
        threading.Thread(target=_pump_lines, args=(process.stdout, lines), daemon=True),
        threading.Thread(target=_pump_tail, args=(process.stderr, tail), daemon=True),
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    payload: dict[str, Any] | None = None
    while True:
        try:
            line = lines.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
        except queue.Empty:
            if time.monotonic() >= deadline:
                process.kill()
                process.wait()
                result.errors = case.units
                result.problem = f"timed out after {timeout:g}s"
                return result
            continue
        if line is None:
            break
        if line.startswith("PROGRESS ") and on_progress is not None:
            on_progress(case, int(line.split()[1]))
        elif line.startswith("RESULT "):
            payload = json.loads(line[len("RESULT ") :])
    process.wait()
    for reader in readers:
        reader.join()
    if payload is None:
        last = next((x for x in reversed(tail) if x.strip()), f"exit code {process.returncode}")
        result.problem = f"case failed: {last.strip()[:300]}"
        result.errors = case.units
        return result
    _fill(result, payload)
    return result


def _pump_lines(stream: IO[str], out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put(None)


def _pump_tail(stream: IO[str], tail: deque[str]) -> None:
    for line in stream:
        tail.append(line.rstrip("\n"))


def _fill(result: CaseResult, payload: dict[str, Any]) -> None:
    result.attempted = payload["attempted"]
    result.ok = payload["ok"]
    result.errors = payload["errors"]
    result.error_kinds = payload["error_kinds"]
    result.seconds = payload["seconds"]
    result.throughput = result.ok / result.seconds if result.seconds > 0 else 0.0
    result.p50 = payload["latency"]["p50"]
    result.p99 = payload["latency"]["p99"]
    result.max = payload["latency"]["max"]
    result.intact = payload["intact"]
    result.problem = payload["problem"]
    result.peak_rss_mib = round(payload["peak_rss_kib"] / 1024, 1)
    result.peak_connections = payload["peak_connections"]


def median_of_rounds(rounds: Sequence[Sequence[CaseResult]]) -> list[CaseResult]:
    """One result per case from several rounds of the same cases: throughput, p50, p99 and
    max are each the median over the rounds, errors and units are summed, the check holds
    only if it held in every round. A noisy machine moves single runs by 15-30%; a median
    of alternating rounds is what a comparison should rest on."""
    merged: list[CaseResult] = []
    by_case: dict[tuple[str, str, int], list[CaseResult]] = {}
    for results in rounds:
        for r in results:
            by_case.setdefault((r.workload, r.strategy, r.threads), []).append(r)
    for runs in by_case.values():
        first = runs[0]
        result = CaseResult(first.workload, first.strategy, first.label, first.threads, first.units)
        skipped = [r.skipped for r in runs if r.skipped]
        if skipped:
            result.skipped = skipped[0]
            merged.append(result)
            continue
        result.rounds = len(runs)
        result.attempted = sum(r.attempted for r in runs)
        result.ok = sum(r.ok for r in runs)
        result.errors = sum(r.errors for r in runs)
        for r in runs:
            for kind, (count, example) in r.error_kinds.items():
                seen = result.error_kinds.setdefault(kind, [0, example])
                seen[0] += count
        result.seconds = sum(r.seconds for r in runs)
        result.throughput = _median([r.throughput for r in runs]) or 0.0
        result.p50 = _median([r.p50 for r in runs])
        result.p99 = _median([r.p99 for r in runs])
        result.max = _median([r.max for r in runs])
        result.intact = (
            all(r.intact for r in runs) if all(r.intact is not None for r in runs) else None
        )
        result.problem = next((r.problem for r in runs if r.problem), "")
        rss = [r.peak_rss_mib for r in runs if r.peak_rss_mib is not None]
        result.peak_rss_mib = max(rss) if rss else None
        conns = [r.peak_connections for r in runs if r.peak_connections is not None]
        result.peak_connections = max(conns) if conns else None
        merged.append(result)
    return merged


def _median(values: Sequence[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


def add_ratios(results: Sequence[CaseResult]) -> None:
    """Fill ``vs_one_thread`` (against the same strategy's fewest-threads case) and
    ``vs_floor`` (against the workload's floor strategy at the same thread count)."""
    measured = [r for r in results if not r.skipped and r.throughput > 0]
    base: dict[tuple[str, str], CaseResult] = {}
    floor: dict[tuple[str, int], CaseResult] = {}
    for r in measured:
        key = (r.workload, r.strategy)
        if key not in base or r.threads < base[key].threads:
            base[key] = r
        if FLOOR.get(r.workload) == r.strategy:
            floor[(r.workload, r.threads)] = r
    for r in measured:
        r.vs_one_thread = r.throughput / base[(r.workload, r.strategy)].throughput
        reference = floor.get((r.workload, r.threads))
        if reference is not None:
            r.vs_floor = r.throughput / reference.throughput
