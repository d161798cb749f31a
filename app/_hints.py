"""The commands that messages tell people to run: the package to install, and the command
line for one database.

Kept in one place so every hint names the same distribution and can be followed literally.
"""

from __future__ import annotations

import shlex

#: The distribution on the package index. The import package and the console script are
#: both ``app``; a distribution called ``app`` on the index belongs to someone else.
DISTRIBUTION = "hashchain-memory-db"


def install_hint(extra: str) -> str:
    """``pip install 'DISTRIBUTION[extra]'``, the command that installs an optional extra."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def command_hint(url: str | None, *words: str) -> str:
    """``python -m app --url URL WORDS``: a command that acts on the database at ``url``.

    The URL is always spelled out: without it the command would act on whatever
    ``APP_DATABASE_URL`` or the default names where it is run, which may be another
    database. A hidden password stays hidden (``***``): put it back before running.
    """
    parts = ["python", "-m", "app"]
    if url:
        parts += ["--url", shlex.quote(url)]
    return " ".join([*parts, *words])
