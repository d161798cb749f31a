"""Read replicas of a PostgreSQL primary: which one a read goes to, and how each one is doing.

A read goes to a replica that has replayed at least the log position of this process's last
commit on the primary (read-your-writes) and is not more than ``max_replica_lag`` seconds
behind; among those, to the one with the fewest reads in progress (the least recently chosen
on a tie). Otherwise it goes to the primary. A read that accepts stale data skips the first
condition only.

Positions: ``pg_current_wal_lsn()`` on the primary after each commit, ``pg_last_wal_replay_lsn()``
on a replica. Replay only moves forward, so a position once seen on a replica is included in
any snapshot taken there later: a read whose position is already known to be replayed uses
the replica at once, any other asks the replica first, before its snapshot begins.

Lag: the primary's position is sampled (after this process's commits, and at each check),
and a replica is as far behind as the oldest sample it has not replayed yet. Each replica is
checked again about once a second, by one of the reads that use it.

Failures: a replica that cannot be reached, or fails in the middle of a read, is skipped for
a pause that doubles with each failure in a row; then one read tries it again while the
others still skip it. A read that lost its replica half-way raises
:class:`~app.errors.ReplicaUnavailableError`; the layer's own reads then run again
(``Database.retrying_read``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque

from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app import errors
from app.database._replica_positions import POSITIONS, format_lsn, primary_position, replay_position
from app.database._stats import ReplicaStats
from app.engine._engine import build_engine
from app.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between two checks of a replica's lag (and of a lagging replica's recovery).
_CHECK_EVERY = 1.0
#: Pause before a failed replica is tried again: doubled with each failure in a row.
_PAUSE_FIRST, _PAUSE_MAX = 0.25, 8.0
#: Seconds to wait for a replica's connection (libpq's minimum) unless its URL says.
_CONNECT_TIMEOUT = "2"
#: Primary positions closer together than this (seconds) are kept as one sample.
_SAMPLE_SPACING = 0.05

UP, LAGGING, DOWN, NOT_A_REPLICA, UNCHECKED = "up", "lagging", "down", "not a replica", "unchecked"


class _Replica:
    """One replica: its engine, and what the reads have learned about it."""

    __slots__ = (
        "checked",
        "down_until",
        "engine",
        "failures",
        "failures_in_row",
        "in_flight",
        "lag",
        "reads",
        "replayed",
        "state",
        "trying",
        "turn",
        "url",
    )

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url  # password hidden
        self.engine = engine
        self.state = UNCHECKED
        self.replayed = 0  # highest replay position seen
        self.lag: float | None = None
        self.checked = float("-inf")  # when the lag was last measured (monotonic)
        self.down_until = 0.0
        self.failures = 0  # every failure, for stats
        self.failures_in_row = 0  # for the pause
        self.trying = False  # one read is checking it; the others leave it alone
        self.in_flight = 0
        self.turn = 0  # when it was last chosen, to break ties
        self.reads = 0

    def stats(self) -> ReplicaStats:
        return ReplicaStats(
            url=self.url,
            state=self.state,
            lag=self.lag,
            replayed=format_lsn(self.replayed) if self.replayed else None,
            reads=self.reads,
            failures=self.failures,
        )


class ReplicaSet:
    """The replicas of one Database, and the choice of one for each read.

    Args:
        settings: the Database's settings (``replicas`` is not empty).
        primary: the primary's engine (positions are read there).
    """

    def __init__(self, settings: Settings, primary: Engine) -> None:
        self._key = settings.parsed_url.render_as_string(hide_password=False)
        self._max_lag = settings.max_replica_lag
        self._primary = primary
        self._lock = threading.Lock()
        # (monotonic time, position) of the primary, oldest first; kept long enough to
        # measure a lag well beyond max_replica_lag.
        self._samples: deque[tuple[float, int]] = deque()
        self._window = 2 * settings.max_replica_lag + 10.0
        self._turns = 0
        self.primary_reads = 0
        self._replicas = [
            _Replica(shown, build_engine(_replica_settings(settings, url)))
            for url, shown in zip(settings.replicas, settings.replica_urls(), strict=True)
        ]

    # -- positions on the primary -----------------------------------------------------------

    def note_commit(self, connection: Connection | None) -> None:
        """After a commit on the primary (in the committing thread, on its connection, or
        on a new one when None): remember its position. Never raises: the commit is done."""
        try:
            if connection is None:
                with self._primary.connect() as fresh:
                    position = primary_position(fresh)
            else:
                position = primary_position(connection)
        except Exception:
            log.debug("could not read the position of a commit", exc_info=True)
            POSITIONS.lost(self._key)
            return
        POSITIONS.note(self._key, position)
        self._sample(position)

    def note_primary(self) -> None:
        """Remember the primary's current position as this process's last commit: reads
        then see at least what the primary held now (a migration just run, say).

        Raises:
            DatabaseUnavailableError: the primary cannot be reached.
        """
        with self._primary.connect() as connection:
            position = primary_position(connection)
        POSITIONS.note(self._key, position)
        self._sample(position)

    def _sample(self, position: int) -> None:
        now = time.monotonic()
        with self._lock:
            samples = self._samples
            if samples and (position <= samples[-1][1] or now - samples[-1][0] < _SAMPLE_SPACING):
                return
            samples.append((now, position))
            while len(samples) > 1 and now - samples[0][0] > self._window:
                samples.popleft()

    def _sample_primary(self) -> None:
        """A fresh sample of the primary's position; nothing when it cannot be reached (the
        lag is then measured with the samples there are)."""
        try:
            with self._primary.connect() as connection:
                self._sample(primary_position(connection))
        except Exception:
            log.debug("could not read the primary's position", exc_info=True)

    def _lag(self, replayed: int, now: float) -> float:
        with self._lock:
            newest = self._samples[-1][0] if self._samples else None
        if newest is None or now - newest >= _CHECK_EVERY:
            self._sample_primary()
        with self._lock:
            for when, position in self._samples:
                if position > replayed:
                    return max(0.0, time.monotonic() - when)
        return 0.0

    # -- choosing a replica -------------------------------------------------------------------

    def choose(self, *, fresh: bool) -> tuple[_Replica, Connection] | None:
        """A replica's connection for one read (before its transaction begins), or None
        when the read should go to the primary.

        Args:
            fresh: the replica must have replayed this process's last commit.
        """
        need = POSITIONS.get(self._key) if fresh else 0
        now = time.monotonic()
        claimed: list[_Replica] = []
        ready: list[_Replica] = []
        with self._lock:
            for replica in self._replicas:
                if replica.trying:
                    continue
                if replica.state in (DOWN, NOT_A_REPLICA):
                    due = now >= replica.down_until
                else:
                    due = now - replica.checked >= _CHECK_EVERY
                if due:
                    replica.trying = True  # this read checks it; the others skip it meanwhile
                    claimed.append(replica)
                elif replica.state == UP:
                    ready.append(replica)
        # Checks first: a claimed replica must be checked by this read, and one that is
        # back should take its share at once.
        ready.sort(key=lambda r: (r.in_flight, r.turn))
        try:
            for replica in claimed + ready:
                connection = self._open(replica, need, now, replica in claimed)
                if connection is not None:
                    return replica, connection
        finally:
            for replica in claimed:  # checked, or not reached: the next read may check it
                replica.trying = False
        with self._lock:
            self.primary_reads += 1
        return None

    def _open(self, replica: _Replica, need: int, now: float, check: bool) -> Connection | None:
        try:
            connection = replica.engine.connect()
        except PoolTimeout:
            return None  # all its connections busy for pool_timeout: the primary answers
        except Exception as exc:  # noqa: BLE001 - any failure to connect skips the replica
            self._failed(replica, exc)
            return None
        try:
            if check or replica.replayed < need:
                replayed = replay_position(connection)
                if replayed is None:
                    connection.close()
                    self._not_a_replica(replica)
                    return None
                if check:
                    lag = self._lag(replayed, now)
                with self._lock:
                    replica.replayed = max(replica.replayed, replayed)
                    if check:
                        self._checked(replica, lag, now)
            with self._lock:
                usable = replica.state == UP and replica.replayed >= need
                if usable:
                    replica.in_flight += 1
                    self._turns += 1
                    replica.turn = self._turns
            if not usable:
                connection.close()
                return None
            return connection
        except Exception as exc:  # noqa: BLE001 - any failure to check it skips the replica
            _close_quietly(connection)
            self._failed(replica, exc)
            return None

    def _checked(self, replica: _Replica, lag: float, now: float) -> None:
        """Record a successful check (under the lock)."""
        was = replica.state
        replica.lag, replica.checked = lag, now
        replica.failures_in_row = 0
        replica.state = LAGGING if lag > self._max_lag else UP
        if was != replica.state and not (was == UNCHECKED and replica.state == UP):
            log.info("replica %s is %s (lag %.2fs)", replica.url, replica.state, lag)

    def _failed(self, replica: _Replica, exc: BaseException) -> None:
        with self._lock:
            replica.failures += 1
            replica.failures_in_row += 1
            pause = min(_PAUSE_MAX, _PAUSE_FIRST * 2 ** (replica.failures_in_row - 1))
            replica.down_until = time.monotonic() + pause
            was, replica.state = replica.state, DOWN
            replica.trying = False
        level = logging.WARNING if was != DOWN else logging.DEBUG
        log.log(
            level,
            "replica %s failed (%s); reads go elsewhere, tried again in %.2fs",
            replica.url,
            _one_line(exc),
            pause,
        )
        # Its other pooled connections are most likely broken too.
        replica.engine.dispose()

    def _not_a_replica(self, replica: _Replica) -> None:
        with self._lock:
            was, replica.state = replica.state, NOT_A_REPLICA
            replica.down_until = time.monotonic() + _PAUSE_MAX
            replica.trying = False
        if was != NOT_A_REPLICA:
            log.warning(
                "%s is not a replica (pg_is_in_recovery() is false: a primary, or a "
                "promoted replica); no reads go to it",
                replica.url,
            )

    def done(self, replica: _Replica, *, served: bool = True) -> None:
        """A read on ``replica`` ended (``served``: it was a read, not a check)."""
        with self._lock:
            replica.in_flight -= 1
            replica.reads += served

    def read_failed(self, replica: _Replica, exc: BaseException, connection: Connection) -> bool:
        """Whether a read that failed with ``exc`` on ``replica`` should run again: the
        replica broke (it is then skipped for a while) or cancelled the read to replay WAL.
        An error of the read itself (a bad argument, say) is not the replica's fault."""
        translated = errors.translate(exc, database=replica.url) or exc
        if connection.invalidated or isinstance(translated, errors.DatabaseUnavailableError):
            # Dropped, not handed back to the pool (whose reset would fail on it and log).
            with contextlib.suppress(Exception):
                connection.invalidate()
            self._failed(replica, exc)
            return True
        return isinstance(translated, errors.ConflictError)

    # -- observability and lifetime -----------------------------------------------------------

    def stats(self) -> tuple[ReplicaStats, ...]:
        with self._lock:
            return tuple(replica.stats() for replica in self._replicas)

    def check_all(self) -> tuple[ReplicaStats, ...]:
        """Check every replica now (reachable, a replica, its lag) and return their stats."""
        self._sample_primary()
        for replica in self._replicas:
            with self._lock:
                if replica.trying:
                    continue
                replica.trying = True
            try:
                connection = self._open(replica, 0, time.monotonic(), True)
            finally:
                replica.trying = False
            if connection is not None:
                self.done(replica, served=False)
                connection.close()
        return self.stats()

    def after_fork(self) -> None:
        """In a forked child: drop the parent's connections unclosed, forget reads in
        progress and checks in the parent's threads."""
        self._lock = threading.Lock()
        for replica in self._replicas:
            replica.engine.dispose(close=False)
            replica.trying = False
            replica.in_flight = 0

    def dispose(self) -> None:
        for replica in self._replicas:
            replica.engine.dispose()


def _replica_settings(settings: Settings, url: str) -> Settings:
    """The settings of a replica's engine: the primary's, with the replica's URL and a
    bounded connection wait (an unreachable host would otherwise hold a read for minutes)."""
    parsed = make_url(url)
    if "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": _CONNECT_TIMEOUT})
    return dataclasses.replace(
        settings, url=parsed.render_as_string(hide_password=False), replicas=()
    )


def _close_quietly(connection: Connection) -> None:
    try:
        connection.close()
    except Exception:
        log.debug("closing a replica connection failed", exc_info=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
