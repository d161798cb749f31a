"""`Database`: the engine, one Session per thread, and write/read units of work."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import event, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import (
    ORMExecuteState,
    Session,
    SessionTransaction,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.util import ThreadLocalRegistry

from . import errors
from ._engine import BUSY_OPTION, UNIT_OPTION, build_engine, raw_execute
from ._shared_transaction import CommitWaiter, SharedTransaction, WriteOutcome
from ._sql_text import statement_kind
from ._write_side import WriteSide, write_side
from .settings import Settings

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class UnitKind(enum.Enum):
    """What a unit of work may do; the value is what the engine's ``begin`` hook reads."""

    WRITE = "write"  # BEGIN IMMEDIATE (the advisory lock on PostgreSQL)
    READ = "read"  # Database.read(): a snapshot in which writes are refused
    SNAPSHOT = "snapshot"  # the layer's own reads: a snapshot without the ORM


def _current_task() -> object:
    """The asyncio task running on this thread, or None."""
    loop = asyncio.events._get_running_loop()
    return None if loop is None else asyncio.current_task(loop)


class _Unit:
    """One open unit of work: what it may do, and where it runs.

    A unit belongs to the thread and the asyncio task that opened it. Its ``with`` block
    may end elsewhere (a generator resumed on another thread): it is then closed, and the
    thread it began on no longer counts as inside it.
    """

    __slots__ = (
        "connection",
        "counted",
        "depth",
        "kind",
        "open",
        "task",
        "thread",
        "unclean",
        "waiter",
    )

    def __init__(self, kind: UnitKind) -> None:
        self.kind = kind
        self.depth = 1
        self.open = True
        self.thread = threading.get_ident()
        self.task = _current_task()
        self.connection: Connection | None = None
        self.counted = False  # counted among the Database's units in progress
        # A SAVEPOINT of this unit was neither released nor rolled back (interrupted):
        # the transaction it is in can only be rolled back.
        self.unclean = False
        # Set while a later unit is to commit this unit's work (see Database._end_turn).
        self.waiter: CommitWaiter | None = None


#: Session.info key: the thread's Session wrote outside a unit and holds the write turn.
_WROTE = "app_wrote_outside_units"

#: ``PRAGMA wal_checkpoint`` modes, mildest first (see :meth:`Database.checkpoint`).
CHECKPOINT_MODES = ("passive", "full", "restart", "truncate")

# Bounding the WAL (see Database._bound_wal). Below SQLite's own checkpoint size (1000 pages
# of 4 KiB) its automatic checkpoints suffice. The checkpoint's own wait (for other
# processes' readers) is short because writers of the process wait for it too; after a
# failure, a long snapshot is the likely cause.
_WAL_FLOOR = 4 * 1024 * 1024
_WAL_WAIT_MS = 100
_WAL_RETRY_FIRST, _WAL_RETRY_MAX = 0.1, 2.0
# Longest a new read snapshot waits for such a checkpoint (copying a large WAL takes time),
# and longest the checkpoint waits for this process's snapshots in progress to end.
_READER_HOLD_MAX = 1.0


@dataclass(frozen=True)
class Stats:
    """A snapshot of a Database's counters (see :meth:`Database.stats`)."""

    units_committed: int
    units_rolled_back: int
    busy_retries: int
    write_waits: int
    write_wait_total: float
    write_wait_max: float
    writers_queued: int
    connections_checked_out: int
    connections_open: int


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.committed = self.rolled_back = self.retries = self.waits = 0
        self.wait_total = self.wait_max = 0.0

    def record_wait(self, seconds: float) -> None:
        with self.lock:
            self.waits += 1
            self.wait_total += seconds
            if seconds > self.wait_max:
                self.wait_max = seconds

    def add(self, name: str, count: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + count)


