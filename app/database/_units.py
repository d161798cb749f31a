"""Units of work: what one may do, who opened it, and its SAVEPOINT; and the core that
runs them for one ``Database`` (:class:`UnitCore`).

A unit is the body of ``Database.unit_of_work()``, ``read()`` or ``run()`` (or one of the
layer's own reads and writes). Its state lives in a :class:`Unit` object rather than in
thread-local flags, because a unit may end on another thread than it began on (a generator
resumed elsewhere), and because asyncio tasks share a thread.

Who owns what: each ``Database`` owns one :class:`UnitCore` (the engine, the thread's
Session and unit, the write side, the WAL bound, the counters, the replicas, and the
object's lifetime) and the parts built on it, each given the core: the write units
(``_write_units.WriteUnits``), the read units (``_read_units.ReadUnits``), checkpoints on
demand (``_checkpoints``) and what ``stats()`` reports (``_database_stats``). The parts use
only the core's public names, listed in its docstring.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, scoped_session

from app import errors
from app._telemetry import Telemetry
from app.database._replicas import ReplicaSet
from app.database._sessions import SessionGuard, renew_sessions, thread_scoped
from app.database._stats import Counters
from app.engine._driver import UnitKind, raw_execute
from app.engine._engine import build_engine
from app.settings import Settings
from app.writers._shared_transaction import CommitWaiter, SharedTransaction
from app.writers._wal_bound import WalBound
from app.writers._write_side import WriteSide, leave_write_side, write_side

log = logging.getLogger(__name__)


def current_task() -> object:
    """The asyncio task running on this thread, or None."""
    loop = asyncio.events._get_running_loop()
    return None if loop is None else asyncio.current_task(loop)


def refuse_unpatched_greenlet() -> None:
    """Refuse a call from a gevent greenlet when gevent did not patch threads
    (``patch_all(thread=False)``).

    Such greenlets share one thread: they would share its units and its Session, and every
    wait of the layer (the write turn, the append queue, the pool) would block the whole
    hub, and with it the greenlet it waits for. With threads patched (gevent's default),
    each greenlet counts as a thread and all is well. Cheap when gevent is not in use.

    Raises:
        ConfigurationError: called from a spawned greenlet without thread patching.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or monkey.is_module_patched("threading"):
        return
    if sys.modules["greenlet"].getcurrent().parent is None:
        return  # the thread's own main greenlet: an ordinary thread
    raise errors.ConfigurationError(
        "called from a gevent greenlet, but gevent did not patch threads "
        "(monkey.patch_all(thread=False)): greenlets would share this thread's units and "
        "block each other in the layer's waits. Patch threads (monkey.patch_all(), the "
        "default), or run database calls in real threads (gevent.get_hub().threadpool)"
    )


class Unit:
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
        "watch",
    )

    def __init__(self, kind: UnitKind) -> None:
        self.kind = kind
        self.depth = 1
        self.open = True
        self.thread = threading.get_ident()
        self.task = current_task()
        self.connection: Connection | None = None
        self.counted = False  # counted among the Database's units in progress
        # A SAVEPOINT of this unit was neither released nor rolled back (interrupted):
        # the transaction it is in can only be rolled back.
        self.unclean = False
        # Set while a later unit is to commit this unit's work (see WriteSide.end_unit).
        self.waiter: CommitWaiter | None = None
        # Called each time the unit's thread looks the unit up, before it is used: the
        # legacy conn's implicit unit must know when its thread comes back to it (see
        # ``legacy._conn``). Weak, since what it belongs to holds the unit.
        self.watch: weakref.WeakMethod[Callable[[], None]] | None = None


@contextmanager
def savepoint(unit: Unit, session: Session, shared: SharedTransaction | None) -> Iterator[None]:
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
                rollback_quietly(session)
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
            rollback_quietly(session)
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


def rollback_quietly(session: Session) -> None:
    # The error that brought us here matters more than a failed rollback (for example on a
    # connection the error already broke); the pool discards such a connection.
    try:
        session.rollback()
    except Exception:
        log.debug("rollback after error failed", exc_info=True)


class ThreadUnit(threading.local):
    """The unit of work a thread has open in one Database. A class default, so a thread
    without one reads None instead of raising and catching AttributeError: every call of
    the layer looks it up."""

    unit: Unit | None = None


