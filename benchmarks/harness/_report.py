"""Showing benchmark results: a rich table, a Markdown table, JSON, and a chart."""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from app import __version__, errors
from app._hints import install_hint

from ._runner import CaseResult

#: Column headings, short enough for the whole table to fit in 120 columns.
_COLUMNS = (
    "strategy",
    "threads",
    "units/s",
    "x 1 thr",
    "x floor",
    "p50 ms",
    "p99 ms",
    "max ms",
    "errors",
    "check",
    "MiB",
    "conns",
)

#: What the short headings mean, printed under the table.
COLUMN_NOTES = (
    "x 1 thr: throughput against the same strategy's fewest-threads case; x floor: against "
    "sqlite3-lock at the same thread count; p50/p99/max: latency of one unit; errors: units "
    "that failed; check: the chain (or counter) afterwards; MiB: peak memory of the case's "
    "process; conns: most database connections it had open at once."
)

#: Strategies that are this project's own code (emphasised in the chart).
_OURS = ("layer", "facade-")


def machine() -> dict[str, Any]:
    """Where the figures come from (they are examples for this machine, not promises)."""
    memory = None
    try:
        with open("/proc/meminfo") as handle:
            first = handle.readline().split()
            memory = round(int(first[1]) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": memory,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "app": __version__,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cells(r: CaseResult) -> list[str]:
    check = "failed" if r.intact is None else "intact" if r.intact else "BROKEN"
    return [
        r.strategy,
        str(r.threads),
        f"{r.throughput:,.0f}",
        _ratio(r.vs_one_thread),
        _ratio(r.vs_floor),
        _ms(r.p50),
        _ms(r.p99),
        _ms(r.max),
        str(r.errors),
        check,
        "-" if r.peak_rss_mib is None else f"{r.peak_rss_mib:.0f}",
        "-" if r.peak_connections is None else str(r.peak_connections),
    ]


def _measured(results: Sequence[CaseResult]) -> list[CaseResult]:
    return [r for r in results if not r.skipped]


def failed(r: CaseResult) -> bool:
    """The case lost units, broke the chain (or counter), or did not finish."""
    return bool(r.errors) or not r.intact


def rich_table(results: Sequence[CaseResult]) -> Table:
    """One row per case that ran (strategies by their short key), a section per thread
    count, trouble in red. Skipped cases are left to :func:`footnotes`."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in _COLUMNS:
        table.add_column(
            name,
            justify="left" if name in ("strategy", "check") else "right",
            no_wrap=True,
        )
    previous = None
    for r in _measured(results):
        if previous is not None and r.threads != previous:
            table.add_section()
        previous = r.threads
        cells = [Text(cell) for cell in _cells(r)]  # never read as markup
        if r.strategy.startswith(_OURS):
            cells[0].stylize("bold")
        cells[8].stylize("red" if r.errors else "")
        cells[9].stylize("green" if r.intact else "bold red")
        table.add_row(*cells)
    return table


def legend(results: Sequence[CaseResult]) -> list[str]:
    """``key: what the strategy does`` for every strategy in ``results``, in table order."""
    labels = dict.fromkeys((r.strategy, r.label) for r in results)
    return [f"{key}: {label}" for key, label in labels]


def footnotes(results: Sequence[CaseResult]) -> list[str]:
    """One line per skipped strategy, saying why (its thread counts together)."""
    skipped: dict[tuple[str, str], list[int]] = {}
    for r in results:
        if r.skipped:
            skipped.setdefault((r.strategy, r.skipped), []).append(r.threads)
    return [f"{key} was skipped: {why}" for (key, why) in skipped]


def markdown_table(results: Sequence[CaseResult]) -> str:
    """The same table as Markdown (for RESULTS.md), with the legend and footnotes below."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines.extend("| " + " | ".join(_cells(r)) + " |" for r in _measured(results))
    lines.append("")
    lines.extend(
        f"- `{key}`: {label}" for key, label in (x.split(": ", 1) for x in legend(results))
    )
    lines.extend(f"- {note}" for note in footnotes(results))
    return "\n".join(lines)


#: Driver error texts and what they mean, in words, for the notes under the table.
_KNOWN_ERRORS = (
    (
        "UNIQUE constraint failed: blocks.block_index",
        "two threads read the same chain head and wrote the same block index",
    ),
    (
        "duplicate key value violates unique constraint",
        "two writers wrote the same key (the same block index)",
    ),
    ("database is locked", "the database stayed locked past busy_timeout"),
    ("timed out", "timed out"),
)
_SQL_DETAIL = re.compile(r"\s*(\[SQL:.*|\(Background on this error.*)$", re.S)
_DRIVER_PREFIX = re.compile(r"^\((?:[\w.]+)\)\s*")


def summarise_error(kind: str, example: str) -> str:
    """An error kind and its first message in a few words: known driver errors explained,
    SQLAlchemy's statement dump dropped, anything else cut at a word boundary."""
    text = _DRIVER_PREFIX.sub("", _SQL_DETAIL.sub("", example)).strip()
    for needle, meaning in _KNOWN_ERRORS:
        if needle in text:
            return f"{kind}: {meaning}"
    if len(text) > 90:
        text = text[:90].rsplit(" ", 1)[0] + " ..."
    return f"{kind}: {text}" if text else kind


def problems(results: Sequence[CaseResult]) -> list[str]:
    """One line per case with errors, a failed check or a crash, saying what happened."""
    notes = []
    for r in _measured(results):
        parts = []
        if r.errors:
            kinds = "; ".join(
                f"{count:,} {summarise_error(kind, example)}"
                for kind, (count, example) in r.error_kinds.items()
            )
            parts.append(
                f"{r.errors:,} of {r.units:,} units failed" + (f" ({kinds})" if kinds else "")
            )
        if r.problem:
            parts.append(summarise_error("check", r.problem).removeprefix("check: "))
        if r.attempted and r.attempted < r.units:
            parts.append(f"stopped at the time limit after {r.attempted:,} of {r.units:,} units")
        if parts:
            notes.append(f"{r.strategy} @ {r.threads} threads: " + "; ".join(parts))
    return notes


def print_report(console: Console, results: Sequence[CaseResult], title: str) -> None:
    """The whole report on a console: title, table, legend, what the columns mean,
    skipped strategies, and what went wrong, in words."""
    console.print(Text(title, style="bold"), soft_wrap=True)
    console.print(rich_table(results))
    keys = Table.grid(padding=(0, 2))
    keys.add_column(style="bold", no_wrap=True)
    keys.add_column()
    for line in legend(results):
        keys.add_row(*line.split(": ", 1))
    console.print(keys)
    console.print(Text(COLUMN_NOTES, style="dim"))
    for note in footnotes(results):
        console.print(Text(note, style="yellow"))
    for note in problems(results):
        console.print(Text.assemble(("failed: ", "bold red"), note))


def to_json(results: Sequence[CaseResult], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": settings,
        "results": [r.to_dict() for r in results],
    }


def write_json(path: str, results: Sequence[CaseResult], settings: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(to_json(results, settings), handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def chart_title(results: Sequence[CaseResult], settings: dict[str, Any]) -> str:
    """What ran and on what, for the chart: workload, units, thread counts, machine."""
    info = machine()
    threads = sorted({r.threads for r in results})
    workload = settings.get("workload") or (results[0].workload if results else "")
    rounds = settings.get("rounds", 1)
    medians = f", median of {rounds} rounds" if rounds > 1 else ""
    return (
        f"{workload}: {settings.get('units', '?'):,} units per case at "
        f"{', '.join(map(str, threads))} threads{medians}\n"
        f"{info['cpus']} CPUs, {info['platform']}, Python {info['python']}, "
        f"SQLite {info['sqlite']}, SQLAlchemy {info['sqlalchemy']}"
    )


def plot(path: str, results: Sequence[CaseResult], title: str = "") -> None:
    """Throughput and p99 latency against threads, one line per strategy.

    This layer's strategies are drawn thick; a strategy that failed at any thread count
    (lost units, a broken chain, a crash) is drawn grey and dashed, with an ``x`` and the
    error count at each failed point, and says so in the legend. Both axes are
    logarithmic with plain-number ticks.

    Raises:
        ConfigurationError: matplotlib is not installed (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError as exc:
        raise errors.ConfigurationError(f"--plot needs matplotlib: {install_hint('plot')}") from exc
    series: dict[str, list[CaseResult]] = {}
    for r in results:
        if not r.skipped:
            series.setdefault(r.strategy, []).append(r)
    counts = sorted({r.threads for rows in series.values() for r in rows})
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 7))
    # tab10 without its grey, which is kept for failed strategies.
    palette = [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    for number, (key, rows) in enumerate(series.items()):
        rows.sort(key=lambda r: r.threads)
        bad = [r for r in rows if failed(r)]
        ours = key.startswith(_OURS)
        style: dict[str, Any] = {"marker": "o", "color": palette[number % len(palette)]}
        if bad:
            style.update(color="0.55", linestyle="--", linewidth=1.3, marker=".", alpha=0.9)
        elif ours:
            style.update(linewidth=3.2, markersize=7, zorder=5)
        else:
            style.update(linewidth=1.3, markersize=4, alpha=0.85)
        label = key + ("  (this layer)" if ours and not bad else "")
        if bad:
            label += f"  FAILED at {', '.join(str(r.threads) for r in bad)} threads"
        measured = [r for r in rows if r.ok and r.p99]
        threads = [r.threads for r in measured]
        left.plot(threads, [r.throughput for r in measured], label=label, **style)
        right.plot(threads, [(r.p99 or 0) * 1000 for r in measured], **style)
        for r in bad:
            if not (r.ok and r.p99):
                continue  # nothing measured to mark (a crash); the legend says it failed
            for axis, value in ((left, r.throughput), (right, (r.p99 or 0) * 1000)):
                if value <= 0:
                    continue
                axis.plot([r.threads], [value], marker="x", color="black", markersize=9, zorder=6)
                axis.annotate(
                    f"{r.errors:,} errors" if r.errors else "check failed",
                    (r.threads, value),
                    textcoords="offset points",
                    xytext=(6, -12),
                    fontsize="x-small",
                    color="0.3",
                )
    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")
    left.set(xscale="log", yscale="log", xlabel="threads", ylabel="units per second")
    left.set_title("throughput (higher is better)")
    right.set(xscale="log", yscale="log", xlabel="threads", ylabel="milliseconds")
    right.set_title("p99 latency (lower is better)")
    for axis in (left, right):
        axis.grid(True, which="major", alpha=0.35)
        axis.grid(True, which="minor", alpha=0.12)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.xaxis.set_minor_formatter(NullFormatter())
        # Ticks at 1, 2, 3 and 5 times each power of ten, written as plain numbers: a log
        # axis spanning about a decade otherwise gets one label or none.
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(NullFormatter())
    figure.legend(loc="lower center", ncol=2, fontsize="small", frameon=False)
    if title:
        figure.suptitle(title, fontsize="medium")
    rows_of_legend = (len(series) + 1) // 2
    figure.tight_layout(rect=(0, 0.02 + 0.032 * rows_of_legend, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
