"""The one front-end of the benchmarks: options, a progress bar, the table, JSON, the chart.

``python -m benchmarks`` runs every strategy of a workload; ``python -m benchmarks.append``
and ``python -m benchmarks.session_layer`` run a chosen few and check the design's goals.
Run them from the root of a clone (they are not part of the installed package).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .harness import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_THREADS,
    DEFAULT_TIMEOUT,
    DEFAULT_UNITS,
    STRATEGIES,
    Case,
    CaseResult,
    add_ratios,
    chart_title,
    default_cases,
    markdown_table,
    median_of_rounds,
    plot,
    print_report,
    run_cases,
    write_json,
)

#: A goal's line and whether it is met; None: a figure reported beside the goals.
Check = tuple[str, bool | None]
Goals = Callable[[list[CaseResult]], list[Check]]
RoundGoals = Callable[[list[list[CaseResult]]], list[Check]]


def _thread_counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            "give thread counts separated by commas, e.g. 1,10,100"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("thread counts must be whole numbers >= 1")
    return counts


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def arguments(
    description: str,
    *,
    threads: Sequence[int] = DEFAULT_THREADS,
    units: int = DEFAULT_UNITS,
    choose: bool = False,
    telemetry: bool = False,
    rounds: int = 1,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    """Parse the options every benchmark takes (``choose``: also --workload/--strategy;
    ``telemetry``: also --telemetry; ``rounds``: the default of --rounds)."""
    parser = argparse.ArgumentParser(description=description)
    if telemetry:
        parser.add_argument(
            "--telemetry",
            action="store_true",
            help="also run the layer's cases with telemetry on (APP_TELEMETRY, an SDK "
            "MeterProvider with an in-memory reader), alternated with them in every round",
        )
    default_threads = ",".join(map(str, threads))
    parser.add_argument(
        "--threads",
        type=_thread_counts,
        default=tuple(threads),
        help=f"thread counts, comma-separated (default {default_threads})",
    )
    parser.add_argument(
        "--units", "--blocks", type=int, default=units, help=f"per case (default {units})"
    )
    if choose:
        parser.add_argument(
            "--workload", choices=sorted(STRATEGIES), default="append", help="default: append"
        )
        parser.add_argument(
            "-s",
            "--strategy",
            dest="strategies",
            action="append",
            metavar="NAME",
            help="run only these strategies (repeatable; default: all)",
        )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help=f"stop starting new units in a case after this (default {DEFAULT_MAX_SECONDS})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds a case may run before it is stopped (default {DEFAULT_TIMEOUT})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=rounds,
        help="run every case this many times, alternating the order, and report the median "
        f"of each figure (default {rounds})",
    )
    parser.add_argument("--json-out", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw throughput and p99 (matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    options = parser.parse_args(argv)
    if options.units < 1:
        parser.error("--units must be at least 1")
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    if options.plot and not _has_matplotlib():
        parser.error("--plot needs matplotlib: pip install matplotlib (or the plot extra)")
    if choose:
        table = STRATEGIES[options.workload]
        unknown = [key for key in options.strategies or () if key not in table]
        if unknown:
            parser.error(
                f"unknown strategy {', '.join(unknown)}; {options.workload} strategies: "
                + ", ".join(table)
            )
    return options


def run(
    workload: str,
    keys: Sequence[str],
    options: argparse.Namespace,
    title: str,
    goals: Goals | None = None,
    round_goals: RoundGoals | None = None,
    once: Sequence[str] = (),
) -> list[CaseResult]:
    """Run ``keys`` at each thread count, and ``once`` at one thread, print the table (and
    the goals: ``goals`` of the medians, ``round_goals`` of every round's results), write
    JSON and the chart when asked."""
    threads = tuple(options.threads)
    cases = [
        case
        for names, counts in ((once, (1,)), (keys, threads))
        for case in default_cases(
            names,
            workload=workload,
            threads=counts,
            units=options.units,
            max_seconds=options.max_seconds,
        )
    ]
    console = Console(highlight=False, stderr=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, 120)  # piped: the table needs 120 columns
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    progress_console = Console(stderr=True)
    rounds = options.rounds
    with Progress(*columns, TimeElapsedColumn(), console=progress_console, transient=True) as bar:
        overall = bar.add_task("cases", total=len(cases) * rounds)
        current = bar.add_task("", total=options.units)

        def started(case: Case) -> None:
            bar.update(current, description=f"{case.strategy} @ {case.threads}", completed=0)

        runs = [
            run_cases(
                # Alternating the order spreads a slow spell of the machine over the cases.
                cases if number % 2 == 0 else cases[::-1],
                timeout=options.timeout,
                on_start=started,
                on_progress=lambda case, done: bar.update(current, completed=done),
                on_result=lambda result: bar.advance(overall),
            )
            for number in range(rounds)
        ]
    results = runs[0] if rounds == 1 else median_of_rounds(runs)
    if rounds > 1:
        add_ratios(results)
        title += f", median of {rounds} rounds"
    print_report(console, results, title)
    checks = (goals or (lambda _: []))(results) + (round_goals or (lambda _: []))(runs)
    for goal, met in checks:
        if met is None:
            console.print(f"[dim]measured[/] {goal}")
        else:
            console.print(f"[{'green' if met else 'red'}]{'met' if met else 'not met'}[/] {goal}")
    settings = {
        "workload": workload,
        "threads": list(threads),
        "units": options.units,
        "max_seconds": options.max_seconds,
        "rounds": rounds,
    }
    if options.markdown:
        print(markdown_table(results))
    if options.json_out:
        write_json(options.json_out, results, settings)
        console.print(f"results written to {options.json_out}")
    if options.plot:
        plot(options.plot, results, title=chart_title(results, settings))
        console.print(f"chart written to {options.plot}")
    return results


def pick(results: list[CaseResult], key: str, threads: int) -> CaseResult | None:
    for r in results:
        if r.strategy == key and r.threads == threads and not r.skipped and r.ok:
            return r
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks``: every strategy of a workload, side by side."""
    options = arguments(
        "Run the same workload for every strategy at each thread count, side by side. Each "
        "case runs on a fresh file in its own process.",
        choose=True,
        argv=argv,
    )
    table = STRATEGIES[options.workload]
    keys = options.strategies or list(table)
    run(
        options.workload,
        keys,
        options,
        f"bench: {options.workload}, {options.units:,} units per case",
    )


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
