"""Both settings of GREEUM_THREAD_SAFE, the rules of ``conn``, and closing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app import errors
from app.engine._sql_text import statement_kind, to_pyformat
from app.legacy import DatabaseManager
from app.legacy._conn import Row

from .helpers import Background, in_thread
from .legacy_helpers import chain_is_intact, next_block

SAME_THREAD = "SQLite objects created in a thread can only be used in that same thread"


@pytest.fixture
def open_manager(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], DatabaseManager]]:
    """Build managers on this test's database with GREEUM_THREAD_SAFE set as asked."""
    opened: list[DatabaseManager] = []

    def build(setting: str) -> DatabaseManager:
        monkeypatch.setenv("GREEUM_THREAD_SAFE", setting)
        manager = DatabaseManager(db_url)
        opened.append(manager)
        return manager

    yield build
    for manager in opened:
        manager.close()


@pytest.fixture
def db(open_manager: Callable[[str], DatabaseManager]) -> DatabaseManager:
    return open_manager("true")


def add_next(manager: DatabaseManager, **extra: Any) -> int:
    return manager.add_block(next_block(manager.get_last_block_info(), **extra))


def count_rows(manager: DatabaseManager, table: str = "blocks") -> int:
    return int(manager.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# -- the switch -----------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["true", "false"])
def test_every_kind_of_call_works_in_the_creating_thread(
    open_manager: Callable[[str], DatabaseManager], setting: str
) -> None:
    db = open_manager(setting)
    assert db.thread_safe is (setting == "true")
    assert add_next(db, keywords=["k"]) == 0
    with db.transaction():
        assert add_next(db) == 1
    assert db.append_block("appended") == 2
    assert db.add_short_term_memory({"id": "m", "content": "c"}) == "m"
    db.conn.execute(
        "INSERT INTO short_term_memories (id, timestamp, content) VALUES (?, ?, ?)",
        ("raw", "2024-01-01T00:00:00", "via conn"),
    )
    db.conn.commit()
    assert count_rows(db, "short_term_memories") == 2
    assert [b["block_index"] for b in db.search_blocks_by_keyword(["k"])] == [0]
    assert chain_is_intact(db) == (3, None)
    assert db.health_check() is True


@pytest.mark.parametrize("setting", ["false"])
def test_legacy_mode_refuses_other_threads_with_sqlite3_programming_error(
    open_manager: Callable[[str], DatabaseManager], setting: str
) -> None:
    db = open_manager(setting)
    add_next(db)
    calls: list[Callable[[], Any]] = [
        db.count_blocks,
        lambda: db.get_block(0),
        lambda: add_next(db),
        lambda: db.append_block("x"),
        lambda: db.transaction().__enter__(),
        lambda: db.conn.cursor(),
        lambda: db.conn.execute("SELECT 1"),
        db.close,
    ]
    for call in calls:
        error = in_thread(call)
        assert type(error) is sqlite3.ProgrammingError, call
        assert str(error).startswith(SAME_THREAD)
    assert in_thread(db.health_check) is False  # never raises
    # The owner's connection survived the attempts.
    assert add_next(db) == 1
    assert chain_is_intact(db) == (2, None)


def test_legacy_mode_on_sqlite_is_one_plain_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREEUM_THREAD_SAFE", "false")
    path = tmp_path / "legacy-mode.db"
    with DatabaseManager(str(path)) as db:
        assert type(db.conn) is sqlite3.Connection
        assert db.conn.row_factory is sqlite3.Row
        assert db.conn is db.conn
        # The old class left the journal mode alone (delete for a new file).
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        add_next(db)
        row = db.conn.execute("SELECT block_index, context FROM blocks").fetchone()
        assert (type(row), row["context"], dict(row)["block_index"]) == (sqlite3.Row, "memory 0", 0)
        with pytest.raises(RuntimeError), db.transaction():
            add_next(db)
            raise RuntimeError
        assert db.count_blocks() == 1
        held = db.conn
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        held.execute("SELECT 1")
    monkeypatch.setenv("GREEUM_THREAD_SAFE", "true")
    with DatabaseManager(str(path)) as db:
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_thread_safe_mode_serves_every_thread(db: DatabaseManager) -> None:
    add_next(db)

    def elsewhere() -> tuple[int, int, int]:
        with db.transaction():
            index = add_next(db)
        cursor = db.conn.cursor()
        cursor.execute("SELECT COUNT(*) FROM blocks")
        return index, cursor.fetchone()[0], db.count_blocks()

    assert in_thread(elsewhere) == (1, 2, 2)
    assert (
        in_thread(lambda: db.conn.execute("SELECT MAX(block_index) FROM blocks").fetchone()[0]) == 1
    )


@pytest.mark.parametrize(
    ("value", "thread_safe"),
    [
        *[(value, True) for value in ("", "1", "TRUE", "yes", "on")],
        *[(value, False) for value in ("0", "false", "False", "no", "off")],
    ],
)
def test_setting_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, thread_safe: bool
) -> None:
    monkeypatch.setenv("GREEUM_THREAD_SAFE", value)
    with DatabaseManager(str(tmp_path / "m.db")) as db:
        assert db.thread_safe is thread_safe
        monkeypatch.setenv("GREEUM_THREAD_SAFE", "false" if thread_safe else "true")
        assert db.thread_safe is thread_safe  # read once, at construction
        assert isinstance(in_thread(db.count_blocks), int) is thread_safe


