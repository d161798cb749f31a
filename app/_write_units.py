"""The write units of :class:`~app.database.Database`: the outermost unit takes this
process's write turn, joins or begins the shared transaction and hands both on; a nested one
is a SAVEPOINT. Also the write unit run again while busy (``run_on_connection``), the write
turn alone (``exclusive_turn``) and the turn that the thread's Session takes when it writes
outside units.

``Database`` inherits :class:`WriteUnits`; its methods are ``Database``'s (their ``self``
is the Database), kept here so that ``database.py`` stays the object's lifetime and
surface. How writers take turns and share a transaction is ``_write_side`` and
``_shared_transaction``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from . import errors
from ._driver import BUSY_OPTION, UNIT_OPTION, UnitKind
from ._shared_transaction import SharedTransaction, WriteOutcome
from ._units import Unit, UnitHost, refuse_unpatched_greenlet, savepoint
from ._write_side import WriteSide

__all__ = ["WriteUnits"]

# Messages keep the logger of the Database they are about.
log = logging.getLogger("app.database")

R = TypeVar("R")


class WriteUnits(UnitHost):
    """Database's write units and write turn (see the module notes)."""

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
        self.check_writable()
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
        if self._local.unit is unit:
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

    def check_writable(self) -> None:
        """Refuse a write to a database opened read-only, before anything starts.

        Raises:
            ReadOnlyDatabaseError: ``read_only`` (or ``immutable``) is set.
        """
        if self.settings.read_only:
            raise errors.ReadOnlyDatabaseError(
                f"{self.url} was opened read-only (read_only=True, ?mode=ro or immutable): "
                "writes are refused and nothing was written; open it without read_only to "
                "write to it"
            )

    def check_may_wait_for_turn(self) -> None:
        """Refuse, up front, to wait for the write turn in a thread that holds it.

        Raises:
            TransactionStateError: this thread is inside a write unit of another Database
                object on the same database (waiting would wait for itself).
            ConfigurationError: called from a gevent greenlet without thread patching.
        """
        refuse_unpatched_greenlet()
        if self._side.turn.held_by_me():
            raise errors.TransactionStateError(
                f"this thread is inside a write unit of another Database object on {self.url}; "
                "a second one would wait for the first: use the same Database object (or "
                "finish the first unit)"
            )

    def _take_turn_for_session(self) -> None:
        """The thread's Session writes outside a unit (see ``_sessions``)."""
        self.check_writable()
        self.check_may_wait_for_turn()
        deadline = time.monotonic() + self.settings.retry_deadline
        self._record_wait(self._side.take_turn(deadline, None, self.url))

    def _count_units(self, committed: bool, units: int) -> None:
        self._counters.add("committed" if committed else "rolled_back", units)

    def _record_wait(self, waited: float) -> None:
        self._counters.record_wait(waited)
        if waited > self.settings.slow_wait_threshold:
            log.warning("writer waited %.3fs for its turn on %s", waited, self.url)

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
