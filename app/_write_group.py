"""Write groups: successive write units of one process sharing one transaction and one commit.

SQLite lets one writer in at a time, so a process's writers already line up (see
``_fairlock``). Committing each unit on its own pays for a BEGIN, a COMMIT and the WAL writes
of every unit. Instead, a unit that ends while others wait leaves the transaction open and
hands it to the next in line; each unit runs in its own SAVEPOINT, so a unit that fails rolls
back alone. The last unit of the group (nobody waiting, or the group is full) commits, and
every unit of the group returns only then: a unit that returned has been committed.

If the database aborts the whole transaction (SQLite does so on some I/O and disk-full
errors), or the commit fails, every unit of the group fails with that error, exactly as if
each had met it on its own.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.engine import Connection


class Waiter:
    """A unit whose work is in the group's transaction, waiting for the commit."""

    __slots__ = ("error", "gate")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.gate = threading.Lock()
        self.gate.acquire()

    def wait(self) -> BaseException | None:
        """Block until the group ends; returns its error, or None once committed."""
        interrupted: BaseException | None = None
        while True:
            try:
                self.gate.acquire()
                break
            except BaseException as exc:  # noqa: BLE001
                # The unit's work is already in the group's hands: learn its fate first,
                # then deliver the interruption.
                interrupted = exc
        if interrupted is not None:
            raise interrupted
        return self.error


class WriteGroup:
    """The open write transaction of one process, passed from unit to unit."""

    __slots__ = ("aborted_by", "connection", "spoiled", "units", "waiters")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.units = 0  # units whose work is in the transaction
        self.spoiled = False  # a unit without a SAVEPOINT failed: only a rollback is left
        self.waiters: list[Waiter] = []
        # The failure of the unit under which the database aborted the transaction.
        self.aborted_by: BaseException | None = None

    def transaction_alive(self) -> bool:
        """False when the database aborted the transaction behind our back."""
        raw: Any = self.connection.connection.dbapi_connection
        status = getattr(getattr(raw, "info", None), "transaction_status", None)
        if status is not None:  # psycopg: INTRANS is 2; INERROR (3) means aborted
            return int(status) == 2
        return bool(getattr(raw, "in_transaction", True))

    def finish(self, error: BaseException | None) -> None:
        """Wake every waiting unit with the group's outcome."""
        for waiter in self.waiters:
            waiter.error = error
            waiter.gate.release()
        self.waiters.clear()
