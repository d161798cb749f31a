"""PostgreSQL specifics: the pool, read-only snapshots, the write lock and its deadline, retries
of a real deadlock, the column types the alembic command line creates, and the legacy facade
giving the same answers as on SQLite.

Every test here runs against a fresh schema of the server in ``APP_TEST_POSTGRES_URL``.
Scenarios that are not specific to PostgreSQL live in the general modules, whose ``backend``
fixture runs them on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from app import BlockStore, Database
from app.engine._postgres_hooks import PG_WRITE_LOCK_KEY, _quiet
from app.errors import (
    DatabaseBusyError,
    DatabaseUnavailableError,
    ReadOnlyUnitError,
)
from app.legacy import DatabaseManager
from app.models import LEGACY_TABLES
from app.schema import current_revision, head_revision

from .helpers import (
    JOIN_TIMEOUT,
    Background,
    in_thread,
    wait_until,
)
from .legacy_helpers import next_block

pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

ROOT = Path(__file__).resolve().parent.parent


def libpq_url(db_url: str) -> str:
    """The test schema's URL for a plain psycopg connection (no SQLAlchemy driver name)."""
    return make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def other(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A second session on the same schema, outside the layer."""
    connection = psycopg.connect(libpq_url(db_url))
    yield connection
    connection.close()


def scalar(session: Session, sql: str) -> Any:
    return session.execute(text(sql)).scalar_one()


def _pairs(db: Database) -> None:
    with db.unit_of_work() as session:
        session.execute(text("CREATE TABLE pairs (id INTEGER PRIMARY KEY, value INTEGER)"))
        session.execute(text("INSERT INTO pairs VALUES (1, 0), (2, 0)"))


def _values(db: Database) -> dict[int, int]:
    with db.read() as session:
        return dict(session.execute(text("SELECT id, value FROM pairs")).all())


def _increment(session: Session) -> None:
    session.execute(text("UPDATE pairs SET value = value + 1 WHERE id = 1"))


def _backend_alive(connection: psycopg.Connection[Any], pid: int) -> bool:
    found = connection.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
    return found.fetchone() is not None


# -- the pool and the connections ------------------------------------------------------------


def test_server_pool_and_no_session_settings(make_db: Callable[..., Database]) -> None:
    db = make_db(pool_size=3, max_overflow=2, pool_recycle=120)
    pool: Any = db.engine.pool
    assert isinstance(pool, QueuePool)
    assert (pool.size(), pool._max_overflow, pool._recycle) == (3, 2, 120)
    with db.read() as session:
        # Nothing was SET on the connection: no pragma-like statements on PostgreSQL. The
        # two transaction_* values are the read unit's own BEGIN ... READ ONLY.
        changed = session.execute(
            text("SELECT name FROM pg_settings WHERE source = 'session' ORDER BY name")
        ).scalars()
        assert list(changed) == ["transaction_isolation", "transaction_read_only"]
        raw: Any = session.connection().connection.dbapi_connection
        # The layer sends BEGIN itself, so psycopg runs in autocommit mode underneath.
        assert raw.autocommit is True


def test_pre_ping_replaces_a_connection_the_server_closed(
    make_db: Callable[..., Database], other: psycopg.Connection[Any]
) -> None:
    other.autocommit = True
    for pre_ping in (True, False):
        db = make_db(pool_size=1, max_overflow=0, pool_pre_ping=pre_ping)
        with db.read() as session:
            pid = scalar(session, "SELECT pg_backend_pid()")
            raw = session.connection().connection.dbapi_connection
        assert _quiet(raw)  # idle and healthy: handed out without a round trip
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(
            lambda pid=pid: not _backend_alive(other, pid),
            f"the server ended backend {pid}",
            pause=0.01,
        )
        assert not _quiet(raw)  # the server's goodbye is waiting on the socket
        if pre_ping:
            with db.read() as session:
                assert scalar(session, "SELECT pg_backend_pid()") != pid
            continue
        # Without the check, the first statement meets the server's goodbye: a named error.
        with pytest.raises(DatabaseUnavailableError, match="administrator command"), db.read():
            pass


# -- units: read-only snapshots, the write lock ----------------------------------------------


def test_read_units_are_read_only_repeatable_read_snapshots(db: Database) -> None:
    store = BlockStore(db)
    store.append("first")
    with db.read() as session:
        assert scalar(session, "SHOW transaction_isolation") == "repeatable read"
        assert scalar(session, "SHOW transaction_read_only") == "on"
        assert scalar(session, "SELECT count(*) FROM blocks") == 1
        appended = in_thread(lambda: store.append("second"))
        assert not isinstance(appended, BaseException), appended
        assert scalar(session, "SELECT count(*) FROM blocks") == 1  # the same snapshot
    assert store.count() == 2
    with db.reading() as connection:  # the layer's own reads (searches, chain checks)
        assert connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
    with pytest.raises(ReadOnlyUnitError, match="inside a read unit"), db.read() as session:
        session.execute(text("INSERT INTO short_term_memories VALUES ('x', 't', 'c', '', '')"))
    assert store.short_term.get("x") is None


def test_write_units_hold_the_advisory_lock_at_read_committed(db: Database) -> None:
    with db.unit_of_work() as session:
        assert scalar(session, "SHOW transaction_isolation") == "read committed"
        assert scalar(session, "SHOW lock_timeout") == "0"  # bounded for the lock alone
        held = session.execute(
            text(
                "SELECT classid::bigint, objid::bigint, objsubid FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()"
            )
        ).all()
    key = PG_WRITE_LOCK_KEY & 0xFFFFFFFFFFFFFFFF
    assert held == [(key >> 32, key & 0xFFFFFFFF, 1)]


def test_run_gives_up_at_the_deadline_while_another_session_holds_the_lock(
    make_db: Callable[..., Database], other: psycopg.Connection[Any]
) -> None:
    db = make_db(busy_timeout=0.2, retry_deadline=1.5)
    _pairs(db)
    other.execute("SELECT pg_advisory_xact_lock(%s)", (PG_WRITE_LOCK_KEY,))
    started = time.monotonic()
    with pytest.raises(DatabaseBusyError, match="stayed busy") as raised:
        db.run(_increment)
    waited = time.monotonic() - started
    assert 1.4 <= waited <= 3.0
    assert raised.value.waited is not None and raised.value.waited >= 1.4
    assert db.stats().busy_retries >= 1

    def let_go_soon() -> None:
        time.sleep(0.5)
        other.rollback()

    with Background(let_go_soon, name="other session"):
        db.run(_increment)  # succeeds once the other session lets go
    assert _values(db) == {1: 1, 2: 0}


def test_run_retries_a_real_deadlock(db: Database, other: psycopg.Connection[Any]) -> None:
    """SQLSTATE 40P01: the server aborts our unit; ``db.run`` runs it again, once."""
    _pairs(db)
    other.execute("UPDATE pairs SET value = value + 10 WHERE id = 1")  # holds row 1
    ours_holds_row_2 = threading.Event()
    attempts: list[int] = []

    def unit(session: Session) -> int:
        attempts.append(len(attempts) + 1)
        # Ours finds the deadlock (it checks after 50 ms; the other session after 1 s).
        session.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
        session.execute(text("UPDATE pairs SET value = value + 1 WHERE id = 2"))
        if len(attempts) == 1:
            ours_holds_row_2.set()
            waiting = "SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted"
            wait_until(
                lambda: scalar_of(session, waiting, pid=other.info.backend_pid),
                "the other session waits for our row",
                pause=0.01,
            )
        session.execute(text("UPDATE pairs SET value = value + 1 WHERE id = 1"))
        return attempts[-1]

    def the_other_session() -> None:
        assert ours_holds_row_2.wait(JOIN_TIMEOUT)
        other.execute("UPDATE pairs SET value = value + 10 WHERE id = 2")  # waits for ours
        other.commit()

    retries = db.stats().busy_retries
    with Background(the_other_session, name="other session"):
        assert db.run(unit) == 2
    assert attempts == [1, 2]
    assert db.stats().busy_retries == retries + 1
    assert _values(db) == {1: 11, 2: 11}  # each side's work exactly once


def scalar_of(session: Session, sql: str, **parameters: Any) -> Any:
    return session.execute(text(sql), parameters).scalar_one()


# -- migrations -------------------------------------------------------------------------------


def test_alembic_command_line_builds_the_schema_in_a_fresh_schema(db_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={db_url}", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with Database(db_url, auto_upgrade=False) as db:
        assert current_revision(db) == head_revision()
        with db.read() as session:
            tables = session.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() ORDER BY table_name"
                )
            ).scalars()
            assert sorted(tables) == sorted(
                [*LEGACY_TABLES, "alembic_version", "embedding_changes"]
            )
            types = session.execute(
                text(
                    "SELECT table_name || '.' || column_name, data_type, "
                    "column_default LIKE 'nextval(%' FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND column_name IN "
                    "('importance', 'embedding', 'id') ORDER BY 1"
                )
            ).all()
    assert [tuple(row) for row in types] == [
        ("block_embeddings.embedding", "bytea", None),
        ("block_keywords.id", "integer", True),
        ("block_tags.id", "integer", True),
        ("blocks.importance", "double precision", None),
        ("short_term_memories.id", "text", None),
    ]


# -- the legacy facade: the same answers as on SQLite -----------------------------------------


def _facade_calls(manager: DatabaseManager) -> list[Any]:
    """A fixed series of calls covering every kind of result the facade returns."""
    out: list[Any] = []
    last = None
    weights = [0.1, 1 / 3, 0.5, 0.9, 0.25, 1.0]
    vectors = [
        [1.0, 0, 0, 0],
        [0, 1.0, 0, 0],
        [0.6, 0.8, 0, 0],
        [0.1, 0.2, 0.3, 0.4],
        [],
        [1e-3] * 4,
    ]
    for i in range(6):
        extra: dict[str, Any] = {"keywords": [f"alpha{i % 2}", "Shared"], "tags": [f"t{i % 3}"]}
        if i % 2:
            extra["metadata"] = {"n": i, "text": "메모 ✓"}
        if vectors[i]:
            extra["embedding"] = np.array(vectors[i]) if i == 3 else vectors[i]
        block = next_block(last, context="블록 block", importance=weights[i], **extra)
        out.append(manager.add_block(block))
        last = manager.get_last_block_info()
    out += [
        last,
        manager.get_block(3),
        manager.get_block(99),
        manager.get_blocks(start_idx=1, end_idx=4, sort_by="importance", order="desc"),
        manager.get_blocks(limit=2, offset=1, sort_by="timestamp", order="asc"),
        manager.search_blocks_by_keyword(["ALPHA1"]),
        manager.search_blocks_by_keyword(["블록"], limit=2),
        manager.search_blocks_by_embedding([1.0, 0.0, 0.0, 0.0], top_k=3),
        manager.search_blocks_by_date_range("2024-05-01T10:00:01", "2024-05-01T10:00:04"),
        manager.filter_blocks_by_importance(0.3),
        manager.count_blocks(),
        manager.get_recent_blocks(2),
        manager.get_block_embedding(3),
        manager.update_block_metadata(1, {"x": [1, 2]}),
        manager.get_block(1)["metadata"],  # type: ignore[index]
    ]
    for i in range(3):
        memory = {"id": f"s{i}", "timestamp": f"2024-05-02T00:00:0{i}", "content": f"c{i}"}
        out.append(manager.add_short_term_memory({**memory, "metadata": {"i": i} if i else None}))
    out += [
        manager.get_recent_short_term_memories(2),
        manager.get_short_term_memory_by_id("s0"),
        manager.delete_short_term_memory("s1"),
    ]
    cursor = manager.conn.cursor()
    cursor.execute(
        "SELECT block_index, context, importance FROM blocks WHERE block_index >= ? "
        "ORDER BY block_index",
        (3,),
    )
    out.append([(tuple(r), list(r.keys()), r["context"], r[0]) for r in cursor.fetchall()])
    out.append([column[0] for column in cursor.description])
    conn = manager.conn
    out.append(tuple(conn.execute("SELECT count(*) FROM block_keywords").fetchone()))
    out.append(conn.execute("SELECT * FROM blocks WHERE block_index = ?", (99,)).fetchone())
    blob = conn.execute("SELECT embedding FROM block_embeddings WHERE block_index = ?", (1,))
    out.append(bytes(blob.fetchone()[0]))
    updated = conn.execute("UPDATE short_term_memories SET speaker = ? WHERE id = ?", ("z", "s2"))
    out.append(updated.rowcount)
    conn.commit()
    out += [
        manager.get_short_term_memory_by_id("s2"),
        manager.clear_short_term_memories(),
        manager.health_check(),
    ]
    return out


def test_facade_gives_the_same_results_as_on_sqlite(db_url: str, tmp_path: Path) -> None:
    with DatabaseManager(str(tmp_path / "memory.db")) as on_sqlite:
        expected = _facade_calls(on_sqlite)
    with DatabaseManager(db_url) as on_postgres:
        assert on_postgres.db_type == "postgres"
        got = _facade_calls(on_postgres)
    assert len(got) == len(expected) == 36
    for position, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, f"call {position} differs"
    assert expected[7]["embedding"] == pytest.approx([0.1, 0.2, 0.3, 0.4])  # float32 values
