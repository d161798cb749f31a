"""Units of work: what one may do, who opened it, and its SAVEPOINT; and what the classes
that run units for ``Database`` use of it (:class:`UnitHost`).

A unit is the body of ``Database.unit_of_work()``, ``read()`` or ``run()`` (or one of the
layer's own reads and writes). Its state lives in a :class:`Unit` object rather than in
thread-local flags, because a unit may end on another thread than it began on (a generator
resumed elsewhere), and because asyncio tasks share a thread.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, scoped_session

from . import errors
from ._driver import UnitKind, raw_execute
from ._shared_transaction import CommitWaiter, SharedTransaction

if TYPE_CHECKING:
    from ._replicas import ReplicaSet
    from ._sessions import SessionGuard
    from ._stats import Counters
    from ._wal_bound import WalBound
    from ._write_side import WriteSide
    from .settings import Settings

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
        # ``_legacy_conn``). Weak, since what it belongs to holds the unit.
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


class UnitHost:
    """What the unit classes of ``Database`` (``_read_units``, ``_write_units``) use of the
    Database that inherits them, declared here so that each of them type-checks on its own;
    ``Database`` sets and defines every one."""

    settings: Settings
    url: str
    engine: Engine
    session: scoped_session[Session]
    _exclusive: bool  # one connection: units take turns on it, reads included
    _local: ThreadUnit
    _side: WriteSide
    _wal: WalBound
    _counters: Counters
    _sessions: SessionGuard
    _replicas: ReplicaSet | None

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...
        def _unit(self) -> Unit | None: ...
        def in_write_unit(self) -> bool: ...
        def _enter(self, unit: Unit) -> None: ...
        def _leave(self, unit: Unit) -> None: ...
        def _connect(self) -> Connection: ...
        def _pool_exhausted(self) -> errors.PoolExhaustedError: ...
        def exclusive_turn(self, deadline: float | None = None) -> AbstractContextManager[None]: ...
