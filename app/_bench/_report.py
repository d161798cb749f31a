"""Showing benchmark results: a rich table, a Markdown table, JSON, and a chart."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy
from rich.table import Table
from rich.text import Text

from .. import __version__, errors
from ._runner import CaseResult

_COLUMNS = (
    "strategy",
    "threads",
    "units/s",
    "x 1 thread",
    "x sqlite3",
    "p50 ms",
    "p99 ms",
    "max ms",
    "errors",
    "check",
    "peak MiB",
    "peak conns",
)


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
    if r.skipped:
        return [r.label, str(r.threads), "skipped: " + r.skipped] + [""] * (len(_COLUMNS) - 3)
    check = "failed" if r.intact is None else "intact" if r.intact else "BROKEN"
    return [
        r.label,
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


def rich_table(results: Sequence[CaseResult], title: str = "") -> Table:
    """One row per case, a section per thread count, trouble in red."""
    table = Table(title=title or None, title_justify="left")
    for name in _COLUMNS:
        table.add_column(name, justify="left" if name in ("strategy", "check") else "right")
    previous = None
    for r in results:
        if previous is not None and r.threads != previous:
            table.add_section()
        previous = r.threads
        plain = _cells(r)
        cells = [Text(cell) for cell in plain]  # never read as markup
        if not r.skipped:
            cells[8].stylize("red" if r.errors else "")
            cells[9].stylize("green" if r.intact else "bold red")
        table.add_row(*cells, style="dim" if r.skipped else None)
    return table


def markdown_table(results: Sequence[CaseResult]) -> str:
    """The same table as Markdown (for a README or an issue)."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines.extend("| " + " | ".join(_cells(r)) + " |" for r in results)
    return "\n".join(lines)


def problems(results: Sequence[CaseResult]) -> list[str]:
    """One line per case with errors, a failed check or a crash, saying what happened."""
    notes = []
    for r in results:
        if r.skipped:
            continue
        parts = []
        if r.errors:
            kinds = ", ".join(
                f"{count} {kind} ({example})" for kind, (count, example) in r.error_kinds.items()
            )
            parts.append(f"{r.errors} errors" + (f": {kinds}" if kinds else ""))
        if r.problem:
            parts.append(r.problem)
        if r.attempted and r.attempted < r.units:
            parts.append(f"stopped at the time limit after {r.attempted:,} of {r.units:,} units")
        if parts:
            notes.append(f"{r.label} @ {r.threads} threads: " + "; ".join(parts))
    return notes


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


def plot(path: str, results: Sequence[CaseResult], title: str = "") -> None:
    """Throughput and p99 latency against threads, one line per strategy.

    Raises:
        ConfigurationError: matplotlib is not installed (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise errors.ConfigurationError("--plot needs matplotlib: pip install 'app[plot]'") from exc
    series: dict[str, list[CaseResult]] = {}
    for r in results:
        if not r.skipped and r.ok:
            series.setdefault(r.label, []).append(r)
    counts = sorted({r.threads for rows in series.values() for r in rows})
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 6.5))
    for label, rows in series.items():
        rows.sort(key=lambda r: r.threads)
        threads = [r.threads for r in rows]
        # A strategy that lost appends or broke the chain says so in the legend.
        if any(r.errors or not r.intact for r in rows):
            label += "  [errors or broken chain]"
        left.plot(threads, [r.throughput for r in rows], marker="o", label=label)
        right.plot(threads, [(r.p99 or 0) * 1000 for r in rows], marker="o")
    left.set(xscale="log", xlabel="threads", ylabel="units per second", title="throughput")
    right.set(xscale="log", yscale="log", xlabel="threads", ylabel="ms", title="p99 latency")
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.minorticks_off()
    figure.legend(loc="lower center", ncol=2, fontsize="small", frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.15, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
