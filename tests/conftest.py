"""Shared fixtures: each test gets its own database, on every backend.

``backend`` is parametrised: ``sqlite`` (a file under ``tmp_path``) and ``postgres`` (a
fresh schema in the server named by ``APP_TEST_POSTGRES_URL``, dropped afterwards). Without
that variable the PostgreSQL cases are skipped with a reason; CI sets it and fails if they
were skipped.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import Database

from .helpers import postgres_schema, require_backend
from .legacy_helpers import LEGACY_FIXTURE


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: 'sqlite' or 'postgres'."""
    require_backend(str(request.param))
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty database of the current backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'memory.db'}"
        return
    with postgres_schema("t_") as url:
        yield url


@pytest.fixture
def make_db(db_url: str) -> Iterator[Callable[..., Database]]:
    """Open Databases on this test's URL (schema upgraded), disposed after the test."""
    opened: list[Database] = []

    def factory(**settings: Any) -> Database:
        settings.setdefault("auto_upgrade", True)
        database = Database(db_url, **settings)
        opened.append(database)
        return database

    yield factory
    for database in opened:
        database.dispose()


@pytest.fixture
def db(make_db: Callable[..., Database]) -> Database:
    """A Database with the current schema on the current backend."""
    return make_db()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A SQLite file database (for SQLite-only behaviour)."""
    database = Database(f"sqlite:///{tmp_path / 'memory.db'}")
    yield database
    database.dispose()


@pytest.fixture
def legacy_copy(tmp_path: Path) -> Path:
    """A private copy of the real database written by the legacy class."""
    target = tmp_path / "legacy" / "memory.db"
    target.parent.mkdir()
    shutil.copyfile(LEGACY_FIXTURE, target)
    return target


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Skips counted by reason, one line each (``-r`` leaves skips out: without a PostgreSQL
    server, hundreds of cases skip for one reason, each on a line of its own)."""
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        counts[reason] = counts.get(reason, 0) + 1
    if counts:
        terminalreporter.section("skipped, by reason", sep="-")
        for reason, count in sorted(counts.items(), key=lambda item: -item[1]):
            terminalreporter.line(f"{count:5d}  {reason}")
