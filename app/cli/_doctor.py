"""``app doctor``: the database's checks (``app.operations.doctor``) shown as a table, with advice
and a verdict."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.text import Text

from app.cli._support import (
    STATUS_STYLE,
    Options,
    ProgressLines,
    make_console,
    make_table,
    print_title,
    url_option,
)


@click.command()
@click.option("--verify-chain", is_flag=True, help="Also recompute every block's hash and link.")
@url_option
@click.pass_context
def doctor(ctx: click.Context, verify_chain: bool) -> None:
    """Check the database: versions, file sizes, quick_check, pragmas in force, schema
    revision, pool, block count (and the chain). Ends with one verdict line; exits 1, with
    advice, when something is wrong (a missing file or schema included)."""
    from app.operations.doctor import diagnose

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
