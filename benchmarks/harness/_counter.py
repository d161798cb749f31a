"""The session-layer workload: read a counter row, write it back plus one.

A unit that reads and then writes is where DEFERRED transactions go wrong: two threads read
the same value and one update is lost, or the write fails with "database is locked".
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.database import Database

from ._orm import PlainScopedSession
from ._target import Target
from ._workload import COUNTER_DDL, BenchBlock

_READ = text("SELECT value FROM bench_counter WHERE id = 1")
_WRITE = text("UPDATE bench_counter SET value = :value WHERE id = 1")


def _increment(session: Session) -> None:
    value = session.execute(_READ).scalar_one()
    session.execute(_WRITE, {"value": value + 1})


def _create_counter(session: Session) -> None:
    session.execute(text(COUNTER_DDL))
    session.execute(text("INSERT OR IGNORE INTO bench_counter (id, value) VALUES (1, 0)"))


class _LayerRun(Target):
    def __init__(self, path: str) -> None:
        self.db = Database(f"sqlite:///{path}")
        self.db.run(_create_counter)

    def unit(self, block: BenchBlock) -> None:
        self.db.run(_increment)

    def thread_done(self) -> None:
        self.db.session.remove()

    def close(self) -> None:
        self.db.dispose()


class _LayerUnit(_LayerRun):
    def unit(self, block: BenchBlock) -> None:
        with self.db.unit_of_work() as session:
            _increment(session)


def counter_layer_run(path: str) -> Target:
    """this layer: db.run(read + write)"""
    return _LayerRun(path)


def counter_layer_unit(path: str) -> Target:
    """this layer: with db.unit_of_work(): read + write"""
    return _LayerUnit(path)


class _PlainCounter(PlainScopedSession):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        with self.engine.begin() as conn:
            conn.execute(text(COUNTER_DDL))
            conn.execute(text("INSERT OR IGNORE INTO bench_counter (id, value) VALUES (1, 0)"))

    def unit(self, block: BenchBlock) -> None:
        session = self.session()
        try:
            _increment(session)
            session.commit()
        except BaseException:
            session.rollback()
            raise


def counter_sqlalchemy_default(path: str) -> Target:
    """SQLAlchemy: plain scoped_session, default settings"""
    return _PlainCounter(path)