def test_default_is_thread_safe_and_a_bad_value_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GREEUM_THREAD_SAFE", raising=False)
    with DatabaseManager(str(tmp_path / "m.db")) as db:
        assert db.thread_safe is True
    monkeypatch.setenv("GREEUM_THREAD_SAFE", "maybe")
    with pytest.raises(errors.ConfigurationError, match="GREEUM_THREAD_SAFE='maybe'"):
        DatabaseManager(str(tmp_path / "m.db"))


# -- closing --------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["true", "false"])
def test_every_call_after_close_raises_closed_error(
    open_manager: Callable[[str], DatabaseManager], setting: str
) -> None:
    db = open_manager(setting)
    add_next(db)
    db.close()
    assert db.database.closed
    calls: list[Callable[[], Any]] = [
        db.count_blocks,
        lambda: db.get_block(0),
        lambda: add_next(db),
        lambda: db.append_block("x"),
        lambda: db.add_short_term_memory({"id": "m", "content": "c"}),
        lambda: db.transaction().__enter__(),
        lambda: db.run_serialized(lambda: None),
        lambda: db.conn,
    ]
    for call in calls:
        with pytest.raises(errors.ClosedError, match="was closed; create a new DatabaseManager"):
            call()
    assert db.health_check() is False
    db.close()


def test_a_held_conn_raises_closed_error_after_close(db: DatabaseManager) -> None:
    conn = db.conn
    db.close()
    with pytest.raises(errors.ClosedError):
        conn.execute("SELECT 1")
    with pytest.raises(errors.ClosedError):
        conn.cursor().execute("INSERT INTO blocks VALUES (0, 't', 'c', 0, 'h', '')")


