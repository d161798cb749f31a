"""The thread's Session: one per thread, closed when the thread ends, and kept honest
outside units of work (see docs/guide/units-and-sessions.md, ORM objects and plain
Sessions).

A Database's unit core (``_units.UnitCore``) owns the ``scoped_session`` that hands out
these Sessions (:func:`thread_scoped`), with :class:`ThreadSessions` as its registry, and
the :class:`SessionGuard` that its sessionmaker's Sessions report to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import (
    ORMExecuteState,
    Session,
    SessionTransaction,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.sql.elements import TextClause

from app import errors
from app.engine._sql_text import statement_kind

#: Session.info keys: the Session is in a read unit; it wrote outside units and holds the
#: write turn until its transaction ends; the guard of the Database it belongs to.
READ_UNIT = "read_unit"
_WROTE = "app_wrote_outside_units"
_GUARD = "app_session_guard"


class GuardedSession(Session):
    """The Session class of every Database's sessionmaker.

    The guard's event listeners are registered once, on this class, and find the guard of
    the Session's Database in ``Session.info``. Registered per Database, they would stay in
    SQLAlchemy's class-level event registry for good, and through them every Database ever
    made (its engine, its write side) would stay in memory.
    """


def _guard(session: Session) -> SessionGuard | None:
    return session.info.get(_GUARD)


@event.listens_for(GuardedSession, "before_flush")
def _before_flush(session: Session, *args: Any) -> None:
    guard = _guard(session)
    if guard is not None:
        guard.before_flush(session)


@event.listens_for(GuardedSession, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> Any:
    guard = _guard(state.session)
    return None if guard is None else guard.on_execute(state)


@event.listens_for(GuardedSession, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    guard = _guard(session)
    if guard is not None:
        guard.after_transaction_end(session, transaction)


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


class _ThreadSession(threading.local):
    """A thread's Session and its closer (class defaults: a thread without one reads None)."""

    session: Session | None = None
    closer: _SessionCloser | None = None


class ThreadSessions:
    """The registry of a Database's ``scoped_session``: one Session per thread, closed as
    the thread ends (see :class:`_SessionCloser`).

    Our own class rather than a subclass of SQLAlchemy's ``ThreadLocalRegistry``, whose
    attributes are SQLAlchemy's internals: it has the four methods ``scoped_session`` calls
    on its registry (``sqlalchemy/orm/scoping.py``): ``__call__``, ``has``, ``set`` and
    ``clear``.
    """

    __slots__ = ("_factory", "_local")

    def __init__(self, factory: Callable[[], Session]) -> None:
        self._factory = factory
        self._local = _ThreadSession()

    def __call__(self) -> Session:
        """This thread's Session, made on first use."""
        session = self._local.session
        if session is None:
            session = self._factory()
            self.set(session)
        return session

    def has(self) -> bool:
        return self._local.session is not None

    def set(self, session: Session) -> None:
        local = self._local
        local.session = session
        local.closer = _SessionCloser(session)

    def clear(self) -> None:
        """Forget this thread's Session (``scoped_session.remove()`` has closed it)."""
        local = self._local
        local.session = None
        local.closer = None


def thread_scoped(factory: sessionmaker[Session]) -> scoped_session[Session]:
    """A ``scoped_session`` of ``factory`` that keeps one Session per thread and closes it
    when the thread ends (:class:`ThreadSessions`)."""
    scoped = scoped_session(factory)
    renew_sessions(scoped)
    return scoped


#: The registries of a forked child's parent (see :func:`renew_sessions`), kept for good.
_FORK_LEFTOVERS: list[object] = []


def renew_sessions(scoped: scoped_session[Session], *, after_fork: bool = False) -> None:
    """Give ``scoped`` a new, empty registry of thread Sessions.

    ``after_fork``: in a forked child, the old registry holds the parent's Sessions, whose
    connections belong to the parent: it is kept (never collected), so that neither its
    closers nor the garbage collector close them here.
    """
    if after_fork:
        _FORK_LEFTOVERS.append(scoped.registry)
    # scoped_session calls only those four methods of its registry; its annotation names
    # SQLAlchemy's own registry class.
    scoped.registry = ThreadSessions(scoped.session_factory)  # type: ignore[assignment]


class SessionGuard:
    """What the thread's Session does outside units of work.

    * A write (a flush, or an INSERT/UPDATE/DELETE through the Session) first takes the
      process's write turn, kept until the Session's transaction ends, and is checked
      against what the objects were loaded with (see :func:`_refuse_stale_changes`).
    * A lazy load that has to begin a transaction ends it at once (a short read), so an
      idle Session never keeps a pooled connection.
    * An empty pool is :class:`~app.errors.PoolExhaustedError`.

    Args:
        in_unit: True when the calling thread (and task) is inside a unit.
        take_turn: waits for the write turn (raises at the deadline).
        release_turn: gives it back.
        pool_exhausted: the error for an empty pool.
    """

    def __init__(
        self,
        *,
        in_unit: Callable[[], bool],
        take_turn: Callable[[], None],
        release_turn: Callable[[], None],
        pool_exhausted: Callable[[], Exception],
    ) -> None:
        self._in_unit = in_unit
        self._take_turn = take_turn
        self._release_turn = release_turn
        self._pool_exhausted = pool_exhausted

    def sessionmaker(self, engine: Engine) -> sessionmaker[Session]:
        """The Database's Session factory: Sessions guarded by this object."""
        # A write unit binds the thread's Session to the open write transaction's
        # connection, where it opens a SAVEPOINT; a read unit binds it to the engine.
        return sessionmaker(
            engine,
            class_=GuardedSession,
            expire_on_commit=False,
            join_transaction_mode="create_savepoint",
            info={_GUARD: self},
        )

    def before_unit(self, session: Session) -> None:
        """Before a unit: end a transaction the Session began outside any unit (it only
        read), and expire its objects, so the unit reads every row afresh."""
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

    def before_flush(self, session: Session) -> None:
        if session.info.get(READ_UNIT):
            raise errors.ReadOnlyUnitError(
                "objects were added, changed or deleted inside a read unit; "
                "use Database.unit_of_work() or Database.run() for writes"
            )
        if (session.new or session.dirty or session.deleted) and not self._in_unit():
            self._writes(session)
            _refuse_stale_changes(session)

    def on_execute(self, state: ORMExecuteState) -> Any:
        session = state.session
        if self._in_unit() or session.info.get(READ_UNIT):
            return None
        if state.is_insert or state.is_update or state.is_delete or _is_write(state.statement):
            self._writes(session)
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

    def _writes(self, session: Session) -> None:
        """The Session writes outside a unit: it takes the process's write turn first
        (writers of the process queue instead of meeting "database is locked") and keeps
        it until its transaction ends. Its reads came before, in its own snapshot: if
        another writer committed since, the write fails with ConflictError on both
        backends (never a silent lost update)."""
        if not session.info.get(_WROTE):
            self._take_turn()
            session.info[_WROTE] = True

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None and session.info.pop(_WROTE, False):
            self._release_turn()


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


def _is_write(statement: Any) -> bool:
    """A textual statement that may change the database (INSERT, UPDATE, DDL, ...)."""
    return isinstance(statement, TextClause) and statement_kind(statement.text) == "write"
