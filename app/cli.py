"""The command line: ``app`` (console script) or ``python -m app``.

A thin layer: each command parses its options, calls library functions (``app.schema``,
``app.doctor``, ``app.stress``, ``app._bench``, ``app.maintenance``) and prints their
results. Errors are turned into one line and a non-zero exit in one place,
:meth:`_AppGroup.invoke`; ``-v`` adds logging, ``-vv`` also tracebacks.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, errors
from . import stress as stress_defaults
from . import transfer as transfer_defaults
from ._bench import _runner as bench_defaults

URL_HELP = (
    "Database URL (sqlite:///path/to/file.db, postgresql+psycopg://user@host/db). "
    "Default: $APP_DATABASE_URL, then sqlite:///data/memory.db."
)
_STATUS_STYLE = {"ok": "green", "info": "", "warn": "yellow", "fail": "bold red"}


@dataclass(frozen=True)
class Options:
    """Global options, handed to every command as ``ctx.obj``."""

    url: str | None
    verbose: int


class _AppGroup(click.Group):
    """Turns expected errors into ``Error: <one line>`` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("verbose", 0) >= 2:
                raise
            raise click.ClickException(_one_line(exc)) from exc


def _one_line(exc: BaseException) -> str:
    """The error as one line: the layer's own message, else the driver's, else the type."""
    if isinstance(exc, errors.AppError):
        text = str(exc)
    elif isinstance(exc, SQLAlchemyError | sqlite3.Error | OSError):
        cause = getattr(exc, "orig", None) or exc
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (run with -vv for the traceback)"
    return " ".join(text.split())


def _can_import(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped or captured output: do not squeeze wide tables into 80 columns.
        console.width = max(console.width, 160)
    return console


@contextmanager
def _progress(console: Console, *, enabled: bool = True) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )
    with progress:
        yield progress


