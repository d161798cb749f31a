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

from app import BlockStore, Database, Settings
from app.schema import head_revision, history

from .helpers import Background, assert_one_line_error
from .helpers import run_cli as run
from .legacy_helpers import legacy_hash


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
    ["import-jsonl"],
    ["backup"],
    ["checkpoint"],
    ["copy"],
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


@pytest.mark.parametrize(
    "command",
    [["doctor"], ["db", "current"], ["checkpoint"], ["backup", "{tmp}/b.db"],
     ["import-jsonl", "{tmp}/x.jsonl"], ["copy", "--to", "sqlite:///{tmp}/c.db"],
     ["stress", "-n", "5", "-t", "1", "-r", "0", "--existing"]],
    ids=lambda c: c[0] if c[0] != "db" else "db current",
)  # fmt: skip
def test_url_and_verbose_work_after_the_command_name(
    command: list[str], url: str, tmp_path: Path
) -> None:
    fill(url, 2)
    (tmp_path / "x.jsonl").write_text("")
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    result = run(*args, "--url", url, "-v")
    assert result.exit_code == 0, result.output
    assert "sqlite:///" in result.output  # every command names the database it used


def test_url_given_twice_with_different_values_is_a_usage_error(url: str) -> None:
    result = run("--url", url, "doctor", "--url", "sqlite:///other.db")
    assert result.exit_code == 2
    assert "--url is given twice" in result.output
    assert run("--url", url, "db", "upgrade", "--url", url).exit_code == 0  # same value: fine


