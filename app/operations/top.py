"""``app top``: a live view of one database across processes: who holds the write lock, who
waits for it, the oldest reader, turn waits, commits per second, the WAL's size and replica
lag.

It opens no ``Database`` (nothing is created, migrated or locked): on SQLite it reads the
``-turn`` record that writers keep next to the file (see ``writers._turn_record``) and the
WAL's size; on PostgreSQL it asks the server (``pg_locks``, ``pg_stat_activity``,
``pg_stat_database``, ``pg_stat_replication``) on one connection of its own.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from app import errors
from app.engine._postgres_hooks import APPLICATION_PREFIX, write_lock_holders
from app.errors import LockHolder
from app.settings import Settings
from app.writers._turn_record import SUFFIX, ProcessFigures, TurnRecord


@dataclass(frozen=True)
class Reading:
    """One look at the database.

    Attributes:
        url: the database (password hidden).
        at: when (``time.time()``).
        holder: who holds the write lock (None: nobody).
        waiters: who waits for it, oldest first (PostgreSQL: backends; SQLite: the
            processes with writers queued, one entry per process).
        oldest_reader: the oldest open transaction of the layer's connections that does not
            hold the lock (PostgreSQL; on SQLite readers are not visible across processes).
        commits: commits counted so far (SQLite: by the layer's writers since the record was
            made; PostgreSQL: the server's count for the database).
        turn_waits, turn_wait_total: turns taken by the processes' writers and the seconds
            they waited for them (SQLite, processes alive now).
        wal_bytes: the WAL file's size (SQLite), or the server's WAL position (PostgreSQL).
        replicas: each streaming replica's name and replay lag in seconds (PostgreSQL).
        processes: each process's figures (SQLite).
    """

    url: str
    at: float
    holder: LockHolder | None
    waiters: list[LockHolder] = field(default_factory=list)
    oldest_reader: LockHolder | None = None
    commits: int = 0
    turn_waits: int = 0
    turn_wait_total: float = 0.0
    wal_bytes: int | None = None
    replicas: list[tuple[str, float | None]] = field(default_factory=list)
    processes: list[ProcessFigures] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Rates:
    """What changed between two readings, per second."""

    commits_per_second: float
    turns_per_second: float
    mean_turn_wait: float | None


def rates(before: Reading, after: Reading) -> Rates:
    seconds = max(after.at - before.at, 1e-9)
    turns = after.turn_waits - before.turn_waits
    waited = after.turn_wait_total - before.turn_wait_total
    return Rates(
        commits_per_second=max(0, after.commits - before.commits) / seconds,
        turns_per_second=max(0, turns) / seconds,
        mean_turn_wait=waited / turns if turns > 0 else None,
    )


def watch(url: str | None, interval: float) -> Iterator[Reading]:
    """Readings of the database every ``interval`` seconds, for ever (the caller stops).

    Raises:
        ConfigurationError: a bad URL, or an in-memory database (nothing to watch from
            another process).
        DatabaseUnavailableError: the SQLite file does not exist, or the server cannot be
            reached.
    """
    settings = Settings.resolve(url)
    if settings.is_memory:
        raise errors.ConfigurationError(
            "an in-memory database lives inside one process: there is nothing to watch"
        )
    look = _sqlite(settings) if settings.is_sqlite else _postgres(settings)
    try:
        while True:
            yield next(look)
            time.sleep(interval)
    finally:
        look.close()


def _sqlite(settings: Settings) -> Generator[Reading, None, None]:
    path = str(settings.sqlite_path)
    if not os.path.isfile(path):
        raise errors.DatabaseUnavailableError(f"{path} does not exist: nothing to watch")
    record = TurnRecord(path + SUFFIX, read_only=True)
    try:
        while True:
            processes = record.processes()
            waiters = [
                LockHolder(pid=p.pid, doing=f"{p.queued} writer(s) queued for the turn")
                for p in processes
                if p.queued > 0
            ]
            try:
                wal: int | None = os.path.getsize(path + "-wal")
            except OSError:
                wal = None
            yield Reading(
                url=settings.safe_url(),
                at=time.time(),
                holder=record.holder(),
                waiters=waiters,
                commits=record.commits(),
                turn_waits=sum(p.waits for p in processes),
                turn_wait_total=sum(p.wait_total for p in processes),
                wal_bytes=wal,
                processes=processes,
            )
    finally:
        record.close()


_READERS = (
    "SELECT pid, application_name, extract(epoch FROM clock_timestamp() - xact_start), "
    "state, left(query, 200) FROM pg_stat_activity WHERE datname = current_database() "
    "AND xact_start IS NOT NULL AND pid <> pg_backend_pid() AND application_name LIKE %s "
    "ORDER BY xact_start"
)
_COMMITS = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
_WAL = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() - '0/0' END"
_REPLICAS = (
    "SELECT coalesce(application_name, client_addr::text), "
    "extract(epoch FROM replay_lag) FROM pg_stat_replication"
)


def _postgres(settings: Settings) -> Generator[Reading, None, None]:
    engine = create_engine(settings.url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            dbapi: Any = connection.connection.dbapi_connection
            dbapi.autocommit = True
            while True:
                holders, waiters = write_lock_holders(dbapi)
                holding = {h.backend for h in holders}
                readers = [
                    row
                    for row in dbapi.execute(_READERS, (APPLICATION_PREFIX + "%",)).fetchall()
                    if row[0] not in holding and row[0] not in {w.backend for w in waiters}
                ]
                oldest = None
                if readers:
                    backend, application, age, state, query = readers[0]
                    client = application.removeprefix(APPLICATION_PREFIX)
                    oldest = LockHolder(
                        pid=int(client) if client.isdigit() else None,
                        held=float(age),
                        doing=f"server state {state}",
                        backend=int(backend),
                        query=query,
                    )
                wal = dbapi.execute(_WAL).fetchone()[0]
                yield Reading(
                    url=settings.safe_url(),
                    at=time.time(),
                    holder=holders[0] if holders else None,
                    waiters=waiters,
                    oldest_reader=oldest,
                    commits=int(dbapi.execute(_COMMITS).fetchone()[0] or 0),
                    wal_bytes=None if wal is None else int(wal),
                    replicas=[
                        (str(name), None if lag is None else float(lag))
                        for name, lag in dbapi.execute(_REPLICAS).fetchall()
                    ],
                )
    except Exception as exc:
        translated = errors.translate(exc, database=settings.safe_url())
        if translated is None or translated is exc:
            raise
        raise translated from exc
    finally:
        engine.dispose()
