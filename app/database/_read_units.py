"""The read side of one ``Database``: read units, the layer's read snapshots, where each one
runs (the primary or a replica), and reads run again when their replica fails.

:class:`ReadUnits` is built on the Database's unit core (``_units.UnitCore``) and uses only
its public names, plus the write units' ``exclusive_turn`` (the units of a one-connection
database take turns, reads included); the Database delegates its read methods to it. The
class decorator :func:`retried_reads` lives here too, beside the retry it applies.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from app import errors
from app._telemetry import UnitRecord
from app.database._sessions import READ_UNIT
from app.database._units import Unit, UnitCore, rollback_quietly
from app.engine._driver import UNIT_OPTION, UnitKind

__all__ = ["ReadUnits", "retried_reads"]

# Messages keep the logger of the Database they are about.
log = logging.getLogger("app.database")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Reads of this context (thread or asyncio task) may go to a replica that has not replayed
#: this process's last commit (see Database.allow_stale).
_STALE_OK: ContextVar[bool] = ContextVar("app_stale_reads_ok", default=False)
#: Where a read runs when there are no replicas: on the primary (no replica connection).
_PRIMARY = nullcontext(None)


class ReadUnits:
    """The read units of the Database whose unit core is ``core``; ``exclusive_turn`` is its
    write units' (a one-connection database's reads take the turn too). The public methods
    are documented on ``Database``, which delegates to them."""

    def __init__(
        self, core: UnitCore, exclusive_turn: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self.core = core
        self._exclusive_turn = exclusive_turn
        # Bound once: every read calls them.
        self._check_open = core.check_open
        self._unit = core.unit
        self._enter = core.enter
        self._leave = core.leave

    @contextmanager
    def read(self, *, allow_stale: bool = False) -> Iterator[Session]:
        """``Database.read``: a read unit with the thread's Session (see there)."""
        core = self.core
        self._check_open()
        unit = self._unit()
        session = core.session()
        if unit is not None:
            yield session
            return
        core.sessions.before_unit(session)
        telemetry = core.telemetry
        if telemetry is None or not telemetry.tracing:  # a read records its span only
            yield from self._outermost_read(session, allow_stale, None)
        else:
            record = telemetry.unit(UnitKind.READ.value)
            yield from record.around(self._outermost_read(session, allow_stale, record))

    def _outermost_read(
        self, session: Session, allow_stale: bool, record: UnitRecord | None
    ) -> Iterator[Session]:
        """The outermost read unit (see :meth:`read`); ``record`` is told its statements
        when telemetry is on."""
        core = self.core
        unit = Unit(UnitKind.READ)
        where = _PRIMARY if core.replicas is None else self._on_replica(allow_stale)
        with self._read_scope(unit), where as replica:
            if replica is not None:
                session.bind = replica
            session.info[READ_UNIT] = True
            try:
                try:
                    session.begin()
                    connection = session.connection(
                        execution_options={UNIT_OPTION: UnitKind.READ.value}
                    )
                    if record is not None:
                        record.count_statements(connection)
                    try:
                        yield session
                    except BaseException:
                        if record is not None:
                            record.body_failed = True
                        raise
                    finally:
                        if record is not None:
                            record.statements_done()
                    if session.new or session.dirty or session.deleted:
                        raise errors.ReadOnlyUnitError(
                            "objects were added, changed or deleted inside a read unit; "
                            "use Database.unit_of_work() or Database.run() for writes"
                        )
                    session.commit()  # nothing to write: ends the snapshot, keeps objects loaded
                except BaseException as exc:
                    rollback_quietly(session)
                    if isinstance(exc, PoolTimeout):
                        raise core.pool_exhausted() from exc
                    raise
            finally:
                session.info[READ_UNIT] = False
                if replica is not None:
                    session.bind = core.engine

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """``Database.reading``: a read snapshot's connection (see there)."""
        core = self.core
        self._check_open()
        unit = self._unit()
        if unit is not None:
            if unit.connection is not None:
                yield unit.connection
            else:  # a read unit of the ORM Session
                yield core.session().connection()
            return
        telemetry = core.telemetry
        if telemetry is None or not telemetry.tracing:  # a read records its span only
            yield from self._snapshot(None)
        else:
            record = telemetry.unit(UnitKind.SNAPSHOT.value)
            yield from record.around(self._snapshot(record))

    def _snapshot(self, record: UnitRecord | None) -> Iterator[Connection]:
        """The outermost read snapshot (see :meth:`reading`); ``record`` is told its
        statements when telemetry is on."""
        core = self.core
        unit = Unit(UnitKind.SNAPSHOT)
        where = _PRIMARY if core.replicas is None else self._on_replica(False)
        with (
            self._read_scope(unit),
            where as replica,
            (replica or core.connect()).execution_options(
                **{UNIT_OPTION: UnitKind.SNAPSHOT.value}
            ) as connection,
        ):
            unit.connection = connection
            with connection.begin():
                if record is None:
                    yield connection
                    return
                record.count_statements(connection)
                try:
                    yield connection
                except BaseException:
                    record.body_failed = True
                    raise
                finally:
                    record.statements_done()

    @contextmanager
    def _on_replica(self, allow_stale: bool) -> Iterator[Connection | None]:
        """Where a read unit runs when there are replicas: a replica's connection (no
        transaction begun yet), or None for the primary. A failure of the replica in the
        body becomes :class:`~app.errors.ReplicaUnavailableError`."""
        replicas = self.core.replicas
        assert replicas is not None
        # Choosing checks out replica connections with pool_timeout and connect_timeout,
        # and a replica that fails them is skipped.
        fresh = not (allow_stale or _STALE_OK.get())  # bounded: a ContextVar read, no wait
        chosen = replicas.choose(fresh=fresh)  # bounded: pool_timeout and connect_timeout
        if chosen is None:
            yield None
            return
        replica, connection = chosen
        try:
            yield connection
        except Exception as exc:  # an interruption (KeyboardInterrupt...) is not the replica's
            if replicas.read_failed(replica, exc, connection):
                raise errors.ReplicaUnavailableError(
                    f"the read replica {replica.url} failed during this read ({exc}); it is "
                    "skipped for now: run the read again (it goes to another replica or the "
                    "primary)"
                ) from exc
            raise
        finally:
            try:
                connection.close()
            finally:
                replicas.done(replica)

    @contextmanager
    def allow_stale(self) -> Iterator[None]:
        """``Database.allow_stale``: reads inside may go to a stale replica (see there)."""
        token = _STALE_OK.set(True)
        try:
            yield
        finally:
            _STALE_OK.reset(token)

    def retrying_read(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``Database.retrying_read``: ``fn(*args, **kwargs)`` run again when its replica
        failed (see there)."""
        core = self.core
        if core.replicas is None:
            return fn(*args, **kwargs)
        attempts = len(core.settings.replicas) + 1
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except errors.ReplicaUnavailableError as exc:
                if attempt == attempts or self._unit() is not None:
                    raise
                log.info("%s: read run again after its replica failed: %s", core.url, exc)
        raise AssertionError("unreachable")  # the last attempt returned or raised

    @contextmanager
    def _read_scope(self, unit: Unit) -> Iterator[None]:
        """What every outermost read unit does around its snapshot: count it, wait (briefly)
        while a checkpoint empties the WAL, take the turn of a one-connection database, and
        mark the thread as inside the unit."""
        core = self.core
        self._enter(unit)
        try:
            with (
                core.wal.snapshot(unit),
                self._exclusive_turn() if core.exclusive else nullcontext(),
            ):
                core.local.unit = unit
                try:
                    yield
                finally:
                    unit.open = False
                    if core.local.unit is unit:
                        core.local.unit = None
        finally:
            try:
                self._leave(unit)
            except BaseException:
                self._leave(unit)
                raise


def retried_reads(*names: str) -> Callable[[type[T]], type[T]]:
    """Class decorator for the layer's read services, whose ``db`` is their Database: the
    methods ``names`` (each opening read snapshots of its own) run through
    :meth:`Database.retrying_read`, so a replica lost half-way never fails them."""

    def decorate(cls: type[T]) -> type[T]:
        for name in names:
            setattr(cls, name, _retried(getattr(cls, name)))
        return cls

    return decorate


def _retried(method: Callable[..., R]) -> Callable[..., R]:
    @functools.wraps(method)
    def retried(self: Any, *args: Any, **kwargs: Any) -> R:
        return self.db.retrying_read(method, self, *args, **kwargs)  # type: ignore[no-any-return]

    return retried
