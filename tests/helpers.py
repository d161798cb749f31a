"""Helpers that tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import text

from app import BlockStore, Database


def run_threads(
    count: int, target: Callable[[int], None], *, timeout: float = 60.0
) -> list[BaseException]:
    """Run ``target(i)`` in ``count`` threads started together.

    Returns:
        The exceptions the threads raised (the test asserts on them).

    Raises:
        AssertionError: a thread was still running after ``timeout`` seconds (a hang).
    """
    failures: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def body(number: int) -> None:
        try:
            barrier.wait(timeout)
            target(number)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported by the test
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    assert not hung, f"{hung} of {count} threads still running after {timeout}s"
    return failures


def assert_chain_intact(db: Database, expected: int) -> None:
    """The chain has exactly ``expected`` blocks, 0..expected-1, each linked to the one before
    and with the hash the legacy formula gives."""
    with db.read() as session:
        rows = session.execute(
            text("SELECT block_index, hash, prev_hash FROM blocks ORDER BY block_index")
        ).all()
    assert [row[0] for row in rows] == list(range(expected))
    assert all(rows[i][2] == rows[i - 1][1] for i in range(1, len(rows)))
    if rows:
        assert rows[0][2] == ""
    assert BlockStore(db).verify_chain().ok


def counter_value(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(text("SELECT value FROM counter WHERE id = 1")).scalar_one())


def wait_for_queue(db: Database, count: int, timeout: float = 30.0) -> None:
    """Wait until ``count`` writers of ``db`` queue for the write turn."""
    deadline = time.monotonic() + timeout
    while db.stats().writers_queued < count:
        assert time.monotonic() < deadline, f"{count} writers never queued"
        time.sleep(0.001)
