"""``python -m app``: the command line (see :mod:`app.cli`)."""

from .cli import main

main()
