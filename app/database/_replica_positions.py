"""WAL positions of PostgreSQL: ``pg_lsn`` values, the position of this process's last
commit on each primary, and how far the primary has written and a replica has replayed."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.engine import Connection

from app import _process
from app.engine._driver import raw_execute

#: A position no replica reaches: reads go to the primary (the last commit's is unknown).
UNKNOWN = 1 << 64


def parse_lsn(text: Any) -> int | None:
    """A ``pg_lsn`` (``'16/B374D848'``) as a number, or None for NULL."""
    if text is None:
        return None
    high, _, low = str(text).partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class CommitPositions:
    """The position of the last commit each primary (by URL) made for this process.

    Process-wide rather than per Database object: code written for the old class opens a
    manager per request or per thread, and a read of one must see a commit of another.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._positions: dict[str, int] = {}

    def get(self, key: str) -> int:
        return self._positions.get(key, 0)

    def note(self, key: str, position: int) -> None:
        with self._lock:
            known = self._positions.get(key, 0)
            if position > known or known == UNKNOWN:
                self._positions[key] = position

    def lost(self, key: str) -> None:
        """A commit's position could not be read: send reads to the primary until the next
        commit's position is known."""
        with self._lock:
            self._positions[key] = UNKNOWN


POSITIONS = CommitPositions()


def _new_lock_after_fork() -> None:
    """In a forked child: the positions stay (its reads go to the same primary and must see
    the parent's commits), under a lock of its own (a parent's thread may have held it)."""
    POSITIONS._lock = threading.Lock()


_process.on_fork("replica positions", after_in_child=_new_lock_after_fork)


def primary_position(connection: Connection) -> int:
    # Straight to the driver, outside any transaction (the connection is in autocommit
    # between transactions): no BEGIN, no write lock.
    position = parse_lsn(raw_execute(connection, "SELECT pg_current_wal_lsn()").fetchone()[0])
    assert position is not None
    return position


def replay_position(connection: Connection) -> int | None:
    """How far the server has replayed the primary's WAL, or None when it is not in
    recovery. pg_last_wal_replay_lsn() alone is not enough: a primary that was itself
    started by crash recovery keeps returning where that recovery ended."""
    in_recovery, replayed = raw_execute(
        connection, "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()"
    ).fetchone()
    return parse_lsn(replayed) if in_recovery else None
