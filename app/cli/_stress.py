"""``app stress``: the stress run (``app.operations.stress``) from the command line, and its
result as a table or JSON."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from app.cli._support import (
    Options,
    ProgressLines,
    make_console,
    make_table,
    print_title,
    url_option,
)
from app.operations.stress import (
    DEFAULT_BLOCKS,
    DEFAULT_READ_PAUSE,
    DEFAULT_READ_THREADS,
    DEFAULT_THREADS,
)
from app.settings import URL_ENV


@click.command()
@click.option(
    "-t",
    "--threads",
    default=DEFAULT_THREADS,
    show_default=True,
    type=click.IntRange(1),
    help="Appending threads in each process.",
)
@click.option(
    "-n",
    "--blocks",
    default=DEFAULT_BLOCKS,
    show_default=True,
    type=click.IntRange(1),
    help="Blocks to append in all.",
)
@click.option(
    "-p",
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Processes to append from (blocks are shared between them).",
)
@click.option(
    "-r",
    "--read-threads",
    default=DEFAULT_READ_THREADS,
    show_default=True,
    type=click.IntRange(0),
    help="Threads searching while the appends run.",
)
@click.option(
    "--read-pause",
    default=DEFAULT_READ_PAUSE * 1000,
    show_default=True,
    type=click.FloatRange(0),
    help="Milliseconds each searching thread waits between two searches.",
)
@click.option(
    "--existing",
    is_flag=True,
    help="Append the test blocks to the named database although it already holds data.",
)
@click.option(
    "--allow-broken-chain",
    is_flag=True,
    help="With --existing: go ahead although the database's chain does not verify.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the new file the run uses when no database is named (removed by default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@url_option
@click.pass_context
def stress(
    ctx: click.Context,
    threads: int,
    blocks: int,
    processes: int,
    read_threads: int,
    read_pause: float,
    existing: bool,
    allow_broken_chain: bool,
    keep: bool,
    as_json: bool,
) -> None:
    """Append BLOCKS test blocks through BlockStore.append from many threads while others
    search, then verify the chain. Exits 1 on any error or a broken chain.

    Without --url (or APP_DATABASE_URL) it runs on a new file of its own in a temporary
    directory, removed afterwards unless --keep. A named database is used when it is
    missing or empty; one that holds data only with --existing, and one whose chain is
    already broken only with --allow-broken-chain as well. Every test block is tagged
    'stress' and carries the run's id in its metadata.
    """
    from app.operations.stress import run_stress

    options: Options = ctx.obj
    console = make_console()
    with (
        _interrupted_quietly(ctx, "stress"),
        ProgressLines(options, enabled=not as_json) as progress,
    ):
        task = progress.add("appending", total=blocks)
        result = run_stress(
            options.url or os.environ.get(URL_ENV) or None,
            threads=threads,
            blocks=blocks,
            processes=processes,
            read_threads=read_threads,
            read_pause=read_pause / 1000,
            existing=existing,
            allow_broken_chain=allow_broken_chain,
            keep=keep,
            announce=progress.note,
            progress=lambda done: progress.update(task, completed=done),
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_title(console, f"stress: {result.url}")
        console.print(_stress_table(result))
    if not result.ok:
        if not as_json:
            console.print("[bold red]stress found errors or a broken chain[/]")
        ctx.exit(1)


@contextlib.contextmanager
def _interrupted_quietly(ctx: click.Context, what: str) -> Iterator[None]:
    """Ctrl-C: one line and exit status 130, without a traceback (the run has stopped: its
    threads and processes ended after the appends in progress)."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"{what} interrupted: stopped after the appends in progress", err=True)
        ctx.exit(130)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _stress_table(result: Any) -> Table:
    table = make_table("what", "value", header=False)
    table.columns[0].style = "bold"
    layout = f"{result.threads} threads x {result.processes} process(es)"
    if result.fresh_file is not None:
        database = f"a new file, {escape(result.fresh_file)}: " + (
            "kept (--keep)" if result.kept else "removed after the run (--keep keeps it)"
        )
    else:
        database = escape(result.url) + (
            f" (held {result.blocks_before:,} blocks before)" if result.blocks_before else ""
        )
    rows = [
        ("database", database),
        ("appended", f"{result.appended:,} of {result.blocks:,} blocks ({layout})"),
        ("throughput", f"{result.throughput:,.0f} appends/s in {result.seconds:.2f}s"),
        ("latency", f"p50 {_ms(result.p50)}, p99 {_ms(result.p99)}, max {_ms(result.max)}"),
        (
            "errors",
            f"[red]{result.errors}[/] "
            + escape(", ".join(f"{n} {kind}" for kind, n in result.error_kinds.items()))
            if result.errors
            else "[green]0[/]",
        ),
        (
            "reads",
            f"{result.reads:,} searches by {result.read_threads} threads, "
            f"p99 {_ms(result.read_p99)}, errors {result.read_errors}"
            + escape("".join(f"; {k}: {v}" for k, v in result.read_error_kinds.items())),
        ),
        (
            "chain",
            f"[green]intact[/] ({result.blocks_after:,} blocks, {result.blocks_before:,} before)"
            if result.chain_intact
            else f"[bold red]broken at block {result.first_bad_block}[/]: "
            + escape(result.chain_problem)
            + (
                f" (already before the run: {escape(result.broken_before)})"
                if result.broken_before
                else ""
            ),
        ),
    ]
    stats = result.stats
    rows.append(
        (
            "db.stats()",
            f"units committed {stats.get('units_committed', 0):.0f}, rolled back "
            f"{stats.get('units_rolled_back', 0):.0f}, busy retries "
            f"{stats.get('busy_retries', 0):.0f}, write waits {stats.get('write_waits', 0):.0f} "
            f"(total {stats.get('write_wait_total', 0):.3f}s, max "
            f"{stats.get('write_wait_max', 0) * 1000:.1f} ms), connections open "
            f"{stats.get('connections_open', 0):.0f}",
        )
    )
    for name, value in rows:
        table.add_row(name, value)
    return table
