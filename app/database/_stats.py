"""A Database's counters, and the snapshot of them that ``Database.stats()`` returns."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaStats:
    """How one read replica is doing, as this process last saw it.

    Attributes:
        url: the replica's URL (password hidden).
        state: ``up`` (serving reads), ``lagging`` (further behind than
            ``max_replica_lag``), ``down`` (unreachable or failed; tried again after a
            pause), ``not a replica`` (not in recovery) or ``unchecked`` (no read yet).
        lag: seconds it was behind the primary at its last check (None before one).
        replayed: the highest replay position seen there (``pg_last_wal_replay_lsn()``).
        reads: reads it served for this Database.
        failures: connections and reads that failed on it.
    """

    url: str
    state: str
    lag: float | None
    replayed: str | None
    reads: int
    failures: int


@dataclass(frozen=True)
class Stats:
    """A snapshot of a Database's counters (see :meth:`app.Database.stats`).

    ``replicas`` and ``primary_reads`` are filled when replicas are configured:
    ``primary_reads`` counts the reads that went to the primary instead of a replica.
    ``vector_cache_bytes`` is the memory this process holds for similarity searches.
    ``conflicts`` counts write units aborted by another unit's failure or by the server
    (:class:`~app.errors.UnitAbortedError`, :class:`~app.errors.ConflictError`).
    """

    units_committed: int
    units_rolled_back: int
    busy_retries: int
    write_waits: int
    write_wait_total: float
    write_wait_max: float
    writers_queued: int
    connections_checked_out: int
    connections_open: int
    replicas: tuple[ReplicaStats, ...] = ()
    primary_reads: int = 0
    #: Memory held by this process's cache of the database's embeddings (see similar()).
    vector_cache_bytes: int = 0
    conflicts: int = 0


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.committed = self.rolled_back = self.retries = self.conflicts = self.waits = 0
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
