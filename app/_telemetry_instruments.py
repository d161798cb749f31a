"""The OpenTelemetry instruments of the layer, made once per MeterProvider, and the callbacks
of its observable ones (see ``_telemetry``, which imports this module only when a Database
with ``telemetry=True`` is opened: importing it imports OpenTelemetry's API).

Observable instruments read what the Databases count anyway (``Counters``, the pool,
``stats()``) when a reader collects, so they cost nothing per operation. Each Database is
held weakly (a disposed one stops being reported and dies as before). Databases whose
attributes are the same (two objects on one file) are reported together: their pools' and
units' figures are summed, a file's WAL size and cache are reported once. The unit counters
of a Database that was disposed stay in the sum (``retired``), so the counters of a file
never go down while the process runs.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation

log = logging.getLogger("app.telemetry")

#: Bucket boundaries (seconds) of every duration histogram: from 50 microseconds (a turn
#: handed on at once) to 10 seconds, so that sub-millisecond waits are told apart.
DURATION_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Bucket boundaries of the histograms of units per shared commit and appends per group commit.
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: The unit counters (``Counters`` attribute, instrument name, description).
UNIT_COUNTERS = (
    ("committed", "app.units.committed", "write units whose work was committed"),
    ("rolled_back", "app.units.rolled_back", "write units rolled back (their own failure or "
     "their transaction's)"),
    ("retries", "app.units.retried", "write units run again by Database.run after a busy "
     "database or a conflict (busy_retries)"),
    ("conflicts", "app.units.conflicts", "write units aborted by another unit's failure or "
     "by the server (UnitAbortedError, ConflictError)"),
)  # fmt: skip

Key = frozenset[tuple[str, Any]]


class Observed(Protocol):
    """What the callbacks read of a Database (``app.database.Database``)."""

    @property
    def closed(self) -> bool: ...

    engine: Any

    def stats(self) -> Any: ...


class Source:
    """One Database reported by the observable instruments (held weakly)."""

    __slots__ = ("counters", "database", "key", "pool_attributes", "replica_reads", "telemetry")

    def __init__(self, database: Observed, counters: Any, telemetry: Any) -> None:
        self.database = weakref.ref(database)
        self.counters = counters  # no reference to the Database: kept to retire its counts
        self.telemetry = telemetry
        self.key: Key = frozenset(telemetry.attributes.items())
        self.replica_reads: dict[str, int] = {}  # last seen, per replica URL


class Instruments:
    """The instruments of one MeterProvider, shared by every Database recording on it."""

    def __init__(self, meter: Meter) -> None:
        self.lock = threading.Lock()
        self.sources: list[Source] = []
        self.attributes: dict[Key, dict[str, Any]] = {}
        # Counts of Databases disposed since: instrument name -> attributes -> count.
        self.retired: dict[str, dict[Key, int]] = {}

        def seconds(name: str, description: str) -> Any:
            return meter.create_histogram(
                name, "s", description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
            )

        def counts(name: str, unit: str, description: str) -> Any:
            return meter.create_histogram(
                name, unit, description, explicit_bucket_boundaries_advisory=COUNT_BUCKETS
            )

        self.turn_wait = seconds(
            "app.write_turn.wait_time", "time a writer waited for this process's write turn"
        )
        self.turn_held = seconds(
            "app.write_turn.hold_time", "time a writer held the write turn, from taking it to "
            "handing it on (its unit, and the commit when it made one)"
        )  # fmt: skip
        self.per_commit = counts(
            "app.units.per_commit", "{unit}", "write units committed by one shared commit"
        )
        self.appends = counts(
            "app.appends.per_commit", "{block}", "chain appends written by one group commit"
        )
        self.checkpoint = seconds("app.checkpoint.duration", "time a WAL checkpoint took")
        self.connection_wait = seconds(
            "db.client.connection.wait_time", "time it took to obtain an open connection "
            "from the pool"
        )  # fmt: skip
        self.connection_use = seconds(
            "db.client.connection.use_time", "time between borrowing a connection and "
            "returning it to the pool"
        )  # fmt: skip
        self.connection_create = seconds(
            "db.client.connection.create_time", "time it took to create a new connection"
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts", "{timeout}", "connection requests that timed "
            "out (PoolExhaustedError)"
        )  # fmt: skip
        for field, name, description in UNIT_COUNTERS:
            self.retired[name] = {}
            meter.create_observable_counter(
                name, [self._counted(field, name)], "{unit}", description
            )
        meter.create_observable_up_down_counter(
            "db.client.connection.count", [self._connections], "{connection}",
            "connections open in the pool, by state (idle, used)"
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.max", [self._summed(_capacity)], "{connection}",
            "most connections the pool may open (pool_size + max_overflow)"
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests", [self._summed(_pending)], "{request}",
            "callers waiting for a connection from the pool"
        )  # fmt: skip
        meter.create_observable_gauge(
            "app.wal.size", [self._wal_size], "By", "size of the SQLite file's write-ahead log"
        )
        meter.create_observable_gauge(
            "app.vector_cache.size", [self._vector_cache], "By",
            "memory this process holds for the database's embeddings (similarity search)"
        )  # fmt: skip
        meter.create_observable_gauge(
            "app.replica.lag", [self._replica_lag], "s",
            "seconds a read replica was behind the primary at its last check"
        )  # fmt: skip
        self.retired["app.replica.reads"] = {}
        meter.create_observable_counter(
            "app.replica.reads", [self._replica_reads], "{read}", "reads a replica served"
        )

    # -- the Databases reported ---------------------------------------------------------

    def watch(self, database: Observed, counters: Any, telemetry: Any) -> None:
        source = Source(database, counters, telemetry)
        with self.lock:
            self.attributes.setdefault(source.key, telemetry.attributes)
            self.sources = [*self._prune(), source]

    def _prune(self) -> list[Source]:
        """The sources of open Databases; the others' counts go to ``retired``. With the
        lock held."""
        kept = []
        for source in self.sources:
            database = source.database()
            if database is not None and not database.closed:
                kept.append(source)
                continue
            for field, name, _ in UNIT_COUNTERS:
                _add(self.retired[name], source.key, getattr(source.counters, field))
            for url, reads in source.replica_reads.items():
                key = frozenset(source.telemetry.replica_attributes(url).items())
                self.attributes.setdefault(key, source.telemetry.replica_attributes(url))
                _add(self.retired["app.replica.reads"], key, reads)
        return kept

    def _live(self) -> list[tuple[Source, Observed]]:
        """The sources of open Databases, after handing every buffered histogram value to
        the SDK (each callback of a collection calls this first; see ``Buffered``)."""
        with self.lock:
            sources = self.sources
            self.sources = kept = self._prune()
        for source in sources:
            source.telemetry.flush()
        pairs = []
        for source in kept:
            database = source.database()
            if database is not None:
                pairs.append((source, database))
        return pairs

    def _observations(self, totals: dict[Key, float]) -> list[Observation]:
        return [Observation(value, self.attributes[key]) for key, value in totals.items()]

    # -- callbacks ----------------------------------------------------------------------

    def _counted(self, field: str, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            live = self._live()
            with self.lock:
                totals: dict[Key, float] = dict(self.retired[name])
            for source, _ in live:
                _add(totals, source.key, getattr(source.counters, field))
            return self._observations(totals)

        return observe

    def _summed(
        self, read: Callable[[Source, Observed], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A pool figure, summed over the pools of Databases with the same attributes."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            totals: dict[Key, float] = {}
            for source, database in self._live():
                value = _quietly(read, source, database)
                if value is not None:
                    attributes = source.telemetry.pool_attributes
                    key = frozenset(attributes.items())
                    self.attributes.setdefault(key, attributes)
                    _add(totals, key, value)
            return self._observations(totals)

        return observe

    def _connections(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: dict[Key, float] = {}
        for source, database in self._live():
            stats = _quietly(_stats, source, database)
            if stats is None:
                continue
            for state, count in (
                ("idle", stats.connections_open - stats.connections_checked_out),
                ("used", stats.connections_checked_out),
            ):
                attributes = source.telemetry.connection_attributes[state]
                key = frozenset(attributes.items())
                self.attributes.setdefault(key, attributes)
                _add(totals, key, count)
        return self._observations(totals)

    def _wal_size(self, options: CallbackOptions) -> Iterable[Observation]:
        sizes: dict[Key, float] = {}
        for source, _ in self._live():
            path = source.telemetry.wal_path
            if path is None or source.key in sizes:
                continue
            try:
                sizes[source.key] = os.stat(path).st_size
            except OSError:
                sizes[source.key] = 0  # no WAL yet (or just checkpointed away)
        return self._observations(sizes)

    def _vector_cache(self, options: CallbackOptions) -> Iterable[Observation]:
        sizes: dict[Key, float] = {}
        for source, database in self._live():
            stats = _quietly(_stats, source, database)
            if stats is not None:  # the cache is the file's: the largest report, not a sum
                sizes[source.key] = max(sizes.get(source.key, 0), stats.vector_cache_bytes)
        return self._observations(sizes)

    def _replica_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        lags: dict[Key, float] = {}
        for source, database in self._live():
            stats = _quietly(_stats, source, database)
            for replica in () if stats is None else stats.replicas:
                if replica.lag is not None:
                    key = self._replica_key(source, replica.url)
                    lags[key] = max(lags.get(key, 0.0), replica.lag)
        return self._observations(lags)

    def _replica_reads(self, options: CallbackOptions) -> Iterable[Observation]:
        live = self._live()
        with self.lock:
            totals: dict[Key, float] = dict(self.retired["app.replica.reads"])
        for source, database in live:
            stats = _quietly(_stats, source, database)
            for replica in () if stats is None else stats.replicas:
                source.replica_reads[replica.url] = replica.reads
            for url, reads in source.replica_reads.items():
                _add(totals, self._replica_key(source, url), reads)
        return self._observations(totals)

    def _replica_key(self, source: Source, url: str) -> Key:
        attributes = source.telemetry.replica_attributes(url)
        key = frozenset(attributes.items())
        self.attributes.setdefault(key, attributes)
        return key


def _add(totals: dict[Key, Any], key: Key, value: float) -> None:
    totals[key] = totals.get(key, 0) + value


def _capacity(source: Source, database: Observed) -> int:
    return int(source.telemetry.capacity)


def _pending(source: Source, database: Observed) -> int:
    return int(getattr(database.engine.pool, "pending", 0))


def _stats(source: Source, database: Observed) -> Any:
    return database.stats()


def _quietly(read: Callable[[Source, Observed], Any], source: Source, database: Observed) -> Any:
    """``read(source, database)``, or None when it fails (a Database closed meanwhile): a
    reader's collection must not fail because of one Database."""
    try:
        return read(source, database)
    except Exception:
        log.debug("reading a database's figures for telemetry failed", exc_info=True)
        return None
