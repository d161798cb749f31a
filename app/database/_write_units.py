"""The write units of one ``Database``: the outermost unit takes this process's write turn,
joins or begins the shared transaction and hands both on; a nested one is a SAVEPOINT. Also
the write unit run again while busy (``run_on_connection``), the write turn alone
(``exclusive_turn``) and the turn that the thread's Session takes when it writes outside
units.

:class:`WriteUnits` is built on the Database's unit core (``_units.UnitCore``) and uses
only its public names; the Database delegates its write methods to it, and hands its
``exclusive_turn`` to the read units and checkpoints. How writers take turns and share a
transaction is ``_write_side`` and ``_shared_transaction``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app import errors
from app._telemetry import UnitRecord
from app.database._units import Unit, UnitCore, refuse_unpatched_greenlet, savepoint
from app.engine._driver import BUSY_OPTION, UNIT_OPTION, UnitKind
from app.writers._shared_transaction import SharedTransaction, WriteOutcome
from app.writers._write_side import WriteSide

__all__ = ["WriteUnits"]

# Messages keep the logger of the Database they are about.
log = logging.getLogger("app.database")

P = ParamSpec("P")
R = TypeVar("R")


class _SessionTurn(threading.local):
    taken: float | None = None


class WriteUnits:
    """The write units and the write turn of the Database whose unit core is ``core``.

    The public methods are documented on ``Database``, which delegates to them. The write
    side hands a transaction left open only to later units of the same Database: the core
    stands for the Database there (as ``joins`` and ``owner``).
    """

    def __init__(self, core: UnitCore) -> None:
        self.core = core
        # Bound once: every unit calls them.
        self._check_open = core.check_open
        self._unit = core.unit
        self._enter = core.enter
        self._leave = core.leave
        # With telemetry: when this thread's Session took the turn outside units.
        self._session_turn = _SessionTurn()
        # The engine whose connections serve write units: the Database's, with the unit's
        # option set once (it shares the engine's pool and hooks), instead of a copy of the
        # options made on each unit's connection.
        self._write_engine = core.engine.execution_options(**{UNIT_OPTION: UnitKind.WRITE.value})

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """``Database.unit_of_work``: the write unit, with the thread's Session."""
        session = self.core.session()
        with self.write_scope(None):
            yield session

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """``Database.writing``: the write unit's connection."""
        with self.write_scope(None) as connection:
            yield connection

    def run(
        self, fn: Callable[Concatenate[Session, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``Database.run``: ``fn(session, ...)`` in a write unit run again while busy."""
        session = self.core.session()
        return self.run_on_connection(lambda _connection: fn(session, *args, **kwargs))

    @contextmanager
    def write_scope(
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
        core = self.core
        self._check_open()
        self.check_writable()
        unit = self._unit()
        session = core.session()
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
        core.sessions.before_unit(session)
        self.check_may_wait_for_turn()
        if deadline is None:
            deadline = time.monotonic() + core.settings.retry_deadline
        telemetry = core.telemetry
        if telemetry is None:
            yield from self._outermost(session, deadline, outcome, None)
        else:
            record = telemetry.unit(UnitKind.WRITE.value)
            yield from record.around(self._outermost(session, deadline, outcome, record))

    def _outermost(
        self,
        session: Session,
        deadline: float,
        outcome: WriteOutcome | None,
        record: UnitRecord | None,
    ) -> Iterator[Connection]:
        """The outermost write unit (see :meth:`write_scope`); ``record`` is told its turn
        and statements when telemetry is on."""
        core = self.core
        side = core.side
        unit = Unit(UnitKind.WRITE)
        failure: BaseException | None = None
        result: BaseException | None = None
        self._enter(unit)
        try:
            waited = side.take_turn(deadline, core, core.url)
            if record is not None:
                record.turn_taken(waited)
            self._record_wait(waited)
            self._check_open()  # disposed while this unit waited
            shared = side.shared or self._begin(side, deadline)
            if outcome is not None:
                outcome.unit, outcome.transaction = unit, shared
            unit.connection = shared.connection
            session.bind = shared.connection
            core.local.unit = unit
            if record is not None:
                record.count_statements(shared.connection)
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
                    core.counters.add("rolled_back")
            if record is not None:
                record.statements_done()
                record.body_failed = failure is not None
            self._close_unit(unit, session)
            limit = core.settings.max_units_per_commit
            result = side.end_unit(core, shared, unit, failure, limit)
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
                if record is not None:
                    record.turn_released()
                if unit.waiter is not None:
                    deadline = time.monotonic() + core.settings.retry_deadline
                    result = unit.waiter.wait(deadline, core.url, side.holder)
        error = failure if failure is not None else result
        if error is not None:
            if isinstance(error, errors.UnitAbortedError | errors.ConflictError):
                core.counters.add("conflicts")
            raise error

    def run_on_connection(
        self, body: Callable[[Connection], R], outcome: WriteOutcome | None = None
    ) -> R:
        """``Database.run_on_connection``: ``body(connection)`` in a write unit, run again
        while busy (see there)."""
        unit = self._unit()
        if unit is not None and unit.kind is UnitKind.WRITE:
            with self.write_scope(None) as connection:
                return body(connection)
        core = self.core
        started = time.monotonic()
        deadline = started + core.settings.retry_deadline
        attempt = 0
        while True:
            try:
                with self.write_scope(deadline, outcome) as connection:
                    return body(connection)
            except errors.UnitAbortedError as exc:
                # Another unit's failure ended the transaction this one shared; nothing of
                # it was written, and nothing about it was at fault: run it again at once.
                if time.monotonic() >= deadline:
                    raise
                attempt += 1
                core.counters.add("retries")
                log.info("%s: unit run again after another unit aborted: %s", core.url, exc)
            except errors.DatabaseBusyError as exc:
                now = time.monotonic()
                if now >= deadline - 0.001:
                    waited = now - started
                    raise errors.DatabaseBusyError(
                        f"{core.url} stayed busy: gave up after {waited:.2f}s and "
                        f"{attempt + 1} attempts (retry_deadline is "
                        f"{core.settings.retry_deadline}s); the last one: {exc}",
                        database=core.url,
                        waited=waited,
                    ) from exc
                attempt += 1
                core.counters.add("retries")
                pause = min(deadline - now, random.uniform(0, min(0.5, 0.005 * 2**attempt)))
                log.info("%s busy, retry %d in %.3fs: %s", core.url, attempt, pause, exc)
                time.sleep(pause)

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
        local = self.core.local
        if local.unit is unit:
            local.unit = None
        session.bind = self.core.engine

    def _begin(self, side: WriteSide, deadline: float) -> SharedTransaction:
        core = self.core
        remaining = deadline - time.monotonic()
        if remaining < core.settings.busy_timeout:
            # Wait for another process's write lock no longer than the deadline allows.
            busy = {BUSY_OPTION: max(1, int(remaining * 1000))}
            connection = core.connect(self._write_engine).execution_options(**busy)
        else:
            connection = core.connect(self._write_engine)
        after_commit = core.wal.after_commit if core.replicas is None else self._after_commit
        return side.begin(connection, core, after_commit, self._count_units)

    def _after_commit(self, connection: Connection) -> None:
        """After a commit on a primary with replicas: remember its log position (reads
        then go to replicas that have replayed it). Never raises."""
        core = self.core
        core.wal.after_commit(connection)
        if core.replicas is not None:
            core.replicas.note_commit(connection)

    def release_session_turn(self) -> None:
        """The thread's Session ended a transaction in which it wrote (see ``_sessions``)."""
        core = self.core
        core.side.release_if_held()
        if core.replicas is not None:
            core.replicas.note_commit(None)
        if core.telemetry is not None:
            taken, self._session_turn.taken = self._session_turn.taken, None
            if taken is not None:
                core.telemetry.helds.add(time.monotonic() - taken)

    def check_writable(self) -> None:
        """``Database.check_writable``: ReadOnlyDatabaseError when opened read-only."""
        if self.core.settings.read_only:
            raise errors.ReadOnlyDatabaseError(
                f"{self.core.url} was opened read-only (read_only=True, ?mode=ro or "
                "immutable): writes are refused and nothing was written; open it without "
                "read_only to write to it"
            )

    def check_may_wait_for_turn(self) -> None:
        """``Database.check_may_wait_for_turn``: TransactionStateError when this thread
        holds the write turn already (see there)."""
        refuse_unpatched_greenlet()
        core = self.core
        if core.side.turn.held_by_me():
            raise errors.TransactionStateError(
                f"this thread is inside a write unit of another Database object on {core.url}; "
                "a second one would wait for the first: use the same Database object (or "
                "finish the first unit)"
            )

    def take_turn_for_session(self) -> None:
        """The thread's Session writes outside a unit (see ``_sessions``)."""
        core = self.core
        self.check_writable()
        self.check_may_wait_for_turn()
        deadline = time.monotonic() + core.settings.retry_deadline
        waited = core.side.take_turn(deadline, None, core.url)
        self._record_wait(waited)
        if core.telemetry is not None:
            core.telemetry.turn(waited, None)  # held: recorded by release_session_turn
            self._session_turn.taken = time.monotonic()

    def _count_units(self, committed: bool, units: int) -> None:
        core = self.core
        core.counters.add("committed" if committed else "rolled_back", units)
        if committed and core.telemetry is not None:
            core.telemetry.shared_commit(units)

    def _record_wait(self, waited: float) -> None:
        """Count a turn taken after ``waited`` seconds (telemetry records it apart, outside
        the turn, see :class:`~app._telemetry.UnitRecord`)."""
        core = self.core
        core.counters.record_wait(waited)
        if waited > core.settings.slow_wait_threshold:
            log.warning("writer waited %.3fs for its turn on %s", waited, core.url)

    @contextmanager
    def exclusive_turn(self, deadline: float | None = None) -> Iterator[None]:
        """``Database.exclusive_turn``: this database's write turn alone (see there)."""
        core = self.core
        side = core.side
        self.check_may_wait_for_turn()
        if deadline is None:
            deadline = time.monotonic() + core.settings.retry_deadline
        waited: float | None = None
        taken: float | None = None
        try:
            waited = side.take_turn(deadline, None, core.url)
            taken = time.monotonic()
            self._record_wait(waited)
            yield
        finally:
            try:
                side.release_if_held()
            except BaseException:
                side.release_if_held()
                raise
            if core.telemetry is not None and waited is not None and taken is not None:
                core.telemetry.turn(waited, time.monotonic() - taken)