class UnitCore:
    """What every kind of unit of one ``Database`` runs on: its named internal interface,
    used by the Database and its parts (write units, read units, checkpoints, stats).

    Attributes:
        settings: the resolved :class:`~app.settings.Settings`.
        url: the URL for messages (password hidden).
        engine: the primary's engine.
        session: the ``scoped_session`` of the thread Sessions (set by
            :meth:`open_sessions`).
        sessions: the :class:`~app.database._sessions.SessionGuard` of those Sessions.
        exclusive: one connection (in memory, or ``single_connection``): units take turns
            on it, reads included.
        counters: units committed and rolled back, retries, writer waits.
        replicas: the read replicas, or None.
        closed: set once by :meth:`close`.
        key: what names the database in this process (see ``Database.key``).
        local: the thread's unit (``local.unit``, a :class:`ThreadUnit`).
        side: this process's :class:`~app.writers._write_side.WriteSide` of the database.
        wal: the :class:`~app.writers._wal_bound.WalBound` of this process.
        telemetry: the :class:`~app._telemetry.Telemetry` it records on, or None (the
            ``telemetry`` setting is off).

    ``local``, ``side`` and ``wal`` are made again in a forked child (:meth:`after_fork`):
    read them from the core at each use, never keep them.

    Methods: :meth:`check_open`, :meth:`unit` (the thread's unit), :meth:`enter` and
    :meth:`leave` (count a unit in progress), :meth:`connect`, :meth:`pool_exhausted`,
    :meth:`open_sessions`, :meth:`close`, :meth:`after_fork`. Bound methods of the core
    may be kept: they read its state at each call.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.safe_url()
        self.key = self._lock_key()
        self.telemetry = Telemetry(settings, self.key) if settings.telemetry else None
        self.engine = build_engine(settings, self.telemetry)
        # Units in progress, so that close() can leave their connections to them and close
        # the pool when the last one ends.
        self._lifetime = threading.Lock()
        self._active = 0
        self._engines_closed = False
        self.closed = False
        self.exclusive = settings.is_memory or settings.single_connection
        self.counters = Counters()
        # Read replicas (PostgreSQL): where read units go, and the positions they need.
        self.replicas = ReplicaSet(settings, self.engine) if settings.replicas else None
        self._start_process()

    def _lock_key(self) -> str:
        path = self.settings.sqlite_path
        if path is not None:
            return "sqlite:" + os.path.realpath(path)
        if self.settings.is_memory:
            return f"memory:{id(self)}"
        return self.url

    def _start_process(self) -> None:
        """What belongs to this process: made here, and made again in a forked child."""
        self.side: WriteSide = write_side(self.key, self.settings.retry_deadline)
        self.local = ThreadUnit()
        self.wal = WalBound(self.settings, self.key, self.telemetry)

    def open_sessions(
        self, *, take_turn: Callable[[], None], release_turn: Callable[[], None]
    ) -> None:
        """Make :attr:`session` and its guard; once, by the Database, after its write
        units: a thread Session that writes outside units takes and gives back the write
        turn with ``take_turn`` and ``release_turn``."""
        self.sessions = SessionGuard(
            in_unit=lambda: self.unit() is not None,
            take_turn=take_turn,
            release_turn=release_turn,
            pool_exhausted=self.pool_exhausted,
        )
        self.session: scoped_session[Session] = thread_scoped(
            self.sessions.sessionmaker(self.engine)
        )

    def after_fork(self) -> None:
        """In a forked child: forget the parent's connections and Sessions (they must be
        neither used nor closed here), and make this process's state again."""
        self.engine.dispose(close=False)
        if self.replicas is not None:
            self.replicas.after_fork()
        renew_sessions(self.session, after_fork=True)
        self._start_process()

    # -- lifetime -----------------------------------------------------------------------

    def check_open(self) -> None:
        """Raises: ClosedError after close(); ConfigurationError in a gevent greenlet
        without thread patching (see :func:`refuse_unpatched_greenlet`)."""
        refuse_unpatched_greenlet()
        if self.closed:
            raise errors.ClosedError(f"{self.url} was disposed; create a new Database")

    def enter(self, unit: Unit) -> None:
        """Count ``unit`` in progress (see :meth:`close`); ClosedError once closed."""
        with self._lifetime:
            self.check_open()
            self._active += 1
            unit.counted = True

    def leave(self, unit: Unit) -> None:
        """Stop counting ``unit``; safe to repeat. The last unit after close() closes the
        engines."""
        with self._lifetime:
            if not unit.counted:
                return
            unit.counted = False
            self._active -= 1
            last = self.closed and self._active == 0 and not self._engines_closed
            self._engines_closed = self._engines_closed or last
        if last:
            self._close_engines()

    def close(self, closing: Callable[[], None]) -> None:
        """Refuse units from now on, and call ``closing()`` (what the Database closes
        besides). The engines close now, or when the last unit in progress ends. Does
        nothing once closed."""
        with self._lifetime:
            if self.closed:
                return
            self.closed = True
            idle = self._active == 0
            self._engines_closed = idle
        try:
            closing()
        finally:
            if idle:
                self._close_engines()

    def _close_engines(self) -> None:
        try:
            self.engine.dispose()
        finally:
            leave_write_side(self.side)
            if self.replicas is not None:
                self.replicas.dispose()

    # -- units and connections ----------------------------------------------------------

    def unit(self) -> Unit | None:
        """The unit of work this thread (and asyncio task) has open here, or None.

        Raises:
            TransactionStateError: another asyncio task has a unit open on this thread: the
                two would share one Session and one transaction.
        """
        unit = self.local.unit
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

    def connect(self, engine: Engine | None = None) -> Connection:
        """A connection of the primary's pool (through ``engine``, a copy of the primary's
        engine with execution options, when given); PoolExhaustedError when none came
        free."""
        try:
            return (engine or self.engine).connect()
        except PoolTimeout as exc:
            raise self.pool_exhausted() from exc

    def pool_exhausted(self) -> errors.PoolExhaustedError:
        return errors.PoolExhaustedError(
            f"no connection to {self.url} became free within {self.settings.pool_timeout}s "
            "(pool_size + max_overflow are all in use); raise pool_size or max_overflow"
        )
