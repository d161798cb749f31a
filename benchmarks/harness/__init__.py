"""The benchmark suite: one workload, many ways of sharing SQLite between threads, side by side.

Each case (a strategy at a thread count) runs in its own process on a fresh copy of an empty
database, so its peak memory and its peak number of open connections are its own. After a
case, the database is checked: for appends, indices without gaps and every hash and link
right by the legacy formula; for the counter, no lost update.

Used by ``python -m benchmarks`` and the other benchmark modules (run from a clone's root)::

    from benchmarks.harness import default_cases, run_cases, rich_table
    results = run_cases(default_cases(["sqlite3-lock", "layer"], threads=(1, 100)))
"""

from ._report import (
    chart_title,
    failed,
    footnotes,
    legend,
    machine,
    markdown_table,
    plot,
    print_report,
    problems,
    rich_table,
    summarise_error,
    to_json,
    write_json,
)
from ._runner import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_THREADS,
    DEFAULT_TIMEOUT,
    DEFAULT_UNITS,
    Case,
    CaseResult,
    add_ratios,
    default_cases,
    median_of_rounds,
    run_cases,
)
from ._strategies import APPEND, COUNTER, FLOOR, STRATEGIES, strategy, unavailable
from ._target import Strategy, Target
from ._workload import BenchBlock, Verdict, check_chain, check_counter, legacy_hash, make_block

__all__ = [
    "APPEND",
    "COUNTER",
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_THREADS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_UNITS",
    "FLOOR",
    "STRATEGIES",
    "BenchBlock",
    "Case",
    "CaseResult",
    "Strategy",
    "Target",
    "Verdict",
    "add_ratios",
    "chart_title",
    "check_chain",
    "check_counter",
    "default_cases",
    "failed",
    "footnotes",
    "legacy_hash",
    "legend",
    "machine",
    "make_block",
    "markdown_table",
    "median_of_rounds",
    "plot",
    "print_report",
    "problems",
    "rich_table",
    "run_cases",
    "strategy",
    "summarise_error",
    "to_json",
    "unavailable",
    "write_json",
]
