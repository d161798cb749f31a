"""`Database`: the engine, one Session per thread, and write/read units of work.

How writers take turns and share a transaction is ``_write_side`` and
``_shared_transaction``; what the thread's Session does outside units is ``_sessions``; the
WAL bound is ``_wal_bound``. This module describes units: what each kind does, in order.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from . import _vector_cache, errors
from ._driver import BUSY_OPTION, UNIT_OPTION, raw_execute
from ._engine import build_engine
from ._replicas import ReplicaSet
from ._sessions import READ_UNIT, SessionGuard, ThreadSessions
from ._shared_transaction import SharedTransaction, WriteOutcome
from ._stats import Counters, ReplicaStats, Stats
from ._units import Unit, UnitKind, current_task, rollback_quietly, savepoint
from ._wal_bound import CHECKPOINT_MODES, WalBound
from ._write_side import WriteSide, write_side
from .schema import ensure_schema
from .settings import Settings

__all__ = ["CHECKPOINT_MODES", "Database", "ReplicaStats", "Stats", "UnitKind", "retried_reads"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
K = TypeVar("K")
T = TypeVar("T")

#: Reads of this context (thread or asyncio task) may go to a replica that has not replayed
#: this process's last commit (see Database.allow_stale).
_STALE_OK: ContextVar[bool] = ContextVar("app_stale_reads_ok", default=False)
#: Where a read runs when there are no replicas: on the primary (no replica connection).
_PRIMARY = nullcontext(None)


class Database:
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
        # A write unit binds the thread's Session to the open write transaction's
        # connection, where it opens a SAVEPOINT; a read unit binds it to the engine.
        self._factory = sessionmaker(
            self.engine, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        # Read replicas (PostgreSQL): where read units go, and the positions they need.
        self._replicas = ReplicaSet(self.settings, self.engine) if self.settings.replicas else None
        self._sessions = SessionGuard(
            in_unit=lambda: self._unit() is not None,
            take_turn=self._take_turn_for_session,
            release_turn=self._release_session_turn,
            pool_exhausted=self._pool_exhausted,
        )
        self._sessions.install(self._factory)
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
        finally:
            if idle:
                self._dispose_engines()

    def _check_open(self) -> None:
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
        self._local = threading.local()
        self._process_local: dict[str, Any] = {}
        self._wal = WalBound(self.settings)
        self.session.registry = ThreadSessions(self._factory)

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
        unit: Unit | None = getattr(self._local, "unit", None)
        if unit is None or not unit.open:
            return None
        if unit.task is not current_task():
            raise errors.TransactionStateError(
                f"another asyncio task on this thread has a unit of work of {self.url} open; "
                "units of Database are per thread, so tasks would share its transaction: "
                "run each unit in a thread (asyncio.to_thread), one unit per call"
            )
        return unit

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

    @contextmanager
    def _write_scope(
        self, deadline: float | None, outcome: WriteOutcome | None = None
    ) -> Iterator[Connection]:
        """The write unit behind unit_of_work, run and the layer's own writes.

        The outermost unit takes this process's write turn (``_write_side``), joins the
        transaction the previous unit of this Database left open or begins one, runs the
        body in a SAVEPOINT (none for the first unit of a transaction), then either hands
        the open transaction with the turn to the next unit of this Database, or commits.
        ``outcome``, when given, records where the unit's work went, so that a caller
        interrupted after the commit can still tell that it was committed.
        """
        self._check_open()
        unit = self._unit()
        session = self.session()
        if unit is not None:
            if unit.kind is not UnitKind.WRITE:
                raise errors.TransactionStateError(
                    "cannot open a write unit inside a read unit: open the write unit first"
                )
            assert unit.connection is not None
            unit.depth += 1
            try:
                with savepoint(unit, session, None):
                    yield unit.connection
            finally:
                unit.depth -= 1
            return
        self._sessions.before_unit(session)
        side = self._side
        self.check_may_wait_for_turn()
        if deadline is None:
            deadline = time.monotonic() + self.settings.retry_deadline
        unit = Unit(UnitKind.WRITE)
        failure: BaseException | None = None
        result: BaseException | None = None
        self._enter(unit)
        try:
            self._record_wait(side.take_turn(deadline, self, self.url))
            self._check_open()  # disposed while this unit waited
            shared = side.shared or self._begin(side, deadline)
            if outcome is not None:
                outcome.unit, outcome.transaction = unit, shared
            unit.connection = shared.connection
            session.bind = shared.connection
            self._local.unit = unit
            try:
                with savepoint(unit, session, shared):
                    yield shared.connection
            except BaseException as exc:  # noqa: BLE001 - re-raised once the turn is ended
                failure = exc
                if not shared.holds(unit):
                    # The first unit of a transaction runs without a SAVEPOINT, and a
                    # SAVEPOINT whose rollback was interrupted holds part of the work:
                    # either way only a rollback of everything undoes it.
                    shared.spoiled = shared.spoiled or not shared.units or unit.unclean
                    self._counters.add("rolled_back")
            self._close_unit(unit, session)
            limit = self.settings.max_units_per_commit
            result = side.end_unit(self, shared, unit, failure, limit)
        finally:
            # Also after an interruption anywhere above (and once more if the clean-up
            # itself is interrupted): the unit is closed, the turn passed on with the open
            # transaction committed (or rolled back), and a unit whose work another unit
            # will commit learns the outcome first, so nobody is unsure whether it was
            # written.
            try:
                self._end_write_scope(side, unit, session)
            except BaseException:
                self._end_write_scope(side, unit, session)
                raise
            finally:
                if unit.waiter is not None:
                    deadline = time.monotonic() + self.settings.retry_deadline
                    result = unit.waiter.wait(deadline, self.url)
        if failure is not None:
            raise failure
        if result is not None:
            raise result

    def _end_write_scope(self, side: WriteSide, unit: Unit, session: Session) -> None:
        """Whatever state the outermost write unit stopped in, end it. Safe to repeat."""
        self._close_unit(unit, session)
        if side.turn.held_by_me():
            if unit.unclean and side.shared is not None:
                side.shared.spoiled = True
            side.release()
        self._leave(unit)

    def _close_unit(self, unit: Unit, session: Session) -> None:
        unit.open = False
        if getattr(self._local, "unit", None) is unit:
            self._local.unit = None
        session.bind = self.engine

    def _begin(self, side: WriteSide, deadline: float) -> SharedTransaction:
        options: dict[str, Any] = {UNIT_OPTION: UnitKind.WRITE.value}
        remaining = deadline - time.monotonic()
        if remaining < self.settings.busy_timeout:
            # Wait for another process's write lock no longer than the deadline allows.
            options[BUSY_OPTION] = max(1, int(remaining * 1000))
        connection = self._connect().execution_options(**options)
        after_commit = self._wal.after_commit if self._replicas is None else self._after_commit
        return side.begin(connection, self, after_commit, self._count_units)

    def _after_commit(self, connection: Connection) -> None:
        """After a commit on a primary with replicas: remember its log position (reads
        then go to replicas that have replayed it). Never raises."""
        self._wal.after_commit(connection)
        if self._replicas is not None:
            self._replicas.note_commit(connection)

    def _release_session_turn(self) -> None:
        """The thread's Session ended a transaction in which it wrote (see ``_sessions``)."""
        self._side.release_if_held()
        if self._replicas is not None:
            self._replicas.note_commit(None)

    def check_may_wait_for_turn(self) -> None:
        """Refuse, up front, to wait for the write turn in a thread that holds it.

        Raises:
            TransactionStateError: this thread is inside a write unit of another Database
                object on the same database (waiting would wait for itself).
        """
        if self._side.turn.held_by_me():
            raise errors.TransactionStateError(
                f"this thread is inside a write unit of another Database object on {self.url}; "
                "a second one would wait for the first: use the same Database object (or "
                "finish the first unit)"
            )

    def _take_turn_for_session(self) -> None:
        """The thread's Session writes outside a unit (see ``_sessions``)."""
        self.check_may_wait_for_turn()
        deadline = time.monotonic() + self.settings.retry_deadline
        self._record_wait(self._side.take_turn(deadline, None, self.url))

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except PoolTimeout as exc:
            raise self._pool_exhausted() from exc

    def _count_units(self, committed: bool, units: int) -> None:
        self._counters.add("committed" if committed else "rolled_back", units)

    def _record_wait(self, waited: float) -> None:
        self._counters.record_wait(waited)
        if waited > self.settings.slow_wait_threshold:
            log.warning("writer waited %.3fs for its turn on %s", waited, self.url)

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
        chosen = replicas.choose(fresh=not (allow_stale or _STALE_OK.get()))
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
                    if getattr(self._local, "unit", None) is unit:
                        self._local.unit = None
        finally:
            try:
                self._leave(unit)
            except BaseException:
                self._leave(unit)
                raise

    @contextmanager
    def exclusive_turn(self, deadline: float | None = None) -> Iterator[None]:
        """Hold this database's write turn without joining a unit's transaction (a
        transaction left open is committed first); for migrations, checkpoints and the
        units of a one-connection database.

        Raises:
            DatabaseBusyError: the turn did not come within ``retry_deadline``.
            TransactionStateError: this thread holds the turn already.
        """
        side = self._side
        self.check_may_wait_for_turn()
        if deadline is None:
            deadline = time.monotonic() + self.settings.retry_deadline
        try:
            self._record_wait(side.take_turn(deadline, None, self.url))
            yield
        finally:
            try:
                side.release_if_held()
            except BaseException:
                side.release_if_held()
                raise

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

    def run_on_connection(
        self, body: Callable[[Connection], R], outcome: WriteOutcome | None = None
    ) -> R:
        """:meth:`run` for the layer's own statements: ``body(connection)``.

        ``outcome`` records where the last attempt's work went (see ``WriteOutcome``).
        Each attempt is a write unit; busy attempts are rolled back and run again after a
        jittered pause that doubles (to at most half a second) until ``retry_deadline``.
        """
        if self.in_write_unit():
            with self._write_scope(None) as connection:
                return body(connection)
        started = time.monotonic()
        deadline = started + self.settings.retry_deadline
        attempt = 0
        while True:
            try:
                with self._write_scope(deadline, outcome) as connection:
                    return body(connection)
            except errors.UnitAbortedError as exc:
                # Another unit's failure ended the transaction this one shared; nothing of
                # it was written, and nothing about it was at fault: run it again at once.
                if time.monotonic() >= deadline:
                    raise
                attempt += 1
                self._counters.add("retries")
                log.info("%s: unit run again after another unit aborted: %s", self.url, exc)
            except errors.DatabaseBusyError as exc:
                now = time.monotonic()
                if now >= deadline - 0.001:
                    waited = now - started
                    raise errors.DatabaseBusyError(
                        f"{self.url} stayed busy: gave up after {waited:.2f}s and "
                        f"{attempt + 1} attempts (retry_deadline is "
                        f"{self.settings.retry_deadline}s); the last one: {exc}",
                        database=self.url,
                        waited=waited,
                    ) from exc
                attempt += 1
                self._counters.add("retries")
                pause = min(deadline - now, random.uniform(0, min(0.5, 0.005 * 2**attempt)))
                log.info("%s busy, retry %d in %.3fs: %s", self.url, attempt, pause, exc)
                time.sleep(pause)

    def process_local(self, key: str, make: Callable[[], K]) -> K:
        """For the layer's modules: the helper ``make()`` built once per process for this
        Database (the chain's append batcher); a forked child builds its own."""
        local = self._process_local
        found = local.get(key)
        if found is None:
            found = local.setdefault(key, make())
        return found  # type: ignore[no-any-return]

    # -- maintenance ----------------------------------------------------------------------

    def checkpoint(self, mode: str = "passive") -> tuple[int, int, int]:
        """Copy the WAL's pages into the database file (SQLite's ``PRAGMA wal_checkpoint``).

        ``passive`` never waits. ``full``, ``restart`` and ``truncate`` first take this
        process's write turn (committing a write transaction left open), so they never wait
        for the process's own writers, then wait up to ``busy_timeout`` for other processes'
        writers and, for ``restart`` and ``truncate``, for readers still using the WAL.
        ``restart`` and ``truncate`` let the next writer start the WAL from its beginning,
        which is when the file is cut back to ``journal_size_limit`` (``truncate``: to zero).

        Returns:
            SQLite's triple ``(busy, log, checkpointed)``: 1 if the checkpoint could not
            finish, the WAL's frames, and how many of them are now in the database file
            (``log`` and ``checkpointed`` are -1 when the database is not in WAL mode).

        Raises:
            InvalidInputError: an unknown mode.
            ConfigurationError: not a SQLite database.
            TransactionStateError: called inside a unit (it would wait for that unit).
        """
        self._check_open()
        name = mode.lower() if isinstance(mode, str) else ""
        if name not in CHECKPOINT_MODES:
            raise errors.InvalidInputError(
                f"checkpoint mode must be one of {', '.join(CHECKPOINT_MODES)}; got {mode!r}"
            )
        if not self.settings.is_sqlite:
            raise errors.ConfigurationError(f"checkpoints are a SQLite feature; {self.url} is not")
        if self._unit() is not None:
            raise errors.TransactionStateError(
                "cannot checkpoint inside a unit of work: it would wait for the unit itself"
            )
        take_turn = name != "passive" or self._exclusive
        unit = Unit(UnitKind.WRITE)
        self._enter(unit)
        try:
            turn = self.exclusive_turn() if take_turn else nullcontext()
            with turn, self._connect() as connection:
                # The mode comes from the fixed list above, never from the caller's text.
                row = raw_execute(connection, f"PRAGMA wal_checkpoint({name.upper()})").fetchone()
        finally:
            self._leave(unit)
        return int(row[0]), int(row[1]), int(row[2])

    # -- observability --------------------------------------------------------------------

    def check_replicas(self) -> tuple[ReplicaStats, ...]:
        """Check every replica now: reachable, really a replica, and how far behind.

        Returns:
            Each replica's :class:`ReplicaStats` (empty without replicas); a replica found
            down or lagging is skipped by reads from now on, one found well again used.
        """
        self._check_open()
        return () if self._replicas is None else self._replicas.check_all()

    def stats(self) -> Stats:
        """Units committed and rolled back, busy retries, writer waits, connections, and
        each replica's state, lag and reads served."""
        pool: Any = self.engine.pool
        if hasattr(pool, "overflow"):
            # Each counter read once: checkedout() and checkedin() both read the pool's
            # queue, which other threads change in between, so their sum could exceed
            # pool_size + max_overflow. size() + overflow() is what the pool has open.
            opened = pool.size() + pool.overflow()
            checked_in = min(pool.checkedin(), opened)
            checked_out = opened - checked_in
        else:  # the single connection of a StaticPool
            opened, checked_out = 1, 0
        c = self._counters
        with c.lock:
            return Stats(
                units_committed=c.committed,
                units_rolled_back=c.rolled_back,
                busy_retries=c.retries,
                write_waits=c.waits,
                write_wait_total=c.wait_total,
                write_wait_max=c.wait_max,
                writers_queued=self._side.turn.queued(),
                connections_checked_out=checked_out,
                connections_open=opened,
                replicas=() if self._replicas is None else self._replicas.stats(),
                primary_reads=0 if self._replicas is None else self._replicas.primary_reads,
                vector_cache_bytes=_vector_cache.cache_bytes(self),
            )


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


os.register_at_fork(after_in_child=_after_fork_in_child)
