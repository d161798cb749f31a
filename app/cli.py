"""The command line: ``app`` (console script) or ``python -m app``.

A thin layer: each command parses its options, calls library functions (``app.schema``,
``app.doctor``, ``app.stress``, ``app.maintenance``, ``app.jsonl_import``) and prints their
results. Errors are turned into one line and a non-zero exit in one place,
:meth:`AppGroup.invoke`; ``-v`` adds logging and progress lines, ``-vv`` also tracebacks.
Progress bars go to stderr when it is a terminal; elsewhere ``-v`` prints plain progress
lines there, so stdout holds only results.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.progress import (
    TaskID,
)
from rich.table import Table
from rich.text import Text

from . import __version__
from ._cli_support import (
    STATUS_STYLE,
    URL_HELP,
    AppGroup,
    Options,
    ProgressLines,
    configure_logging,
    make_console,
    make_table,
    print_title,
    url_option,
)
from .settings import URL_ENV
from .stress import DEFAULT_BLOCKS, DEFAULT_READ_PAUSE, DEFAULT_READ_THREADS, DEFAULT_THREADS
from .transfer import DEFAULT_BATCH as DEFAULT_COPY_BATCH


@click.group(cls=AppGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", metavar="URL", default=None, help=URL_HELP)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="-v logs what happens (new files, progress lines), -vv also debug logs and tracebacks.",
)
@click.version_option(__version__, prog_name="app")
@click.pass_context
def cli(ctx: click.Context, url: str | None, verbose: int) -> None:
    """A thread-safe database layer for a hash-chained block store: check, migrate,
    stress, copy and back it up."""
    configure_logging(verbose)
    ctx.obj = Options(url, verbose)


def _open(options: Options, **settings: Any) -> Any:
    """The Database the options name. Every command but ``db upgrade`` and ``stress``
    refuses a missing file: a mistyped path must not start an empty database."""
    from .database import Database

    settings.setdefault("create", False)
    return Database(options.url, **settings)


# -- db: migrations --------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Schema migrations (Alembic, run through the application's own engine)."""


def _revision_name(revision: str | None) -> str:
    from .schema import head_revision

    if revision is None:
        return "none"
    return f"{revision} (head)" if revision == head_revision() else revision


def _migrate(options: Options, action: str, revision: str, *, create: bool = False) -> None:
    from . import schema

    with _open(options, check_schema=False, create=create) as database:
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
@url_option
@click.pass_obj
def upgrade(options: Options, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head), creating the database file when it
    does not exist.

    A database written by the legacy class is adopted first (its tables are checked).
    """
    _migrate(options, "upgrade", revision, create=True)


class _RelativeRevision(click.Command):
    """Takes a relative revision such as ``-1`` as the argument rather than an option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        relative = [a for a in args if len(a) > 1 and a[0] == "-" and a[1:].isdigit()]
        if relative:
            args = [a for a in args if a not in relative]
            args = [*args, "--", *relative]
        return super().parse_args(ctx, args)


@db.command(cls=_RelativeRevision)
@click.argument("revision")
@click.option(
    "--yes", is_flag=True, help="Drop the tables even when they hold data (without asking)."
)
@url_option
@click.pass_obj
def downgrade(options: Options, revision: str, yes: bool) -> None:
    """Downgrade the schema to REVISION: a revision id, -1 (one step back), or base.

    Going below revision 0001 drops the block store's tables: when they hold data, that
    is asked on a terminal, and refused elsewhere unless --yes is given.
    """
    from . import schema

    with _open(options, check_schema=False) as database:
        doomed = schema.rows_dropped_by_downgrade(database, revision)
        url = database.url
    if doomed and not yes:
        what = ", ".join(f"{count:,} rows in {name}" for name, count in doomed.items())
        question = f"downgrading {url} to {revision} drops its tables, which hold {what}"
        if not _asked(f"{question}. Drop them?"):
            raise click.ClickException(
                f"{question}; nothing was changed. Make a backup first (app backup DEST), "
                "then give --yes to drop them"
            )
    _migrate(options, "downgrade", revision)


def _asked(question: str) -> bool:
    """True when a person at a terminal answers yes; False when nobody can be asked."""
    import sys

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return False
    return click.confirm(question, default=False)


@db.command()
@click.argument("revision")
@url_option
@click.pass_obj
def stamp(options: Options, revision: str) -> None:
    """Record REVISION as the schema's revision without running migrations."""
    _migrate(options, "stamp", revision)


