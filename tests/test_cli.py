"""The command line, command by command: exit codes, what is printed, and the effect on the
database. Every command runs against a file under ``tmp_path`` (never ``data/memory.db``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app import BlockStore, Database
from app._bench import legacy_hash
from app.schema import head_revision

from .conftest import assert_one_line_error
from .conftest import run_cli as run


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_DATABASE_URL", raising=False)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "memory.db"


@pytest.fixture
def url(path: Path) -> str:
    return f"sqlite:///{path}"


def fill(url: str, count: int) -> None:
    with Database(url) as db:
        store = BlockStore(db)
        for i in range(count):
            store.append(f"block {i}", keywords=[f"k{i}"], tags=["t"], embedding=[1.0, float(i)])


# -- every command -------------------------------------------------------------------------

COMMANDS = [
    [],
    ["db"],
    ["db", "upgrade"],
    ["db", "downgrade"],
    ["db", "current"],
    ["db", "history"],
    ["db", "stamp"],
    ["doctor"],
    ["stress"],
    ["bench"],
    ["import-jsonl"],
    ["backup"],
    ["checkpoint"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "app")
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_python_dash_m_and_console_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app", "db", "history"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{head_revision()} (head)" in done.stdout
    script = Path(sys.executable).with_name("app")
    if script.exists():
        version = subprocess.run([str(script), "--version"], capture_output=True, text=True)
        assert version.returncode == 0 and "app" in version.stdout


def test_bad_url_is_one_line_error() -> None:
    line = assert_one_line_error(run("--url", "mysql://x/y", "db", "current"))
    assert "unsupported database URL scheme" in line


# -- db --------------------------------------------------------------------------------------


def test_db_upgrade_current_downgrade_stamp_history(url: str, path: Path) -> None:
    result = run("--url", url, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"none -> {head_revision()} (head)" in result.output

    result = run("--url", url, "db", "current")
    assert result.exit_code == 0 and f"{head_revision()} (head)" in result.output

    result = run("--url", url, "db", "downgrade", "0001")
    assert result.exit_code == 0, result.output
    assert run("--url", url, "db", "current").output.strip().endswith("0001")

    result = run("--url", url, "db", "stamp", "head")
    assert result.exit_code == 0 and "0001 -> " in result.output

    result = run("--url", url, "db", "upgrade")
    assert "already at" in result.output

    history = run("db", "history")
    assert history.exit_code == 0
    assert "base -> 0001" in history.output and f"-> {head_revision()} (head)" in history.output


def test_db_downgrade_to_unknown_revision_fails_cleanly(url: str) -> None:
    run("--url", url, "db", "upgrade")
    result = run("--url", url, "db", "downgrade", "nonexistent")
    assert result.exit_code == 1
    assert "Traceback" not in result.output


# -- doctor ----------------------------------------------------------------------------------


def test_doctor_healthy_database(url: str) -> None:
    fill(url, 5)
    result = run("--url", url, "doctor")
    assert result.exit_code == 0, result.output
    for expected in (
        "quick_check",
        f"{head_revision()} (head)",
        "journal_mode=wal",
        "foreign_keys=1",
        "busy_timeout=5000",
        "QueuePool",
        "units committed",
        "SQLite ",
    ):
        assert expected in result.output


def test_upgrade_stress_doctor_on_each_backend(db_url: str) -> None:
    assert run("--url", db_url, "db", "upgrade").exit_code == 0
    result = run("--url", db_url, "stress", "-t", "4", "-n", "40", "-r", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["chain_intact"] is True
    result = run("--url", db_url, "doctor", "--verify-chain")
    assert result.exit_code == 0, result.output
    assert "intact (40 blocks)" in result.output and f"{head_revision()} (head)" in result.output


def test_doctor_hides_password(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://user:s3cret@127.0.0.1:1/none?connect_timeout=1"
    result = run("--url", url, "doctor")
    assert "s3cret" not in result.output
    assert result.exit_code == 1
    assert "Traceback" not in result.output


def test_doctor_verify_chain_on_legacy_copy(legacy_copy: Path) -> None:
    before = legacy_copy.read_bytes()
    result = run("--url", f"sqlite:///{legacy_copy}", "doctor", "--verify-chain")
    assert result.exit_code == 0, result.output
    assert "intact (240 blocks)" in result.output
    assert "legacy database" in result.output  # not yet adopted: a warning, with advice
    assert "app db upgrade" in result.output
    assert "the file is in delete mode" in result.output
    assert legacy_copy.read_bytes() == before  # looked at, not converted to WAL


def test_doctor_reports_broken_chain(url: str, path: Path) -> None:
    fill(url, 4)
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("UPDATE blocks SET context = 'tampered' WHERE block_index = 2")
    conn.commit()
    conn.close()
    result = run("--url", url, "doctor", "--verify-chain")
    assert result.exit_code == 1
    assert "broken at block 2" in result.output


def test_doctor_garbage_file_one_line_and_untouched(path: Path, url: str) -> None:
    content = b"this is not a database at all\n" * 100
    path.write_bytes(content)
    line = assert_one_line_error(run("--url", url, "doctor"))
    assert "not a SQLite database" in line
    assert path.read_bytes() == content
    assert sorted(os.listdir(path.parent)) == ["memory.db"]


def test_doctor_truncated_file_reports_corruption(path: Path, url: str) -> None:
    fill(url, 200)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    before = path.read_bytes()
    result = run("--url", url, "doctor")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "damaged" in result.output
    assert path.read_bytes() == before


def test_doctor_empty_file(path: Path, url: str) -> None:
    path.touch()
    result = run("--url", url, "doctor")
    assert result.exit_code == 0, result.output
    assert "empty file" in result.output
    assert path.stat().st_size == 0


def test_doctor_missing_file(path: Path, url: str) -> None:
    result = run("--url", url, "doctor")
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert not path.exists()


# -- stress ----------------------------------------------------------------------------------


def test_stress_json(url: str) -> None:
    result = run(
        "--url", url, "stress", "--threads", "4", "--blocks", "120", "--read-threads", "1",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["appended"] == 120 and report["errors"] == 0
    assert report["chain_intact"] is True and report["ok"] is True
    assert report["blocks_after"] == report["blocks_before"] + 120
    assert report["p50"] <= report["p99"] <= report["max"]
    assert report["stats"]["units_committed"] >= 1
    with Database(url) as db:
        assert BlockStore(db).count() == 120


def test_stress_table_and_processes(url: str) -> None:
    fill(url, 3)
    result = run("--url", url, "stress", "-p", "2", "-t", "3", "-n", "60", "-r", "1")
    assert result.exit_code == 0, result.output
    assert "60 of 60 blocks (3 threads x 2 process(es))" in result.output
    assert "intact (63 blocks, 3 before)" in result.output
    assert "db.stats()" in result.output


def test_stress_refuses_bad_counts(url: str) -> None:
    result = run("--url", url, "stress", "--threads", "0")
    assert result.exit_code == 2


# -- bench -----------------------------------------------------------------------------------


def test_bench_writes_table_json_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra")
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run(
        "bench", "-s", "sqlite3-lock", "-s", "layer", "--threads", "1,3", "--blocks", "30",
        "--json-out", str(out), "--plot", str(chart), "--markdown",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "this layer: BlockStore.append" in result.output
    assert "| strategy | threads |" in result.output
    data = json.loads(out.read_text())
    assert [(r["strategy"], r["threads"]) for r in data["results"]] == [
        ("sqlite3-lock", 1),
        ("layer", 1),
        ("sqlite3-lock", 3),
        ("layer", 3),
    ]
    assert all(r["ok"] == 30 and r["intact"] for r in data["results"])
    assert data["machine"]["cpus"] >= 1
    assert chart.stat().st_size > 1000


def test_bench_plot_without_matplotlib_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    result = run("bench", "-s", "layer", "--threads", "1", "--plot", str(tmp_path / "c.png"))
    assert result.exit_code == 2
    assert "--plot needs matplotlib" in result.output
    assert not (tmp_path / "c.png").exists()


def test_bench_unknown_strategy() -> None:
    result = run("bench", "-s", "nope")
    assert result.exit_code == 2
    assert "unknown strategy nope" in result.output


# -- import-jsonl ----------------------------------------------------------------------------


def _chained(index: int, prev: str, context: str) -> dict[str, object]:
    stamp = f"2024-01-01T00:00:0{index}"
    return {
        "block_index": index,
        "timestamp": stamp,
        "context": context,
        "importance": 0.5,
        "keywords": ["a"],
        "tags": ["t"],
        "metadata": {"n": index},
        "embedding": [0.1, 0.2],
        "prev_hash": prev,
        "hash": legacy_hash(index, stamp, context, 0.5, prev),
    }


def test_import_jsonl(tmp_path: Path, url: str) -> None:
    first = _chained(0, "", "zero")
    second = _chained(1, str(first["hash"]), "one")
    lines = [
        json.dumps(first),
        json.dumps(second),
        "",
        "{not json",
        "[1, 2]",
        json.dumps({"context": "bad keywords", "keywords": "x"}),
        json.dumps(second),  # already present
        json.dumps({"context": "appended", "keywords": ["new"], "importance": 0.9}),
        json.dumps({"context": "appended too", "metadata": {}, "embedding": None}),
    ]
    source = tmp_path / "blocks.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run("--url", url, "import-jsonl", str(source))
    assert result.exit_code == 0, result.output
    assert "imported 4 blocks" in result.output
    assert "2 as given, 2 appended" in result.output
    assert "skipped 4 of 8 lines" in result.output
    for reason in ("1 not JSON", "1 not a JSON object", "1 invalid block", "1 block index"):
        assert reason in result.output
    with Database(url) as db:
        store = BlockStore(db)
        assert store.count() == 4 and store.verify_chain() is None
        assert store.get(2) is not None and store.get(2).context == "appended"  # type: ignore[union-attr]


def test_import_jsonl_missing_file(url: str, tmp_path: Path) -> None:
    result = run("--url", url, "import-jsonl", str(tmp_path / "absent.jsonl"))
    assert result.exit_code == 2


# -- backup ----------------------------------------------------------------------------------


def test_backup_while_writing(url: str, tmp_path: Path) -> None:
    fill(url, 50)
    stop = threading.Event()

    def writer() -> None:
        with Database(url) as db:
            store = BlockStore(db)
            while not stop.is_set():
                store.append("during backup")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        dest = tmp_path / "copies" / "backup.db"
        dest.parent.mkdir()
        result = run("--url", url, "backup", str(dest))
    finally:
        stop.set()
        thread.join()
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(os.listdir(dest.parent)) == ["backup.db"]  # one self-contained file
    with Database(f"sqlite:///{dest}") as copy:
        store = BlockStore(copy)
        count = store.count()
        assert count >= 50 and store.verify_chain() is None
    assert f"{count:,} blocks" in result.output

    again = run("--url", url, "backup", str(dest))
    assert "already exists" in assert_one_line_error(again)
    assert run("--url", url, "backup", "--force", str(dest)).exit_code == 0


def test_backup_refuses_memory_database() -> None:
    result = run("--url", "sqlite://", "backup", "x.db")
    assert "works on SQLite database files" in assert_one_line_error(result)


# -- checkpoint ------------------------------------------------------------------------------


def test_checkpoint_truncate_empties_wal(url: str, path: Path) -> None:
    with Database(url) as db:
        store = BlockStore(db)
        for i in range(30):
            store.append(f"b{i}")
        wal = Path(str(path) + "-wal")
        assert wal.stat().st_size > 0
        result = run("--url", url, "checkpoint", "--mode", "truncate")
        assert result.exit_code == 0, result.output
        assert "checkpoint (truncate)" in result.output and "-> 0 bytes" in result.output
        assert wal.stat().st_size == 0


def test_checkpoint_default_and_bad_mode(url: str) -> None:
    fill(url, 2)
    result = run("--url", url, "checkpoint")
    assert result.exit_code == 0 and "checkpoint (passive)" in result.output
    assert run("--url", url, "checkpoint", "--mode", "sideways").exit_code == 2
