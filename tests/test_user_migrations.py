"""A user's own Alembic migration, in a clone of the project, on a database with blocks and
keywords (the real database of the old class): upgrade and downgrade work, and keyword
search still finds new blocks after both; what a migration dropped is reported by
``app doctor`` and restored by ``app reindex`` or when the database is opened.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from sqlalchemy import inspect

from app import BlockStore, Database, schema
from app.database import migration_database
from app.errors import ConfigurationError
from app.operations.doctor import FAIL, OK, WARN, diagnose
from app.operations.transfer import copy_database

from .helpers import postgres_schema, require_backend, run_cli
from .legacy_helpers import LEGACY_FIXTURE
from .search_reference import scan_keywords

ROOT = Path(__file__).resolve().parent.parent
HOWTO = ROOT / "docs" / "guide" / "operations.md"

#: A user's revision as ``alembic revision --autogenerate`` writes it for a new column on
#: SQLite (batch mode); ``recreate="always"`` makes batch mode rebuild the table.
REVISION = '''"""{table}: a note per row

Revision ID: {rev}
Revises: {head}
"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("{table}", schema=None, recreate="{recreate}") as batch_op:
        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("{table}", schema=None) as batch_op:
        batch_op.drop_column("note")
'''
USER_REVISION = REVISION.replace("{table}", "blocks").replace("{rev}", "9001")


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    """The project's migrations directory as a clone has it, where the user adds revisions."""
    migrations = tmp_path / "clone" / "migrations"
    shutil.copytree(ROOT / "migrations", migrations)
    schema.use_migrations_dir(migrations)
    try:
        yield migrations
    finally:
        schema.use_migrations_dir(None)


def add_revision(migrations: Path, text: str) -> None:
    (migrations / "versions" / "9001_blocks_note.py").write_text(text, encoding="utf-8")
    schema.reset_script_cache()


@pytest.fixture
def url(backend: str, tmp_path: Path) -> Iterator[str]:
    """The old class's database (240 blocks, 720 keywords) at the layer's head revision."""
    if backend == "sqlite":
        path = tmp_path / "memory.db"
        shutil.copyfile(LEGACY_FIXTURE, path)
        url = f"sqlite:///{path}"
        Database(url).dispose()  # adopted and upgraded
        yield url
        return
    source = tmp_path / "source.db"
    shutil.copyfile(LEGACY_FIXTURE, source)
    with postgres_schema("um_") as url:
        Database(url, auto_upgrade=True).dispose()
        assert copy_database(f"sqlite:///{source}", url).ok
        yield url


def migrate(url: str, action: str, revision: str) -> None:
    with migration_database(url) as database, schema.write_connection(database) as connection:
        getattr(command, action)(schema.alembic_config(connection), revision)


def searchable(url: str, word: str, count: int) -> int:
    """Append ``count`` blocks holding ``word`` and return how many a search finds."""
    with Database(url) as db:
        store = BlockStore(db)
        for number in range(count):
            store.append(f"{word} {number}", keywords=[f"{word}-kw"])
        return len(store.search_keywords([word], limit=1000))


def short_words_exact(url: str, tag: str) -> None:
    """Append Korean blocks and check that words of one and two characters (the 1-/2-gram
    index of revision 0006) find what the full scan finds."""
    with Database(url) as db:
        store = BlockStore(db)
        store.append_many(
            {"context": f"{tag} 메모 {n}: 밥!", "keywords": ["반찬"]} for n in range(5)
        )
        for word in ("밥", "반", "메모", "찬", "밥!", "!", tag[:2]):
            found = [b.block_index for b in store.search_keywords([word], limit=1000)]
            assert found and found == scan_keywords(db, [word], 1000), word


def test_a_user_migration_up_and_down_keeps_search_whole(clone: Path, url: str) -> None:
    up_and_down(clone, url, "auto")


def test_a_user_migration_that_rebuilds_blocks_keeps_search_whole(
    clone: Path, tmp_path: Path
) -> None:
    """Batch mode copies the table on SQLite (on PostgreSQL it alters it in place)."""
    up_and_down(clone, sqlite_url(tmp_path), "always")


def up_and_down(clone: Path, url: str, recreate: str) -> None:
    head = schema.head_revision()
    add_revision(clone, USER_REVISION.format(head=head, recreate=recreate))
    migrate(url, "upgrade", "head")
    with Database(url) as db:
        assert schema.current_revision(db) == "9001"
        with db.engine.connect() as connection:
            assert "note" in {c["name"] for c in inspect(connection).get_columns("blocks")}
        assert BlockStore(db).count() == 240
    assert searchable(url, "aftermigration", 20) == 20
    short_words_exact(url, "이후")
    report = diagnose(url)
    assert report.ok, [str(c) for c in report.problems]
    assert any(c.name == "search indexes" and c.status == OK for c in report.checks)

    migrate(url, "downgrade", head)  # rebuilds blocks: with keyword rows pointing at it
    # The user takes the column out of the model again (or the Database would upgrade).
    (clone / "versions" / "9001_blocks_note.py").unlink()
    schema.reset_script_cache()
    with Database(url) as db:
        assert schema.current_revision(db) == head
        store = BlockStore(db)
        assert store.count() == 265 and store.verify_chain().ok
        assert len(store.search_keywords(["aftermigration"], limit=1000)) == 20
    assert searchable(url, "afterdowngrade", 20) == 20
    short_words_exact(url, "되돌")
    assert diagnose(url).ok


def test_a_migration_that_breaks_a_foreign_key_is_rolled_back(
    clone: Path, url: str, backend: str
) -> None:
    head = schema.head_revision()
    recreate = "always" if backend == "sqlite" else "auto"
    breaking = USER_REVISION.format(head=head, recreate=recreate).replace(
        """        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))""",
        """        batch_op.add_column(sa.Column("note", sa.Text(), nullable=True))
    op.execute("DELETE FROM blocks WHERE block_index = 5")""",
    )
    add_revision(clone, breaking)
    with pytest.raises(Exception, match=r"foreign key|FOREIGN KEY|violates"):
        migrate(url, "upgrade", "head")
    with Database(url, check_schema=False) as db:
        assert schema.current_revision(db) == head
        assert BlockStore(db).count() == 240


def drop_triggers(url: str) -> None:
    """What a migration of older code left: the blocks table rebuilt without its triggers."""
    with Database(url) as db, db.writing() as connection:
        for name in ("search_pending_block_insert", "search_pending_block_update"):
            connection.exec_driver_sql(f"DROP TRIGGER {name}")


def sqlite_url(tmp_path: Path) -> str:
    path = tmp_path / "memory.db"
    shutil.copyfile(LEGACY_FIXTURE, path)
    url = f"sqlite:///{path}"
    Database(url).dispose()
    return url


def test_doctor_names_missing_triggers_and_reindex_restores_them(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    drop_triggers(url)
    with Database(url, auto_upgrade=False) as db:
        store = BlockStore(db)
        for number in range(20):
            store.append(f"unnoticed {number}")
        # Exact even now: without its triggers the index is not trusted, searches scan.
        assert len(store.search_keywords(["unnoticed"], limit=100)) == 20
    output = doctor_names_then_reindex_restores(url, ["trigger search_pending_block_insert"])
    assert "260 blocks indexed" in output
    assert searchable(url, "afterwards", 5) == 5


def doctor_names_then_reindex_restores(url: str, missing: list[str]) -> str:
    """``app doctor`` fails naming what is missing and advising reindex; ``app reindex``
    restores it; doctor is content. Returns what reindex printed."""
    report = diagnose(url)
    (check,) = [c for c in report.checks if c.name == "search indexes"]
    assert not report.ok and check.status == FAIL and "reindex" in check.advice
    result = run_cli("--url", url, "reindex")
    assert result.exit_code == 0, result.output
    for name in missing:
        assert name.split()[1] in check.value and name in result.output
    assert diagnose(url).ok
    return str(result.output)


def test_opening_the_database_restores_missing_triggers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = sqlite_url(tmp_path)
    drop_triggers(url)
    with Database(url, auto_upgrade=False) as db:
        BlockStore(db).append("written while the triggers were missing")
    with Database(url) as db:  # auto_upgrade: on by default on SQLite
        assert "restored the search indexes" in caplog.text
        assert len(BlockStore(db).search_keywords(["missing"])) == 1
    assert diagnose(url).ok


@pytest.mark.postgres
def test_doctor_and_reindex_restore_a_dropped_trigram_index(tmp_path: Path) -> None:
    require_backend("postgres")
    with postgres_schema("um_") as url:
        with Database(url, auto_upgrade=True) as db:
            BlockStore(db).append("something to find", keywords=["find"])
            with db.writing() as connection:
                connection.exec_driver_sql("DROP INDEX ix_blocks_context_trgm")
                connection.exec_driver_sql("DROP INDEX ix_blocks_instant")
        doctor_names_then_reindex_restores(
            url, ["index ix_blocks_context_trgm", "index ix_blocks_instant"]
        )


EMBEDDINGS_REVISION = REVISION.replace("{table}", "block_embeddings").replace("{rev}", "9002")


def test_a_migration_that_rebuilds_the_embeddings_keeps_caches_informed(
    clone: Path, tmp_path: Path
) -> None:
    """Batch mode drops the triggers that note rewritten embeddings: they are restored, so
    a warm similarity cache still sees a rewrite made afterwards."""
    url = sqlite_url(tmp_path)
    (clone / "versions" / "9002_embeddings_note.py").write_text(
        EMBEDDINGS_REVISION.format(head=schema.head_revision(), recreate="always"),
        encoding="utf-8",
    )
    schema.reset_script_cache()
    migrate(url, "upgrade", "head")
    assert diagnose(url).ok
    query = [0.0] * 127 + [1.0]
    with Database(url) as db, Database(url) as other:
        store = BlockStore(db)
        store.similar(query, top_k=1)  # warm
        with other.writing() as connection:
            connection.exec_driver_sql(
                "UPDATE block_embeddings SET embedding = ? WHERE block_index = 7",
                (bytes(np.asarray(query, dtype=np.float32).tobytes()),),
            )
        assert store.similar(query, top_k=1)[0].block.block_index == 7


AUTOGENERATE = """
import sys
from alembic import command
from sqlalchemy import Column, Text
from app import schema
from app.errors import ConfigurationError
from app.database import migration_database
from app.models import Block

schema.use_migrations_dir(sys.argv[2])
Block.__table__.append_column(Column("note", Text, nullable=True))  # the user's new column
with migration_database(sys.argv[1]) as database, schema.write_connection(database) as conn:
    config = schema.alembic_config(conn)
    command.revision(config, message="blocks note", autogenerate=True, rev_id="9100")
"""


def test_autogenerate_on_the_old_class_database_writes_only_the_new_column(
    clone: Path, tmp_path: Path
) -> None:
    """The old class's tables differ from the models in ways that mean nothing (nullable
    primary keys, unnamed UNIQUE constraints): the script holds the user's column only."""
    import subprocess
    import sys

    url = sqlite_url(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", AUTOGENERATE, url, str(clone)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (script,) = (clone / "versions").glob("9100_*.py")
    body = script.read_text(encoding="utf-8")
    code = [line.strip() for line in body.splitlines() if line.strip().startswith("batch_op.")]
    assert code == [
        "batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))",
        "batch_op.drop_column('note')",
    ], body
    howto = HOWTO.read_text(encoding="utf-8").split("## Extending the schema")[-1]
    for line in code:  # the how-to shows what autogenerate writes
        assert line.replace("'", '"') in howto
    schema.reset_script_cache()
    migrate(url, "upgrade", "head")
    assert diagnose(url).ok
    assert searchable(url, "withnote", 5) == 5
    migrate(url, "downgrade", "-1")
    script.unlink()
    schema.reset_script_cache()
    assert diagnose(url).ok
    assert searchable(url, "afternote", 5) == 5


def test_doctor_warns_of_blocks_waiting_for_the_keyword_index(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    with Database(url) as db:  # a bulk import: no search has indexed them yet
        BlockStore(db).append_many([{"context": f"imported {n}"} for n in range(3000)])
    (check,) = [c for c in diagnose(url).checks if c.name == "search indexes"]
    assert check.status == WARN and "3,000 blocks wait" in check.value
    assert run_cli("--url", url, "reindex").exit_code == 0
    (check,) = [c for c in diagnose(url).checks if c.name == "search indexes"]
    assert check.status == OK


def test_a_directory_without_env_py_is_refused_and_the_bundled_revisions_stay(
    tmp_path: Path,
) -> None:
    (tmp_path / "versions").mkdir()
    with pytest.raises(ConfigurationError, match=r"no env\.py"):
        schema.use_migrations_dir(tmp_path)
    assert schema.migrations_dir() == ROOT / "migrations"
