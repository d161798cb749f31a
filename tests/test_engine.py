"""The engine factory: pool choice, pragmas on every connection, bad paths refused early."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.pool import QueuePool, StaticPool

from app import BlockStore, Database
from app.errors import ConfigurationError, NotADatabaseError, ReadOnlyDatabaseError

from .helpers import run_threads


def _pragmas(db: Database) -> dict[str, object]:
    names = (
        "journal_mode",
        "foreign_keys",
        "synchronous",
        "busy_timeout",
        "journal_size_limit",
        "trusted_schema",
        "cache_size",
        "temp_store",
        "mmap_size",
    )
    with db.read() as session:
        values = {name: session.execute(text(f"PRAGMA {name}")).scalar() for name in names}
        raw = session.connection().connection.dbapi_connection
        values["isolation_level"] = raw.isolation_level  # type: ignore[union-attr]
    return values


def test_pragmas_hold_on_every_pooled_connection(tmp_path: Path) -> None:
    db = Database(
        f"sqlite:///{tmp_path / 'p.db'}",
        pool_size=4,
        max_overflow=4,
        busy_timeout=3.5,
        cache_size=-8000,
        temp_store="memory",
        mmap_size=1 << 20,
        journal_size_limit=1 << 22,
    )
    seen: list[dict[str, object]] = []
    inside = threading.Barrier(8, timeout=60)

    def worker(_: int) -> None:
        # All eight read units open at once: the pool must open eight connections.
        with db.read() as session:
            start_read = session.execute(text("PRAGMA foreign_keys")).scalar()
            assert start_read == 1
            seen.append(_pragmas(db))
            inside.wait()

    assert run_threads(8, worker) == []
    assert len(seen) == 8
    # The pool keeps pool_size of them; the overflow connections closed on return.
    assert db.engine.pool.checkedin() == 4  # type: ignore[attr-defined]
    expected = {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "synchronous": 1,
        "busy_timeout": 3500,
        "journal_size_limit": 1 << 22,
        "trusted_schema": 0,
        "cache_size": -8000,
        "temp_store": 2,
        "mmap_size": 1 << 20,
        "isolation_level": None,
    }
    assert seen == [expected] * 8
    assert isinstance(db.engine.pool, QueuePool)
    db.dispose()


def test_full_synchronous_is_applied(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'f.db'}", synchronous="FULL")
    assert _pragmas(db)["synchronous"] == 2
    db.dispose()


def test_memory_database_is_one_database_shared_by_threads() -> None:
    db = Database("sqlite://")
    assert isinstance(db.engine.pool, StaticPool)
    with db.unit_of_work() as session:
        session.execute(text("CREATE TABLE shared (value INTEGER)"))

    def worker(value: int) -> None:
        with db.unit_of_work() as session:
            session.execute(text("INSERT INTO shared VALUES (:v)"), {"v": value})

    assert run_threads(20, worker) == []
    with db.read() as session:
        assert session.execute(text("SELECT count(*), sum(value) FROM shared")).one() == (20, 190)
    db.dispose()


def test_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "memory.db"
    db = Database(f"sqlite:///{path}")
    assert path.is_file()
    assert (path.stat().st_mode & 0o777) == 0o600
    db.dispose()


def test_explicit_file_mode_is_respected(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    db = Database(f"sqlite:///{path}", file_mode=0o640)
    assert (path.stat().st_mode & 0o777) == 0o640
    db.dispose()


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="cannot create directory"):
        Database(f"sqlite:///{blocker / 'sub' / 'memory.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory"):
        Database(f"sqlite:///{tmp_path}")


def test_file_that_is_not_a_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database\n" * 100
    path.write_bytes(content)
    with pytest.raises(NotADatabaseError, match="not a SQLite database"):
        Database(f"sqlite:///{path}")
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_read_only_file_is_refused_before_anything_changes(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    Database(f"sqlite:///{path}").dispose()
    before = path.read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir())
    with read_only(path):
        with pytest.raises(ReadOnlyDatabaseError, match="read-only"):
            Database(f"sqlite:///{path}")
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == files


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable, even for root (who ignores permission bits)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    if subprocess.run(["chattr", "+i", str(path)], check=False).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_wal_failure_is_reported(tmp_path: Path) -> None:
    # The unix-none VFS has no shared-memory support, so WAL cannot be switched on.
    path = tmp_path / "nowal.db"
    with pytest.raises(ConfigurationError, match="could not switch to WAL"):
        Database(f"sqlite:///file:{path}?vfs=unix-none&uri=true")


_OTHER_PROCESS = """
import sys
from app import BlockStore, Database
db = Database(sys.argv[1])
store = BlockStore(db)
if sys.argv[2] == "append":
    store.append("from another process")
print([r.context for r in store.page(0, 10)])
db.dispose()  # its last connection closes: SQLite checkpoints and removes the WAL if alone
"""


def _in_another_process(url: str, action: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, url, action],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    return list(ast.literal_eval(done.stdout.strip()))


def test_opening_the_file_again_keeps_this_process_locks(tmp_path: Path) -> None:
    """A second Database on a file this process has open must not drop the first one's
    locks (closing any descriptor of a file drops every POSIX lock of the process on it).
    Without them, another process that closes its last connection believes it is alone and
    removes the WAL: the first Database's next commits go to a file nobody else reads."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    first = Database(url)
    try:
        store = BlockStore(first)
        store.append("before")
        second = Database(url)  # checks the existing file while `first` holds it open
        second.dispose()
        assert _in_another_process(url, "append") == ["before", "from another process"]
        store.append("after")
        # Committed, so every other connection sees it.
        expected = ["before", "from another process", "after"]
        assert _in_another_process(url, "read") == expected
    finally:
        first.dispose()
    assert _in_another_process(url, "read") == expected
