"""A Database's counters, and the snapshot of them that ``Database.stats()`` returns."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """A snapshot of a Database's counters (see :meth:`app.Database.stats`)."""

    units_committed: int
    units_rolled_back: int
    busy_retries: int
    write_waits: int
    write_wait_total: float
    write_wait_max: float
    writers_queued: int
    connections_checked_out: int
    connections_open: int


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.committed = self.rolled_back = self.retries = self.waits = 0
        self.wait_total = self.wait_max = 0.0

    def record_wait(self, seconds: float) -> None:
        with self.lock:
            self.waits += 1
            self.wait_total += seconds
            if seconds > self.wait_max:
                self.wait_max = seconds

    def add(self, name: str, count: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + count)
