"""Awaiting a chain append without a thread: the asyncio side of the append batcher.

The task queues its prepared blocks with ``AppendBatcher.enqueue`` and awaits a future. The
thread that writes the batch (the batcher's helper, or a sync caller leading) finishes the
request and posts it to the task's loop (``aio._inbox``), where the future is resolved; no
thread waits for the task meanwhile.

The rule when the caller stops waiting (its task is cancelled, ``asyncio.timeout()``
expires, or its deadline passes), decided under the batcher's lock by
``AppendBatcher.withdraw``:

* still queued: the append is withdrawn and never written;
* already taken into a batch: it is written (or fails) as if the caller still waited, and
  the outcome is logged at DEBUG on the ``app.aio`` logger.

Deadlines are the sync API's: queued past ``retry_deadline`` is ``DatabaseBusyError`` (not
written); taken but not finished ``retry_deadline`` later is ``CommitTimeoutError`` (the
outcome is not known yet, and is logged when it is).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from app import errors
from app.aio._inbox import inbox_for
from app.blocks._append_batcher import AppendBatcher, AppendRequest

log = logging.getLogger("app.aio")

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Waiting(Generic[Item, Result]):
    """One task's append: its future, its second deadline's timer and what it asked for."""

    __slots__ = (
        "__weakref__",
        "batcher",
        "database",
        "deadline",
        "describe",
        "future",
        "request",
        "started",
        "timer",
    )

    def __init__(
        self,
        batcher: AppendBatcher[Item, Result],
        future: asyncio.Future[list[Result]],
        deadline: float,
        database: str,
        describe: Callable[[list[Result]], str],
    ) -> None:
        self.batcher = batcher
        self.future = future
        self.deadline = deadline
        self.database = database
        self.describe = describe
        self.started = time.monotonic()
        self.request: AppendRequest[Item, Result] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def finish(self, request: AppendRequest[Item, Result]) -> None:
        """On the loop: the batch holding this append was settled."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        future = self.future
        if future.done():  # the caller stopped waiting after the append was taken
            _log_outcome(request, self.describe)
        elif request.error is not None:
            future.set_exception(request.error)
        else:
            future.set_result(request.results)

    def expire(self) -> None:
        """On the loop, ``deadline`` seconds after queueing: withdraw the append if it is
        still queued, else give it one more deadline to be written."""
        request = self.request
        if self.future.done() or request is None:
            return
        waited = time.monotonic() - self.started
        if self.batcher.withdraw(request):
            self.future.set_exception(
                errors.DatabaseBusyError(
                    f"an append to {self.database} waited {waited:.2f}s in the queue without "
                    "being written (retry_deadline): the writers ahead of it kept the database "
                    "busy; it was not written",
                    database=self.database,
                    waited=waited,
                )
            )
            return
        loop = self.future.get_loop()
        self.timer = loop.call_later(self.deadline, self.give_up)

    def give_up(self) -> None:
        """On the loop: the append has been being written for a whole deadline."""
        if self.future.done():
            return
        waited = time.monotonic() - self.started
        self.future.set_exception(
            errors.CommitTimeoutError(
                f"an append to {self.database} has been being written for {waited:.2f}s; "
                "it may still be committed (the outcome is logged at DEBUG on app.aio): "
                "check the chain before appending it again",
                database=self.database,
                waited=waited,
            )
        )


