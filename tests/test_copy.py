"""`app copy`: SQLite into PostgreSQL and back, batches, refusals, and the checks afterwards."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app import BlockStore, Database
from app.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    IntegrityViolationError,
    SchemaMismatchError,
)
from app.models import LEGACY_TABLES
from app.operations.transfer import copy_database

from .helpers import assert_one_line_error as one_line_error
from .helpers import run_cli as run
from .legacy_helpers import LEGACY_DDL, LEGACY_FIXTURE

POSTGRES_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
LEGACY_COUNTS = {
    "blocks": 240,
    "block_keywords": 720,
    "block_tags": 480,
    "block_metadata": 160,
    "block_embeddings": 180,
    "short_term_memories": 30,
}


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APP_DATABASE_URL", raising=False)


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the six tables, in key order, exactly as SQLite stores them."""
    connection = sqlite3.connect(path)
    try:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in LEGACY_TABLES
        }
    finally:
        connection.close()


def counts(url: str) -> dict[str, int]:
    with Database(url, check_schema=False) as db, db.read() as session:
        return {
            table: session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in LEGACY_TABLES
        }


def fill(url: str, count: int, **extra: Any) -> list[Any]:
    with Database(url, auto_upgrade=True) as db:
        store = BlockStore(db)
        return [
            store.append(f"block {i}", keywords=[f"k{i}"], tags=["t"], **extra)
            for i in range(count)
        ]


@POSTGRES_ONLY
def test_round_trip_sqlite_postgres_sqlite_keeps_every_row(
    legacy_copy: Path, db_url: str, tmp_path: Path
) -> None:
    back = tmp_path / "back" / "memory.db"
    there = run("--url", f"sqlite:///{legacy_copy}", "copy", "--to", db_url, "--batch-size", "97")
    assert there.exit_code == 0, there.output
    assert "counts match, chain intact (240 blocks)" in there.output
    home = run("--url", db_url, "copy", "--to", f"sqlite:///{back}")
    assert home.exit_code == 0, home.output
    assert sqlite_rows(back) == sqlite_rows(LEGACY_FIXTURE)
    with Database(f"sqlite:///{back}") as db:
        assert BlockStore(db).verify_chain().ok
    # The source was only read: still the legacy file, in its own journal mode.
    assert sqlite_rows(legacy_copy) == sqlite_rows(LEGACY_FIXTURE)
    with sqlite3.connect(legacy_copy) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert raw.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'alembic_version'"
        ).fetchone() == (0,)


@POSTGRES_ONLY
def test_postgres_copy_keeps_full_precision_and_bytes(db_url: str, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    weights = [1 / 3, 0.1 + 0.2, 5e-324, 0.9999999999999999]
    with Database(source, auto_upgrade=True) as db:
        store = BlockStore(db)
        for i, weight in enumerate(weights):
            store.append(f"b{i}", importance=weight, embedding=[0.1 * i, -2.5, 1e-30])
    result = copy_database(source, db_url)
    assert result.ok and result.first_bad_block is None
    with Database(db_url) as db, db.read() as session:
        stored = session.execute(text("SELECT importance FROM blocks ORDER BY 1")).scalars()
        assert sorted(stored) == sorted(weights)
        types = dict(
            session.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND column_name IN "
                    "('importance', 'embedding')"
                )
            ).all()
        )
        assert types == {"importance": "double precision", "embedding": "bytea"}
        copied = [
            bytes(b)
            for b in session.execute(
                text("SELECT embedding FROM block_embeddings ORDER BY block_index")
            ).scalars()
        ]
    with sqlite3.connect(tmp_path / "source.db") as raw:
        original = [
            r[0] for r in raw.execute("SELECT embedding FROM block_embeddings ORDER BY block_index")
        ]
    assert copied == original