def test_close_waits_for_a_transaction_in_progress_in_another_thread(
    db: DatabaseManager, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside, closed = threading.Event(), threading.Event()

    def worker() -> int:
        with db.transaction():
            add_next(db)
            inside.set()
            assert closed.wait(10)
            add_next(db)  # the unit may finish after close()
        return db.count_blocks()  # a new call is refused

    working = Background(worker, name="worker").start()
    assert inside.wait(10)
    db.close()
    assert not db.database.closed  # the pool stays until the transaction ends
    closed.set()
    assert type(working.outcome()) is errors.ClosedError
    assert db.database.closed
    monkeypatch.setenv("GREEUM_THREAD_SAFE", "true")
    with DatabaseManager(db_url) as again:
        assert chain_is_intact(again) == (2, None)


# -- conn -----------------------------------------------------------------------------------


def test_rows_have_index_and_key_access(db: DatabaseManager) -> None:
    add_next(db)
    row = db.conn.execute("SELECT block_index, context AS ctx FROM blocks").fetchone()
    assert isinstance(row, sqlite3.Row | Row)
    assert (row[0], row["block_index"], row["ctx"], row["CTX"]) == (
        0,
        0,
        "memory 0",
        "memory 0",
    )
    assert list(row.keys()) == ["block_index", "ctx"]
    assert dict(row) == {"block_index": 0, "ctx": "memory 0"}
    assert tuple(row) == (0, "memory 0")
    with pytest.raises(IndexError):
        row["missing"]


def test_row_factory_none_or_custom(db: DatabaseManager) -> None:
    add_next(db)
    db.conn.row_factory = None
    assert db.conn.execute("SELECT block_index, context FROM blocks").fetchall() == [
        (0, "memory 0")
    ]
    db.conn.row_factory = lambda cursor, row: {
        d[0]: v for d, v in zip(cursor.description, row, strict=True)
    }
    assert db.conn.execute("SELECT block_index AS i FROM blocks").fetchone() == {"i": 0}
    db.conn.row_factory = sqlite3.Row


def test_cursor_api(db: DatabaseManager) -> None:
    cursor = db.conn.cursor()
    cursor.executemany(
        "INSERT INTO short_term_memories (id, timestamp, content) VALUES (?, ?, ?)",
        [(f"m{i}", f"2024-01-01T00:00:0{i}", "c") for i in range(5)],
    )
    assert cursor.rowcount == 5
    cursor.execute("UPDATE short_term_memories SET speaker = ? WHERE id < ?", ("x", "m2"))
    assert cursor.rowcount == 2
    db.conn.commit()
    cursor.execute("SELECT id, speaker FROM short_term_memories ORDER BY id")
    assert [d[0] for d in cursor.description] == ["id", "speaker"]
    assert cursor.fetchone()["id"] == "m0"
    assert [r["id"] for r in cursor.fetchmany(2)] == ["m1", "m2"]
    assert [r["id"] for r in cursor] == ["m3", "m4"]
    assert cursor.fetchone() is None and cursor.fetchall() == []


def test_placeholders_outside_quoted_text(db: DatabaseManager) -> None:
    row = db.conn.execute("SELECT ? AS a, '?%' AS b, 'it''s ?' AS c", (7,)).fetchone()
    assert tuple(row) == (7, "?%", "it's ?")
    named = db.conn.execute("SELECT :x AS x, ':y' AS y", {"x": "value"}).fetchone()
    assert tuple(named) == ("value", ":y")
    assert tuple(db.conn.execute("SELECT '100%' AS p").fetchone()) == ("100%",)


def test_commit_inside_transaction_is_deferred_to_its_end(db: DatabaseManager) -> None:
    with pytest.raises(RuntimeError), db.transaction():
        db.conn.execute("INSERT INTO short_term_memories VALUES ('a', 't', 'c', NULL, NULL)")
        db.conn.commit()
        assert db.get_short_term_memory_by_id("a") is not None  # joins the unit
        raise RuntimeError
    assert count_rows(db, "short_term_memories") == 0
    with db.transaction():
        db.conn.execute("INSERT INTO short_term_memories VALUES ('b', 't', 'c', NULL, NULL)")
        assert in_thread(lambda: count_rows(db, "short_term_memories")) == 0
    assert in_thread(lambda: count_rows(db, "short_term_memories")) == 1


def test_rollback_inside_transaction_raises_and_the_unit_rolls_back(db: DatabaseManager) -> None:
    with pytest.raises(errors.TransactionStateError, match="raise an exception"), db.transaction():
        add_next(db)
        db.conn.rollback()
    assert db.count_blocks() == 0


#: What a duplicate key raises through ``conn``: the driver's own error, as with the old
#: class's plain connection.
DUPLICATE_KEY_ERROR: dict[str, type[Exception]] = {
    "sqlite": sqlite3.IntegrityError,
    "postgres": psycopg.errors.UniqueViolation,
}


def test_a_failed_raw_statement_does_not_spoil_the_transaction(
    db: DatabaseManager, backend: str
) -> None:
    expected = DUPLICATE_KEY_ERROR[backend]
    with db.transaction():
        db.conn.execute("INSERT INTO short_term_memories VALUES ('a', 't', 'c', NULL, NULL)")
        with pytest.raises(expected) as info:
            db.conn.execute("INSERT INTO short_term_memories VALUES ('a', 't', 'c', NULL, NULL)")
        assert type(info.value) is expected
        db.conn.execute("INSERT INTO short_term_memories VALUES ('b', 't', 'c', NULL, NULL)")
        add_next(db)
    assert count_rows(db, "short_term_memories") == 2
    assert db.count_blocks() == 1


def test_raw_write_opens_a_unit_until_commit_or_rollback(db: DatabaseManager) -> None:
    conn = db.conn
    assert conn.in_transaction is False
    conn.execute("INSERT INTO short_term_memories VALUES ('a', 't', 'c', NULL, NULL)")
    assert conn.in_transaction is True
    assert db.get_short_term_memory_by_id("a") is not None  # own pending write
    assert in_thread(lambda: db.get_short_term_memory_by_id("a")) is None
    conn.commit()
    assert conn.in_transaction is False
    assert in_thread(lambda: db.get_short_term_memory_by_id("a")) is not None
    conn.execute("DELETE FROM short_term_memories")
    conn.rollback()
    assert count_rows(db, "short_term_memories") == 1
    conn.execute(
        "WITH x AS (SELECT 'w' AS id) "
        "INSERT INTO short_term_memories SELECT id, 't', 'c', NULL, NULL FROM x"
    )
    assert conn.in_transaction is True
    conn.close()  # discards the pending write; the manager stays open
    assert (conn.in_transaction, count_rows(db, "short_term_memories")) == (False, 1)


def test_transaction_inside_a_pending_raw_unit_is_a_savepoint(db: DatabaseManager) -> None:
    db.conn.execute("INSERT INTO short_term_memories VALUES ('a', 't', 'c', NULL, NULL)")
    with db.transaction():
        add_next(db)
        db.conn.commit()  # deferred: it must not end the outer unit under the savepoint
    with pytest.raises(RuntimeError), db.transaction():
        add_next(db)
        raise RuntimeError
    assert db.conn.in_transaction is True
    assert in_thread(db.count_blocks) == 0
    db.conn.commit()
    assert (in_thread(db.count_blocks), count_rows(db, "short_term_memories")) == (1, 1)


def test_a_write_call_of_the_manager_commits_pending_raw_writes(db: DatabaseManager) -> None:
    db.conn.execute("INSERT INTO short_term_memories VALUES ('a', 't', 'c', NULL, NULL)")
    db.append_block("commits the connection, as the old add_block did")
    assert db.conn.in_transaction is False
    assert in_thread(lambda: count_rows(db, "short_term_memories")) == 1


def test_explicit_begin_and_commit_statements(db: DatabaseManager) -> None:
    db.conn.execute("BEGIN IMMEDIATE")
    assert db.conn.in_transaction is True
    db.conn.execute("INSERT INTO short_term_memories VALUES ('a', 't', 'c', NULL, NULL)")
    db.conn.execute("COMMIT")
    assert in_thread(lambda: count_rows(db, "short_term_memories")) == 1
    with db.conn:
        db.conn.execute("INSERT INTO short_term_memories VALUES ('b', 't', 'c', NULL, NULL)")
    with pytest.raises(RuntimeError), db.conn:
        db.conn.execute("INSERT INTO short_term_memories VALUES ('c', 't', 'c', NULL, NULL)")
        raise RuntimeError
    assert in_thread(lambda: count_rows(db, "short_term_memories")) == 2


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "read"),
        ("  -- note\n select * from blocks", "read"),
        ("/* c */ VALUES (1)", "read"),
        ("PRAGMA table_info(blocks)", "read"),
        ("PRAGMA user_version = 3", "write"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "read"),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "write"),
        ("WITH RECURSIVE x(n) AS (SELECT 1 UNION SELECT n+1 FROM x) DELETE FROM t", "write"),
        ("INSERT INTO t VALUES ('SELECT')", "write"),
        ("replace into t values (1)", "write"),
        ("CREATE TABLE t (a)", "write"),
        ("BEGIN IMMEDIATE", "begin"),
        ("commit", "commit"),
        ("END TRANSACTION", "commit"),
        ("ROLLBACK", "rollback"),
        ("ROLLBACK TO SAVEPOINT s", "write"),
        ("SAVEPOINT s", "write"),
    ],
)
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


def test_to_pyformat() -> None:
    assert to_pyformat("SELECT ? , '?', \"a?\" -- ?\n, ?", (1, 2)) == (
        "SELECT %s , '?', \"a?\" -- ?\n, %s"
    )
    assert to_pyformat("SELECT :a, ':b', x::text, '5%'", {"a": 1}) == (
        "SELECT %(a)s, ':b', x::text, '5%%'"
    )
