"""Alembic owns the schema: upgrade from nothing, adopt legacy databases, go down and up again."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from app import BlockStore, Database, schema
from app.errors import SchemaMismatchError, SchemaOutOfDateError

from .legacy_helpers import LEGACY_DDL

ROOT = Path(__file__).parent.parent
LEGACY_TABLES = [
    "block_embeddings",
    "block_keywords",
    "block_metadata",
    "block_tags",
    "blocks",
    "short_term_memories",
]


def _tables(db: Database) -> list[str]:
    with db.engine.connect() as connection:
        return sorted(inspect(connection).get_table_names())


def _indexes(db: Database, table: str) -> set[str]:
    with db.engine.connect() as connection:
        return {ix["name"] for ix in inspect(connection).get_indexes(table)}


def _legacy_database(path: Path, *, blocks: int = 3) -> None:
    """A database as the legacy class left it: its DDL, its rows, no alembic_version."""
    connection = sqlite3.connect(path)
    for statement in LEGACY_DDL:
        connection.execute(statement)
    for i in range(blocks):
        connection.execute(
            "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
            (
                i,
                f"2025-01-0{i + 1}T00:00:00",
                f"legacy {i}",
                0.5,
                f"h{i}",
                f"h{i - 1}" if i else "",
            ),
        )
        connection.execute(
            "INSERT INTO block_keywords (block_index, keyword) VALUES (?, 'old')", (i,)
        )
    connection.execute(
        "INSERT INTO short_term_memories VALUES ('s1', '2025-01-01', 'hi', NULL, '{}')"
    )
    connection.commit()
    connection.close()


def test_upgrade_from_nothing(db_url: str) -> None:
    db = Database(db_url, check_schema=False)
    assert schema.current_revision(db) is None
    schema.upgrade(db)
    assert schema.current_revision(db) == schema.head_revision() == "0006"
    assert set(LEGACY_TABLES) <= set(_tables(db))
    assert "ix_blocks_importance" in _indexes(db, "blocks")
    db.dispose()


def test_downgrade_and_upgrade_keep_every_row(db: Database) -> None:
    store = BlockStore(db)
    written = [store.append(f"kept {i}", keywords=["k"], metadata={"i": i}) for i in range(5)]
    schema.downgrade(db, "0001")
    assert schema.current_revision(db) == "0001"
    assert "ix_blocks_importance" not in _indexes(db, "blocks")
    assert [store.get(b.block_index) for b in written] == written
    schema.upgrade(db)
    assert "ix_blocks_importance" in _indexes(db, "blocks")
    assert [store.get(b.block_index) for b in written] == written
    assert store.verify_chain().ok


def test_models_and_migrations_agree(db: Database) -> None:
    """``alembic check``: autogenerate finds nothing to change after ``upgrade head``."""
    with db.engine.connect() as connection:
        command.check(schema.alembic_config(connection))


def test_importance_queries_use_the_new_index(sqlite_db: Database) -> None:
    with sqlite_db.read() as session:
        plan = " ".join(
            str(row[-1])
            for row in session.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT block_index FROM blocks WHERE importance >= 0.5 "
                    "ORDER BY importance DESC LIMIT 10"
                )
            )
        )
    assert "ix_blocks_importance" in plan
    assert "TEMP B-TREE" not in plan


def test_legacy_database_is_adopted_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "legacy.db"
    _legacy_database(path)
    db = Database(f"sqlite:///{path}")
    assert schema.current_revision(db) == "0006"
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM blocks")).scalar() == 3
        assert session.execute(text("SELECT count(*) FROM block_keywords")).scalar() == 3
        assert session.execute(text("SELECT content FROM short_term_memories")).scalar() == "hi"
    assert BlockStore(db).get(2).context == "legacy 2"  # type: ignore[union-attr]
    db.dispose()


def test_the_real_legacy_fixture_is_adopted(legacy_copy: Path) -> None:
    db = Database(f"sqlite:///{legacy_copy}")
    counts = {}
    with db.read() as session:
        for table in LEGACY_TABLES:
            counts[table] = session.execute(text(f"SELECT count(*) FROM {table}")).scalar()
    assert counts == {
        "blocks": 240,
        "block_keywords": 720,
        "block_tags": 480,
        "block_metadata": 160,
        "block_embeddings": 180,
        "short_term_memories": 30,
    }
    store = BlockStore(db)
    assert store.verify_chain().ok
    appended = store.append("first block written by the new layer")
    assert appended.block_index == 240
    assert store.verify_chain().ok
    db.dispose()


_LATER_COLUMN = """
import sys
from sqlalchemy import Column, Text
from app import Database, schema
from app.models import Block