@db.command()
@url_option
@click.pass_obj
def current(options: Options) -> None:
    """Show the database's schema revision."""
    from ._hints import command_hint
    from .schema import current_revision

    with _open(options, check_schema=False) as database:
        revision = current_revision(database)
        url = database.url
    note = ""
    if not revision:
        note = (
            f" (empty, or written by the legacy class: run `{command_hint(url, 'db', 'upgrade')}`)"
        )
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
@url_option
@click.pass_context
def doctor(ctx: click.Context, verify_chain: bool) -> None:
    """Check the database: versions, file sizes, quick_check, pragmas in force, schema
    revision, pool, block count (and the chain). Ends with one verdict line; exits 1, with
    advice, when something is wrong (a missing file or schema included)."""
    from .doctor import diagnose

    options: Options = ctx.obj
    console = make_console()
    with ProgressLines(options, enabled=verify_chain) as progress:
        task = progress.add("verifying the chain")

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = diagnose(options.url, verify_chain=verify_chain, progress=advance)
    print_title(console, f"doctor: {report.url}")
    table = make_table("check", "status", "value", header=False)
    table.columns[0].style = "bold"
    table.columns[2].overflow = "fold"
    for check in report.checks:
        style = STATUS_STYLE.get(check.status, "")
        status = "" if check.status == "info" else check.status
        table.add_row(check.name, Text(status, style=style), Text(check.value))
    console.print(table)
    for check in report.problems:
        style = STATUS_STYLE[check.status]
        console.print(
            f"[{style}]{check.status}[/] {check.name}: {escape(check.advice)}", soft_wrap=True
        )
    console.print(
        Text(report.verdict, style="bold green" if report.ok else "bold red"), soft_wrap=True
    )
    if not report.ok:
        ctx.exit(1)


# -- stress ----------------------------------------------------------------------------------


@cli.command()
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
    from .stress import run_stress

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
    default=DEFAULT_COPY_BATCH,
    show_default=True,
    type=click.IntRange(1),
    help="Rows read and written per statement.",
)
@url_option
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

    console = make_console()
    with ProgressLines(options) as progress:
        tasks: dict[str, TaskID] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                label = "verifying the chain" if stage == "verify" else f"copying {stage}"
                tasks[stage] = progress.add(label, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        result = copy_database(
            Settings.resolve(options.url).url,
            target,
            force=force,
            batch_size=batch_size,
            progress=advance,
        )
    print_title(console, f"copy: {result.source} -> {result.target}")
    table = make_table("table", "source rows", "target rows")
    table.columns[1].justify = table.columns[2].justify = "right"
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


def _import_help() -> str:
    from .jsonl_import import JSONL_FIELDS

    return (
        "Import blocks from a JSONL FILE (one block per line), as the legacy "
        "migrate_from_jsonl did; running it again imports nothing twice.\n\n\b\n" + JSONL_FIELDS
    )


@cli.command("import-jsonl", help=_import_help())
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@url_option
@click.pass_context
def import_jsonl(ctx: click.Context, file: str) -> None:
    from .jsonl_import import import_jsonl as run_import

    options: Options = ctx.obj
    console = make_console()
    with _open(options) as database, ProgressLines(options) as progress:
        task = progress.add("importing (bytes)", total=os.path.getsize(file))
        result = run_import(
            database, file, progress=lambda done: progress.update(task, completed=done)
        )
        url = database.url
    reasons = ", ".join(f"{n} {why}" for why, n in result.reasons.items())
    console.print(
        f"imported {result.imported:,} blocks into {url} ({result.kept:,} as given, "
        f"{result.appended:,} appended to the chain); {result.duplicates:,} already present "
        f"(skipped as duplicates); skipped {result.skipped:,} of {result.lines:,} lines"
        + (f": {reasons}" if reasons else ""),
        soft_wrap=True,
        markup=False,
    )
    for example in result.examples:
        console.print(f"  {example}", soft_wrap=True, markup=False)
    if result.skipped and not result.imported and not result.duplicates:
        # Every line was refused: nothing of the file is in the database, which a script
        # must not take for success (duplicates are what a second import finds).
        ctx.exit(1)


@cli.command()
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@url_option
@click.pass_obj
def backup(options: Options, dest: str, force: bool) -> None:
    """Copy the database to DEST while writers keep running (a consistent snapshot,
    readable by its owner only). DEST is a file path, or a sqlite:/// URL of one."""
    from .maintenance import backup as run_backup
    from .maintenance import backup_path

    dest = backup_path(dest)
    with _open(options) as database:
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
@url_option
@click.pass_obj
def checkpoint(options: Options, mode: str) -> None:
    """Copy the WAL into the database file and show the WAL size before and after."""
    from .maintenance import checkpoint as run_checkpoint

    with _open(options) as database:
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


@cli.command()
@url_option
@click.pass_obj
def reindex(options: Options) -> None:
    """Rebuild the search indexes: restore what of them is missing (a migration that
    rebuilt the blocks table drops triggers and indexes) and index every block afresh."""
    from .maintenance import reindex as run_reindex

    # No upgrade on open, which would restore what is missing before the command sees it.
    with _open(options, auto_upgrade=False) as database:
        result = run_reindex(database)
        url = database.url
    restored = f"restored {'; '.join(result.restored)}; " if result.restored else ""
    click.echo(f"{url}: {restored}{result.indexed:,} blocks indexed in {result.seconds:.2f}s")


def _size(size: int) -> str:
    return f"{size / 1024 / 1024:.2f} MiB" if size >= 1024 * 1024 else f"{size:,} bytes"


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="app")


if __name__ == "__main__":
    main()