def test_commands_refuse_a_missing_file_and_create_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dta' / 'memory.db'}"
    (tmp_path / "x.jsonl").write_text("{}\n")
    for command in (
        ["checkpoint"],
        ["backup", str(tmp_path / "b.db")],
        ["import-jsonl", str(tmp_path / "x.jsonl")],
        ["copy", "--to", f"sqlite:///{tmp_path / 'c.db'}"],
    ):
        line = assert_one_line_error(run("--url", url, *command))
        assert "does not exist" in line, command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def test_verbose_shows_progress_lines_and_no_alembic_chatter(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("APP_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "app", "-v", "--url", url, "stress", "-n", "200", "-t", "2"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "appending: 200 of 200 (100%)" in lines[-1]
    assert (
        f"INFO app.engine._sqlite_file: created a new database file {tmp_path / 'memory.db'}"
        in lines
    )
    assert not [line for line in lines if "alembic" in line]
    assert done.stdout.splitlines()[0] == f"stress: {url}"  # no stray blank line first
    quiet = subprocess.run(
        [sys.executable, "-m", "app", "--url", url, "doctor"],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.splitlines()[0] == f"doctor: {url}"


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


def test_db_downgrade_minus_one_as_its_help_says(url: str) -> None:
    assert run("--url", url, "db", "upgrade").exit_code == 0
    result = run("db", "downgrade", "-1", "--url", url)
    assert result.exit_code == 0, result.output
    one_back = [r.revision for r in history()][-2]
    assert result.output == f"{url}: {head_revision()} (head) -> {one_back}\n"
    assert "-1 (one step back)" in run("db", "downgrade", "--help").output
    assert run("db", "downgrade", "-x", "--url", url).exit_code == 2  # still a bad option


def test_db_commands_other_than_upgrade_refuse_a_missing_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dta' / 'memory.db'}"
    for command in (["db", "current"], ["db", "stamp", "head"], ["db", "downgrade", "base"]):
        line = assert_one_line_error(run("--url", url, *command))
        assert "does not exist" in line and f"`python -m app --url {url} db upgrade`" in line
    assert list(tmp_path.iterdir()) == []
    assert run("--url", url, "db", "upgrade").exit_code == 0  # upgrade creates it
    assert (tmp_path / "dta" / "memory.db").exists()


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
    result = run("--url", db_url, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"none -> {head_revision()} (head)" in result.output
    result = run("--url", db_url, "stress", "-t", "8", "-n", "400", "-r", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["appended"], report["errors"], report["chain_intact"]) == (400, 0, True)
    result = run("--url", db_url, "doctor", "--verify-chain")
    assert result.exit_code == 0, result.output
    assert "intact (400 blocks)" in result.output and f"{head_revision()} (head)" in result.output


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
    assert f"`python -m app --url sqlite:///{legacy_copy} db upgrade`" in result.output
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
    assert "broken at block 2: block 2's hash does not match" in result.output
    assert (
        result.output.splitlines()[-1]
        == "verdict: NOT OK, 1 failure: fix what the advice above says"
    )


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


def test_doctor_empty_file_has_no_schema(path: Path, url: str) -> None:
    path.touch()
    result = run("--url", url, "doctor")
    assert result.exit_code == 1, result.output
    assert "an empty file, without the schema" in result.output
    assert f"create the schema with `python -m app --url {url} db upgrade`" in result.output
    assert result.output.splitlines()[-1].startswith("verdict: NOT OK, 1 failure")
    assert path.stat().st_size == 0


def test_doctor_database_without_the_schema(path: Path, url: str) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (x)")
    result = run("--url", url, "doctor")
    assert result.exit_code == 1, result.output
    assert "none: the database has no schema" in result.output
    assert f"`python -m app --url {url} db upgrade`" in result.output


def test_doctor_missing_file(path: Path, url: str) -> None:
    result = run("--url", url, "doctor")
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert f"`python -m app --url {url} db upgrade`" in result.output
    assert result.output.splitlines()[-1].startswith("verdict: NOT OK")
    assert not path.exists()


def test_doctor_verdict_when_healthy(url: str) -> None:
    fill(url, 2)
    result = run("--url", url, "doctor", "--verify-chain")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "verdict: OK, no problems found"
    assert "chain" in result.output and "intact (2 blocks)" in result.output


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_schema_advice_names_the_url_of_a_server_database(db_url: str) -> None:
    # On SQLite the schema is upgraded when the database is opened; a server needs the step.
    import shlex

    from app.errors import SchemaOutOfDateError

    result = run("--url", db_url, "doctor")
    assert result.exit_code == 1
    assert "has no schema" in result.output
    with pytest.raises(SchemaOutOfDateError) as raised:
        Database(db_url)
    # The command in the message, followed literally, upgrades this database.
    command = str(raised.value).split("run `", 1)[1].rstrip("`")
    words = shlex.split(command)
    assert words[:5] == ["python", "-m", "app", "--url", Settings.resolve(db_url).safe_url()]
    assert run(*words[3:]).exit_code == 0
    with Database(db_url) as db:
        assert BlockStore(db).count() == 0


# -- stress ----------------------------------------------------------------------------------


def test_stress_json(url: str) -> None:
    result = run(
        "--url", url, "stress", "--threads", "4", "--blocks", "120", "--read-threads", "1",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["appended"] == 120 and report["errors"] == 0
    assert report["chain_intact"] is True and report["ok"] is True
    assert report["blocks_after"] == report["blocks_before"] + 120
    assert report["p50"] <= report["p99"] <= report["max"]
    assert report["stats"]["units_committed"] >= 1
    with Database(url) as db:
        assert BlockStore(db).count() == 120


def test_stress_table_and_processes(url: str) -> None:
    fill(url, 3)
    result = run("--url", url, "stress", "-p", "2", "-t", "3", "-n", "60", "-r", "1", "--existing")
    assert result.exit_code == 0, result.output
    assert "60 of 60 blocks (3 threads x 2 process(es))" in result.output
    assert "intact (63 blocks, 3 before)" in result.output
    assert "db.stats()" in result.output
    assert f"to {url}, which holds 3 blocks (--existing)" in result.stderr


def _stress_dirs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("app-stress-*"))


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files of the run (the stress command's own file) go under tmp_path/tmp;
    the working directory is tmp_path/work."""
    import tempfile

    (tmp_path / "tmp").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "tmp"


def test_stress_runs_on_a_new_file_of_its_own_by_default(temp_dir: Path) -> None:
    result = run("stress", "-t", "2", "-n", "30", "-r", "0")
    assert result.exit_code == 0, result.output
    assert not Path("data").exists()  # the default database is left alone
    assert _stress_dirs(temp_dir) == []  # the run's file was removed
    assert "stress: appending 30 test blocks (tag 'stress', run " in result.stderr
    assert f"to a new file {temp_dir}/app-stress-" in result.stderr
    assert "removed after the run (--keep keeps it)" in " ".join(result.stdout.split())
    assert result.stdout.splitlines()[0].startswith("stress: sqlite:///")  # no blank line


def test_stress_keep_keeps_the_file_and_marks_the_blocks(temp_dir: Path) -> None:
    result = run("stress", "-t", "2", "-n", "30", "-r", "0", "--keep", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (folder,) = _stress_dirs(temp_dir)
    assert report["fresh_file"] == str(folder / "stress.db") and report["kept"] is True
    with Database(f"sqlite:///{folder / 'stress.db'}") as db:
        store = BlockStore(db)
        blocks = [store.get(i) for i in range(store.count())]
    assert len(blocks) == 30
    for block in blocks:
        assert block is not None and "stress" in block.tags
        assert block.metadata["run"] == report["run_id"]
        assert block.metadata["source"] == "app stress"


def test_stress_uses_app_database_url_when_set(
    temp_dir: Path, path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_DATABASE_URL", url)
    result = run("stress", "-t", "2", "-n", "20", "-r", "0")
    assert result.exit_code == 0, result.output
    assert _stress_dirs(temp_dir) == []
    with Database(url) as db:
        assert BlockStore(db).count() == 20


def test_stress_refuses_a_database_that_holds_data(path: Path, url: str) -> None:
    fill(url, 3)
    with Database(url) as db:
        BlockStore(db).short_term.add("m1", "remember this")
    before = path.read_bytes()
    line = assert_one_line_error(run("stress", "--url", url, "-n", "10"))
    assert f"{url} already holds data (3 blocks, 1 short-term memories)" in line
    assert "add --existing" in line and "nothing was written" in line
    assert path.read_bytes() == before
    with Database(url) as db:
        assert BlockStore(db).count() == 3


def test_stress_refuses_a_legacy_file_without_touching_it(legacy_copy: Path) -> None:
    before = legacy_copy.read_bytes()
    line = assert_one_line_error(run("--url", f"sqlite:///{legacy_copy}", "stress", "-n", "5"))
    assert "already holds data (240 blocks" in line
    assert legacy_copy.read_bytes() == before  # not switched to WAL, not upgraded
    assert sorted(p.name for p in legacy_copy.parent.iterdir()) == ["memory.db"]


def test_stress_refuses_a_broken_chain_unless_asked(path: Path, url: str) -> None:
    import sqlite3

    fill(url, 4)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE blocks SET context = 'tampered' WHERE block_index = 1")
    line = assert_one_line_error(run("--url", url, "stress", "-n", "10", "--existing"))
    assert "is already broken at block 1" in line
    assert f"`python -m app --url {url} doctor --verify-chain`" in line
    assert "--allow-broken-chain" in line
    with Database(url) as db:
        assert BlockStore(db).count() == 4
    result = run(
        "--url", url, "stress", "-n", "10", "-t", "2", "-r", "0", "--existing",
        "--allow-broken-chain", "--json",
    )  # fmt: skip
    assert result.exit_code == 1  # the chain is still broken afterwards, and says so
    report = json.loads(result.stdout)
    assert report["appended"] == 10 and report["errors"] == 0
    assert report["chain_intact"] is False and report["first_bad_block"] == 1
    assert report["broken_before"].startswith("broken at block 1: ")


def test_stress_refuses_bad_counts(url: str) -> None:
    result = run("--url", url, "stress", "--threads", "0")
    assert result.exit_code == 2


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
    run("--url", url, "db", "upgrade")
    first = _chained(0, "", "zero")
    second = _chained(1, str(first["hash"]), "one")
    stamp = "2024-02-01T00:00:00"
    lines = [
        json.dumps(first),
        json.dumps(second),
        "",
        "{not json",
        "[1, 2]",
        json.dumps({"context": "bad keywords", "keywords": "x", "timestamp": stamp}),
        json.dumps(second),  # the same block again
        json.dumps(
            {"context": "appended", "keywords": ["new"], "importance": 0.9, "timestamp": stamp}
        ),
        json.dumps(
            {"context": "appended too", "metadata": {}, "embedding": None, "timestamp": stamp}
        ),
        json.dumps({"context": "too important", "importance": 1.5, "timestamp": stamp}),
        json.dumps({"context": "when?"}),
        json.dumps({**_chained(1, "", "taken index"), "timestamp": "2024-03-01T00:00:00"}),
    ]
    source = tmp_path / "blocks.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run("--url", url, "import-jsonl", str(source))
    assert result.exit_code == 0, result.output
    assert "imported 4 blocks" in result.output
    assert "2 as given, 2 appended" in result.output
    assert "1 already present (skipped as duplicates)" in result.output
    assert "skipped 6 of 11 lines" in result.output
    for reason in ("1 not JSON", "1 not a JSON object", "3 invalid block", "1 block index"):
        assert reason in result.output
    assert "importance must be between 0 and 1 (inclusive), got 1.5" in result.output
    with Database(url) as db:
        store = BlockStore(db)
        assert store.count() == 4 and store.verify_chain().ok
        assert store.get(2) is not None and store.get(2).context == "appended"  # type: ignore[union-attr]

    again = run("--url", url, "import-jsonl", str(source))
    assert again.exit_code == 0, again.output
    assert "imported 0 blocks" in again.output
    assert "5 already present (skipped as duplicates)" in again.output
    with Database(url) as db:
        assert BlockStore(db).count() == 4


def test_import_jsonl_help_documents_the_fields() -> None:
    result = run("import-jsonl", "--help")
    assert result.exit_code == 0
    for field in ("context", "timestamp", "importance", "keywords", "tags", "metadata",
                  "embedding", "embedding_model", "block_index", "hash", "prev_hash",
                  "timestamp and context", "duplicate"):  # fmt: skip
        assert field in result.output


def test_import_jsonl_missing_file(url: str, tmp_path: Path) -> None:
    result = run("--url", url, "import-jsonl", str(tmp_path / "absent.jsonl"))
    assert result.exit_code == 2


# -- copy ------------------------------------------------------------------------------------


def test_copy_title_on_one_line_and_the_shared_table_style(url: str, tmp_path: Path) -> None:
    fill(url, 3)
    target = f"sqlite:///{tmp_path / 'a-rather-long-directory-name' / 'copy-target.db'}"
    result = run("copy", "--url", url, "--to", target)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"copy: {url} -> {target}"
    assert lines[1].split() == ["table", "source", "rows", "target", "rows"]
    assert set(lines[2]) == {"─"}  # the rule under the heading, as in every table
    assert "copied in" in lines[-1] and "chain intact (3 blocks)" in lines[-1]


# -- backup ----------------------------------------------------------------------------------


def test_backup_while_writing(url: str, tmp_path: Path) -> None:
    fill(url, 50)
    stop = threading.Event()

    def writer() -> None:
        with Database(url) as db:
            store = BlockStore(db)
            while not stop.is_set():
                store.append("during backup")

    writing = Background(writer, name="writer").start()
    try:
        dest = tmp_path / "copies" / "backup.db"
        dest.parent.mkdir()
        result = run("--url", url, "backup", str(dest))
    finally:
        stop.set()
        written = writing.outcome()
    assert written is None  # the writer met no error
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(os.listdir(dest.parent)) == ["backup.db"]  # one self-contained file
    with Database(f"sqlite:///{dest}") as copy:
        store = BlockStore(copy)
        count = store.count()
        assert count >= 50 and store.verify_chain().ok
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
