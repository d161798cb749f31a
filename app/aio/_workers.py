"""A bounded pool of worker threads for the sync calls of async callers.

Reads and units of work are sync code that holds a connection and may wait for the write
turn; on the event loop's thread they would stop every task (and units are per thread and
task, so two tasks would collide). They run here instead, on at most ``count`` threads
whatever the number of tasks; a task waits for its call without a thread of its own (the
worker resolves the task's future on its loop).

The rule when the caller stops waiting (cancelled, or ``asyncio.timeout()``): a call that
has not started yet never runs; one that has started runs to its end (a unit commits or
rolls back as usual) and its outcome is logged at DEBUG on the ``app.aio`` logger.

Deadline: a call still waiting for a worker ``retry_deadline`` seconds after it was made
fails with ``DatabaseBusyError`` without running; once started, it has the sync API's own
deadlines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

from app import errors
from app.aio._inbox import LoopInbox, inbox_for

log = logging.getLogger("app.aio")

P = ParamSpec("P")
R = TypeVar("R")


class Workers:
    """Up to ``count`` threads that run sync calls for async callers.

    Args:
        count: most threads (started as needed).
        deadline: seconds a call may wait for a worker (``retry_deadline``).
        database: the URL, for messages and thread names.
    """

    def __init__(self, count: int, deadline: float, database: str) -> None:
        self.count = count
        self._deadline = deadline
        self._database = database
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=count, thread_name_prefix="app.aio worker"
        )
        self._closed = False
        self._lock = threading.Lock()

    async def call(self, what: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` in a worker thread, with the caller's context variables.

        Args:
            what: the call in a few words, for the DEBUG log of an abandoned call.

        Raises:
            ClosedError: the pool was closed.
            DatabaseBusyError: no worker was free within the deadline (``fn`` did not run).
            asyncio.CancelledError: the task was cancelled (``fn`` ran or not by the rule in
                the module docstring).
        """
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future: asyncio.Future[R] = loop.create_future()
        queued = time.monotonic()
        work = functools.partial(context.run, fn, *args, **kwargs)
        with self._lock:
            if self._closed:
                raise errors.ClosedError(
                    f"the async workers of {self._database} were closed; open a new AsyncDatabase"
                )
            job = self._pool.submit(self._start, queued, work)
        call = _Call(what, job, future)
        # The outcome reaches the loop through its inbox (see aio._inbox), from the worker.
        job.add_done_callback(functools.partial(_post, inbox_for(loop), call))
        timer = loop.call_later(self._deadline, self._expire, call, queued)
        try:
            return await future
        except asyncio.CancelledError:
            if job.cancel():
                log.debug("%s on %s cancelled before it started: not run", what, self._database)
            else:  # running or done: it runs to its end, and finish() logs how it ended
                call.abandoned = True
                if job.done() and future.done() and not future.cancelled():
                    _log_outcome(call)  # finished just before the cancellation arrived
            raise
        finally:
            timer.cancel()

    def _expire(self, call: _Call[Any], queued: float) -> None:
        """On the loop, at the deadline: a call no worker has started yet is dropped."""
        if call.job.cancel() and not call.future.done():
            waited = time.monotonic() - queued
            call.future.set_exception(self._busy(waited))

    def _busy(self, waited: float) -> errors.DatabaseBusyError:
        return errors.DatabaseBusyError(
            f"a call to {self._database} waited {waited:.2f}s for a free async worker "
            f"(all {self.count} were busy; retry_deadline): it was not run",
            database=self._database,
            waited=waited,
        )

    def _start(self, queued: float, work: Callable[[], R]) -> R:
        # The loop's timer may not have run yet (a busy loop): the deadline holds anyway.
        waited = time.monotonic() - queued
        if waited >= self._deadline:
            raise self._busy(waited)
        return work()

    def close(self) -> None:
        """Refuse new calls; calls already made still run, and the threads end after them."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False)


class _Call(Generic[R]):
    """One call: its job in the pool, the caller's future, and whether the caller left."""

    __slots__ = ("abandoned", "future", "job", "what")

    def __init__(
        self, what: str, job: concurrent.futures.Future[R], future: asyncio.Future[R]
    ) -> None:
        self.what = what
        self.job = job
        self.future = future
        self.abandoned = False

    def finish(self, _: object = None) -> None:
        """On the loop: the job ended (ran, failed, or was dropped before it started)."""
        job, future = self.job, self.future
        if job.cancelled():
            return  # dropped unstarted: the caller was told already
        if future.done():
            if self.abandoned:
                _log_outcome(self)
            return
        error = job.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(job.result())


def _post(inbox: LoopInbox, call: _Call[Any], _: concurrent.futures.Future[Any]) -> None:
    inbox.post(call.finish, None)


def _log_outcome(call: _Call[Any]) -> None:
    error = call.job.exception()
    if error is None:
        log.debug(
            "%s, whose caller stopped waiting, finished: %.200r", call.what, call.job.result()
        )
    else:
        log.debug("%s, whose caller stopped waiting, failed: %r", call.what, error)
