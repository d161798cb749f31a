"""The commands that move or tend the data: ``copy``, ``import-jsonl``, ``backup``,
``checkpoint`` and ``reindex``."""

from __future__ import annotations

import os

import click
from rich.progress import (
    TaskID,
)
from rich.text import Text

from app.cli._db import open_database
from app.cli._support import (
    Options,
    ProgressLines,
    make_console,
    make_table,
    print_title,
    url_option,
)
from app.operations.transfer import DEFAULT_BATCH as DEFAULT_COPY_BATCH

# -- copy ------------------------------------------------------------------------------------


@click.command("copy")
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
    from app.operations.transfer import copy_database
    from app.settings import Settings

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
    from app.blocks.jsonl_import import JSONL_FIELDS

    return (
        "Import blocks from a JSONL FILE (one block per line), as the legacy "
        "migrate_from_jsonl did; running it again imports nothing twice.\n\n\b\n" + JSONL_FIELDS
    )


@click.command("import-jsonl", help=_import_help())
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@url_option
@click.pass_context
def import_jsonl(ctx: click.Context, file: str) -> None:
    from app.blocks.jsonl_import import import_jsonl as run_import

    options: Options = ctx.obj
    console = make_console()
    with open_database(options) as database, ProgressLines(options) as progress:
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


@click.command()
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@url_option
@click.pass_obj
def backup(options: Options, dest: str, force: bool) -> None:
    """Copy the database to DEST while writers keep running (a consistent snapshot,
    readable by its owner only). DEST is a file path, or a sqlite:/// URL of one."""
    from app.operations.maintenance import backup as run_backup
    from app.operations.maintenance import backup_path

    dest = backup_path(dest)
    with open_database(options) as database:
        result = run_backup(database, dest, overwrite=force)
        url = database.url
    click.echo(
        f"backed up {url} to {result.path}: {result.blocks:,} blocks, "
        f"{result.size / 1024 / 1024:.2f} MiB, mode {result.mode:04o}, in {result.seconds:.2f}s"
    )


@click.command()
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
    from app.operations.maintenance import checkpoint as run_checkpoint

    with open_database(options) as database:
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


@click.command()
@url_option
@click.pass_obj
def reindex(options: Options) -> None:
    """Rebuild the search indexes: restore what of them is missing (a migration that
    rebuilt the blocks table drops triggers and indexes) and index every block afresh."""
    from app.operations.maintenance import reindex as run_reindex

    # No upgrade on open, which would restore what is missing before the command sees it.
    with open_database(options, auto_upgrade=False) as database:
        result = run_reindex(database)
        url = database.url
    restored = f"restored {'; '.join(result.restored)}; " if result.restored else ""
    click.echo(f"{url}: {restored}{result.indexed:,} blocks indexed in {result.seconds:.2f}s")


def _size(size: int) -> str:
    return f"{size / 1024 / 1024:.2f} MiB" if size >= 1024 * 1024 else f"{size:,} bytes"
