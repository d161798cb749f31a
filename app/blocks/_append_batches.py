"""What the append batcher does with a batch its leader took from the queue: the batch
taken, written (append by append after a failure) and settled from its ``WriteOutcome``,
and its callers woken one after another or told.

``AppendBatcher`` inherits :class:`BatchWriter`; its methods are ``AppendBatcher``'s (their
``self`` is the batcher), kept here so that ``_append_batcher.py`` stays the queue's callers
and its leaders.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic

from app import errors
from app.blocks._append_requests import Batch, Item, Notify, Request, Result
from app.writers._shared_transaction import WriteOutcome

# Longest the leader waits for the callers of the last batch (see _gather): long enough for
# a hundred callers to be woken one after another.
_GATHER_LIMIT = 0.02

# Messages keep the logger of the batcher they are about.
log = logging.getLogger("app.blocks._append_batcher")


class BatchWriter(Generic[Item, Result]):
    """AppendBatcher's batches (see the module notes). What they use of the batcher is
    declared here so that this class type-checks on its own; ``AppendBatcher`` sets and
    defines every one."""

    _write: Callable[[list[Item], WriteOutcome, list[Result] | None, bool], list[Result]]
    _mutex: threading.Lock
    _all_woken: threading.Condition
    _queue: deque[Request[Item, Result]]
    _waking: int
    _untold: dict[Notify[Item, Result], list[Request[Item, Result]]]
    _appended: Callable[[int], None] | None

    if TYPE_CHECKING:

        def _call_helper(self) -> None: ...

    def _settle_surely(self, batch: Batch[Item, Result], own: Request[Item, Result] | None) -> None:
        """:meth:`_settle` whatever happened (an interruption included, and again if the
        clean-up is interrupted): appends not written go back to the front of the queue
        for the next leader; the others are told or woken."""
        try:
            self._settle(batch, own)
        except BaseException:
            self._settle(batch, own)
            raise

    def _gather(self) -> None:
        """Let the callers of the last batch queue their next append before writing.

        While they are being woken (see ``_wake_in_turn``) they are about to append again;
        writing now would make the writer compete with them for the GIL after every
        statement and cut the batch short (overlapping the two is slower). So wait until the
        last of them has been woken, never longer than ``_GATHER_LIMIT``.
        """
        if not self._waking:
            return  # nobody is being woken (read without the mutex: a hint, not a promise)
        with self._mutex:
            self._all_woken.wait_for(lambda: not self._waking, _GATHER_LIMIT)

    def _take_batch(self, limit: int) -> Batch[Item, Result]:
        with self._mutex:
            size = 0
            count = 0
            for request in self._queue:
                if count and size + len(request.items) > limit:
                    break
                size += len(request.items)
                count += 1
            batch = Batch(list(itertools.islice(self._queue, count)))
            # One assignment, so the batch leaves the queue whole or not at all, whatever
            # interrupts this thread.
            self._queue = deque(itertools.islice(self._queue, count, None))
            return batch

    def _commit(
        self, batch: Batch[Item, Result], planned: list[Result] | None, *, finished: bool
    ) -> None:
        requests = batch.requests
        try:
            self._write(batch.items, batch.outcome, planned, finished)
        except Exception as exc:  # noqa: BLE001 - handed to the callers, who see it raised
            if batch.outcome.committed():
                return  # failed after its commit (it cannot, but if it did: it is written)
            if (
                isinstance(
                    exc,
                    errors.DatabaseBusyError
                    | errors.ClosedError
                    | errors.PoolExhaustedError
                    | errors.CommitTimeoutError,
                )
                or len(requests) == 1
            ):
                # Nobody's input is to blame: every append of the batch fails the same way.
                for request in requests:
                    self._finish(request, error=exc)
                return
            for request in requests:
                self._commit_alone(request, finished)

    def _commit_alone(self, request: Request[Item, Result], finished: bool) -> None:
        request.outcome = outcome = WriteOutcome()
        try:
            self._write(list(request.items), outcome, None, finished)
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who sees it raised
            if not outcome.committed():
                self._finish(request, error=exc)

    def _settle(self, batch: Batch[Item, Result], own: Request[Item, Result] | None) -> None:
        """After the batch's write, or its interruption: each request gets the results of a
        committed write (the batch's, or its own), or goes back to the queue. Whether a
        write was committed is read from its WriteOutcome, never from a return value, so an
        append committed just before an interruption is never written again."""
        commits: list[int] = []  # appends per commit made for the batch (telemetry)
        with self._mutex:
            if not batch.settled:
                written = batch.outcome.committed()
                if written:
                    commits.append(len(batch.items))
                position = 0
                for request in batch.requests:
                    count = len(request.items)
                    if not request.done:
                        alone = request.outcome
                        if written:
                            results = batch.outcome.value[position : position + count]
                            self._finish(request, results=results)
                        elif alone is not None and alone.committed():
                            self._finish(request, results=alone.value)
                            commits.append(count)
                    position += count
                back = [r for r in batch.requests if not r.done and r is not own][::-1]
                batch.settled = True
                self._queue.extendleft(back)
            # Callers without a thread are told by _deliver, each once: the callback is
            # taken under the mutex, so a settle run again after an interruption tells
            # nobody twice.
            for request in batch.requests:
                if request.done and request.notify is not None:
                    self._untold.setdefault(request.notify, []).append(request)
                    request.notify = None
        self._wake_in_turn([r for r in batch.requests if r.done and r is not own])
        appended = self._appended
        if appended is not None:
            for count in commits:
                appended(count)

    def _deliver(self) -> None:
        """Tell the callers without a thread of every settled batch their outcome: one
        call per callback (per event loop). Safe to repeat; never raises."""
        if not self._untold:
            # Nothing settled for them (read without the mutex: what this thread settled
            # it sees; what another thread settles, that thread delivers).
            return
        with self._mutex:
            untold, self._untold = self._untold, {}
        for notify, requests in untold.items():
            try:
                notify(requests)
            except Exception:
                log.exception("telling appends' callers their outcome failed")

    def _finish(
        self,
        request: Request[Item, Result],
        *,
        results: list[Result] | None = None,
        error: BaseException | None = None,
    ) -> None:
        request.results = results or []
        request.error = error
        request.done = True  # last: a caller that sees it also sees the rest

    def _wake_in_turn(self, batch: list[Request[Item, Result]]) -> None:
        """Wake the callers of a finished batch one after another.

        Waking them all at once would make a hundred threads fight for the GIL (and the
        next batch's writer with them); instead each caller, once running, wakes the next.
        """
        with self._mutex:
            sleepers = [r for r in batch if not (r.woken or r.in_chain or r.threadless)]
            for current, following in itertools.pairwise(sleepers):
                current.next_to_wake = following
            for sleeper in sleepers:
                sleeper.in_chain = True
            if sleepers:
                self._waking += len(sleepers)
                self._wake(sleepers[0])

    def _wake_next(self, request: Request[Item, Result]) -> None:
        """Called with the mutex held by a caller that is awake: take it out of the wake-up
        count and wake the next caller of its chain."""
        if request.in_chain:
            request.in_chain = False
            self._waking -= 1
            if not self._waking:
                self._all_woken.notify()
        following, request.next_to_wake = request.next_to_wake, None
        if following is not None:
            self._wake(following)

    def _wake(self, request: Request[Item, Result]) -> None:
        # Called with the mutex held.
        if request.threadless:
            self._call_helper()  # nobody sleeps on its gate: the helper leads for it
        elif not request.woken:
            request.woken = True
            request.gate.release()
