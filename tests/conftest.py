"""Shared fixtures: each test gets its own database, on every backend.

``backend`` is parametrised: ``sqlite`` (a file under ``tmp_path``) and ``postgres`` (a
fresh schema in the server named by ``APP_TEST_POSTGRES_URL``, dropped afterwards). Without
that variable the PostgreSQL cases are skipped with a reason; CI sets it and fails if they
were skipped.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import Database

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY_FIXTURE = FIXTURES / "greeum-2.1.0-memory.db"
POSTGRES_ENV = "APP_TEST_POSTGRES_URL"

#: The legacy class's DDL, verbatim (Greeum 2.1.0 DatabaseManager._create_schemas).
LEGACY_DDL = [
    """CREATE TABLE IF NOT EXISTS blocks (
        block_index INTEGER PRIMARY KEY,
        timestamp TEXT NOT NULL,
        context TEXT NOT NULL,
        importance REAL NOT NULL,
        hash TEXT NOT NULL,
        prev_hash TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS block_keywords (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        block_index INTEGER NOT NULL,
        keyword TEXT NOT NULL,
        FOREIGN KEY (block_index) REFERENCES blocks(block_index),
        UNIQUE(block_index, keyword)
    )""",
    """CREATE TABLE IF NOT EXISTS block_tags (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        block_index INTEGER NOT NULL,
        tag TEXT NOT NULL,
        FOREIGN KEY (block_index) REFERENCES blocks(block_index),
        UNIQUE(block_index, tag)
    )""",
    """CREATE TABLE IF NOT EXISTS block_metadata (
        block_index INTEGER PRIMARY KEY,
        metadata TEXT NOT NULL,
        FOREIGN KEY (block_index) REFERENCES blocks(block_index)
    )""",
    """CREATE TABLE IF NOT EXISTS block_embeddings (
        block_index INTEGER PRIMARY KEY,
        embedding BLOB NOT NULL,
        embedding_model TEXT,
        embedding_dim INTEGER,
        FOREIGN KEY (block_index) REFERENCES blocks(block_index)
    )""",
    """CREATE TABLE IF NOT EXISTS short_term_memories (
        id TEXT PRIMARY KEY,
        timestamp TEXT NOT NULL,
        content TEXT NOT NULL,
        speaker TEXT,
        metadata TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_blocks_timestamp ON blocks(timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_block_keywords ON block_keywords(keyword)",
    "CREATE INDEX IF NOT EXISTS idx_block_tags ON block_tags(tag)",
    "CREATE INDEX IF NOT EXISTS idx_stm_timestamp ON short_term_memories(timestamp)",
]


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def _postgres_schema_url(schema: str) -> str:
    base = make_url(postgres_url() or "")
    return base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A URL for a new, empty schema on the test server, dropped afterwards."""
    schema = prefix + uuid.uuid4().hex[:12]
    admin = create_engine(postgres_url() or "", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _postgres_schema_url(schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: 'sqlite' or 'postgres'."""
    if request.param == "postgres" and not postgres_url():
        reason = f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql+psycopg://127.0.0.1/test)"
        if os.environ.get("APP_REQUIRE_POSTGRES"):
            pytest.fail(f"APP_REQUIRE_POSTGRES is set, but {reason}")
        pytest.skip(reason)
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


def make_counter_table(db: Database) -> None:
    """A one-row counter for read-modify-write tests."""
    with db.unit_of_work() as session:
        session.execute(
            text("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)")
        )
        session.execute(text("INSERT INTO counter VALUES (1, 0)"))


def increment_counter(session: Session) -> None:
    """Read the counter, then write it back plus one: loses updates unless units serialise."""
    value = session.execute(text("SELECT value FROM counter WHERE id = 1")).scalar_one()
    session.execute(text("UPDATE counter SET value = :v WHERE id = 1"), {"v": value + 1})


def in_thread(fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Run ``fn`` in a new thread; return its result or the exception it raised."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            outcome.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "thread deadlocked"
    return outcome[0]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_cli(*args: str) -> Result:
    """Run the command line in-process with ``args``."""
    from app.cli import cli

    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result: Result) -> str:
    """The command failed (exit 1) with exactly one ``Error:`` line and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]
