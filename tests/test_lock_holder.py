"""Who holds the lock: a DatabaseBusyError names the thread (or process) that held the write
turn when the wait ended, how long, where its unit began and what it was doing; the same
across processes on one SQLite file (its ``-turn`` record) and on PostgreSQL (the server's
lock table)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from app import BlockStore, Database
from app.errors import DatabaseBusyError
from app.writers._turn_record import SUFFIX
from app.writers._wal_bound import READER_HOLD_MAX

from .helpers import Background, increment_counter, make_counter_table, run_cli, wait_until

HOLD = 3.0


def _hold_turn(db: Database, entered: threading.Event, seconds: float) -> None:
    with db.unit_of_work() as session:
        increment_counter(session)
        entered.set()
        time.sleep(seconds)  # idle in Python, holding the turn


def test_a_busy_error_names_the_thread_its_call_site_and_idle_in_python(
    make_db: Callable[..., Database],
) -> None:
    db = make_db(retry_deadline=0.5)
    make_counter_table(db)
    entered = threading.Event()
    holder = Background(lambda: _hold_turn(db, entered, HOLD), name="slow-writer").start()
    assert entered.wait(10)

    def wait_for_turn() -> None:
        with db.unit_of_work():
            pass

    error = Background(wait_for_turn).start().outcome()
    assert holder.outcome() is None  # the holder itself finished cleanly
    assert isinstance(error, DatabaseBusyError), error
    found = error.holder
    assert found is not None
    assert found.thread_name == "slow-writer"
    assert found.thread_id == holder.thread.ident
    assert found.pid == os.getpid()
    assert found.held is not None and 0.4 < found.held < HOLD + 1
    assert found.site is not None and found.site.startswith(f"{__file__}:")
    assert found.site.endswith("in _hold_turn")
    assert found.doing is not None and found.doing.startswith("idle in Python at ")
    assert f"{__file__}:" in found.doing
    message = str(error)
    assert "held by thread 'slow-writer'" in message and "idle in Python" in message


def test_the_turn_names_nobody_once_released(make_db: Callable[..., Database]) -> None:
    db = make_db()
    make_counter_table(db)
    entered = threading.Event()
    _hold_turn(db, entered, 0)
    assert db.core.side.holder() is None


CHILD = """
import sys, time
from app import BlockStore, Database
from sqlalchemy import text
db = Database(sys.argv[1], auto_upgrade=True)
with db.unit_of_work() as session:
    session.execute(text("UPDATE counter SET value = value + 1"))
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
db.dispose()
"""


def _child_holding(url: str, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "holding"
    return child


def test_another_process_holding_the_lock_is_named_by_pid(
    make_db: Callable[..., Database], backend: str
) -> None:
    db = make_db(busy_timeout=0.3, retry_deadline=0.6)
    make_counter_table(db)
    child = _child_holding(db.settings.url, HOLD)
    try:
        with pytest.raises(DatabaseBusyError) as caught, db.unit_of_work():
            pass
    finally:
        assert child.wait(HOLD + 30) == 0
    found = caught.value.holder
    assert found is not None, str(caught.value)
    assert found.pid == child.pid
    assert f"process {child.pid}" in str(caught.value)
    if backend == "sqlite":
        assert found.thread_name == "MainThread"
        assert found.site is not None and found.site.startswith("<string>:")
    else:
        assert found.backend is not None
        assert found.doing is not None and found.doing.startswith("idle in Python")
    # Once the child is gone, the lock is free and nobody is named.
    with db.unit_of_work():
        pass
    if backend == "sqlite":
        path = db.settings.sqlite_path
        assert path is not None and Path(str(path) + SUFFIX).exists()
        assert db.core.side.record is not None
        wait_until(lambda: db.core.side.record.holder() is None, "the record cleared")


def test_app_top_shows_the_holder_while_it_holds_and_nobody_after(
    make_db: Callable[..., Database],
) -> None:
    db = make_db()
    make_counter_table(db)
    entered, done = threading.Event(), threading.Event()

    def hold() -> None:
        with db.unit_of_work() as session:
            increment_counter(session)
            entered.set()
            assert done.wait(30)

    holder = Background(hold, name="top-holder").start()
    assert entered.wait(10)
    try:
        shown = run_cli("top", "--url", db.settings.url, "--json", "--count", "1")
    finally:
        done.set()
    assert holder.outcome() is None
    assert shown.exit_code == 0, shown.output
    reading = json.loads(shown.output)
    assert reading["holder"]["pid"] == os.getpid()
    assert reading["holder"]["held"] >= 0
    if db.settings.is_sqlite:
        assert reading["holder"]["thread_name"] == "top-holder"
        assert reading["holder"]["site"].endswith("in hold")
    else:
        assert reading["holder"]["backend"] is not None
    after = json.loads(run_cli("top", "--url", db.settings.url, "--json", "--count", "1").output)
    # On PostgreSQL the write lock is the database's: another process (a test run in another
    # schema of the same database) may hold it now, never this one.
    ours = [h for h in [after["holder"], *after["waiters"]] if h and h["pid"] == os.getpid()]
    assert ours == []
    if db.settings.is_sqlite:
        assert after["holder"] is None and after["waiters"] == []


def test_app_top_refuses_what_it_cannot_watch(tmp_path: Path) -> None:
    missing = run_cli("top", "--url", f"sqlite:///{tmp_path / 'none.db'}", "--count", "1")
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert not (tmp_path / "none.db").exists()
    memory = run_cli("top", "--url", "sqlite://", "--count", "1")
    assert memory.exit_code == 1 and "in-memory" in memory.output


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_a_file_per_tenant_leaves_no_record_mapped(tmp_path: Path) -> None:
    """Hundreds of files opened, written and closed: once closed, no ``-turn`` record stays
    mapped (no garbage collection needed), so mappings do not pile up for months."""

    def mapped() -> int:
        maps = Path("/proc/self/maps").read_text()
        return sum(1 for line in maps.splitlines() if line.endswith(SUFFIX))

    for tenant in range(300):
        with Database(f"sqlite:///{tmp_path / f'tenant{tenant}.db'}") as db:
            make_counter_table(db)
            assert mapped() >= 1
    assert mapped() == 0
    assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 300


def test_a_reader_that_pins_the_wal_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read unit held past a reader's hold keeps the WAL from being emptied: the warning
    names its thread, where the unit began and that it idles in Python."""
    db = Database(f"sqlite:///{tmp_path / 'memory.db'}", journal_size_limit=1024 * 1024)
    store = BlockStore(db)
    store.append("first")
    reading, leave = threading.Event(), threading.Event()

    def long_read() -> None:
        with db.read() as session:
            session.execute(text("SELECT count(*) FROM blocks")).scalar_one()
            reading.set()
            assert leave.wait(60)

    reader = Background(long_read, name="report-reader").start()
    try:
        assert reading.wait(10)
        began = time.monotonic()
        wait_until(lambda: time.monotonic() - began > READER_HOLD_MAX + 0.1, "a long read")
        with caplog.at_level(logging.WARNING, logger="app.writers._wal_bound"):
            for batch in range(40):  # about 6 MiB of WAL, past the 4 MiB floor
                store.append_many([{"context": f"{batch} " + "x" * 4000}] * 40)
                if any("pins it" in r.getMessage() for r in caplog.records):
                    break
    finally:
        leave.set()
        assert reader.outcome() is None
        db.dispose()
    warnings = [r.getMessage() for r in caplog.records if "pins it" in r.getMessage()]
    assert warnings, "no warning named the reader"
    assert "thread 'report-reader'" in warnings[0]
    assert "in long_read" in warnings[0] and "idle in Python" in warnings[0]
