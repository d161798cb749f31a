"""What a new user meets in the first hour, tried as they would: a downgrade that would drop
data, Ctrl-C in a long stress run, a directory given as the database, a file of another
schema, ``close()``, a backup given a URL, an import whose every line is bad.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app import BlockStore, Database, errors
from app.operations.doctor import FAIL, diagnose

from .helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    with Database(url) as db:
        store = BlockStore(db)
        for number in range(5):
            store.append(f"block {number}", keywords=["kw"])
    return url


def test_a_downgrade_that_drops_data_asks_first(url: str) -> None:
    refused = run_cli("--url", url, "db", "downgrade", "base")
    line = assert_one_line_error(refused)
    assert "5 rows in blocks" in line and "--yes" in line and "nothing was changed" in line
    with Database(url) as db:
        assert BlockStore(db).count() == 5  # nothing dropped
    one_step = run_cli("--url", url, "db", "downgrade", "-1")  # keeps the tables: no question
    assert one_step.exit_code == 0, one_step.output
    done = run_cli("--url", url, "db", "downgrade", "base", "--yes")
    assert done.exit_code == 0, done.output
    assert "-> none" in done.output


def test_an_empty_database_is_downgraded_without_a_question(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Database(url).dispose()
    result = run_cli("--url", url, "db", "downgrade", "base")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("processes", ["1", "2"])
def test_ctrl_c_stops_a_long_stress_run_at_once(tmp_path: Path, processes: str) -> None:
    """Five million appends would take many minutes: the run must end within the wait
    below, with one line and status 130, and no traceback from any of its processes."""
    run = subprocess.Popen(
        [sys.executable, "-m", "app", "stress", "-n", "5000000", "-t", "4", "-p", processes],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's job
    )
    try:
        assert run.stderr is not None
        announced = run.stderr.readline()  # the run has started its appends
        assert "stress: appending 5,000,000 test blocks" in announced
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
        _, errors_out = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 130, errors_out
    assert errors_out.strip() == "stress interrupted: stopped after the appends in progress"
    assert not list(tmp_path.iterdir())  # its temporary file is gone too


def test_a_directory_is_named_a_directory_by_every_command(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    url = f"sqlite:///{folder}"
    for command in (["db", "upgrade"], ["stress", "-n", "5"], ["backup", str(tmp_path / "b.db")]):
        line = assert_one_line_error(run_cli("--url", url, *command))
        assert "is a directory" in line and str(folder / "memory.db") in line, command
    report = diagnose(url)
    (problem,) = report.problems
    assert problem.status == FAIL and "is a directory" in problem.value
    assert "backup" not in problem.advice and "memory.db" in problem.advice
    with pytest.raises(errors.ConfigurationError, match="is a directory"):
        Database(url)


def test_doctor_reports_a_file_of_another_schema_in_full(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE blocks (block_index INTEGER PRIMARY KEY, body TEXT)")
        connection.execute("INSERT INTO blocks VALUES (0, 'not a block store')")
    url = f"sqlite:///{path}"
    result = run_cli("--url", url, "doctor")
    assert result.exit_code == 1
    assert "quick_check" in result.output and "pragmas in force" in result.output
    assert "verdict: NOT OK" in result.output and "Traceback" not in result.output
    (tables,) = [c for c in diagnose(url).checks if c.name == "tables"]
    assert tables.status == FAIL
    assert "table block_embeddings is missing" in tables.value
    assert "column blocks.context is missing" in tables.value


def test_database_close_is_dispose(url: str) -> None:
    db = Database(url)
    db.close()
    assert db.closed
    with pytest.raises(errors.ClosedError):
        BlockStore(db).count()
    db.close()  # twice is fine


def test_backup_takes_a_sqlite_url_like_every_command(url: str, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    result = run_cli("--url", url, "backup", f"sqlite:///{target}")
    assert result.exit_code == 0, result.output
    with Database(f"sqlite:///{target}", read_only=True) as copy:
        assert BlockStore(copy).count() == 5
    line = assert_one_line_error(run_cli("--url", url, "backup", "postgresql://u@host/db"))
    assert "app copy --to URL" in line


def test_an_import_of_only_bad_lines_fails(url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "no timestamp"}\nnot json\n', encoding="utf-8")
    result = run_cli("--url", url, "import-jsonl", str(bad))
    assert result.exit_code == 1
    assert "imported 0 blocks" in result.output and "skipped 2 of 2 lines" in result.output
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps({"context": "fine", "timestamp": "2026-01-01T00:00:00"}) + "\n",
        encoding="utf-8",
    )
    assert run_cli("--url", url, "import-jsonl", str(good)).exit_code == 0
    again = run_cli("--url", url, "import-jsonl", str(good))  # duplicates only: fine
    assert again.exit_code == 0 and "1 already present" in again.output
