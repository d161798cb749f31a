"""Helpers for the asyncio tests: a bounded event loop run, polling without blocking the
loop, holding the write turn from another thread, and catching the ``app.aio`` DEBUG log.

Every wait here has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import text

from app import Database

from .helpers import JOIN_TIMEOUT, Background

T = TypeVar("T")


def run_async(main: Callable[[], Awaitable[T]], timeout: float = JOIN_TIMEOUT) -> T:
    """``asyncio.run(main())``, failing the test if it takes longer than ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


async def eventually(
    condition: Callable[[], object], what: str, timeout: float = JOIN_TIMEOUT
) -> None:
    """Poll ``condition()`` on the loop (other tasks run meanwhile) until it is true.

    Raises:
        AssertionError: naming ``what``, after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        await asyncio.sleep(0.002)


@contextmanager
def turn_held(db: Database) -> Iterator[threading.Event]:
    """Hold the write turn of ``db``'s database from another thread (a unit of another
    Database object on it) until the block ends or the returned event is set."""
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with Database(db.url) as other, other.unit_of_work() as session:
            session.execute(text("SELECT 1"))
            inside.set()
            assert leave.wait(JOIN_TIMEOUT), "the turn was never given back"

    with Background(hold, name="turn holder"):
        try:
            assert inside.wait(JOIN_TIMEOUT), "the holder never got the turn"
            yield leave
        finally:
            leave.set()


async def until_writers_queue(db: Database, count: int) -> None:
    """Wait (on the loop) until ``count`` writers of ``db`` queue for the write turn."""
    await eventually(lambda: db.stats().writers_queued >= count, f"{count} writers queued")


class LogRecords(logging.Handler):
    """Collects the messages of one logger (at DEBUG) while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._lock_messages = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_messages:
            self.messages.append(record.getMessage())

    def matching(self, part: str) -> list[str]:
        with self._lock_messages:
            return [message for message in self.messages if part in message]


@contextmanager
def debug_log(name: str = "app.aio") -> Iterator[LogRecords]:
    """The messages ``name`` logs at DEBUG and above while the block runs."""
    logger = logging.getLogger(name)
    handler = LogRecords()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