# A later revision adds a column to a model; the legacy file was written before it existed.
Block.__table__.append_column(Column("mood", Text, nullable=True))
database = Database("sqlite:///" + sys.argv[1], check_schema=False)
with database.engine.connect() as connection:
    connection.begin()
    assert schema.adopt_legacy_schema(connection, schema.legacy_layout())
    assert schema.legacy_schema_differences(connection) == []
database.dispose()
print("adopted")
"""


def test_revision_0001_is_frozen_whatever_the_models_become(legacy_copy: Path) -> None:
    """Adopting a legacy file compares it with 0001's own layout, not with today's models:
    a column a later revision adds to a model does not make the legacy file a mismatch."""
    done = subprocess.run(
        [sys.executable, "-c", _LATER_COLUMN, str(legacy_copy)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "adopted"
    assert sorted(schema.legacy_layout().tables) == LEGACY_TABLES


def test_mismatched_tables_are_not_adopted(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    connection = sqlite3.connect(path)
    for statement in LEGACY_DDL:
        connection.execute(statement.replace("prev_hash TEXT NOT NULL", "parent TEXT"))
    connection.commit()
    before = connection.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    connection.close()
    with pytest.raises(SchemaMismatchError) as raised:
        Database(f"sqlite:///{path}")
    message = str(raised.value)
    assert "column blocks.prev_hash is missing" in message
    assert "unexpected column blocks.parent" in message
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before
    connection.close()


def test_partial_legacy_schema_names_the_missing_tables(tmp_path: Path) -> None:
    path = tmp_path / "partial.db"
    connection = sqlite3.connect(path)
    connection.execute(LEGACY_DDL[0])
    connection.close()
    with pytest.raises(SchemaMismatchError, match="table block_keywords is missing"):
        Database(f"sqlite:///{path}")


def test_old_schema_is_refused_without_auto_upgrade(db_url: str) -> None:
    with pytest.raises(SchemaOutOfDateError, match=r"run `python -m app --url \S+ db upgrade`"):
        Database(db_url, auto_upgrade=False)
    migrating = Database(db_url, check_schema=False)
    schema.upgrade(migrating, "0001")
    with pytest.raises(SchemaOutOfDateError, match="revision 0001 but this code expects 0006"):
        Database(db_url, auto_upgrade=False)
    schema.upgrade(migrating)
    Database(db_url, auto_upgrade=False).dispose()
    migrating.dispose()


def test_unknown_newer_revision_is_refused(db: Database, db_url: str) -> None:
    with db.unit_of_work() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaOutOfDateError, match="'9999', which this code does not know"):
        Database(db_url)


def test_alembic_command_line(db_url: str) -> None:
    def alembic(*arguments: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={db_url}", *arguments],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    alembic("upgrade", "head")
    assert "0006 (head)" in alembic("current")
    alembic("downgrade", "0001")
    assert "0001" in alembic("current")
    alembic("upgrade", "head")
    db = Database(db_url, auto_upgrade=False)
    assert schema.current_revision(db) == "0006"
    db.dispose()


def test_alembic_command_line_adopts_a_legacy_file(tmp_path: Path) -> None:
    path = tmp_path / "legacy.db"
    _legacy_database(path, blocks=2)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url=sqlite:///{path}", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == ("0006",)
    assert connection.execute("SELECT count(*) FROM blocks").fetchone() == (2,)
    connection.close()
