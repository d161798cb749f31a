"""The revisions of the schema as Alembic's script directory holds them: where it is, the
head, the history, which revisions a database is at, and the frozen definitions a revision
keeps (read by the schema and search-index modules without running the revision).

The lowest module of the schema layer: it imports nothing of the layer but its errors, so
the modules that restore what a migration dropped can read revisions without a circle.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from app import errors

#: The script directory chosen by :func:`use_migrations_dir` (None: the bundled one).
_chosen: Path | None = None


def use_migrations_dir(directory: str | Path | None) -> None:
    """Run the schema from ``directory`` instead of the bundled migrations (None: back to
    them): for an application that keeps its own copy of the revisions and adds its own on
    top (see docs/guide/operations.md). The script cache is read again.

    Raises:
        ConfigurationError: ``directory`` has no Alembic ``env.py``.
    """
    global _chosen
    if directory is not None:
        directory = Path(directory)
        if not (directory / "env.py").is_file():
            raise errors.ConfigurationError(
                f"{directory} is not an Alembic script directory (no env.py in it)"
            )
    _chosen = directory
    reset_script_cache()


def migrations_dir() -> Path:
    """The Alembic script directory: the one :func:`use_migrations_dir` chose, else the
    bundled one (inside the installed package, or beside it in a checkout)."""
    if _chosen is not None:
        return _chosen
    package = Path(errors.__file__).resolve().parent  # the app package
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise errors.ConfigurationError(
        f"the migrations directory was not found next to {package}; reinstall the package"
    )


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic Config for the bundled migrations, optionally bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    config.attributes["configure_logger"] = False
    return config


@functools.cache
def script() -> ScriptDirectory:
    """Alembic's script directory of :func:`migrations_dir` (cached; see
    :func:`reset_script_cache`)."""
    return ScriptDirectory.from_config(alembic_config())


def reset_script_cache() -> None:
    """Read the migrations directory again (after revisions were added to it)."""
    script.cache_clear()


def head_revision() -> str:
    """The revision this code expects."""
    head = script().get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    doc: str
    is_head: bool


def history() -> list[Revision]:
    """Every revision, oldest first."""
    revisions = list(script().walk_revisions())
    revisions.reverse()
    return [
        Revision(
            r.revision,
            r.down_revision if isinstance(r.down_revision, str) else None,
            r.doc,
            r.is_head,
        )
        for r in revisions
    ]


def applied_revisions(connection: Connection) -> set[str]:
    """The revisions the connection's database is at or past (empty before any; every
    revision this code knows when it is at one it does not know, made by newer code)."""
    current = MigrationContext.configure(connection).get_current_heads()
    if not current:
        return set()
    known = {r.revision for r in history()}
    if not set(current) <= known:
        return known
    return {r.revision for r in script().iterate_revisions(current, "base")}


def revision_module(revision: str) -> ModuleType:
    """The module of a revision: what it defines is frozen in it, and the layer reads it
    from there (the legacy layout, the DDL of what the layer keeps beside the models)."""
    found = script().get_revision(revision)
    assert found is not None
    return found.module


def legacy_layout() -> MetaData:
    """The legacy tables as revision 0001 defines them (frozen in the revision itself)."""
    layout: MetaData = revision_module("0001").LAYOUT
    return layout
