"""Security properties: owner-only files whatever the umask (database, -wal, -shm, backups,
the directories made for them), ``trusted_schema`` off on every SQLite connection, no SQL
built from caller text anywhere in ``app/``, and sort columns never taken from the caller.

tests/test_engine.py already checks the main file's default mode under the usual umask and
an explicit ``file_mode`` on it, and ``trusted_schema`` on concurrently opened readers.
"""

from __future__ import annotations

import ast
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, text

from app import BlockStore, Database
from app.blocks import SORT_COLUMNS
from app.cli import cli
from app.errors import InvalidInputError
from app.legacy import DatabaseManager
from app.models import blocks_table
from app.operations.maintenance import backup

APP = Path(__file__).resolve().parent.parent / "app"


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


# -- file and directory modes ----------------------------------------------------------------


def test_wal_shm_and_new_directories_are_owner_only_even_under_umask_0(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "memory.db"
    with umask(0):
        db = Database(f"sqlite:///{path}")
        try:
            BlockStore(db).append("secret")
            files = {name: mode(f"{path}{name}") for name in ("", "-wal", "-shm")}
            directories = {name: mode(tmp_path / name) for name in ("a", "a/b")}
        finally:
            db.dispose()
    assert files == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    assert directories == {"a": 0o700, "a/b": 0o700}


def test_explicit_file_mode_reaches_wal_shm_backup_and_directories(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "memory.db"
    before = mode(tmp_path)
    with umask(0o077):  # stricter than file_mode: the setting still wins
        db = Database(f"sqlite:///{path}", file_mode=0o640)
        try:
            BlockStore(db).append("for the group")
            files = {name: mode(f"{path}{name}") for name in ("", "-wal", "-shm")}
            result = backup(db, str(tmp_path / "copy.db"))
        finally:
            db.dispose()
    assert files == {"": 0o640, "-wal": 0o640, "-shm": 0o640}
    assert mode(path.parent) == 0o750  # the group may reach the file it may read
    assert mode(tmp_path) == before  # a directory that existed is left alone
    assert (result.mode, mode(result.path)) == (0o640, 0o640)


def test_backup_is_owner_only_and_replaces_an_open_file(tmp_path: Path) -> None:
    with umask(0):
        db = Database(f"sqlite:///{tmp_path / 'memory.db'}")
        try:
            BlockStore(db).append("secret")
            dest = tmp_path / "backup.db"
            dest.write_bytes(b"an older copy, readable by all")
            dest.chmod(0o644)
            result = backup(db, str(dest), overwrite=True)
        finally:
            db.dispose()
    assert (result.mode, mode(dest), result.blocks) == (0o600, 0o600, 1)
    # The backup left nothing behind; the write lock's record is owner-only like the file.
    names = ["backup.db", "memory.db", "memory.db-turn"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert mode(tmp_path / "memory.db-turn") == 0o600


def test_cli_backup_honours_app_file_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    with Database(url) as db:
        BlockStore(db).append("x")
    dest = tmp_path / "group.db"
    with umask(0):
        result = CliRunner().invoke(
            cli, ["--url", url, "backup", str(dest)], env={"APP_FILE_MODE": "0o640"}
        )
    assert result.exit_code == 0, result.output
    assert mode(dest) == 0o640
    assert "mode 0640" in result.output


def test_legacy_default_path_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GREEUM_THREAD_SAFE", raising=False)
    with umask(0), DatabaseManager() as manager:
        manager.append_block("x")
        files = {name: mode(f"data/memory.db{name}") for name in ("", "-wal", "-shm")}
    assert files == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    assert mode(tmp_path / "data") == 0o700


# -- trusted_schema ----------------------------------------------------------------------------


def _trusted(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA trusted_schema").fetchone()[0])


def test_trusted_schema_is_off_on_every_pooled_connection(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'memory.db'}", pool_size=2, max_overflow=3)
    try:
        held = [db.engine.connect() for _ in range(5)]  # the whole pool at once
        raws = [c.connection.dbapi_connection for c in held]
        assert len({id(raw) for raw in raws}) == 5
        assert [_trusted(raw) for raw in raws] == [0] * 5  # type: ignore[arg-type]
        held[0].invalidate()  # the pool opens a replacement
        for connection in held:
            connection.close()
        with db.unit_of_work() as session:
            assert session.execute(text("PRAGMA trusted_schema")).scalar() == 0
        with db.read() as session:
            assert session.execute(text("PRAGMA trusted_schema")).scalar() == 0
        replacement = db.engine.connect()
        assert _trusted(replacement.connection.dbapi_connection) == 0  # type: ignore[arg-type]
        replacement.close()
    finally:
        db.dispose()


@pytest.mark.parametrize("kind", ["memory", "single_connection", "legacy_mode"])
def test_trusted_schema_is_off_on_every_kind_of_engine(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "memory.db"
    if kind == "legacy_mode":
        monkeypatch.setenv("GREEUM_THREAD_SAFE", "false")
        with DatabaseManager(str(path)) as manager:
            assert isinstance(manager.conn, sqlite3.Connection)
            assert _trusted(manager.conn) == 0
        return
    url = "sqlite://" if kind == "memory" else f"sqlite:///{path}"
    with (
        Database(url, single_connection=kind == "single_connection") as db,
        db.read() as session,
    ):
        assert session.execute(text("PRAGMA trusted_schema")).scalar() == 0


def test_schema_objects_cannot_call_application_functions(tmp_path: Path) -> None:
    """What trusted_schema=OFF buys: a view (say, planted in a copied database file) cannot
    run a function the application registered on its connection."""
    path = tmp_path / "memory.db"
    db = Database(f"sqlite:///{path}")
    try:
        with db.engine.connect() as connection:
            raw: sqlite3.Connection = connection.connection.dbapi_connection  # type: ignore[assignment]
            raw.create_function("shout", 1, str.upper)
            raw.execute("CREATE VIEW planted AS SELECT shout('x') AS loud")
            assert raw.execute("SELECT shout('direct')").fetchone() == ("DIRECT",)
            with pytest.raises(sqlite3.OperationalError, match="unsafe use of shout"):
                raw.execute("SELECT loud FROM planted").fetchall()
    finally:
        db.dispose()
    plain = sqlite3.connect(path)
    try:
        if _trusted(plain) == 0:
            pytest.skip("this SQLite is built with trusted_schema off by default")
        plain.create_function("shout", 1, str.upper)
        assert plain.execute("SELECT loud FROM planted").fetchone() == ("X",)
    finally:
        plain.close()


# -- no SQL built from caller text -----------------------------------------------------------

#: An SQL keyword in upper case (messages and docstrings in app/ write prose in lower case).
_SQL = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|REPLACE INTO|PRAGMA|CREATE|DROP|ALTER|BEGIN|COMMIT|"
    r"ROLLBACK|SAVEPOINT|RELEASE|SET|SHOW|WITH|VACUUM|ANALYZE|ATTACH|DETACH|REINDEX|EXPLAIN|"
    r"VALUES|WHERE|FROM|ORDER BY|LIMIT)\b"
)

#: Every place in app/ where SQL text is assembled with values, keyed by (file, function,
#: interpolated expressions), and why each value can only be a constant of the code or a
#: validated setting. SQL that mentions caller data uses bound parameters, always.
SQL_ASSEMBLY_WHITELIST: dict[tuple[str, str, tuple[str, ...]], str] = {
    (
        "engine/_sqlite_hooks.py",
        "install_sqlite_hooks._on_connect",
        ("settings.busy_timeout_ms",),
    ): ("an int from a validated number setting"),
    ("engine/_sqlite_hooks.py", "install_sqlite_hooks._on_connect", ("settings.journal_mode",)): (
        "one of Settings' fixed journal modes (refused otherwise)"
    ),
    ("engine/_sqlite_hooks.py", "install_sqlite_hooks._on_begin", ("int(busy_ms)",)): (
        "an int from an execution option the layer sets"
    ),
    (
        "engine/_sqlite_hooks.py",
        "install_sqlite_hooks._on_checkin",
        ("settings.busy_timeout_ms",),
    ): ("an int from a validated number setting"),
    ("engine/_sqlite_hooks.py", "_sqlite_pragmas", ("settings.synchronous.upper()",)): (
        "one of Settings' fixed synchronous modes"
    ),
    ("engine/_sqlite_hooks.py", "_sqlite_pragmas", ("int(settings.cache_size)",)): "an int setting",
    ("engine/_sqlite_hooks.py", "_sqlite_pragmas", ("int(settings.mmap_size)",)): "an int setting",
    (
        "engine/_sqlite_hooks.py",
        "_sqlite_pragmas",
        ("int(settings.journal_size_limit)",),
    ): "an int setting",
    ("engine/_sqlite_hooks.py", "_sqlite_pragmas", ("settings.temp_store.upper()",)): (
        "one of Settings' fixed temp_store values"
    ),
    (
        "engine/_postgres_hooks.py",
        "install_postgres_hooks",
        ("PG_WRITE_LOCK_KEY",),
    ): "a module constant int",
    ("engine/_postgres_hooks.py", "install_postgres_hooks._on_begin", ("wait_ms", "lock")): (
        "an int from _lock_timeout_ms and the constant lock statement"
    ),
    ("engine/_postgres_hooks.py", "install_postgres_hooks._on_begin", ("take_lock",)): (
        "the statement assembled just above from constants"
    ),
    ("legacy/_conn.py", "ThreadConnection._run_postgres", ("_PG_STATEMENT_SAVEPOINT",)): (
        "a module constant name"
    ),
    ("chain/_block_sql.py", "_insert_statement", ("table", "', '.join(columns)")): (
        "table and column names from the models (_INSERTS)"
    ),
    ("chain/_block_sql.py", "_insert_statement", ("', '.join([row] * rows)",)): (
        "copies of a row of driver placeholders"
    ),
    (
        "chain/_block_sql.py",
        "_load_chunk",
        ("', '.join([placeholder(connection)] * len(wanted))",),
    ): ("driver placeholders, one per bound index"),
    ("chain/_block_sql.py", "_load_chunk.rows", ("columns", "table", "where")): (
        "literal column and table names, and the placeholder clause above"
    ),
    ("database/_units.py", "savepoint", ("name",)): "'app_unit_' and an int depth",
    ("writers/_wal_bound.py", "WalBound.after_commit", ("wait_ms",)): (
        "min() of a module constant int shifted by a small count and an int of a constant"
    ),
    ("writers/_wal_bound.py", "WalBound.after_commit", ("self._settings.busy_timeout_ms",)): (
        "an int from a validated number setting"
    ),
    ("database/_checkpoints.py", "Checkpoints.checkpoint", ("name.upper()",)): (
        "checked against CHECKPOINT_MODES just before"
    ),
    (
        "operations/_doctor_connection.py",
        "report_pragmas",
        ("name",),
    ): "a literal tuple of pragma names",
    ("operations/_doctor_connection.py", "report_server", ("name",)): (
        "a literal tuple of server setting names"
    ),
    (
        "operations/transfer.py",
        "_advance_sequences",
        ("name", "column.name", "column.name", "name"),
    ): ("table and column names from the models (LEGACY_TABLES)"),
    ("schema/_keyword_index.py", "rebuild", ("name", "name")): "FTS table names (module constants)",
    ("schema/_search_schema.py", "restore_objects", ("name", "column")): (
        "FTS table and column names (module constants)"
    ),
    (
        "schema/_search_schema.py",
        "restore_objects",
        ("name", "when", "_NOT_PENDING", "_REMEMBER"),
    ): ("trigger names and bodies (module constants)"),
    ("schema/_search_schema.py", "restore_objects", ("name", "table", "column", "schema")): (
        "index, table and column names (module constants) and pg_trgm's schema name, read "
        "from pg_extension and quoted"
    ),
    ("chain/_time_window.py", "_null_keys", ("key",)): "the index's key expression (a constant)",
    ("blocks/_reembed.py", "write", ("among",)): "a fixed IN clause for one bound list of indices",
    ("blocks/_reembed.py", "write", ("mark", "mark", "mark", "mark")): "driver placeholders",
    ("blocks/_reembed.py", "write", ("mark",)): "a driver placeholder",
    ("search/_vector_changes.py", "changed_since", ("marker",)): "a driver placeholder",
    (
        "search/_vector_changes.py",
        "rows_of",
        (
            "'WHERE e.block_index IN (SELECT value FROM json_each(?)) AND e.block_index <= ? ' "
            "if sqlite else 'WHERE e.block_index = ANY(%s) AND e.block_index <= %s '",
        ),
    ): "one of two literal clauses with driver placeholders",
    ("schema/__init__.py", "rows_dropped_by_downgrade", ("name",)): (
        "table names of the legacy layout (revision 0001's constants)"
    ),
    (
        "chain/_time_window.py",
        "_pages",
        ("key", "mark"),
    ): "the key expression and a driver placeholder",
    ("chain/_time_window.py", "_pages", ("key", "mark", "key", "mark", "order")): (
        "the key expression, driver placeholders and the ORDER BY clause made of them"
    ),
    ("chain/_time_window.py", "_pages", ("key", "mark", "key", "mark", "mark", "order")): (
        "the key expression, driver placeholders and the ORDER BY clause made of them"
    ),
    ("chain/_time_window.py", "_stored_key", ("key", "key", "key", "order", "order")): (
        "the key expression, and ASC or DESC from the two callers"
    ),
}


def _literal_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    return None


class SqlAssemblyFinder(ast.NodeVisitor):
    """Finds SQL text assembled with values: f-strings, ``%`` formatting, ``.format()``
    and ``+`` concatenation whose literal part holds an SQL keyword."""

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.found: list[tuple[str, tuple[str, ...], int]] = []

    def _add(self, values: list[ast.expr], node: ast.expr) -> None:
        scope = ".".join(self.scope) or "<module>"
        self.found.append((scope, tuple(ast.unparse(v) for v in values), node.lineno))

    def _enter(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _enter

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        values = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        if values and _SQL.search(_literal_text(node) or ""):
            self._add(values, node)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Mod) and _SQL.search(_literal_text(node.left) or ""):
            self._add([node.right], node)
        if not isinstance(node.op, ast.Add):
            self.generic_visit(node)
            return
        parts: list[ast.expr] = []

        def flatten(part: ast.expr) -> None:
            if isinstance(part, ast.BinOp) and isinstance(part.op, ast.Add):
                flatten(part.left)
                flatten(part.right)
            else:
                parts.append(part)

        flatten(node)
        texts = [_literal_text(part) for part in parts]
        values = [part for part, literal in zip(parts, texts, strict=True) if literal is None]
        if values and any(_SQL.search(t) for t in texts if t is not None):
            self._add(values, node)
        for part in parts:
            self.visit(part)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "format"
            and _SQL.search(_literal_text(func.value) or "")
        ):
            self._add([*node.args, *(k.value for k in node.keywords)], node)
        self.generic_visit(node)


def sql_assembly(source: str) -> list[tuple[str, tuple[str, ...], int]]:
    finder = SqlAssemblyFinder()
    finder.visit(ast.parse(source))
    return finder.found


def test_the_finder_catches_sql_built_from_values() -> None:
    source = """
def search(conn, word, column):
    conn.execute(f"SELECT * FROM blocks WHERE context = '{word}'")
    conn.execute("DELETE FROM blocks WHERE hash = '%s'" % word)
    conn.execute("SELECT * FROM blocks ORDER BY " + column)
    conn.execute("UPDATE blocks SET context = '{}'".format(word))
    conn.execute("SELECT * FROM blocks WHERE context = ?", (word,))
    log.warning(f"cannot find {word} in the blocks")
"""
    assert [(scope, values) for scope, values, _ in sql_assembly(source)] == [
        ("search", ("word",)),
        ("search", ("word",)),
        ("search", ("column",)),
        ("search", ("word",)),
    ]


def test_no_sql_in_app_is_built_from_caller_text() -> None:
    found: dict[tuple[str, str, tuple[str, ...]], list[int]] = {}
    for path in sorted(APP.rglob("*.py")):
        module = path.relative_to(APP).as_posix()
        for scope, values, line in sql_assembly(path.read_text(encoding="utf-8")):
            found.setdefault((module, scope, values), []).append(line)
    unlisted = sorted(
        f"app/{module}:{lines[0]} in {scope}: {values}"
        for (module, scope, values), lines in found.items()
        if (module, scope, values) not in SQL_ASSEMBLY_WHITELIST
    )
    assert not unlisted, (
        "SQL assembled from values: bind the values as parameters, or (for identifiers and "
        "numbers that are constants of the code) add the place to SQL_ASSEMBLY_WHITELIST "
        f"with the reason: {unlisted}"
    )
    stale = sorted(set(SQL_ASSEMBLY_WHITELIST) - set(found))
    assert not stale, f"whitelisted places that no longer exist: {stale}"


# -- sort columns are never caller text ------------------------------------------------------

INJECTED_SORTS = [
    "block_index; DROP TABLE blocks",
    "importance DESC, (SELECT 1)",
    "1 OR 1=1",
    "hash",
    "block_index --",
    "BLOCK_INDEX",
]


@pytest.mark.parametrize("sort_by", INJECTED_SORTS)
def test_an_injected_sort_column_is_refused_naming_the_allowed_ones(
    db: Database, sort_by: str
) -> None:
    store = BlockStore(db)
    first = store.append("a", importance=0.5)
    store.append("b", importance=0.25)
    calls: list[Callable[[], object]] = [
        lambda: store.page(sort_by=sort_by),
        lambda: store.by_importance(0.0, sort_by=sort_by),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError) as info:
            call()
        assert type(info.value) is InvalidInputError
        message = str(info.value)
        assert message.startswith("sort_by must be one of block_index, timestamp, importance")
        assert repr(sort_by) in message
    assert store.count() == 2 and store.verify_chain().ok
    assert store.get(0) == first


def test_sort_columns_are_column_objects_of_the_blocks_table() -> None:
    assert set(SORT_COLUMNS) == {"block_index", "timestamp", "importance"}
    for name, column in SORT_COLUMNS.items():
        assert isinstance(column, Column)
        assert column is blocks_table.c[name]
