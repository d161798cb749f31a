"""The command line: ``app`` (console script) or ``python -m app``.

A thin layer: each command parses its options, calls library functions (``app.schema``,
``app.operations.doctor``, ``app.operations.stress``, ``app.operations.maintenance``,
``app.blocks.jsonl_import``) and prints their results. Errors are turned into one line and
a non-zero exit in one place,
:meth:`AppGroup.invoke`; ``-v`` adds logging and progress lines, ``-vv`` also tracebacks.
Progress bars go to stderr when it is a terminal; elsewhere ``-v`` prints plain progress
lines there, so stdout holds only results.

Layer 11, the command line: the top. May import: every layer (``app.operations``
above all).
"""

from __future__ import annotations

import click

from app._version import __version__
from app.cli._db import current, db, downgrade, history, stamp, upgrade
from app.cli._doctor import doctor
from app.cli._maintenance import backup, checkpoint, copy, import_jsonl, reindex
from app.cli._stress import stress
from app.cli._support import URL_HELP, AppGroup, Options, configure_logging
from app.cli._top import top

__all__ = [
    "backup",
    "checkpoint",
    "cli",
    "copy",
    "current",
    "db",
    "doctor",
    "downgrade",
    "history",
    "import_jsonl",
    "main",
    "reindex",
    "stamp",
    "stress",
    "top",
    "upgrade",
]


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


cli.add_command(db)
cli.add_command(doctor)
cli.add_command(stress)
cli.add_command(copy)
cli.add_command(import_jsonl)
cli.add_command(backup)
cli.add_command(checkpoint)
cli.add_command(reindex)
cli.add_command(top)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="app")


if __name__ == "__main__":
    main()
