"""asyncio callers: app.aio against the sync API and asyncio.to_thread, and the example service.

Cases, each in its own process on a fresh SQLite file, side by side in one run:

- ``aio``: ``AsyncBlockStore.append`` by ``--tasks`` tasks, ``--appends`` each
- ``threads``: ``BlockStore.append`` by ``--threads`` threads (the same blocks)
- ``to-thread``: ``asyncio.to_thread(store.append, ...)`` by ``--tasks`` tasks
- ``service``: ``examples/memory_service.py`` under uvicorn, ``--clients`` concurrent httpx
  clients sending ``--requests`` POSTs each, then as many keyword searches (GET)

While the tasks run, a ticker task sleeps 1 ms at a time and records how late it wakes:
the event loop's lag (``ticker`` alone, first, shows the machine's own). ``threads`` is the
most threads the case's process had beyond its main thread. Every case's chain is checked
afterwards by the legacy formula without the library. ``--rounds N`` runs every case N
times, alternating the order, and reports each case's median run.

Run from the repository root (needs the ``examples`` extra for the service):
``python -m benchmarks.aio [--markdown] [--json-out FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from app import BlockStore, Database
from app.aio import AsyncBlockStore, AsyncDatabase
from app.operations.stress import make_block, now, percentiles

from .harness import check_chain

CASES = ("ticker", "aio", "threads", "to-thread", "service")
LABELS = {
    "ticker": "the 1 ms ticker alone (the loop idle)",
    "aio": "app.aio: await AsyncBlockStore.append",
    "threads": "sync: BlockStore.append from threads",
    "to-thread": "asyncio.to_thread(BlockStore.append)",
    "service": "example service (Starlette + uvicorn), httpx clients",
}
_TICK = 0.001
CASE_TIMEOUT = 600.0


# -- measuring, inside a case's process ----------------------------------------------------------


class Ticker:
    """Sleeps ``_TICK`` at a time on the running loop and records how late each wake-up is,
    and the most threads the process had meanwhile."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.base_threads = threading.active_count()
        self.peak_threads = self.base_threads
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            started = time.perf_counter()
            await asyncio.sleep(_TICK)
            self.lags.append(time.perf_counter() - started - _TICK)
            self.peak_threads = max(self.peak_threads, threading.active_count())

    async def stop(self) -> dict[str, Any]:
        self._stopping = True
        if self._task is not None:
            await self._task
        lag = percentiles(self.lags)
        return {
            "ticks": len(self.lags),
            "lag_p50": lag["p50"],
            "lag_p99": lag["p99"],
            "lag_max": lag["max"],
            "threads": self.peak_threads - 1,  # beyond the main thread, the loop's
        }


def _arguments(worker: int, sequence: int) -> dict[str, Any]:
    block = make_block(worker, sequence)
    return {
        "keywords": block.keywords,
        "tags": block.tags,
        "importance": block.importance,
        "metadata": block.metadata,
        "embedding": block.embedding,
        "timestamp": now(),
        "context": block.context,
    }


def _tally(
    latencies: list[float], failures: dict[str, int], seconds: float, ok: int, path: str | None
) -> dict[str, Any]:
    verdict = check_chain(path, ok) if path else None
    return {
        "ok": ok,
        "errors": sum(failures.values()),
        "error_kinds": failures,
        "seconds": seconds,
        "per_second": ok / seconds if seconds else 0.0,
        "latency": percentiles(latencies),
        "intact": None if verdict is None else verdict.intact,
        "problem": "" if verdict is None else verdict.problem,
    }


async def _tasks(
    count: int, appends: int, append: Callable[[dict[str, Any]], Awaitable[object]]
) -> tuple[list[float], dict[str, int], float]:
    latencies: list[float] = []
    failures: dict[str, int] = {}

    async def one(worker: int) -> None:
        for sequence in range(appends):
            arguments = _arguments(worker, sequence)
            started = time.perf_counter()
            try:
                await append(arguments)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            else:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(worker) for worker in range(count)))
    return latencies, failures, time.perf_counter() - started


def case_ticker(options: argparse.Namespace, path: str) -> dict[str, Any]:
    """The ticker alone for a second: the lag this machine gives an idle loop."""

    async def main() -> dict[str, Any]:
        ticker = Ticker()
        ticker.start()
        await asyncio.sleep(1.0)
        return {"loop": await ticker.stop()}

    return asyncio.run(main())


