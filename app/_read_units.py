"""The read side of :class:`~app.database.Database`: read units, the layer's read snapshots,
where each one runs (the primary or a replica), and reads run again when their replica fails.

``Database`` inherits :class:`ReadUnits`; its methods are ``Database``'s (their ``self`` is
the Database), kept here so that ``database.py`` stays the object's lifetime and surface.
The class decorator :func:`retried_reads` lives here too, beside the retry it applies.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from . import errors
from ._driver import UNIT_OPTION, UnitKind
from ._sessions import READ_UNIT
from ._units import Unit, UnitHost, rollback_quietly

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


class ReadUnits(UnitHost):
    """Database's read units (see the module notes)."""

    @contextmanager
    def read(self, *, allow_stale: bool = False) -> Iterator[Session]:
        """One read unit: a snapshot that never takes or waits for the write lock.

        Inside, any write is refused with :class:`~app.errors.ReadOnlyUnitError`. A read
        unit opened inside a write unit joins it (and sees its uncommitted changes).

        With ``replicas``, the unit runs on a replica that has replayed this process's last
        commit on the primary and is within ``max_replica_lag``, else on the primary.

        Args:
            allow_stale: any replica within ``max_replica_lag`` will do, even one that has
                not replayed this process's last commit yet (see :meth:`allow_stale`).

        Raises:
            ReplicaUnavailableError: the replica failed in the middle of the unit; nothing
                was changed, and running the unit again uses another replica or the primary.
        """
        self._check_open()
        unit = self._unit()
        session = self.session()
        if unit is not None:
            yield session
            return
        self._sessions.before_unit(session)
        unit = Unit(UnitKind.READ)
        where = _PRIMARY if self._replicas is None else self._on_replica(allow_stale)
        with self._read_scope(unit), where as replica:
            if replica is not None:
                session.bind = replica
            session.info[READ_UNIT] = True
            try:
                try:
                    session.begin()
                    session.connection(execution_options={UNIT_OPTION: UnitKind.READ.value})
                    yield session
                    if session.new or session.dirty or session.deleted:
                        raise errors.ReadOnlyUnitError(
                            "objects were added, changed or deleted inside a read unit; "
                            "use Database.unit_of_work() or Database.run() for writes"
                        )
                    session.commit()  # nothing to write: ends the snapshot, keeps objects loaded
                except BaseException as exc:
                    rollback_quietly(session)
                    if isinstance(exc, PoolTimeout):
                        raise self._pool_exhausted() from exc
                    raise
            finally:
                session.info[READ_UNIT] = False
                if replica is not None:
                    session.bind = self.engine

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """For the layer's own queries: a read snapshot's connection, without the ORM.

        Inside a unit of this thread it is that unit's connection (reads see its changes).
        Otherwise it goes where :meth:`read` goes (a replica, or the primary).

        Raises:
            ReplicaUnavailableError: the replica failed in the middle of the snapshot (see
                :meth:`retrying_read`).
        """
        self._check_open()
        unit = self._unit()
        if unit is not None:
            if unit.connection is not None:
                yield unit.connection
            else:  # a read unit of the ORM Session
                yield self.session().connection()
            return
        unit = Unit(UnitKind.SNAPSHOT)
        where = _PRIMARY if self._replicas is None else self._on_replica(False)
        with (
            self._read_scope(unit),
            where as replica,
            (replica or self._connect()).execution_options(
                **{UNIT_OPTION: UnitKind.SNAPSHOT.value}
            ) as connection,
        ):
            unit.connection = connection
            with connection.begin():
                yield connection

    @contextmanager
    def _on_replica(self, allow_stale: bool) -> Iterator[Connection | None]:
        """Where a read unit runs when there are replicas: a replica's connection (no
        transaction begun yet), or None for the primary. A failure of the replica in the
        body becomes :class:`~app.errors.ReplicaUnavailableError`."""
        replicas = self._replicas
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
        """Reads made inside (by this thread or asyncio task: units, the block store's
        searches, the facade) may go to any replica within ``max_replica_lag``, even one
        that has not replayed this process's last commit yet: for reads that need not see
        the latest writes, to keep load off the primary. No effect without replicas."""
        token = _STALE_OK.set(True)
        try:
            yield
        finally:
            _STALE_OK.reset(token)

    def retrying_read(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """For the layer's modules: ``fn(*args, **kwargs)``, whose reads use :meth:`reading`
        or :meth:`read`, run again when the replica one of them ran on failed in the
        middle of it (the replica is skipped then, so the next run goes to another replica
        or the primary). Without replicas, or inside a unit, ``fn`` runs once.

        Raises:
            ReplicaUnavailableError: every replica failed in turn.
        """
        if self._replicas is None:
            return fn(*args, **kwargs)
        attempts = len(self.settings.replicas) + 1
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except errors.ReplicaUnavailableError as exc:
                if attempt == attempts or self._unit() is not None:
                    raise
                log.info("%s: read run again after its replica failed: %s", self.url, exc)
        raise AssertionError("unreachable")  # the last attempt returned or raised

    @contextmanager
    def _read_scope(self, unit: Unit) -> Iterator[None]:
        """What every outermost read unit does around its snapshot: count it, wait (briefly)
        while a checkpoint empties the WAL, take the turn of a one-connection database, and
        mark the thread as inside the unit."""
        self._enter(unit)
        try:
            with (
                self._wal.snapshot(unit),
                self.exclusive_turn() if self._exclusive else nullcontext(),
            ):
                self._local.unit = unit
                try:
                    yield
                finally:
                    unit.open = False
                    if self._local.unit is unit:
                        self._local.unit = None
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
