"""The engine's part of telemetry (see ``app._telemetry``), installed only on the engine of a
Database opened with ``telemetry=True``: a pool that times its callers' waits for a
connection and counts those waiting and those that timed out, and pool events that time a
connection's creation and each use, and count the statements run on it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

from app._telemetry import STATEMENTS, Telemetry
from app.engine import _driver

# Connection record info keys: when its creation began, when it was last checked out.
_CREATING, _BORROWED = "app_creating", "app_borrowed"


class MeasuredQueuePool(QueuePool):
    """A ``QueuePool`` that tells ``telemetry`` how long each caller waited for a connection
    (``db.client.connection.wait_time``) and which calls timed out, and counts the callers
    waiting (``pending``). Without ``telemetry`` it is a plain ``QueuePool``."""

    telemetry: Telemetry | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One entry per caller inside connect(): appending and popping are atomic.
        self._callers: deque[None] = deque()

    @property
    def pending(self) -> int:
        """Callers waiting for a connection now."""
        return len(self._callers)

    def recreate(self) -> QueuePool:
        # dispose() and a fork replace the pool with a new one of the same class.
        pool = cast(MeasuredQueuePool, super().recreate())
        pool.telemetry = self.telemetry
        return pool

    def connect(self) -> PoolProxiedConnection:
        telemetry = self.telemetry
        if telemetry is None:
            return super().connect()
        callers = self._callers
        callers.append(None)
        started = time.perf_counter()
        try:
            connection = super().connect()
        except PoolTimeout:
            telemetry.connection_timed_out()
            raise
        finally:
            callers.pop()
        telemetry.connection_waited(time.perf_counter() - started)
        return connection


def install_telemetry_hooks(engine: Engine, telemetry: Telemetry) -> None:
    """Time ``engine``'s connections and, when spans are recorded, count their statements
    for ``telemetry``; after every other hook, so that a connection's creation time
    includes its set-up."""
    pool = engine.pool
    if isinstance(pool, MeasuredQueuePool):
        pool.telemetry = telemetry

    @event.listens_for(engine, "do_connect")
    def _creating(dialect: Any, record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> None:
        record.info[_CREATING] = time.perf_counter()  # and the driver connects as usual

    @event.listens_for(engine, "connect")
    def _created(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        started = record.info.pop(_CREATING, None)
        if started is not None:
            telemetry.connection_created(time.perf_counter() - started)

    @event.listens_for(engine, "checkout")
    def _borrowed(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        record.info[_BORROWED] = time.perf_counter()

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        started = record.info.pop(_BORROWED, None)
        if started is not None:
            telemetry.connection_used(time.perf_counter() - started)

    if not telemetry.tracing:
        return  # a listener would slow every statement down, for no span
    _driver.count_statements()

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(
        conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, many: bool
    ) -> None:
        info = conn.info
        info[STATEMENTS] = info.get(STATEMENTS, 0) + 1
