"""``app top``: the live view of one database (``app.operations.top``), refreshed in place,
or one JSON object per reading for scripts."""

from __future__ import annotations

import json
import sys
from itertools import islice

import click
from rich.console import Group
from rich.live import Live
from rich.text import Text

from app.cli._support import Options, make_console, make_table, url_option


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


@click.command()
@click.option("--interval", default=1.0, show_default=True, help="Seconds between readings.")
@click.option("--count", type=int, default=None, help="Stop after this many readings.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per reading, no screen.")
@url_option
@click.pass_context
def top(ctx: click.Context, interval: float, count: int | None, as_json: bool) -> None:
    """Watch the database across processes: who holds the write lock and for how long,
    who waits, the oldest reader, commits per second, turn waits, WAL size, replica lag.
    Opens no Database: nothing is created or locked. Ctrl-C stops."""
    from app.operations.top import rates, watch

    if interval <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--interval")
    options: Options = ctx.obj
    readings = islice(watch(options.url, interval), count)
    previous = None
    if as_json:
        for reading in readings:
            row = reading.as_dict()
            if previous is not None:
                row["rates"] = rates(previous, reading).__dict__
            print(json.dumps(row), flush=True)
            previous = reading
        return
    console = make_console()
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            for reading in readings:
                table = make_table("", "", header=False)
                table.columns[0].style = "bold"
                table.columns[1].overflow = "fold"
                holder = reading.holder.describe() if reading.holder else "nobody"
                table.add_row("write lock", holder)
                table.add_row("waiting", str(len(reading.waiters)))
                for waiter in reading.waiters[:5]:
                    table.add_row("", waiter.describe())
                oldest = reading.oldest_reader
                table.add_row("oldest reader", oldest.describe() if oldest else "-")
                if previous is not None:
                    rate = rates(previous, reading)
                    table.add_row("commits/s", f"{rate.commits_per_second:.1f}")
                    if reading.processes:
                        wait = rate.mean_turn_wait
                        shown = "-" if wait is None else f"{wait * 1000:.2f} ms"
                        table.add_row("turns/s", f"{rate.turns_per_second:.1f}, mean wait {shown}")
                table.add_row("WAL", _size(reading.wal_bytes))
                for name, lag in reading.replicas:
                    table.add_row(f"replica {name}", "-" if lag is None else f"{lag:.2f}s behind")
                if reading.processes:
                    table.add_row("processes", " ".join(str(p.pid) for p in reading.processes))
                title = Text(f"top: {reading.url}", style="bold")
                live.update(Group(title, table), refresh=True)
                previous = reading
        if not console.is_terminal:
            console.line()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
