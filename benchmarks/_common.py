"""Shared by the scripts in this directory: argument parsing, a progress bar, the table."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app._bench import (
    Case,
    CaseResult,
    default_cases,
    markdown_table,
    print_report,
    run_cases,
    write_json,
)


def arguments(description: str, threads: str, units: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", default=threads, help=f"comma-separated (default {threads})")
    parser.add_argument("--units", type=int, default=units, help=f"per case (default {units})")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="time limit per case")
    parser.add_argument("--json-out", help="write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    return parser.parse_args()


def run(
    workload: str,
    keys: Sequence[str],
    options: argparse.Namespace,
    title: str,
    goals: Callable[[list[CaseResult]], list[tuple[str, bool]]],
) -> list[CaseResult]:
    """Run ``keys`` at each thread count, print the table, the notes and the goals."""
    threads = tuple(int(n) for n in options.threads.split(","))
    cases = default_cases(
        keys,
        workload=workload,
        threads=threads,
        units=options.units,
        max_seconds=options.max_seconds,
    )
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, 120)  # piped: the table needs 120 columns
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        overall = bar.add_task("cases", total=len(cases))
        current = bar.add_task("", total=options.units)

        def started(case: Case) -> None:
            bar.update(current, description=f"{case.strategy} @ {case.threads}", completed=0)

        results = run_cases(
            cases,
            on_start=started,
            on_progress=lambda case, done: bar.update(current, completed=done),
            on_result=lambda result: bar.advance(overall),
        )
    print_report(console, results, title)
    for goal, met in goals(results):
        console.print(f"[{'green' if met else 'red'}]{'met' if met else 'not met'}[/] {goal}")
    if options.markdown:
        print(markdown_table(results))
    if options.json_out:
        settings = {"workload": workload, "threads": list(threads), "units": options.units}
        write_json(options.json_out, results, settings)
    return results


def pick(results: list[CaseResult], key: str, threads: int) -> CaseResult | None:
    for r in results:
        if r.strategy == key and r.threads == threads and not r.skipped and r.ok:
            return r
    return None
