"""`Database`: the engine, one Session per thread, the object's lifetime, and the surface
that applications and the layer's modules call.

What each kind of unit does lives with its kind, in classes ``Database`` inherits: write
units and the write turn in ``_write_units``, read units and where reads run in
``_read_units``; checkpoints on demand (``_checkpoints``) and what ``stats()`` reports
(``_database_stats``) are inherited the same way. How writers take turns and share a
transaction is ``_write_side`` and ``_shared_transaction``; what the thread's Session does
outside units is ``_sessions``; the WAL bound is ``_wal_bound``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, scoped_session

from . import _process, errors
from ._checkpoints import Checkpoints
from ._database_stats import DatabaseStats
from ._database_stats import add_stats_contributor as add_stats_contributor  # re-exported
from ._driver import UnitKind
from ._engine import build_engine
from ._read_units import ReadUnits, retried_reads
from ._replicas import ReplicaSet
from ._sessions import SessionGuard, ThreadSessions
from ._stats import Counters, ReplicaStats, Stats
from ._units import ThreadUnit, Unit, current_task, refuse_unpatched_greenlet
from ._wal_bound import CHECKPOINT_MODES, WalBound
from ._write_side import WriteSide, write_side
from ._write_units import WriteUnits
from .schema import ensure_schema
from .settings import Settings

__all__ = ["CHECKPOINT_MODES", "Database", "ReplicaStats", "Stats", "UnitKind", "retried_reads"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
K = TypeVar("K")


class Database(WriteUnits, ReadUnits, Checkpoints, DatabaseStats):
    """A database shared safely by every thread of a process.

    Args:
        url: SQLAlchemy URL; defaults to ``$APP_DATABASE_URL``, then
            ``sqlite:///data/memory.db`` (its directory is created).
        **settings: any field of :class:`app.Settings`.

    Attributes:
        settings: the resolved :class:`app.Settings`.
        engine: the SQLAlchemy engine (pool and hooks installed).
        session: a ``scoped_session``; ``db.session()`` is this thread's Session.

    Raises:
        ConfigurationError: bad URL or setting, or a directory that cannot be created.
        NotADatabaseError, ReadOnlyDatabaseError: the file cannot hold the database.
        SchemaOutOfDateError: the schema is behind the code and ``auto_upgrade`` is off.

    Applications use :meth:`unit_of_work`, :meth:`read`, :meth:`run`, :attr:`session`,
    :meth:`checkpoint`, :meth:`stats` and :meth:`dispose` (with replicas also
    :meth:`allow_stale` and :meth:`check_replicas`). The layer's own modules (the block
    store, the facade, maintenance) use a few more, documented as such: a read connection
    (:meth:`reading`), a write connection (:meth:`writing`), a retried write
    (:meth:`run_on_connection`), a read run again when its replica fails
    (:meth:`retrying_read`), the current unit's kind (:meth:`unit_kind`), a per-process
    helper (:meth:`process_local`) and the write turn alone (:meth:`exclusive_turn`).
    """

    def __init__(self, url: str | None = None, /, **settings: Any) -> None:
        # From here on the process holds state that a fork() must handle (see _process).
        _process.install_fork_hooks()
        self.settings = Settings.resolve(url, **settings)
        self.url = self.settings.safe_url()
        self.engine = build_engine(self.settings)
        # Units in progress, so that dispose() can leave their connections to them and close
        # the pool when the last one ends.
        self._lifetime = threading.Lock()
        self._active = 0
        self._closed = False
        self._engine_disposed = False
        # An in-memory or single-connection database has one connection: units take turns
        # on it, reads included.
        self._exclusive = self.settings.is_memory or self.settings.single_connection
        self._counters = Counters()
        # Read replicas (PostgreSQL): where read units go, and the positions they need.
        self._replicas = ReplicaSet(self.settings, self.engine) if self.settings.replicas else None
        self._sessions = SessionGuard(
            in_unit=lambda: self._unit() is not None,
            take_turn=self._take_turn_for_session,
            release_turn=self._release_session_turn,
            pool_exhausted=self._pool_exhausted,
        )
        self._factory = self._sessions.sessionmaker(self.engine)
        self.session = scoped_session(self._factory)
        self._reset_process_state()
        _LIVE.add(self)
        try:
            if self.settings.check_schema:
                ensure_schema(self)
            if self._replicas is not None:
                # Reads then see at least the schema and rows the primary has now.
                self._replicas.note_primary()
        except BaseException:
            self.dispose()
            raise

    # -- lifetime ---------------------------------------------------------------------

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    def dispose(self) -> None:
        """Close this Database: later calls raise :class:`~app.errors.ClosedError`.

        Units and appends already in progress in other threads finish normally; the pooled
        connections are closed now, or when the last of those units ends. Other Database
        objects on the same database are not affected. Safe to call twice.
        """
        with self._lifetime:
            if self._closed:
                return
            self._closed = True
            idle = self._active == 0
            self._engine_disposed = idle
        _LIVE.discard(self)
        try:
            self.session.remove()
            self._close_helpers()
        finally:
            if idle:
                self._dispose_engines()

    def close(self) -> None:
        """The same as :meth:`dispose` (the name the old class and ``DatabaseManager`` use)."""
        self.dispose()

    def _close_helpers(self) -> None:
        """Tell the per-process helpers (see :meth:`process_local`) that have a ``close()``
        to stop: their threads must not outlive the Database for long, nor keep it alive."""
        for helper in list(self._process_local.values()):
            close = getattr(helper, "close", None)
            if close is not None:
                close()

    def _check_open(self) -> None:
        refuse_unpatched_greenlet()
        if self._closed:
            raise errors.ClosedError(f"{self.url} was disposed; create a new Database")

    def _enter(self, unit: Unit) -> None:
        """Count a unit in progress (see dispose)."""
        with self._lifetime:
            self._check_open()
            self._active += 1
            unit.counted = True

    def _leave(self, unit: Unit) -> None:
        """Stop counting ``unit``; safe to repeat. The last unit after dispose() closes the
        pool."""
        with self._lifetime:
            if not unit.counted:
                return
            unit.counted = False
            self._active -= 1
            last = self._closed and self._active == 0 and not self._engine_disposed
            self._engine_disposed = self._engine_disposed or last
        if last:
            self._dispose_engines()

    def _dispose_engines(self) -> None:
        try:
            self.engine.dispose()
        finally:
            if self._replicas is not None:
                self._replicas.dispose()

    def _reset_process_state(self) -> None:
        """What belongs to this process: made here, and made again in a forked child."""
        self._side: WriteSide = write_side(self._lock_key(), self.settings.retry_deadline)
        self._local = ThreadUnit()
        self._process_local: dict[str, Any] = {}
        self._wal = WalBound(self.settings, self._lock_key())
        self.session.registry = ThreadSessions(self._factory)

    @property
    def key(self) -> str:
        """For the layer's modules: what names the database in this process (a SQLite
        file's real path, or the URL; each in-memory database is its own). Databases with
        the same key share the writers' turn, the WAL bound and the similarity cache."""
        return self._side.key

    def _lock_key(self) -> str:
        path = self.settings.sqlite_path
        if path is not None:
            return "sqlite:" + os.path.realpath(path)
        if self.settings.is_memory:
            return f"memory:{id(self)}"
        return self.url

    def _after_fork_in_child(self) -> None:
        # The parent's connections must be neither used nor closed here: forget them.
        self.engine.dispose(close=False)
        if self._replicas is not None:
            self._replicas.after_fork()
        _FORK_LEFTOVERS.append(self.session.registry)
        self._reset_process_state()

    # -- units of work ------------------------------------------------------------------

    def _unit(self) -> Unit | None:
        """The unit of work this thread (and asyncio task) has open here, or None.

        Raises:
            TransactionStateError: another asyncio task has a unit open on this thread: the
                two would share one Session and one transaction.
        """
        unit = self._local.unit
        if unit is None:
            return None
        if unit.watch is not None:
            touch = unit.watch()  # the thread is back: an implicit unit is not abandoned
            if touch is not None:
                touch()
        if not unit.open:
            return None
        if unit.task is not current_task():
            raise errors.TransactionStateError(
                f"another asyncio task on this thread has a unit of work of {self.url} open; "
                "units of Database are per thread, so tasks would share its transaction: "
                "run each unit in a thread (asyncio.to_thread), one unit per call"
            )
        return unit

    def current_unit(self) -> Unit | None:
        """For the layer's modules: the unit this thread (and asyncio task) has open here."""
        return self._unit()

    def adopt_write_turn(self, unit: Unit) -> bool:
        """For the layer's modules: take over the write turn of the thread that opened the
        write unit ``unit`` and left it idle, so that this thread can end that unit
        (committing or rolling back its work and handing the turn on).

        Returns:
            True once this thread holds the turn; False when the unit's thread no longer
            held it.
        """
        return self._side.turn.adopt(unit.thread)

    def unit_kind(self) -> UnitKind | None:
        """The kind of unit this thread is inside (None outside any)."""
        unit = self._unit()
        return None if unit is None else unit.kind

    def in_write_unit(self) -> bool:
        """True when this thread is inside a write unit of this database."""
        return self.unit_kind() is UnitKind.WRITE

    def write_depth(self) -> int:
        """How many write units this thread has open here (0 outside any); for the layer."""
        unit = self._unit()
        return unit.depth if unit is not None and unit.kind is UnitKind.WRITE else 0

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """One write unit: ``BEGIN IMMEDIATE``, commit on success, rollback on any exception.

        Writers of this process take turns first come, first served, and successive units
        may share one commit (see ``max_units_per_commit``); the unit returns once its work
        is committed. A unit opened inside another becomes a SAVEPOINT that rolls back alone.
        The thread's Session starts the unit with its objects expired (rows are read
        afresh).

        Raises:
            DatabaseBusyError: another process kept the write lock past ``busy_timeout``, or
                this process's writers kept it past ``retry_deadline``.
            CommitTimeoutError: the unit ran, but the transaction it shares with later units
                was still open ``retry_deadline`` seconds after it ended.
            TransactionStateError: opened inside a read unit, or while this thread is in a
                write unit of another Database object on the same database.
        """
        session = self.session()
        with self._write_scope(None):
            yield session

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """For the layer's own statements: a write unit's connection, in a SAVEPOINT of its
        own (joining the thread's write unit if there is one), without the ORM."""
        with self._write_scope(None) as connection:
            yield connection

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except PoolTimeout as exc:
            raise self._pool_exhausted() from exc

    def _pool_exhausted(self) -> errors.PoolExhaustedError:
        return errors.PoolExhaustedError(
            f"no connection to {self.url} became free within {self.settings.pool_timeout}s "
            "(pool_size + max_overflow are all in use); raise pool_size or max_overflow"
        )

    def run(
        self, fn: Callable[Concatenate[Session, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``fn(session, *args, **kwargs)`` in a write unit, re-running it while busy.

        When another process holds the write lock (or a server aborts the unit to avoid a
        conflict), the unit is rolled back and ``fn`` runs again from scratch after a
        jittered, growing pause, until ``retry_deadline`` seconds have passed. A unit rolled
        back because another unit sharing its transaction failed (``UnitAbortedError``)
        runs again at once. Inside an open write unit, ``fn`` runs once in a SAVEPOINT.

        Raises:
            DatabaseBusyError: still busy at the deadline; names the database and the wait.
        """
        session = self.session()
        return self.run_on_connection(lambda _connection: fn(session, *args, **kwargs))

    def process_local(self, key: str, make: Callable[[], K]) -> K:
        """For the layer's modules: the helper ``make()`` built once per process for this
        Database (the chain's append batcher); a forked child builds its own."""
        local = self._process_local
        found = local.get(key)
        if found is None:
            found = local.setdefault(key, make())
        return found  # type: ignore[no-any-return]


@contextmanager
def migration_database(url: str | None) -> Iterator[Database]:
    """A Database for running migrations (no schema check: that is what they fix)."""
    database = Database(url, check_schema=False)
    try:
        yield database
    finally:
        database.dispose()


_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()
_FORK_LEFTOVERS: list[object] = []


def _after_fork_in_child() -> None:
    for database in list(_LIVE):
        database._after_fork_in_child()


_process.on_fork("databases", after_in_child=_after_fork_in_child)
