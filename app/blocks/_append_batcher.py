"""The append batcher: many threads' chain appends written in one transaction.

Handing a lock from thread to thread costs a context switch per append in CPython, and each
append would pay for its own BEGIN/COMMIT. Instead, callers put their append in a queue and
one of them (the *leader*, whoever finds the role free) writes everything queued in a single
write unit: the chain head is read once, hashes are chained in queue order, rows go in with
multi-row inserts, and every caller in the batch is woken once the commit returns. The
leader stops leading as soon as its own append is done and wakes the oldest waiter to take
over, so no caller works for others indefinitely.

A failed batch is retried one append at a time, so a database error fails only the append
that caused it. Appends from other processes take turns through the database's write lock.

No caller waits for ever. A caller sleeps in short slices, so a wake-up lost to a thread
that was interrupted (``KeyboardInterrupt``, ``SystemExit``) costs one slice; a caller whose
append is still queued at its deadline withdraws it (not written: ``DatabaseBusyError``); a
caller whose append is being written waits for that write's outcome, which the write unit's
own deadline bounds, and past a second deadline gives up with ``CommitTimeoutError``. A
leader interrupted while writing puts the appends it had not written back at the front of
the queue; an append whose commit happened is never written again (``WriteOutcome``).

Callers that must not block (asyncio tasks, see ``app.aio``) queue with
:meth:`AppendBatcher.enqueue` instead: nothing sleeps on their request, and whoever settles
its batch calls the request's callback once it is done (once per callback and batch).
Having no thread of their own, they cannot lead; a helper thread (one per batcher, started
when first needed, gone after a while without work) takes the leader's role whenever such a
request waits and nobody leads, and leads until the queue is empty. The helper keeps its
hold on the interpreter lock short, since those callers' event loops wait for it: it plans
the next batch before telling the last one's callers (see ``_lead_queue``), and leaves
building their results to them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from app import errors
from app.blocks._append_batches import BatchWriter
from app.blocks._append_requests import AppendRequest, Batch, Item, Notify, Request, Result
from app.writers._shared_transaction import WriteOutcome

__all__ = ["AppendBatcher", "AppendRequest", "Notify"]

# A sleeping caller looks at its append's state at least this often.
_SLICE = 0.25
# The helper thread that leads for callers without a thread ends after this long without work.
_HELPER_IDLE = 10.0
# Most appends in a batch the helper writes. Its callers' event loops need the interpreter
# while it works, and a batch holds it (between its statements) for a time that grows with
# its size; past a hundred or so appends the commit's cost is shared well enough already.
_HELPER_BATCH = 128
# The helper plans the next batch (see AppendBatcher's ``plan``) in parts of this many
# items, and lets go of the interpreter lock between two parts.
_PLAN_PART = 32

log = logging.getLogger(__name__)


class AppendBatcher(BatchWriter[Item, Result]):
    """Batches requests from many threads into write units.

    Args:
        write: ``write(items, outcome, planned, finished)`` writes a batch of items in a
            write unit (with busy retries) and returns one result per item, in order; it
            records the unit, and the results as the outcome's ``value``, in the given
            outcome. ``planned`` is what ``plan`` made for these items, or None.
            ``finished`` is true when a caller with a thread writes: the results are then
            made ready for their callers before they are woken, so that woken callers do
            not compete with the next batch's writer for the interpreter lock; the helper,
            whose callers' event loops wait for that lock, leaves it to them.
        max_batch: most items per transaction.
        deadline: seconds a caller waits for its append to be taken into a batch (the
            database's ``retry_deadline``).
        database: the URL, for messages.
        plan: ``plan(items, after)``: the results ``items`` would have if written right
            after the results ``after`` (None when it cannot tell). The helper thread calls
            it before it starts the unit that writes them, outside every lock, so that the
            work is done while nobody waits for the write lock; ``write`` must check that
            the plan still holds.
        appended: told how many items each commit wrote (telemetry), or None.
        holder: who holds the write turn now, named in the errors of a wait that ends
            (see :class:`~app.errors.LockHolder`), or None.
    """

    def __init__(
        self,
        write: Callable[[list[Item], WriteOutcome, list[Result] | None, bool], list[Result]],
        max_batch: int,
        deadline: float,
        database: str,
        plan: Callable[[list[Item], list[Result]], list[Result] | None] | None = None,
        appended: Callable[[int], None] | None = None,
        holder: Callable[[], errors.LockHolder | None] | None = None,
    ) -> None:
        self._write = write
        self._holder = holder
        self._appended = appended
        self._plan = plan
        self._max_batch = max_batch
        self._deadline = deadline
        self._database = database
        self._mutex = threading.Lock()
        self._all_woken = threading.Condition(self._mutex)  # _waking fell to zero
        self._leader: int | None = None  # the leading caller's thread
        self._queue: deque[Request[Item, Result]] = deque()
        self._waking = 0  # callers of finished batches not yet woken
        self._helper: threading.Thread | None = None  # leads for callers without a thread
        self._helper_wanted = False  # such a caller waits and nobody leads
        self._closed = False  # the Database was disposed: the idle helper ends at once
        self._helper_called = threading.Condition(self._mutex)
        # Outcomes settled but not yet told to callers without a thread (guarded by the
        # mutex; see _deliver).
        self._untold: dict[Notify[Item, Result], list[Request[Item, Result]]] = {}

    def submit(self, items: Sequence[Item]) -> list[Result]:
        """Queue ``items`` (written contiguously, in order) and wait until they are committed.

        Raises:
            DatabaseBusyError: the append was still queued at the deadline (not written).
            CommitTimeoutError: its write outlasted a second deadline (outcome unknown).
        """
        request: Request[Item, Result] = Request(items)
        started = time.monotonic()
        try:
            with self._mutex:
                self._queue.append(request)
            while not request.done:
                if self._try_to_lead():
                    self._lead(request)
                    self._stop_leading()
                else:
                    self._sleep(request, started)
        finally:
            # Also when interrupted (and again if that is interrupted too).
            try:
                self._leave(request)
            except BaseException:
                self._leave(request)
                raise
        if request.error is not None:
            raise request.error
        return request.results

    def enqueue(
        self, items: Sequence[Item], notify: Notify[Item, Result], tag: Any = None
    ) -> Request[Item, Result]:
        """Queue ``items`` (written contiguously, in order) without waiting.

        Once the request is done (``request.error`` or ``request.results`` then holds the
        outcome), the thread that wrote its batch calls ``notify([request, ...])``, once
        for all the requests of the batch queued with the same (an equal) ``notify``,
        outside the batcher's lock; it must be quick. ``tag`` is kept as ``request.tag``.
        The caller keeps its own deadline and may take a request still queued back with
        :meth:`withdraw`.
        """
        request: Request[Item, Result] = Request(items, notify, tag)
        with self._mutex:
            self._queue.append(request)
            if self._leader is None:
                self._call_helper()
        return request

    def withdraw(self, request: Request[Item, Result]) -> bool:
        """Take back a request made with :meth:`enqueue`.

        Returns:
            True when it was still queued: it is not written, and ``notify`` is never
            called. False once a leader has taken it into a batch (or it is done): it is
            written, or fails, as if nothing happened, and ``notify`` is called as usual.
        """
        with self._mutex:
            if request.done:
                return False
            try:
                self._queue.remove(request)
            except ValueError:
                return False
            request.notify = request.tag = None  # never told: nothing of the caller kept
            return True

    def close(self) -> None:
        """The Database was disposed: the helper thread ends as soon as it has no work
        (instead of idling for ``_HELPER_IDLE`` seconds and keeping the Database alive)."""
        with self._mutex:
            self._closed = True
            self._helper_called.notify()

    def _try_to_lead(self) -> bool:
        with self._mutex:
            if self._leader is None:
                self._leader = threading.get_ident()
                return True
            return False

    def _stop_leading(self) -> None:
        """Give up the leader's role (if this thread has it) and let the oldest waiting
        caller try to lead, so queued appends never stall. Safe to repeat."""
        with self._mutex:
            if self._leader == threading.get_ident():
                self._leader = None
                if self._queue:
                    self._wake(self._queue[0])  # or the helper, for a caller without a thread

    def _leave(self, request: Request[Item, Result]) -> None:
        """The caller is done: returning, failing or interrupted. Safe to repeat."""
        with self._mutex:
            if not request.done:
                # Interrupted, or past its deadline, while still queued: withdrawn.
                with contextlib.suppress(ValueError):
                    self._queue.remove(request)
            # The loop may end without sleeping again: a caller woken to try leading can
            # find its append already written by another leader, which may have made it a
            # link of its batch's wake-up chain (or is about to). Marking it awake keeps it
            # out of a chain still to be built; passing on wakes the rest of one already
            # built. Otherwise the callers after it would sleep for ever.
            request.woken = True
            self._wake_next(request)
        self._stop_leading()

    def _sleep(self, request: Request[Item, Result], started: float) -> None:
        """Sleep until woken (to lead, or because the append is done), one slice at most."""
        if request.gate.acquire(timeout=_SLICE):
            with self._mutex:
                request.woken = False
                self._wake_next(request)
            return
        waited = time.monotonic() - started
        if request.done or waited < self._deadline:
            return
        with self._mutex:
            # Looked at under the mutex: a leader may have just taken or finished it.
            if not request.done and request in self._queue:
                self._queue.remove(request)
                raise errors.DatabaseBusyError(
                    f"an append to {self._database} waited {waited:.2f}s in the queue without "
                    "being written (retry_deadline): the writers ahead of it kept the database "
                    "busy; it was not written",
                    database=self._database,
                    waited=waited,
                    holder=self._holder_now(),
                )
        if waited >= 2 * self._deadline and not request.done:
            raise errors.CommitTimeoutError(
                f"an append to {self._database} has been being written for {waited:.2f}s; "
                "it may still be committed: check the chain before appending it again",
                database=self._database,
                waited=waited,
                holder=self._holder_now(),
            )

    def _holder_now(self) -> errors.LockHolder | None:
        try:
            return None if self._holder is None else self._holder()
        except Exception:  # naming the holder must never hide the error itself
            log.debug("could not tell who holds the write turn", exc_info=True)
            return None

    def _call_helper(self) -> None:
        """With the mutex held: have the helper thread lead, as a caller without a thread
        waits and nobody leads."""
        self._helper_wanted = True
        if self._helper is None:
            self._helper = threading.Thread(
                target=self._serve, name=f"append leader ({self._database})", daemon=True
            )
            self._helper.start()
        else:
            self._helper_called.notify()

    def _serve(self) -> None:
        """The helper thread: lead whenever called, until the queue is empty."""
        try:
            while self._become_leader():
                try:
                    self._lead_queue()
                finally:
                    # Hands the queue on if it filled again meanwhile (to the head's
                    # thread, or back to this one).
                    self._stop_leading()
        finally:
            with self._mutex:
                if self._helper is threading.current_thread():
                    self._helper = None
                    if self._helper_wanted:  # ended by an error while called: replace it
                        self._call_helper()

    def _become_leader(self) -> bool:
        """Wait until called and take the leader's role; False after ``_HELPER_IDLE``
        seconds without a call (the thread then ends)."""
        with self._mutex:
            while True:
                if self._helper_wanted:
                    self._helper_wanted = False
                    if self._leader is None:
                        self._leader = threading.get_ident()
                        return True
                    # Somebody else leads; when they stop, a request without a thread at
                    # the head of the queue calls the helper again.
                elif self._closed or (
                    not self._helper_called.wait(_HELPER_IDLE) and not self._helper_wanted
                ):
                    self._helper = None
                    return False

    def _lead_queue(self) -> None:
        """Write batches until the queue is empty (the helper has no append of its own).

        The helper tells the callers of a batch their outcome only once it has planned the
        next batch, just before that batch's unit starts: its callers' event loops then
        handle the outcomes while the next batch is being written, instead of waiting for
        the interpreter lock while it is planned. Planning never waits for anything.
        """
        written: list[Result] = []  # the results of the batch written last
        try:
            while True:
                if self._waking:
                    self._deliver()  # _gather may wait: nobody waits for it meanwhile
                self._gather()
                batch = self._take_batch(min(self._max_batch, _HELPER_BATCH))
                if not batch.requests:
                    return
                try:
                    planned = self._plan_batch(batch, written)
                    self._deliver()
                    self._commit(batch, planned, finished=False)
                finally:
                    self._settle_surely(batch, None)
                written = batch.outcome.value if batch.outcome.committed() else []
        finally:
            self._deliver()

    def _plan_batch(self, batch: Batch[Item, Result], written: list[Result]) -> list[Result] | None:
        """``plan`` of the batch's items after ``written``, in parts, letting go of the
        interpreter lock between two: an event loop waiting to run its timers runs them
        then, not after the whole plan. None when there is nothing to plan after."""
        if self._plan is None or not written:
            return None
        items = batch.items
        planned: list[Result] = []
        after = written
        try:
            for start in range(0, len(items), _PLAN_PART):
                part = self._plan(items[start : start + _PLAN_PART], after)
                if part is None:
                    return None
                planned += part
                after = part
                if start + _PLAN_PART < len(items):
                    time.sleep(0)  # bounded: a zero-length sleep, only to let go of the GIL
        except Exception:  # the write works it out again (and meets any error itself)
            log.exception("planning a batch of appends failed")
            return None
        return planned

    def _lead(self, own: Request[Item, Result]) -> None:
        while not own.done:
            self._gather()
            batch = self._take_batch(self._max_batch)
            try:
                self._commit(batch, None, finished=True)
            finally:
                try:
                    self._settle_surely(batch, own)
                finally:
                    self._deliver()