class _Snapshots:
    """The read snapshots of this process in progress, and when each began."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._began: dict[object, float] = {}

    def begin(self, token: object) -> None:
        with self._changed:
            self._began[token] = time.monotonic()

    def end(self, token: object) -> None:
        """Forget a snapshot (again is harmless)."""
        with self._changed:
            if self._began.pop(token, None) is not None:
                self._changed.notify_all()

    def drain(self, limit: float) -> bool:
        """Wait until every snapshot in progress has ended, for at most ``limit`` seconds.

        Returns False at once when one began more than ``limit`` seconds ago: such a long
        snapshot is not about to end, and waiting for it would only hold everyone up.
        """
        deadline = time.monotonic() + limit
        with self._changed:
            while self._began:
                now = time.monotonic()
                if now >= deadline or now - min(self._began.values()) > limit:
                    return False
                self._changed.wait(deadline - now)
            return True


class _SessionCloser:
    """Closes a thread's Session when the thread ends without calling ``remove()``.

    It lives in the same ``threading.local`` as the Session, so when the thread exits and
    its locals are dropped, this runs in that thread and hands the connection back to the
    pool instead of leaving it to the garbage collector.
    """

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def __del__(self) -> None:
        # Nothing useful can be done about a failure at thread exit.
        with suppress(Exception):
            self.session.close()


class _ThreadSessions(ThreadLocalRegistry[Session]):
    def __call__(self) -> Session:
        try:
            return self.registry.value  # type: ignore[no-any-return]
        except AttributeError:
            session = self.registry.value = self.createfunc()
            self.registry.closer = _SessionCloser(session)
            return session

    def clear(self) -> None:
        super().clear()
        with suppress(AttributeError):
            del self.registry.closer


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
        self._counters = _Counters()
        self._wal_path = _wal_to_bound(self.settings)
        self._wal_retry_at = 0.0
        self._wal_retry_pause = _WAL_RETRY_FIRST
        # A write unit binds the thread's Session to the open write transaction's
        # connection, where it opens a SAVEPOINT; a read unit binds it to the engine.
        self._factory = sessionmaker(
            self.engine, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        event.listen(self._factory, "before_flush", self._before_flush)
        event.listen(self._factory, "do_orm_execute", self._on_execute)
        event.listen(self._factory, "after_transaction_end", self._after_transaction_end)
        self.session = scoped_session(self._factory)
        self._reset_thread_state()
        _LIVE.add(self)
        try:
            if self.settings.check_schema:
                from .schema import ensure_schema

                ensure_schema(self)
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
                self.engine.dispose()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClosedError(f"{self.url} was disposed; create a new Database")

    def _enter(self, unit: _Unit) -> None:
        """Count a unit in progress (see dispose)."""
        with self._lifetime:
            self._check_open()
            self._active += 1
            unit.counted = True

    def _leave(self, unit: _Unit) -> None:
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
            self.engine.dispose()

    def _lock_key(self) -> str:
        path = self.settings.sqlite_path
        if path is not None:
            return "sqlite:" + os.path.realpath(path)
        if self.settings.is_memory:
            return f"memory:{id(self)}"
        return self.url

    def _reset_thread_state(self) -> None:
        self._side: WriteSide = write_side(self._lock_key(), self.settings.retry_deadline)
        self._local = threading.local()
        # Per-process helpers of other modules (the chain's group committer), rebuilt after fork.
        self._per_process: dict[str, Any] = {}
        # Cleared while a checkpoint empties the WAL: new snapshots wait (see _bound_wal).
        self._readers_may_start = threading.Event()
        self._readers_may_start.set()
        self._snapshots = _Snapshots()
        self.session.registry = _ThreadSessions(self._factory)

    def _after_fork_in_child(self) -> None:
        # The parent's connections must be neither used nor closed here: forget them.
        self.engine.dispose(close=False)
        _FORK_LEFTOVERS.append(self.session.registry)
        self._reset_thread_state()

    # -- units of work ------------------------------------------------------------------

    def _unit(self) -> _Unit | None:
        """The unit of work this thread (and asyncio task) has open here, or None.

        Raises:
            TransactionStateError: another asyncio task has a unit open on this thread: the
                two would share one Session and one transaction.
        """
        unit: _Unit | None = getattr(self._local, "unit", None)
        if unit is None or not unit.open:
            return None
        if unit.task is not _current_task():
            raise errors.TransactionStateError(
                f"another asyncio task on this thread has a unit of work of {self.url} open; "
                "units of Database are per thread, so tasks would share its transaction: "
                "use the asyncio API (app.aio.AsyncDatabase), or run the unit in a thread"
            )
        return unit

    def unit_kind(self) -> UnitKind | None:
        """The kind of unit this thread is inside (None outside any)."""
        unit = self._unit()
        return None if unit is None else unit.kind

    def in_write_unit(self) -> bool:
        """True when this thread is inside a write unit of this database."""
        return self.unit_kind() is UnitKind.WRITE

    def _write_depth(self) -> int:
        """How many write units this thread has open (0 outside any)."""
        unit = self._unit()
        return unit.depth if unit is not None and unit.kind is UnitKind.WRITE else 0

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """One write unit: ``BEGIN IMMEDIATE``, commit on success, rollback on any exception.

        Writers of this process take turns first come, first served, and successive units
        may share one commit (see ``max_units_per_commit``); the unit returns once its work
        is committed. A unit opened inside another becomes a SAVEPOINT that rolls back alone.

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
    def _writing(self) -> Iterator[Connection]:
        """A write unit for the layer's own statements: the write transaction's connection,
        in a SAVEPOINT of its own, without the ORM's bookkeeping."""
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
                with self._savepoint(unit, session, None):
                    yield unit.connection
            finally:
                unit.depth -= 1
            return
        self._end_stray_transaction(session)
        side = self._side
        self.check_may_wait_for_turn()
        if deadline is None:
            deadline = time.monotonic() + self.settings.retry_deadline
        unit = _Unit(UnitKind.WRITE)
        failure: BaseException | None = None
        result: BaseException | None = None
        self._enter(unit)
        try:
            self._record_wait(side.take_turn(deadline, self, self.url))
            self._check_open()  # disposed while this unit waited
            shared = side.shared or self._begin_shared(side, deadline)
            if outcome is not None:
                outcome.unit, outcome.transaction = unit, shared
            unit.connection = shared.connection
            session.bind = shared.connection
            self._local.unit = unit
            try:
                with self._savepoint(unit, session, shared):
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
            result = self._end_turn(side, shared, unit, failure)
        finally:
            # Also after an interruption anywhere above (and once more if the clean-up
            # itself is interrupted): the unit is closed, the turn passed on with the open
            # transaction committed (or rolled back), and a unit whose work another unit
            # will commit learns the outcome first, so nobody is unsure whether it was
            # written.
            try:
                self._end_scope(side, unit, session)
            except BaseException:
                self._end_scope(side, unit, session)
                raise
            finally:
                if unit.waiter is not None:
                    deadline = time.monotonic() + self.settings.retry_deadline
                    result = unit.waiter.wait(deadline, self.url)
        if failure is not None:
            raise failure
        if result is not None:
            raise result

    def _end_scope(self, side: WriteSide, unit: _Unit, session: Session) -> None:
        """Whatever state the outermost write unit stopped in, end it. Safe to repeat."""
        self._close_unit(unit, session)
        if side.turn.held_by_me():
            if unit.unclean and side.shared is not None:
                side.shared.spoiled = True
            side.release()
        self._leave(unit)

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

    def _close_unit(self, unit: _Unit, session: Session) -> None:
        unit.open = False
        if getattr(self._local, "unit", None) is unit:
            self._local.unit = None
        session.bind = self.engine

    @contextmanager
    def _savepoint(
        self, unit: _Unit, session: Session, shared: SharedTransaction | None
    ) -> Iterator[None]:
        """Run the body so that a failure rolls back its work alone.

        ``shared`` is given for the outermost unit: the unit is then recorded as kept by the
        transaction once its body and flush have succeeded. The first unit of a transaction
        needs no SAVEPOINT: if it fails, the caller rolls back the whole transaction, as
        nobody else's work is in it yet.
        """
        if shared is not None and not shared.units:
            try:
                yield
                if session.in_transaction():
                    session.commit()
            except BaseException:
                if session.in_transaction():
                    _rollback_quietly(session)
                raise
            shared.keep(unit)
            return
        unit.unclean = True  # until the SAVEPOINT is released or rolled back
        if session.in_transaction():
            # The Session already works in this unit: let it track the savepoint, so a
            # rollback also expires the objects it changed.
            with session.begin_nested():
                yield
            if shared is not None:
                shared.keep(unit)
            unit.unclean = False
            return
        connection = unit.connection
        assert connection is not None
        name = f"app_unit_{unit.depth}"
        raw_execute(connection, f"SAVEPOINT {name}")
        try:
            yield
            if session.in_transaction():  # the body used the Session: flush and end it
                session.commit()
        except BaseException:
            if session.in_transaction():
                _rollback_quietly(session)
            try:
                raw_execute(connection, f"ROLLBACK TO SAVEPOINT {name}")
                raw_execute(connection, f"RELEASE SAVEPOINT {name}")
                unit.unclean = False
            except Exception:
                log.debug("rolling back %s failed", name, exc_info=True)
            raise
        # From here the work stays: COMMIT includes a SAVEPOINT that was never released.
        if shared is not None:
            shared.keep(unit)
        unit.unclean = False
        raw_execute(connection, f"RELEASE SAVEPOINT {name}")

    def _begin_shared(self, side: WriteSide, deadline: float) -> SharedTransaction:
        """Begin this process's write transaction (BEGIN IMMEDIATE / the PostgreSQL write
        lock) in the turn just taken, and leave it to the turn's holder."""
        options: dict[str, Any] = {UNIT_OPTION: UnitKind.WRITE.value}
        remaining = deadline - time.monotonic()
        if remaining < self.settings.busy_timeout:
            # Wait for another process's write lock no longer than the deadline allows.
            options[BUSY_OPTION] = max(1, int(remaining * 1000))
        connection = self._connect().execution_options(**options)
        try:
            connection.begin()
            side.shared = SharedTransaction(connection, self, self._bound_wal, self._count_units)
        except BaseException:
            # Closing rolls back: no transaction may be left open without an owner, so
            # close again if the first close is interrupted.
            try:
                connection.close()
            except BaseException:
                connection.close()
                raise
            raise
        return side.shared

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

    def _end_turn(
        self,
        side: WriteSide,
        shared: SharedTransaction,
        unit: _Unit,
        failure: BaseException | None,
    ) -> BaseException | None:
        """Hand the open transaction on to the next unit of this Database, or commit it.

        When a later unit will commit this unit's work, ``unit.waiter`` is where to wait
        for it. Returns the error of the commit this unit made (None when it committed,
        kept nothing, or left the commit to a later unit).
        """
        kept = shared.holds(unit)
        if (
            side.turn.queued()
            and shared.units < self.settings.max_units_per_commit
            and shared.alive()
        ):
            if kept:  # nothing to wait for after a failure
                waiter = CommitWaiter()
                shared.waiters.append(waiter)  # before the next writer can commit
                unit.waiter = waiter
            # The writer seen waiting may have given up since (its deadline passed), or be
            # no unit of this Database: then it cannot take the open transaction.
            if side.hand_over(self):
                return None
            if unit.waiter is not None:
                unit.waiter = None
                shared.waiters.remove(waiter)
        if failure is not None and not kept and shared.aborted_by is None and shared.aborted():
            # The database aborted the whole transaction under this unit (SQLite does on
            # a full disk or an I/O error): the units sharing it fail with that error.
            shared.aborted_by = failure
        error = side.release()
        return error if kept else None

    def _bound_wal(self, connection: Connection) -> None:
        """Empty the WAL when it has grown past half of ``journal_size_limit`` (called after
        a commit, in the writer's turn). Never raises: the units are committed already.

        SQLite's automatic checkpoints copy the WAL into the database file, but the file
        starts over (and is cut back to ``journal_size_limit``) only at a moment when no
        reader is using it. Under a steady stream of readers that moment never comes and
        the WAL grows for as long as they run. So this process's new snapshots wait, the
        ones in progress are given time to end (up to ``_READER_HOLD_MAX``: a fixed short
        wait would fail for as long as reads take longer), and a TRUNCATE checkpoint,
        waiting a little for other processes' readers, empties the WAL. A long read
        snapshot makes it give up at once; it is then tried again after a pause that
        doubles with each failure, so a pinned WAL costs readers and writers little.
        """
        limit = self.settings.journal_size_limit
        if self._wal_path is None or limit is None:
            return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        now = time.monotonic()
        if size <= max(limit // 2, _WAL_FLOOR) or now < self._wal_retry_at:
            return
        busy = 1
        self._readers_may_start.clear()
        try:
            self._snapshots.drain(_READER_HOLD_MAX)
            raw = connection.connection.dbapi_connection
            assert raw is not None
            raw.execute(f"PRAGMA busy_timeout = {_WAL_WAIT_MS}")
            try:
                busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                raw.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout * 1000)}")
        except Exception:
            log.debug("checkpoint of %s failed", self.url, exc_info=True)
        finally:
            self._readers_may_start.set()
        if busy:
            self._wal_retry_at = now + self._wal_retry_pause
            self._wal_retry_pause = min(2 * self._wal_retry_pause, _WAL_RETRY_MAX)
        else:
            self._wal_retry_pause = _WAL_RETRY_FIRST

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read unit: a snapshot that never takes or waits for the write lock.

        Inside, any write is refused with :class:`~app.errors.ReadOnlyUnitError`. A read
        unit opened inside a write unit joins it (and sees its uncommitted changes).
        """
        self._check_open()
        unit = self._unit()
        session = self.session()
        if unit is not None:
            yield session
            return
        self._end_stray_transaction(session)
        unit = _Unit(UnitKind.READ)
        with self._read_scope(unit):
            session.info["read_unit"] = True
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
                    _rollback_quietly(session)
                    if isinstance(exc, PoolTimeout):
                        raise self._pool_exhausted() from exc
                    raise
            finally:
                session.info["read_unit"] = False

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read snapshot for the layer's own queries, without the ORM's bookkeeping.

        Inside a unit of this thread it is that unit's connection (reads see its changes).
        """
        self._check_open()
        unit = self._unit()
        if unit is not None:
            if unit.connection is not None:
                yield unit.connection
            else:  # a read unit of the ORM Session
                yield self.session().connection()
            return
        unit = _Unit(UnitKind.SNAPSHOT)
        with (
            self._read_scope(unit),
            self._connect().execution_options(
                **{UNIT_OPTION: UnitKind.SNAPSHOT.value}
            ) as connection,
        ):
            unit.connection = connection
            with connection.begin():
                yield connection

    @contextmanager
    def _read_scope(self, unit: _Unit) -> Iterator[None]:
        """What every outermost read unit does around its snapshot: wait (briefly) while a
        checkpoint empties the WAL, take the turn of a one-connection database, count the
        snapshot, and mark the thread as inside the unit."""
        self._enter(unit)
        snapshot = object()
        try:
            if not self._readers_may_start.is_set():
                self._readers_may_start.wait(_READER_HOLD_MAX)  # bounded: see _bound_wal
            with self._exclusive_turn() if self._exclusive else nullcontext():
                try:
                    self._snapshots.begin(snapshot)
                    self._local.unit = unit
                    yield
                finally:
                    try:
                        self._end_read(unit, snapshot)
                    except BaseException:
                        self._end_read(unit, snapshot)
                        raise
        finally:
            try:
                self._leave(unit)
            except BaseException:
                self._leave(unit)
                raise

    def _end_read(self, unit: _Unit, snapshot: object) -> None:
        """Close a read unit and forget its snapshot. Safe to repeat."""
        unit.open = False
        if getattr(self._local, "unit", None) is unit:
            self._local.unit = None
        self._snapshots.end(snapshot)

    @contextmanager
    def _exclusive_turn(self, deadline: float | None = None) -> Iterator[None]:
        """Hold this database's write turn without joining a unit's transaction: any
        transaction left open is committed first. For migrations, checkpoints and the
        units of a one-connection database.

        Raises:
            DatabaseBusyError: the turn did not come within ``retry_deadline``.
            TransactionStateError: this thread holds the turn already (it is inside a write
                unit of this database).
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
        return self._retrying(lambda _connection: fn(session, *args, **kwargs))

    def _run_writing(self, fn: Callable[[Connection], R], outcome: WriteOutcome | None = None) -> R:
        """:meth:`run` for the layer's own statements: ``fn(connection)``.

        ``outcome`` records where the last attempt's work went (see ``WriteOutcome``).
        """
        return self._retrying(fn, outcome)

    def _retrying(self, body: Callable[[Connection], R], outcome: WriteOutcome | None = None) -> R:
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

    def _end_stray_transaction(self, session: Session) -> None:
        """Before a unit: end a transaction the thread's Session began outside any unit (it
        only read), and expire its objects, so the unit reads every row afresh."""
        if session.in_transaction():
            if session.new or session.dirty or session.deleted or session.info.get(_WROTE):
                raise errors.TransactionStateError(
                    "this thread's Session holds changes made outside a unit of work and not "
                    "committed; commit or roll them back first (or make them inside "
                    "Database.unit_of_work() or Database.run())"
                )
            session.commit()
        # Objects loaded in earlier units (maybe on other threads' turns) may be stale: a
        # read-modify-write on them would lose updates.
        session.expire_all()

    # -- the thread's Session outside units ---------------------------------------------

    def _before_flush(self, session: Session, *args: Any) -> None:
        if session.info.get("read_unit"):
            raise errors.ReadOnlyUnitError(
                "objects were added, changed or deleted inside a read unit; "
                "use Database.unit_of_work() or Database.run() for writes"
            )
        if session.new or session.dirty or session.deleted:
            self._plain_session_writes(session)
            if self._unit() is None:
                _refuse_stale_changes(session)

    def _on_execute(self, state: ORMExecuteState) -> Any:
        """Statements of the thread's Session outside units: a write takes the write turn
        first; a lazy load that began a transaction ends it (no pooled connection stays
        with an idle Session); an empty pool is PoolExhaustedError."""
        session = state.session
        if self._unit() is not None or session.info.get("read_unit"):
            return None
        if state.is_insert or state.is_update or state.is_delete or _writes(state.statement):
            self._plain_session_writes(session)
            return None
        short_read = (
            (state.is_relationship_load or state.is_column_load)
            and not session.in_transaction()
            and not (session.new or session.dirty or session.deleted)
        )
        try:
            result = state.invoke_statement()
            if not short_read:
                return result
            frozen = result.freeze()
        except PoolTimeout as exc:
            raise self._pool_exhausted() from exc
        session.commit()  # only read: gives the connection back, keeps objects loaded
        return frozen()

    def _plain_session_writes(self, session: Session) -> None:
        """The thread's Session writes outside a unit: it takes the process's write turn
        first (writers of the process queue instead of meeting "database is locked"), and
        keeps it until its transaction ends. Its reads came before, in its own snapshot:
        if another writer committed since, the write fails with ConflictError on both
        backends (never a silent lost update)."""
        if session.info.get(_WROTE) or self._unit() is not None:
            return
        self.check_may_wait_for_turn()
        deadline = time.monotonic() + self.settings.retry_deadline
        self._record_wait(self._side.take_turn(deadline, None, self.url))
        session.info[_WROTE] = True

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None and session.info.pop(_WROTE, False):
            self._side.release_if_held()

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
        # Every mode but passive takes the turn, which commits an open write transaction
        # first: the checkpoint would otherwise wait for it.
        take_turn = name != "passive" or self._exclusive
        unit = _Unit(UnitKind.WRITE)
        self._enter(unit)
        try:
            turn = self._exclusive_turn() if take_turn else nullcontext()
            with turn, self._connect() as connection:
                # The mode comes from the fixed list above, never from the caller's text.
                row = raw_execute(connection, f"PRAGMA wal_checkpoint({name.upper()})").fetchone()
        finally:
            self._leave(unit)
        return int(row[0]), int(row[1]), int(row[2])

    # -- observability --------------------------------------------------------------------

    def stats(self) -> Stats:
        """Units committed and rolled back, busy retries, writer waits, connections."""
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
            )


def _rollback_quietly(session: Session) -> None:
    # The error that brought us here matters more than a failed rollback (for example on a
    # connection the error already broke); the pool discards such a connection.
    try:
        session.rollback()
    except Exception:
        log.debug("rollback after error failed", exc_info=True)


def _refuse_stale_changes(session: Session) -> None:
    """Outside units, a change to an object may rest on values read in an earlier
    transaction (the object stayed in the Session). Before it is written, each changed
    column's value as the object loaded it is compared with the database's: if another
    writer changed it meanwhile, writing would lose that update, so ConflictError."""
    for obj in list(session.dirty):
        state = inspect(obj)
        if not state.persistent or state.identity is None:
            continue
        mapper = state.mapper
        loaded: dict[str, Any] = {}
        for attribute in state.attrs:
            history = attribute.history
            if history.deleted and history.has_changes() and attribute.key in mapper.column_attrs:
                loaded[attribute.key] = history.deleted[0]
        if not loaded:
            continue  # nothing read before it was changed: a blind write loses nothing
        columns = [mapper.column_attrs[key].columns[0] for key in loaded]
        where = [c == v for c, v in zip(mapper.primary_key, state.identity, strict=True)]
        row = session.connection().execute(select(*columns).where(*where)).first()
        if row is None or tuple(row) != tuple(loaded.values()):
            raise errors.ConflictError(
                f"{mapper.class_.__name__} {state.identity} was changed by another writer "
                "after this Session read it (nothing was written): read it again in this "
                "transaction, or make read-modify-write changes inside "
                "Database.unit_of_work() or Database.run()",
            )


def _writes(statement: Any) -> bool:
    """A textual statement that may change the database (INSERT, UPDATE, DDL, ...)."""
    return isinstance(statement, TextClause) and statement_kind(statement.text) == "write"


def _wal_to_bound(settings: Settings) -> str | None:
    """The WAL file whose size the layer keeps in check, or None."""
    path = settings.sqlite_path
    if path is None or settings.journal_mode != "wal" or settings.single_connection:
        return None
    return path + "-wal"


_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()
_FORK_LEFTOVERS: list[object] = []


def _after_fork_in_child() -> None:
    for database in list(_LIVE):
        database._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
