"""What every command of the command line shares: the options that may come before or
after the command name, one-line errors, logging, tables and progress."""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from app import errors

URL_HELP = (
    "Database URL (sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql+psycopg://user@host/db). Default: $APP_DATABASE_URL, then "
    "sqlite:///data/memory.db. Accepted before or after the command name."
)
STATUS_STYLE = {"ok": "green", "info": "", "warn": "yellow", "fail": "bold red"}
#: Seconds between two plain progress lines.
PROGRESS_EVERY = 2.0

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Options:
    """Global options, handed to every command as ``ctx.obj``."""

    url: str | None
    verbose: int


class AppGroup(click.Group):
    """Turns expected errors into ``Error: <one line>`` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("verbose", 0) >= 2:
                raise
            raise click.ClickException(one_line(exc)) from exc


def one_line(exc: BaseException) -> str:
    """The error as one line: the layer's own message, else the driver's, else the type."""
    if isinstance(exc, errors.AppError):
        text = str(exc)
    elif isinstance(exc, SQLAlchemyError | sqlite3.Error | OSError):
        cause = getattr(exc, "orig", None) or exc
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (run with -vv for the traceback)"
    return " ".join(text.split())


def can_import(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def make_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped or captured output: do not squeeze long values into 80 columns.
        console.width = max(console.width, 160)
    return console


def print_title(console: Console, title: str) -> None:
    """A table's title on a line of its own: never wrapped inside a URL."""
    console.print(Text(title, style="bold"), soft_wrap=True)


def make_table(*columns: str, header: bool = True) -> Table:
    """The one table style of the command line."""
    table = Table(box=box.SIMPLE_HEAD, show_header=header, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table


class ProgressLines:
    """Progress of one command: a bar on a terminal, else plain lines with ``-v``.

    Both go to stderr, so stdout holds only results (tables, JSON) whatever is shown.
    """

    def __init__(self, options: Options, *, enabled: bool = True) -> None:
        self._bar: Progress | None = None
        self._plain = False
        self._tasks: dict[TaskID, list[Any]] = {}
        self._started = time.monotonic()
        if not enabled:
            return
        console = Console(stderr=True, highlight=False)
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
        elif options.verbose:
            self._plain = True

    def __enter__(self) -> ProgressLines:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._plain:
            for task in self._tasks:
                self._line(task)

    def note(self, line: str) -> None:
        """A line on stderr, above the bar when there is one (never through it)."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(line, err=True)

    def add(self, description: str, total: int | None = None) -> TaskID:
        if self._bar is not None:
            return self._bar.add_task(description, total=total)
        task = TaskID(len(self._tasks))
        # description, completed, total, when the last line was printed, printed state
        self._tasks[task] = [description, 0, total, 0.0, None]
        return task

    def update(
        self,
        task: TaskID,
        *,
        completed: int | None = None,
        total: int | None = None,
        description: str | None = None,
        advance: int = 0,
    ) -> None:
        if self._bar is not None:
            self._bar.update(
                task, completed=completed, total=total, description=description, advance=advance
            )
            return
        if not self._plain:
            return
        state = self._tasks[task]
        if description is not None and description != state[0]:
            self._line(task)  # the end of what it described
            state[0], state[1] = description, 0
        if completed is not None:
            state[1] = completed
        state[1] += advance
        if total is not None:
            state[2] = total
        if time.monotonic() - state[3] >= PROGRESS_EVERY:
            self._line(task)

    def _line(self, task: TaskID) -> None:
        description, done, total, _, printed = self._tasks[task]
        if not description or printed == (description, done, total):
            return
        count = f"{done:,}" if total is None else f"{done:,} of {total:,}"
        if total:
            count += f" ({100 * done // total}%)"
        elapsed = time.monotonic() - self._started
        click.echo(f"{description}: {count}, {elapsed:.1f}s", err=True)
        self._tasks[task][3:] = [time.monotonic(), (description, done, total)]


def set_url(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    options = ctx.find_object(Options)
    assert options is not None
    if options.url is not None and options.url != value:
        raise click.UsageError(
            f"--url is given twice, as {options.url!r} and {value!r}: give it once"
        )
    options.url = value


def add_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    options = ctx.find_object(Options)
    assert options is not None
    if value:
        options.verbose += value
        configure_logging(options.verbose)


def url_option(command: F) -> F:
    """``--url`` and ``-v`` after the command name too: ``app doctor --url X -v`` works as
    ``app -v --url X doctor`` does."""
    command = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        is_eager=True,
        callback=add_verbose,
        help="As -v before the command name.",
    )(command)
    return click.option(
        "--url",
        metavar="URL",
        default=None,
        expose_value=False,
        is_eager=True,
        callback=set_url,
        help=URL_HELP,
    )(command)


def configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose:  # basicConfig does nothing once the root logger has a handler
        logging.getLogger().setLevel(level)
    # Alembic logs its plugin set-up and every step at INFO; the commands print what
    # changed, so its lines are kept for -vv.
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
