"""Handing outcomes from other threads to an event loop, in bursts and in slices.

The thread that commits a batch of appends finishes the requests of many tasks at once.
``loop.call_soon_threadsafe`` per request would wake the loop (a write to its self-pipe)
once per request; instead the outcomes go into the loop's inbox, and only the first one of
a burst schedules the loop's visit. On the loop, the inbox hands out a slice at a time and
schedules itself again for the rest, so a batch of hundreds of outcomes never holds the
loop for long: timers and other tasks run between slices.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from app import _process

log = logging.getLogger(__name__)

#: Outcomes handed out per visit of the loop: each wakes a task, whose next step runs in the
#: loop's following iteration, so this bounds how much work one iteration gets from us.
SLICE = 8


class LoopInbox:
    """Calls that other threads ask one event loop to make, run on the loop's thread.

    Args:
        loop: the loop whose thread makes the calls.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the registry below is keyed weakly by the loop, which must be free to go.
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._pending: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._scheduled = False  # a visit of the loop is due (guarded by _lock)

    def post(self, call: Callable[[Any], None], argument: Any) -> None:
        """Have the loop's thread run ``call(argument)`` soon. Safe from any thread; never
        raises (a closed loop has nobody left to tell: the call is dropped, logged at
        DEBUG)."""
        self.post_many(((call, argument),))

    def post_many(self, calls: Iterable[tuple[Callable[[Any], None], Any]]) -> None:
        """:meth:`post` for several ``(call, argument)``, run in this order."""
        with self._lock:
            self._pending.extend(calls)
            if self._scheduled and not self._closed():
                return
            self._scheduled = True
        loop = self._loop()
        try:
            if loop is None or loop.is_closed():
                # Also drops what a visit scheduled just before the loop closed never took.
                raise RuntimeError("the event loop is closed")
            loop.call_soon_threadsafe(self._visit)
        except RuntimeError:  # the loop is closed
            with self._lock:
                dropped = len(self._pending)
                self._pending.clear()
                self._scheduled = False
            log.debug("event loop closed: %d outcomes nobody waits for were dropped", dropped)

    def _closed(self) -> bool:
        loop = self._loop()
        return loop is None or loop.is_closed()

    def _visit(self) -> None:
        """On the loop: run one slice of the pending calls; come back for the rest."""
        with self._lock:
            count = min(SLICE, len(self._pending))
            calls = [self._pending.popleft() for _ in range(count)]
            more = bool(self._pending)
            self._scheduled = more
        loop = self._loop()
        if more and loop is not None:
            # Scheduled before the calls run, so an error in one cannot strand the rest.
            loop.call_soon(self._visit)
        for call, argument in calls:
            try:
                call(argument)
            except Exception:
                log.exception("handing an outcome to its task failed")


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopInbox] = (
    weakref.WeakKeyDictionary()
)
_INBOXES_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    """In a forked child: no inbox of the parent's loops (their threads are gone), and a
    lock of its own (a parent's thread may have held it)."""
    global _INBOXES, _INBOXES_LOCK
    _INBOXES, _INBOXES_LOCK = weakref.WeakKeyDictionary(), threading.Lock()


_process.on_fork("asyncio inboxes", after_in_child=_forget_after_fork)


def inbox_for(loop: asyncio.AbstractEventLoop) -> LoopInbox:
    """The inbox of ``loop`` (made on first use, gone with the loop)."""
    inbox = _INBOXES.get(loop)
    if inbox is None:
        with _INBOXES_LOCK:
            inbox = _INBOXES.get(loop)
            if inbox is None:
                inbox = _INBOXES[loop] = LoopInbox(loop)
    return inbox