@click.group(cls=_AppGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", metavar="URL", default=None, help=URL_HELP)
@click.option("-v", "--verbose", count=True, help="-v logs progress, -vv also shows tracebacks.")
@click.version_option(__version__, prog_name="app")
@click.pass_context
def cli(ctx: click.Context, url: str | None, verbose: int) -> None:
    """A thread-safe database layer for a hash-chained block store: check, migrate,
    stress and benchmark it."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Options(url, verbose)


# -- db: migrations --------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Schema migrations (Alembic, run through the application's own engine)."""


def _revision_name(revision: str | None) -> str:
    from .schema import head_revision

    if revision is None:
        return "none"
    return f"{revision} (head)" if revision == head_revision() else revision


def _migrate(options: Options, action: str, revision: str) -> None:
    from . import schema

    with schema.migration_database(options.url) as database:
        before = schema.current_revision(database)
        getattr(schema, action)(database, revision)
        after = schema.current_revision(database)
        url = database.url
    if before == after:
        click.echo(f"{url}: already at {_revision_name(after)}")
    else:
        click.echo(f"{url}: {_revision_name(before)} -> {_revision_name(after)}")


@db.command()
@click.argument("revision", default="head")
@click.pass_obj
def upgrade(options: Options, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head).

    A database written by the legacy class is adopted first (its tables are checked).
    """
    _migrate(options, "upgrade", revision)


@db.command()
@click.argument("revision")
@click.pass_obj
def downgrade(options: Options, revision: str) -> None:
    """Downgrade the schema to REVISION (a revision id, -1, or base)."""
    _migrate(options, "downgrade", revision)


@db.command()
@click.argument("revision")
@click.pass_obj
def stamp(options: Options, revision: str) -> None:
    """Record REVISION as the schema's revision without running migrations."""
    _migrate(options, "stamp", revision)


@db.command()
@click.pass_obj
def current(options: Options) -> None:
    """Show the database's schema revision."""
    from .schema import current_revision, migration_database

    with migration_database(options.url) as database:
        revision = current_revision(database)
        url = database.url
    note = " (empty, or written by the legacy class: run `app db upgrade`)" if not revision else ""
    click.echo(f"{url}: {_revision_name(revision)}{note}")


@db.command()
def history() -> None:
    """List the schema revisions, oldest first."""
    from .schema import history as revisions

    for item in revisions():
        head = " (head)" if item.is_head else ""
        click.echo(f"{item.down_revision or 'base'} -> {item.revision}{head}: {item.doc}")


# -- doctor ----------------------------------------------------------------------------------


@cli.command()
@click.option("--verify-chain", is_flag=True, help="Also recompute every block's hash and link.")
@click.pass_context
def doctor(ctx: click.Context, verify_chain: bool) -> None:
    """Check the database: versions, file sizes, quick_check, pragmas in force, schema
    revision, pool, block count. Exits 1, with advice, when something is wrong."""
    from .doctor import diagnose

    options: Options = ctx.obj
    console = _console()
    with _progress(console, enabled=verify_chain) as bar:
        task = bar.add_task("verifying the chain", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = diagnose(options.url, verify_chain=verify_chain, progress=advance)
    table = Table(title=escape(f"doctor: {report.url}"), title_justify="left", show_header=False)
    table.add_column("check", style="bold")
    table.add_column("status")
    table.add_column("value", overflow="fold")
    for check in report.checks:
        style = _STATUS_STYLE.get(check.status, "")
        status = "" if check.status == "info" else check.status
        table.add_row(check.name, Text(status, style=style), Text(check.value))
    console.print(table)
    for check in report.problems:
        style = _STATUS_STYLE[check.status]
        console.print(
            f"[{style}]{check.status}[/] {check.name}: {escape(check.advice)}", soft_wrap=True
        )
    if not report.ok:
        ctx.exit(1)


# -- stress ----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "-t",
    "--threads",
    default=stress_defaults.DEFAULT_THREADS,
    show_default=True,
    type=click.IntRange(1),
    help="Appending threads in each process.",
)
@click.option(
    "-n",
    "--blocks",
    default=stress_defaults.DEFAULT_BLOCKS,
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
    default=stress_defaults.DEFAULT_READ_THREADS,
    show_default=True,
    type=click.IntRange(0),
    help="Threads searching while the appends run.",
)
@click.option(
    "--read-pause",
    default=stress_defaults.DEFAULT_READ_PAUSE * 1000,
    show_default=True,
    type=click.FloatRange(0),
    help="Milliseconds each searching thread waits between two searches.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def stress(
    ctx: click.Context,
    threads: int,
    blocks: int,
    processes: int,
    read_threads: int,
    read_pause: float,
    as_json: bool,
) -> None:
    """Append BLOCKS blocks through BlockStore.append from many threads while others
    search, then verify the chain. Exits 1 on any error or a broken chain."""
    from .stress import run_stress

    options: Options = ctx.obj
    console = _console()
    with _progress(console, enabled=not as_json) as bar:
        task = bar.add_task("appending", total=blocks)
        result = run_stress(
            options.url,
            threads=threads,
            blocks=blocks,
            processes=processes,
            read_threads=read_threads,
            read_pause=read_pause / 1000,
            progress=lambda done: bar.update(task, completed=done),
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        console.print(_stress_table(result))
    if not result.ok:
        if not as_json:
            console.print("[bold red]stress found errors or a broken chain[/]")
        ctx.exit(1)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _stress_table(result: Any) -> Table:
    table = Table(title=escape(f"stress: {result.url}"), title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    layout = f"{result.threads} threads x {result.processes} process(es)"
    rows = [
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
            else f"[bold red]broken at block {result.first_bad_block}[/]",
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


# -- bench -----------------------------------------------------------------------------------


def _thread_counts(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter("give thread counts separated by commas, e.g. 1,10,100") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("thread counts must be whole numbers >= 1")
    return counts


def _all_strategy_keys() -> list[str]:
    from ._bench import STRATEGIES

    return sorted({key for table in STRATEGIES.values() for key in table})


@cli.command()
@click.option(
    "--threads",
    default=",".join(map(str, bench_defaults.DEFAULT_THREADS)),
    show_default=True,
    callback=_thread_counts,
    help="Thread counts to run each strategy at.",
)
@click.option(
    "--blocks",
    default=bench_defaults.DEFAULT_UNITS,
    show_default=True,
    type=click.IntRange(1),
    help="Units of work per case, shared by its threads.",
)
@click.option(
    "-s",
    "--strategy",
    "strategies",
    multiple=True,
    metavar="NAME",
    help="Run only these strategies (repeatable; default: all).",
)
@click.option(
    "--workload",
    type=click.Choice(["append", "counter"]),
    default="append",
    show_default=True,
    help="Chain appends, or a read-modify-write counter.",
)
@click.option("--json-out", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="Draw throughput and p99 against threads (needs the plot extra).",
)
@click.option("--markdown", is_flag=True, help="Also print the table as Markdown.")
@click.option(
    "--max-seconds",
    default=bench_defaults.DEFAULT_MAX_SECONDS,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Stop starting new units in a case after this many seconds (slow strategies).",
)
@click.option(
    "--timeout",
    default=bench_defaults.DEFAULT_TIMEOUT,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds a case may run before it is stopped.",
)
def bench(
    threads: tuple[int, ...],
    blocks: int,
    strategies: tuple[str, ...],
    workload: str,
    json_out: str | None,
    plot_path: str | None,
    markdown: bool,
    max_seconds: float,
    timeout: float,
) -> None:
    """Run the same workload for every strategy at each thread count, side by side.

    Each case runs on a fresh file in its own process. Strategies: sqlite3-lock (the
    floor), sqlite3-thread-local, sqlite3-pool, sqlalchemy-default, layer,
    facade-transaction, facade-append-block, greeum-5.3.0 (when installed).
    """
    from . import _bench

    table = _bench.STRATEGIES[workload]
    keys = list(strategies) or list(table)
    unknown = [k for k in keys if k not in table]
    if unknown:
        raise click.BadParameter(
            f"unknown strategy {', '.join(unknown)}; {workload} strategies: {', '.join(table)}",
            param_hint="--strategy",
        )
    if plot_path and not _can_import("matplotlib"):
        raise click.UsageError("--plot needs matplotlib: pip install 'app[plot]'")
    cases = _bench.default_cases(
        keys, workload=workload, threads=threads, units=blocks, max_seconds=max_seconds
    )
    console = _console()
    with _progress(console) as bar:
        overall = bar.add_task("cases", total=len(cases))
        current = bar.add_task("", total=blocks)

        def started(case: _bench.Case) -> None:
            label = _bench.strategy(case.workload, case.strategy).label
            bar.update(current, description=f"{label} @ {case.threads}", completed=0)

        results = _bench.run_cases(
            cases,
            timeout=timeout,
            on_start=started,
            on_progress=lambda case, done: bar.update(current, completed=done),
            on_result=lambda result: bar.advance(overall),
        )
    title = f"bench: {workload}, {blocks} units per case"
    console.print(_bench.rich_table(results, title=title))
    for note in _bench.problems(results):
        console.print(f"[yellow]note[/] {escape(note)}", soft_wrap=True)
    if markdown:
        click.echo(_bench.markdown_table(results))
    settings = {
        "workload": workload,
        "threads": list(threads),
        "units": blocks,
        "max_seconds": max_seconds,
    }
    if json_out:
        _bench.write_json(json_out, results, settings)
        console.print(f"results written to {escape(json_out)}")
    if plot_path:
        _bench.plot(plot_path, results, title=title)
        console.print(f"chart written to {escape(plot_path)}")


# -- copy ------------------------------------------------------------------------------------


@cli.command("copy")
@click.option(
    "--to",
    "target",
    required=True,
    metavar="URL",
    help="Target database URL (postgresql+psycopg://user@host/db or sqlite:///path).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the target's rows when it is not empty (in the same transaction as the copy).",
)
@click.option(
    "--batch-size",
    default=transfer_defaults.DEFAULT_BATCH,
    show_default=True,
    type=click.IntRange(1),
    help="Rows read and written per statement.",
)
@click.pass_obj
def copy(options: Options, target: str, force: bool, batch_size: int) -> None:
    """Copy the database (--url) to the one at --to, e.g. SQLite into PostgreSQL or back.

    The target's schema is created or upgraded by the migrations first, then every table is
    copied in batches, in one transaction: after an error the target is as it was. A target
    that already holds rows is refused unless --force is given. Afterwards the row count of
    every table and the hash chain are checked on the target; exits 1 if they do not match.
    """
    from .settings import Settings
    from .transfer import copy_database

    console = _console()
    with _progress(console) as bar:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                label = "verifying the chain" if stage == "verify" else f"copying {stage}"
                tasks[stage] = bar.add_task(label, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        result = copy_database(
            Settings.resolve(options.url).url,
            target,
            force=force,
            batch_size=batch_size,
            progress=advance,
        )
    table = Table(title=escape(f"copy: {result.source} -> {result.target}"), title_justify="left")
    for name in ("table", "source rows", "target rows"):
        table.add_column(name, justify="left" if name == "table" else "right")
    for name, count in result.source_counts.items():
        copied = result.target_counts.get(name, 0)
        style = "" if copied == count else "bold red"
        table.add_row(name, f"{count:,}", Text(f"{copied:,}", style=style))
    console.print(table)
    if result.replaced:
        replaced = sum(result.replaced.values())
        console.print(f"replaced {replaced:,} rows the target held before (--force)")
    if not result.ok:
        raise click.ClickException(result.problem)
    blocks = result.target_counts.get("blocks", 0)
    console.print(
        f"[green]copied[/] in {result.seconds:.2f}s; counts match, chain intact ({blocks:,} blocks)"
    )


# -- maintenance -----------------------------------------------------------------------------


@cli.command("import-jsonl")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_obj
def import_jsonl(options: Options, file: str) -> None:
    """Import blocks from a JSONL FILE (one block per line), as the legacy
    migrate_from_jsonl did. Lines without block_index and hash are appended to the chain."""
    import os

    from .database import Database
    from .maintenance import import_jsonl as run_import

    console = _console()
    with Database(options.url) as database, _progress(console) as bar:
        task = bar.add_task("importing", total=os.path.getsize(file))
        result = run_import(database, file, progress=lambda done: bar.update(task, completed=done))
        url = database.url
    console.print(
        escape(
            f"imported {result.imported:,} blocks into {url} ({result.kept:,} as given, "
            f"{result.appended:,} appended to the chain); skipped {result.skipped:,} of "
            f"{result.lines:,} lines"
            + (
                ": " + ", ".join(f"{n} {why}" for why, n in result.reasons.items())
                if result.skipped
                else ""
            )
        ),
        soft_wrap=True,
    )
    for example in result.examples:
        console.print(f"  {example}", soft_wrap=True, markup=False)


@cli.command()
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@click.pass_obj
def backup(options: Options, dest: str, force: bool) -> None:
    """Copy the database to DEST while writers keep running (a consistent snapshot,
    readable by its owner only)."""
    from .database import Database
    from .maintenance import backup as run_backup

    _refuse_missing_file(options.url)
    with Database(options.url) as database:
        result = run_backup(database, dest, overwrite=force)
        url = database.url
    click.echo(
        f"backed up {url} to {result.path}: {result.blocks:,} blocks, "
        f"{result.size / 1024 / 1024:.2f} MiB, mode {result.mode:04o}, in {result.seconds:.2f}s"
    )


@cli.command()
@click.option(
    "--mode",
    type=click.Choice(["passive", "full", "restart", "truncate"]),
    default="passive",
    show_default=True,
    help="passive never waits; full/restart/truncate wait for writers; "
    "truncate also empties the WAL file.",
)
@click.pass_obj
def checkpoint(options: Options, mode: str) -> None:
    """Copy the WAL into the database file and show the WAL size before and after."""
    from .database import Database
    from .maintenance import checkpoint as run_checkpoint

    _refuse_missing_file(options.url)
    with Database(options.url) as database:
        result = run_checkpoint(database, mode)
        url = database.url
    if not result.in_wal_mode:
        click.echo(f"{url} is not in WAL mode: nothing to checkpoint")
        return
    click.echo(
        f"checkpoint ({result.mode}) of {url}: {result.checkpointed} of {result.wal_frames} "
        f"WAL frames copied; WAL {_size(result.wal_before)} -> {_size(result.wal_after)}"
    )
    if result.busy:
        click.echo(
            "not complete: a reader or writer was in the way; run it again when the "
            "database is quieter (or use --mode truncate to wait for them)"
        )


def _refuse_missing_file(url: str | None) -> None:
    """Maintenance works on an existing database. Opening a missing one would create it
    empty, and a backup of that could replace the last good one (``--force``)."""
    import os

    from .settings import Settings

    path = Settings.resolve(url).sqlite_path
    if path is not None and not os.path.exists(path):
        raise errors.DatabaseUnavailableError(
            f"{os.path.abspath(path)} does not exist (maintenance commands never create a "
            "database): check --url / APP_DATABASE_URL"
        )


def _size(size: int) -> str:
    return f"{size / 1024 / 1024:.2f} MiB" if size >= 1024 * 1024 else f"{size:,} bytes"


from ._bench._search_cli import bench_search  # noqa: E402 - registered with the others

cli.add_command(bench_search)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="app")


if __name__ == "__main__":
    main()
