"""Group commit for chain appends: many callers, one transaction.

Handing a lock from thread to thread costs a context switch per append in CPython, and each
append would pay for its own BEGIN/COMMIT. Instead, callers put their append in a queue and
one of them (the *leader*, whoever finds the role free) writes everything queued in a single
write unit: the chain head is read once, hashes are chained in queue order, rows go in with
multi-row inserts, and every caller in the batch is woken once the commit returns. The
leader stops leading as soon as its own append is done and wakes the oldest waiter to take
over, so no caller works for others indefinitely.

A failed batch is retried one append at a time, so a database error fails only the append
that caused it. Appends from other processes take turns through the database's write lock.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from . import errors

# Longest the writer waits for the callers of the last batch (see _gather). Measured on two
# cores with 100 appending threads, where waking 100 callers takes about 5 ms.
_GATHER_LIMIT = 0.02

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Request(Generic[Item, Result]):
    __slots__ = ("done", "error", "gate", "in_relay", "items", "relay", "results", "woken")

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items
        self.results: list[Result] = []
        self.error: BaseException | None = None
        self.done = False
        self.woken = False  # gate released for this wait (guarded by the writer's mutex)
        self.relay: _Request[Item, Result] | None = None  # the caller to wake after this one
        self.in_relay = False  # counted in the committer's _waking (guarded by its mutex)
        self.gate = threading.Lock()
        self.gate.acquire()


class GroupCommitter(Generic[Item, Result]):
    """Batches requests from many threads into write units.

    Args:
        write: writes a batch of items in a write unit (with busy retries), returning one
            result per item, in order.
        max_batch: most items per transaction.
    """

    def __init__(self, write: Callable[[list[Item]], list[Result]], max_batch: int) -> None:
        self._write = write
        self._max_batch = max_batch
        self._mutex = threading.Lock()
        self._all_woken = threading.Condition(self._mutex)  # _waking fell to zero
        self._leader = threading.Lock()
        self._queue: deque[_Request[Item, Result]] = deque()
        self._waking = 0  # callers of finished batches not yet woken

    def submit(self, items: Sequence[Item]) -> list[Result]:
        """Queue ``items`` (written contiguously, in order) and wait until they are committed."""
        request: _Request[Item, Result] = _Request(items)
        with self._mutex:
            self._queue.append(request)
        while not request.done:
            if self._leader.acquire(blocking=False):
                try:
                    self._lead(request)
                finally:
                    self._leader.release()
                    self._wake_head()
            else:
                request.gate.acquire()
                with self._mutex:
                    request.woken = False
                    self._pass_on(request)
        with self._mutex:
            # The loop may end without sleeping again: a caller woken to try leading can
            # find its append already written by another leader, which may have made it a
            # link of its batch's wake-up chain (or is about to). Marking it awake keeps it
            # out of a chain still to be built; passing on wakes the rest of one already
            # built. Otherwise the callers after it would sleep for ever.
            request.woken = True
            self._pass_on(request)
        if request.error is not None:
            raise request.error
        return request.results

    def _lead(self, own: _Request[Item, Result]) -> None:
        while not own.done:
            self._gather()
            batch = self._take_batch()
            try:
                self._commit(batch)
                self._wake_in_turn([request for request in batch if request is not own])
            except BaseException:
                # Interrupted while writing (KeyboardInterrupt): the unit was rolled back.
                # Give the other callers' appends back to the queue for the next leader.
                with self._mutex:
                    self._queue.extendleft(r for r in reversed(batch) if r is not own)
                raise

    def _gather(self) -> None:
        """Let the callers of the last batch queue their next append before writing.

        While they are being woken (see ``_wake_in_turn``) they are about to append again;
        writing now would make the writer compete with them for the GIL after every
        statement and cut the batch short (measured: overlapping the two is slower). So
        wait until the last of them has been woken, never longer than ``_GATHER_LIMIT``.
        """
        with self._mutex:
            self._all_woken.wait_for(lambda: not self._waking, _GATHER_LIMIT)

    def _take_batch(self) -> list[_Request[Item, Result]]:
        batch: list[_Request[Item, Result]] = []
        size = 0
        with self._mutex:
            while self._queue and (
                not batch or size + len(self._queue[0].items) <= self._max_batch
            ):
                request = self._queue.popleft()
                batch.append(request)
                size += len(request.items)
        return batch

    def _commit(self, batch: list[_Request[Item, Result]]) -> None:
        items = [item for request in batch for item in request.items]
        try:
            results = self._write(items)
        except (errors.DatabaseBusyError, errors.ClosedError, errors.PoolExhaustedError) as exc:
            # Nobody's input is to blame: every append of the batch fails the same way.
            for request in batch:
                self._finish(request, error=exc)
            return
        except Exception as exc:  # noqa: BLE001 - handed to the callers, who see it raised
            if len(batch) == 1:
                self._finish(batch[0], error=exc)
            else:
                for request in batch:
                    self._commit_alone(request)
            return
        position = 0
        for request in batch:
            count = len(request.items)
            self._finish(request, results=results[position : position + count])
            position += count

    def _commit_alone(self, request: _Request[Item, Result]) -> None:
        try:
            results = self._write(list(request.items))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who sees it raised
            self._finish(request, error=exc)
        else:
            self._finish(request, results=results)

    def _finish(
        self,
        request: _Request[Item, Result],
        *,
        results: list[Result] | None = None,
        error: BaseException | None = None,
    ) -> None:
        request.results = results or []
        request.error = error
        request.done = True

    def _wake_in_turn(self, batch: list[_Request[Item, Result]]) -> None:
        """Wake the callers of a finished batch one after another.

        Waking them all at once would make a hundred threads fight for the GIL (and the
        next batch's writer with them); instead each caller, once running, wakes the next.
        """
        with self._mutex:
            sleepers = [request for request in batch if not request.woken]
            for current, following in itertools.pairwise(sleepers):
                current.relay = following
            for sleeper in sleepers:
                sleeper.in_relay = True
            if sleepers:
                self._waking += len(sleepers)
                self._wake(sleepers[0])

    def _pass_on(self, request: _Request[Item, Result]) -> None:
        """Called with the mutex held by a caller that is awake: take it out of the wake-up
        count and wake the next caller of its chain."""
        if request.in_relay:
            request.in_relay = False
            self._waking -= 1
            if not self._waking:
                self._all_woken.notify()
        following, request.relay = request.relay, None
        if following is not None:
            self._wake(following)

    def _wake(self, request: _Request[Item, Result]) -> None:
        # Called with the mutex held.
        if not request.woken:
            request.woken = True
            request.gate.release()

    def _wake_head(self) -> None:
        """Let the oldest waiting caller try to lead, so queued appends never stall."""
        with self._mutex:
            if self._queue:
                self._wake(self._queue[0])
