"""The connection a migration runs on: a write unit's, taken in this process's turn order,
with SQLite's foreign keys off around its transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from sqlalchemy.engine import Connection, Engine

from app.engine._driver import UNIT_OPTION, UnitKind, raw_execute
from app.settings import Settings


class Migratable(Protocol):
    """What these functions need of a :class:`~app.Database` (it is passed in, so this
    module never imports the database module that calls it)."""

    url: str
    settings: Settings
    engine: Engine

    def exclusive_turn(self) -> AbstractContextManager[None]: ...
    def check_writable(self) -> None: ...


@contextmanager
def write_connection(database: Migratable) -> Iterator[Connection]:
    """A connection whose transaction is a write unit, taken in this process's turn order.

    Raises:
        ReadOnlyDatabaseError: the database was opened read-only.
    """
    database.check_writable()
    with database.exclusive_turn(), database.engine.connect() as connection:
        yield connection.execution_options(**{UNIT_OPTION: UnitKind.WRITE.value})


@contextmanager
def foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Around a migration's transaction on SQLite: foreign keys off, and on again after.

    Alembic's batch mode rebuilds a table by copying it, dropping the old one and renaming
    the copy; with foreign keys on, dropping ``blocks`` while keyword rows point at it
    fails. SQLite ignores the pragma inside a transaction, so it is set before the
    migration's BEGIN; :func:`after_migrations` checks the keys before the commit. A
    connection handed in already inside a transaction keeps its foreign keys on.
    """
    if connection.dialect.name != "sqlite" or connection.in_transaction():
        yield
        return
    if not raw_execute(connection, "PRAGMA foreign_keys").fetchone()[0]:
        yield
        return
    raw_execute(connection, "PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        try:
            raw_execute(connection, "PRAGMA foreign_keys = ON")
        except BaseException:
            # A pooled connection must never go back with its foreign keys off.
            connection.invalidate()
            raise