def case_aio(options: argparse.Namespace, path: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        ticker = Ticker()
        async with AsyncDatabase(f"sqlite:///{path}") as db:
            store = AsyncBlockStore(db)
            ticker.start()

            async def append(arguments: dict[str, Any]) -> object:
                return await store.append(arguments.pop("context"), **arguments)

            latencies, failures, seconds = await _tasks(options.tasks, options.appends, append)
            loop = await ticker.stop()
        result = _tally(latencies, failures, seconds, len(latencies), path)
        return {**result, "loop": loop, "workers": db.workers}

    return asyncio.run(main())


def case_to_thread(options: argparse.Namespace, path: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        ticker = Ticker()
        db = Database(f"sqlite:///{path}")
        store = BlockStore(db)
        ticker.start()

        async def append(arguments: dict[str, Any]) -> object:
            context = arguments.pop("context")
            return await asyncio.to_thread(store.append, context, **arguments)

        latencies, failures, seconds = await _tasks(options.tasks, options.appends, append)
        loop = await ticker.stop()
        db.dispose()
        return {**_tally(latencies, failures, seconds, len(latencies), path), "loop": loop}

    return asyncio.run(main())


def case_threads(options: argparse.Namespace, path: str) -> dict[str, Any]:
    db = Database(f"sqlite:///{path}")
    store = BlockStore(db)
    total = options.tasks * options.appends
    share, extra = divmod(total, options.threads)
    per_thread = [share + (worker < extra) for worker in range(options.threads)]
    latencies: list[list[float]] = [[] for _ in range(options.threads)]
    failures: dict[str, int] = {}
    barrier = threading.Barrier(options.threads + 1)

    def work(worker: int) -> None:
        barrier.wait()
        for sequence in range(per_thread[worker]):
            arguments = _arguments(worker, sequence)
            started = time.perf_counter()
            try:
                store.append(arguments.pop("context"), **arguments)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            else:
                latencies[worker].append(time.perf_counter() - started)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(options.threads)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    db.dispose()
    flat = [x for chunk in latencies for x in chunk]
    return {**_tally(flat, failures, seconds, len(flat), path), "threads": options.threads}


def case_service(options: argparse.Namespace, path: str) -> dict[str, Any]:
    from ._service import drive, running_service

    async def post(client: Any, number: int, sequence: int) -> Any:
        arguments = _arguments(number, sequence)
        arguments.pop("timestamp")
        arguments["keywords"] = list(arguments["keywords"])
        arguments["tags"] = list(arguments["tags"])
        return await client.post("/memories", json=arguments)

    async def search(client: Any, number: int, sequence: int) -> Any:
        return await client.get("/memories/search", params={"q": f"w{number}", "limit": 10})

    with running_service(f"sqlite:///{path}", log_path=path + ".log") as server:
        posts = asyncio.run(drive(server.url, options.clients, options.requests, post, 201))
        gets = asyncio.run(drive(server.url, options.clients, options.requests, search, 200))
        server_threads = server.threads()
    phases = {}
    for name, phase in (("post", posts), ("get", gets)):
        phases[name] = {
            "requests": phase.requests,
            "ok": len(phase.latencies),
            "errors": phase.errors,
            "error_kinds": phase.failures,
            "seconds": phase.seconds,
            "per_second": len(phase.latencies) / phase.seconds if phase.seconds else 0.0,
            "latency": percentiles(phase.latencies),
        }
    verdict = check_chain(path, len(posts.latencies))
    return {
        "phases": phases,
        "intact": verdict.intact,
        "problem": verdict.problem,
        "server_threads": None if server_threads is None else server_threads - 1,
    }


RUNNERS: dict[str, Callable[[argparse.Namespace, str], dict[str, Any]]] = {
    "ticker": case_ticker,
    "aio": case_aio,
    "threads": case_threads,
    "to-thread": case_to_thread,
    "service": case_service,
}


# -- the front-end -----------------------------------------------------------------------------


def _options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="appending tasks (default 1000)")
    parser.add_argument("--appends", type=int, default=5, help="appends per task (default 5)")
    parser.add_argument("--threads", type=int, default=100, help="sync threads (default 100)")
    parser.add_argument("--clients", type=int, default=200, help="service clients (default 200)")
    parser.add_argument(
        "--requests", type=int, default=10, help="per client and phase (default 10)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of every case (default 1)")
    parser.add_argument(
        "--case", dest="cases", action="append", choices=CASES, help="only these (repeatable)"
    )
    parser.add_argument("--json-out", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--child", metavar="CASE", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    for name in ("tasks", "appends", "threads", "clients", "requests", "rounds"):
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return options


def run_case(case: str, options: argparse.Namespace) -> dict[str, Any]:
    """Run ``case`` in a new process on a new file; its result (``failed`` when it could not
    finish, with why)."""
    with tempfile.TemporaryDirectory(prefix="bench-aio-") as directory:
        path = os.path.join(directory, "memory.db")
        command = [sys.executable, "-m", "benchmarks.aio", "--child", case, "--path", path]
        for name in ("tasks", "appends", "threads", "clients", "requests"):
            command += [f"--{name}", str(getattr(options, name))]
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=CASE_TIMEOUT, cwd=root
            )
        except subprocess.TimeoutExpired:
            return {"case": case, "failed": f"still running after {CASE_TIMEOUT:.0f}s"}
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                return {"case": case, **json.loads(line[len("RESULT ") :])}
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"case": case, "failed": f"exit {done.returncode}: {why}"}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def speed(run: dict[str, Any]) -> float:
        if "phases" in run:
            return float(run["phases"]["post"]["per_second"])
        return float(run.get("per_second", run.get("loop", {}).get("lag_p99") or 0.0))

    usable = [run for run in runs if "failed" not in run] or runs
    ordered = sorted(usable, key=speed)
    return ordered[(len(ordered) - 1) // 2] if "failed" not in ordered[0] else ordered[0]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The table's rows: one per append case, two for the service (POST, GET)."""
    base = {key: results.get(key, {}).get("per_second") for key in ("threads", "to-thread")}

    def ratio(value: float, key: str) -> str:
        other = base.get(key)
        return f"{value / other:.2f}" if other else "-"

    table = []
    for case, result in results.items():
        if "failed" in result:
            table.append([case, "failed: " + result["failed"], *[""] * 10])
            continue
        loop = result.get("loop", {})
        lag = [_ms(loop.get("lag_p99")), _ms(loop.get("lag_max"))] if loop else ["-", "-"]
        threads = str(loop.get("threads", result.get("threads", "-")))
        if case == "ticker":
            table.append([case, *["-"] * 8, *lag, threads])
            continue
        chain = "intact" if result["intact"] else f"BROKEN: {result['problem']}"
        if case == "service":
            for name, phase in result["phases"].items():
                latency = phase["latency"]
                table.append(
                    [
                        f"service {name.upper()}",
                        f"{phase['ok']:,}",
                        f"{phase['per_second']:,.0f}",
                        "-",
                        "-",
                        _ms(latency["p50"]),
                        _ms(latency["p99"]),
                        str(phase["errors"]),
                        chain if name == "post" else "-",
                        "-",
                        "-",
                        str(result.get("server_threads", "-")),
                    ]
                )
            continue
        latency = result["latency"]
        speed = float(result["per_second"])
        table.append(
            [
                case,
                f"{result['ok']:,}",
                f"{speed:,.0f}",
                ratio(speed, "threads"),
                ratio(speed, "to-thread"),
                _ms(latency["p50"]),
                _ms(latency["p99"]),
                str(result["errors"]),
                chain,
                *lag,
                threads,
            ]
        )
    return table


HEADERS = [
    "case",
    "done",
    "per s",
    "x threads",
    "x to-thread",
    "p50 ms",
    "p99 ms",
    "errors",
    "chain",
    "lag p99 ms",
    "lag max ms",
    "threads",
]


def goals(results: dict[str, dict[str, Any]]) -> list[tuple[str, bool]]:
    """The design's goals for app.aio, each with whether this run met it."""
    mine = results.get("aio")
    if mine is None or "failed" in mine:
        return [("app.aio ran", False)]
    checks = [
        (
            f"aio: zero errors ({mine['errors']}) and an intact chain",
            mine["errors"] == 0 and bool(mine["intact"]),
        ),
        (
            f"aio: event-loop lag p99 {_ms(mine['loop']['lag_p99'])} ms (<= 5 ms)",
            (mine["loop"]["lag_p99"] or 0.0) <= 0.005,
        ),
        (
            f"aio: {mine['loop']['threads']} threads beyond the loop's "
            f"(<= workers + 1 = {mine['workers'] + 1}) for {mine['ok']:,} appends",
            mine["loop"]["threads"] <= mine["workers"] + 1,
        ),
    ]
    for key, wanted in (("threads", 0.9), ("to-thread", 4.0)):
        other = results.get(key)
        if other is None or "failed" in other or not other["per_second"]:
            continue
        ratio = mine["per_second"] / other["per_second"]
        checks.append(
            (f"aio: {ratio:.2f} x the throughput of {key} (>= {wanted:g})", ratio >= wanted)
        )
    return checks


def main(argv: list[str] | None = None) -> None:
    options = _options(argv)
    if options.child:
        result = RUNNERS[options.child](options, options.path)
        print("RESULT " + json.dumps(result), flush=True)
        return
    cases = [case for case in CASES if not options.cases or case in options.cases]
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    console = Console(highlight=False)
    for round_ in range(options.rounds):
        order = cases if round_ % 2 == 0 else cases[::-1]
        for case in order:
            console.print(f"round {round_ + 1}/{options.rounds}: {case}", style="dim")
            runs[case].append(run_case(case, options))
    results = {case: _median_run(runs[case]) for case in cases}
    table = Table(title=f"asyncio appends: {options.tasks:,} tasks x {options.appends}")
    for header in HEADERS:
        table.add_column(header)
    body = rows(results)
    for row in body:
        table.add_row(*row)
    console.print(table)
    for case in cases:
        console.print(f"  {case}: {LABELS[case]}")
    for goal, met in goals(results):
        console.print(f"[{'green' if met else 'red'}]{'met' if met else 'not met'}[/] {goal}")
    if options.markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for row in body:
            print("| " + " | ".join(row) + " |")
        print()
        for case in cases:
            print(f"- `{case}`: {LABELS[case]}")
    if options.json_out:
        with open(options.json_out, "w") as out:
            json.dump({"options": vars(options), "runs": runs, "results": results}, out, indent=2)
        console.print(f"results written to {options.json_out}")


if __name__ == "__main__":
    main(sys.argv[1:])
