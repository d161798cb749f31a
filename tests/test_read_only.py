"""A database this process may read but not write: another account's file, a read-only
mount, a backup on read-only media. Opened with ``read_only`` (``?mode=ro``) or
``immutable`` (``?immutable=1``): reads work, every write is refused by name, and nothing is
created or changed next to the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app import BlockStore, Database, DatabaseManager, errors
from app.models import ShortTermMemory

from .helpers import wait_for_child
from .legacy_helpers import LEGACY_FIXTURE

NOBODY = 65534


def build(directory: Path, *, wal: bool = True) -> str:
    """A database with ten blocks in ``directory``; the URL."""
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'memory.db'}"
    with Database(url, journal_mode="wal" if wal else "delete") as db:
        store = BlockStore(db)
        for number in range(10):
            store.append(f"garden {number}", keywords=["kw"], embedding=[0.1 * number, 1, 0.5])
        if wal:
            db.checkpoint("truncate")
    for leftover in ("memory.db-wal", "memory.db-shm"):
        (directory / leftover).unlink(missing_ok=True)
    return url


def reads(url: str) -> dict[str, Any]:
    """Everything a reader does, and every write refused; what happened, as plain data."""
    found: dict[str, Any] = {}
    with Database(url) as db:
        store = BlockStore(db)
        found["count"] = store.count()
        found["keyword"] = len(store.search_keywords(["garden"]))
        found["since"] = len(store.since("2000-01-01T00:00:00"))
        found["similar"] = len(store.similar([0.1, 1, 0.5], top_k=3))
        found["chain"] = store.verify_chain().ok
        attempts: dict[str, Callable[[], Any]] = {
            "append": lambda: store.append("refused"),
            "unit": lambda: db.run(
                lambda s: s.add(ShortTermMemory(id="x", timestamp="t", content="c"))
            ),
            "checkpoint": lambda: db.checkpoint("passive"),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
                found[name] = "written"
            except errors.ReadOnlyDatabaseError as exc:
                found[name] = "refused" if "opened read-only" in str(exc) else str(exc)
    manager = DatabaseManager(url)
    try:
        found["facade"] = len(manager.search_blocks_by_keyword(["garden"]))
        try:
            manager.conn.execute("INSERT INTO short_term_memories VALUES ('a', 't', 'c', '', '')")
            found["conn"] = "written"
        except errors.ReadOnlyDatabaseError:
            found["conn"] = "refused"
    finally:
        manager.close()
    return found


def as_another_account(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a forked child running as ``nobody`` (when this process is root, whose
    writes no permission bits stop); its result, or its exception re-raised here."""
    if os.geteuid() != 0:
        return fn()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        status = 0
        try:
            os.close(reader)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                outcome = {"result": fn()}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                outcome = {
                    "error": type(exc).__name__,
                    "message": str(exc),
                    "trace": traceback.format_exc(),
                }
            os.write(writer, json.dumps(outcome).encode())
        except BaseException:  # noqa: BLE001 - nothing else may run in the child
            status = 1
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        data = pipe.read()
    assert wait_for_child(pid) == 0
    outcome = json.loads(data)
    if "error" in outcome:
        error = getattr(errors, outcome["error"], RuntimeError)
        raise error(outcome["message"] + "\n" + outcome["trace"])
    return outcome["result"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another account can reach (pytest's own are the owner's only)."""
    base = Path(tempfile.mkdtemp(prefix="app-read-only-"))
    base.chmod(0o755)
    yield base
    for path in [base, *base.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(base)


def lock_down(directory: Path) -> list[str]:
    for path in directory.iterdir():
        path.chmod(0o444)
    directory.chmod(0o555)
    return sorted(p.name for p in directory.iterdir())


EXPECTED = {
    "count": 10,
    "keyword": 10,
    "since": 10,
    "similar": 3,
    "chain": True,
    "append": "refused",
    "unit": "refused",
    "checkpoint": "refused",
    "facade": 10,
    "conn": "refused",
}


def test_another_accounts_file_is_refused_with_the_setting_to_use(shared_dir: Path) -> None:
    url = build(shared_dir / "data")
    lock_down(shared_dir / "data")
    with pytest.raises(errors.ReadOnlyDatabaseError, match=r"read_only=True.*immutable"):
        as_another_account(lambda: Database(url).dispose())


def test_a_wal_file_in_a_read_only_directory_needs_immutable(shared_dir: Path) -> None:
    url = build(shared_dir / "data")
    before = lock_down(shared_dir / "data")
    with pytest.raises(errors.ReadOnlyDatabaseError, match=r"immutable=True"):
        as_another_account(lambda: Database(url + "?mode=ro").dispose())
    assert as_another_account(lambda: reads(url + "?immutable=1")) == EXPECTED
    assert sorted(p.name for p in (shared_dir / "data").iterdir()) == before  # nothing made


def test_the_old_class_database_is_read_where_it_cannot_be_written(shared_dir: Path) -> None:
    """Its journal mode is delete (no -shm needed): ``mode=ro`` reads it as the old class
    left it, not adopted, not upgraded, nothing created."""
    data = shared_dir / "legacy"
    data.mkdir()
    shutil.copyfile(LEGACY_FIXTURE, data / "memory.db")
    before = lock_down(data)
    url = f"sqlite:///{data / 'memory.db'}?mode=ro"

    def legacy_reads() -> dict[str, Any]:
        with DatabaseManager(url) as manager:
            return {
                "count": manager.blocks.count(),
                "first": manager.get_block(0)["block_index"],
                "chain": manager.blocks.verify_chain().ok,
                "since": len(manager.get_blocks_since_time("2000-01-01", limit=1000)),
            }

    assert as_another_account(legacy_reads) == {
        "count": 240,
        "first": 0,
        "chain": True,
        "since": 240,
    }
    assert sorted(p.name for p in data.iterdir()) == before


def test_read_only_by_setting_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = build(tmp_path / "data", wal=False)
    with Database(url, read_only=True) as db:
        assert db.settings.read_only and BlockStore(db).count() == 10
        with pytest.raises(errors.ReadOnlyDatabaseError, match="opened read-only"):
            BlockStore(db).append("refused")
    monkeypatch.setenv("APP_IMMUTABLE", "true")
    with Database(url) as db:
        assert db.settings.read_only and db.settings.immutable
    with pytest.raises(errors.ConfigurationError, match="mode=rw"):
        Database(url + "?mode=rw")


def test_a_missing_file_opened_read_only_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(errors.DatabaseUnavailableError, match="nothing was created"):
        Database(f"sqlite:///{tmp_path / 'missing' / 'memory.db'}?mode=ro")
    assert not (tmp_path / "missing").exists()


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted read-only after a database was written to it (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a file system needs root")
    point = tmp_path / "media"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(point)])
    if mounted.returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        build(point)
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        yield point
    finally:
        # Lazy: a test that failed may leave a file open on it, and a busy mount would stay.
        subprocess.run(["umount", "--lazy", str(point)], check=True)


def test_a_read_only_mount_is_read_with_immutable(read_only_mount: Path) -> None:
    url = f"sqlite:///{read_only_mount / 'memory.db'}"
    with pytest.raises(errors.ReadOnlyDatabaseError, match="read_only=True"):
        Database(url)
    assert reads(url + "?immutable=1") == EXPECTED


def test_doctor_checks_a_file_it_may_not_write(shared_dir: Path) -> None:
    from app.operations.doctor import FAIL, diagnose

    url = build(shared_dir / "data")
    before = lock_down(shared_dir / "data")

    def check(suffix: str) -> tuple[bool, list[list[str]]]:
        report = diagnose(url + suffix)
        return report.ok, [[c.name, c.status, c.advice] for c in report.problems]

    ok, problems = as_another_account(lambda: check(""))
    assert not ok
    assert [name for name, status, _ in problems if status == FAIL] == ["access"]
    assert "immutable=1" in problems[0][2]  # not "the file is damaged"
    assert as_another_account(lambda: check("?immutable=1")) == [True, []]
    assert sorted(p.name for p in (shared_dir / "data").iterdir()) == before
