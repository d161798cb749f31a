"""The ``db`` command group: schema migrations from the command line; and the Database a
command opens."""

from __future__ import annotations

from typing import Any

import click

from app.cli._support import Options, url_option


def open_database(options: Options, **settings: Any) -> Any:
    """The Database the options name. Every command but ``db upgrade`` and ``stress``
    refuses a missing file: a mistyped path must not start an empty database."""
    from app.database import Database

    settings.setdefault("create", False)
    return Database(options.url, **settings)


@click.group()
def db() -> None:
    """Schema migrations (Alembic, run through the application's own engine)."""


def _revision_name(revision: str | None) -> str:
    from app.schema import head_revision

    if revision is None:
        return "none"
    return f"{revision} (head)" if revision == head_revision() else revision


def _migrate(options: Options, action: str, revision: str, *, create: bool = False) -> None:
    from app import schema

    with open_database(options, check_schema=False, create=create) as database:
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
    from app import schema

    with open_database(options, check_schema=False) as database:
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
    from app._hints import command_hint
    from app.schema import current_revision

    with open_database(options, check_schema=False) as database:
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
    from app.schema import history as revisions

    for item in revisions():
        head = " (head)" if item.is_head else ""
        click.echo(f"{item.down_revision or 'base'} -> {item.revision}{head}: {item.doc}")