class _Deadlines:
    """The first deadlines of the appends a loop awaits, for one deadline length, behind one
    timer: they fall due in the order the appends were queued, so a queue does what a timer
    per append (an entry each in the loop's heap) would. Used on the loop's thread only.

    Nothing here refers to the loop (the registry below is keyed weakly by it): appends are
    held weakly (an append whose task is gone has nothing left to expire, and its future
    refers to the loop), and the timer is not kept, only whether one is due.
    """

    __slots__ = ("entries", "scheduled", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.entries: deque[tuple[float, weakref.ref[_Waiting[Any, Any]]]] = deque()
        self.scheduled = False

    def add(self, loop: asyncio.AbstractEventLoop, waiting: _Waiting[Any, Any]) -> None:
        entries = self.entries
        # Appends are mostly done in the order they came: drop the done ones at the front.
        while entries and _over(entries[0][1]()):
            entries.popleft()
        due = loop.time() + self.seconds
        entries.append((due, weakref.ref(waiting)))
        if not self.scheduled:
            self.scheduled = True
            loop.call_at(due, self.check)

    def check(self) -> None:
        loop = asyncio.get_running_loop()
        self.scheduled = False
        now = loop.time()
        entries = self.entries
        while entries:
            due, held = entries[0]
            waiting = held()
            if not _over(waiting):
                if due > now:
                    break
                assert waiting is not None
                waiting.expire()
            entries.popleft()
        if entries:
            self.scheduled = True
            loop.call_at(entries[0][0], self.check)


def _over(waiting: _Waiting[Any, Any] | None) -> bool:
    return waiting is None or waiting.future.done()


class _LoopAppends:
    """What the appends awaited on one event loop share: the inbox their outcomes are
    handed to, and their deadline queues (one per deadline length)."""

    __slots__ = ("deadlines", "inbox")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.inbox = inbox_for(loop)
        self.deadlines: dict[float, _Deadlines] = {}

    def deadline_queue(self, seconds: float) -> _Deadlines:
        found = self.deadlines.get(seconds)
        if found is None:
            found = self.deadlines[seconds] = _Deadlines(seconds)
        return found

    def tell(self, requests: list[AppendRequest[Any, Any]]) -> None:
        """From the thread that wrote their batch: hand the finished appends of this loop
        to it in one go (each request's tag is its ``_Waiting``)."""
        calls = []
        for request in requests:
            calls.append((request.tag.finish, request))
            # The tag and the append refer to each other: dropping this link leaves the
            # garbage collector no cycle to find once the append is done.
            request.tag = None
        self.inbox.post_many(calls)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopAppends] = (
    weakref.WeakKeyDictionary()
)


def _loop_appends(loop: asyncio.AbstractEventLoop) -> _LoopAppends:
    """On the loop's thread: what the appends awaited on ``loop`` share."""
    found = _LOOPS.get(loop)
    if found is None:
        found = _LOOPS[loop] = _LoopAppends(loop)
    return found


async def append_without_thread(
    batcher: AppendBatcher[Item, Result],
    items: Sequence[Item],
    *,
    deadline: float,
    database: str,
    describe: Callable[[list[Result]], str],
) -> list[Result]:
    """Queue ``items`` in ``batcher`` and await their results (see the module docstring).

    Args:
        deadline: the database's ``retry_deadline``.
        database: its URL, for messages.
        describe: the results in a few words, for the DEBUG log.

    Raises:
        DatabaseBusyError: still queued after ``deadline`` seconds (not written).
        CommitTimeoutError: taken into a batch, but not finished ``deadline`` seconds later.
        asyncio.CancelledError: the task was cancelled (written or not by the rule above).
        AppError: whatever the write of its batch raised.
    """
    loop = asyncio.get_running_loop()
    shared = _loop_appends(loop)
    future: asyncio.Future[list[Result]] = loop.create_future()
    waiting = _Waiting(batcher, future, deadline, database, describe)
    waiting.request = request = batcher.enqueue(items, shared.tell, waiting)
    shared.deadline_queue(deadline).add(loop, waiting)
    try:
        return await waiting.future
    except asyncio.CancelledError:
        if waiting.timer is not None:
            waiting.timer.cancel()
        if batcher.withdraw(request):
            log.debug("append to %s withdrawn before it was written: its caller stopped", database)
        elif request.done and waiting.future.done() and not waiting.future.cancelled():
            # Finished just before the cancellation reached the task: finish() has run.
            _log_outcome(request, describe)
        raise


def _log_outcome(request: AppendRequest[Any, Any], describe: Callable[[Any], str]) -> None:
    """The outcome of an append whose caller stopped waiting once it was in a batch."""
    if request.error is not None:
        log.debug(
            "append whose caller stopped waiting after it was taken into a batch failed "
            "(nothing of it was written): %r",
            request.error,
        )
    else:
        log.debug(
            "append whose caller stopped waiting after it was taken into a batch was committed: %s",
            describe(request.results),
        )
