"""What the append batcher queues and writes: a caller's request (its items, its outcome,
how its caller is woken or told) and a batch of requests written in one unit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from app.writers._shared_transaction import WriteOutcome

Item = TypeVar("Item")
Result = TypeVar("Result")


class Request(Generic[Item, Result]):
    __slots__ = (
        "done",
        "error",
        "gate",
        "in_chain",
        "items",
        "next_to_wake",
        "notify",
        "outcome",
        "results",
        "tag",
        "threadless",
        "woken",
    )

    def __init__(
        self,
        items: Sequence[Item],
        notify: Notify[Item, Result] | None = None,
        tag: Any = None,
    ) -> None:
        self.items = items
        self.tag = tag  # whatever the caller without a thread wants back with it
        self.results: list[Result] = []
        self.error: BaseException | None = None
        self.done = False
        self.woken = False  # gate released for this wait (guarded by the mutex)
        self.next_to_wake: Request[Item, Result] | None = None  # the caller to wake after this one
        self.in_chain = False  # counted in the batcher's _waking (guarded by its mutex)
        # Where its own write went when it was written alone (see _commit_alone).
        self.outcome: WriteOutcome | None = None
        # A caller that does not sleep on a gate (see AppendBatcher.enqueue), and the
        # callback that tells it its outcome (cleared, under the mutex, once due).
        self.threadless = notify is not None
        self.notify = notify
        if notify is None:
            self.gate = threading.Lock()
            self.gate.acquire()  # bounded: a new lock, free: taking it never waits


#: The request :meth:`AppendBatcher.enqueue` returns: ``done``, then ``error`` or ``results``.
AppendRequest = Request

#: Told the outcomes of requests queued with :meth:`AppendBatcher.enqueue`: called with
#: every request of a batch that was queued with it (an equal callable), in queue order.
Notify = Callable[[list[Request[Item, Result]]], None]


class Batch(Generic[Item, Result]):
    """The requests one leader writes in one unit, and where that unit's work went."""

    __slots__ = ("items", "outcome", "requests", "settled")

    def __init__(self, requests: list[Request[Item, Result]]) -> None:
        self.requests = requests
        self.items = [item for request in requests for item in request.items]
        self.outcome = WriteOutcome()
        self.settled = False  # its unwritten requests were put back in the queue