def test_batches_are_reported_table_by_table(legacy_copy: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    result = copy_database(
        f"sqlite:///{legacy_copy}",
        f"sqlite:///{tmp_path / 'target.db'}",
        batch_size=100,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    assert result.ok
    assert result.source_counts == result.target_counts == LEGACY_COUNTS
    assert [s for s in seen if s[0] == "blocks"] == [
        ("blocks", 0, 240),
        ("blocks", 100, 240),
        ("blocks", 200, 240),
        ("blocks", 240, 240),
    ]
    assert [s for s in seen if s[0] == "short_term_memories"] == [
        ("short_term_memories", 0, 30),
        ("short_term_memories", 30, 30),
    ]
    assert seen[-1][0] == "verify" and seen[-1][2] == 240


def test_non_empty_target_is_refused_and_left_alone(legacy_copy: Path, db_url: str) -> None:
    fill(db_url, 3)
    result = run("--url", f"sqlite:///{legacy_copy}", "copy", "--to", db_url)
    line = one_line_error(result)
    assert "is not empty (3 blocks, 3 block_keywords, 3 block_tags)" in line
    assert "--force" in line and "nothing was changed" in line
    assert counts(db_url)["blocks"] == 3


def test_force_replaces_the_target_and_ids_continue_after_the_copy(
    legacy_copy: Path, db_url: str
) -> None:
    fill(db_url, 3)
    result = run("--url", f"sqlite:///{legacy_copy}", "copy", "--to", db_url, "--force")
    assert result.exit_code == 0, result.output
    assert "replaced 9 rows the target held before (--force)" in result.output
    assert counts(db_url) == LEGACY_COUNTS
    with Database(db_url) as db:
        # New keyword and tag rows get ids past the copied ones (PostgreSQL's sequences).
        block = BlockStore(db).append("after the copy", keywords=["new"], tags=["new"])
        assert block.block_index == 240
        assert BlockStore(db).verify_chain().ok


def test_failed_copy_leaves_the_target_as_it_was(tmp_path: Path, db_url: str) -> None:
    """Legacy files never enforced foreign keys: an orphan row fails the copy, atomically."""
    path = tmp_path / "orphans.db"
    raw = sqlite3.connect(path)
    for statement in LEGACY_DDL:
        raw.execute(statement)
    raw.execute("INSERT INTO block_tags (block_index, tag) VALUES (7, 'orphan')")
    raw.commit()
    raw.close()
    fill(db_url, 2)
    with pytest.raises(IntegrityViolationError):
        copy_database(f"sqlite:///{path}", db_url, force=True)
    assert counts(db_url)["blocks"] == 2
    assert counts(db_url)["block_tags"] == 2
    assert "Error: constraint failed" in one_line_error(
        run("--url", f"sqlite:///{path}", "copy", "--to", db_url, "--force")
    )


def test_broken_source_chain_is_copied_but_fails_the_check(
    legacy_copy: Path, tmp_path: Path
) -> None:
    with sqlite3.connect(legacy_copy) as raw:
        raw.execute("UPDATE blocks SET context = 'tampered' WHERE block_index = 100")
    target = f"sqlite:///{tmp_path / 'target.db'}"
    line = one_line_error(run("--url", f"sqlite:///{legacy_copy}", "copy", "--to", target))
    assert "the target's chain does not verify from block 100" in line
    assert "nor does the source's: it was copied as it is" in line
    assert counts(target)["blocks"] == 240


def test_refusals_change_nothing(legacy_copy: Path, tmp_path: Path) -> None:
    source = f"sqlite:///{legacy_copy}"
    with pytest.raises(ConfigurationError, match="same database"):
        copy_database(source, f"sqlite:///{legacy_copy.parent}/../legacy/memory.db")
    missing = tmp_path / "missing.db"
    with pytest.raises(DatabaseUnavailableError, match="does not exist"):
        copy_database(f"sqlite:///{missing}", f"sqlite:///{tmp_path / 'target.db'}")
    assert not missing.exists()
    odd = tmp_path / "odd.db"
    with sqlite3.connect(odd) as raw:
        raw.execute("CREATE TABLE blocks (block_index INTEGER PRIMARY KEY, note TEXT)")
    with pytest.raises(SchemaMismatchError, match=r"column blocks\.timestamp is missing"):
        copy_database(f"sqlite:///{odd}", f"sqlite:///{tmp_path / 'target.db'}")
    assert "same database" in one_line_error(run("--url", source, "copy", "--to", source))
    assert sqlite_rows(legacy_copy) == sqlite_rows(LEGACY_FIXTURE)


def test_copy_help_and_required_target() -> None:
    result = run("copy", "--help")
    assert result.exit_code == 0 and "--to URL" in result.output and "--force" in result.output
    assert "Missing option '--to'" in run("copy").output
