"""`Database`: the engine, one Session per thread, and write/read units of work."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.util import ThreadLocalRegistry

from . import _vector_cache, errors
from ._engine import BUSY_OPTION, UNIT_OPTION, build_engine, raw_execute
from ._fairlock import WRITE_LOCKS
from ._write_group import Waiter, WriteGroup
from .settings import Settings

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_WRITE = "write"
_READ = "read"
_SNAPSHOT = "snapshot"

#: ``PRAGMA wal_checkpoint`` modes, mildest first (see :meth:`Database.checkpoint`).
CHECKPOINT_MODES = ("passive", "full", "restart", "truncate")

# Bounding the WAL (see Database._bound_wal). Below SQLite's own checkpoint size (1000 pages
# of 4 KiB) its automatic checkpoints suffice. The checkpoint's own wait (for other
# processes' readers) is short because writers of the process wait for it too; after a
# failure, a long snapshot is the likely cause.
_WAL_FLOOR = 4 * 1024 * 1024
_WAL_WAIT_MS = 100
_WAL_RETRY_FIRST, _WAL_RETRY_MAX = 0.1, 2.0
# Longest a new read snapshot waits for such a checkpoint (copying a large WAL takes time),
# and longest the checkpoint waits for this process's snapshots in progress to end.
_READER_HOLD_MAX = 1.0


@dataclass(frozen=True)
class Stats:
    """A snapshot of a Database's counters (see :meth:`Database.stats`)."""

    units_committed: int
    units_rolled_back: int
    busy_retries: int
    write_waits: int
    write_wait_total: float
    write_wait_max: float
    writers_queued: int
    connections_checked_out: int
    connections_open: int
    #: Memory held by this process's cache of the database's embeddings (see similar()).
    vector_cache_bytes: int = 0


class _Counters:
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


class _Snapshots:
    """The read snapshots of this process in progress, and when each began."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._began: dict[object, float] = {}

    def begin(self) -> object:
        token = object()
        with self._changed:
            self._began[token] = time.monotonic()
        return token

    def end(self, token: object) -> None:
        with self._changed:
            del self._began[token]
            self._changed.notify_all()

    def drain(self, limit: float) -> bool:
        """Wait until every snapshot in progress has ended, for at most ``limit`` seconds.

        Returns False at once when one began more than ``limit`` seconds ago: such a long
        snapshot is not about to end, and waiting for it would only hold everyone up.
        """
        deadline = time.monotonic() + limit
        with self._changed:
            while self._began:
                now = time.monotonic()
                if now >= deadline or now - min(self._began.values()) > limit:
                    return False
                self._changed.wait(deadline - now)
            return True


class _SessionCloser:
    """Closes a thread's Session when the thread ends without calling ``remove()``.

    It lives in the same ``threading.local`` as the Session, so when the thread exits and
    its locals are dropped, this runs in that thread and hands the connection back to the
    pool instead of leaving it to the garbage collector.
    """

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def __del__(self) -> None:
        # Nothing useful can be done about a failure at thread exit.
        with suppress(Exception):
            self.session.close()


class _ThreadSessions(ThreadLocalRegistry[Session]):
    def __call__(self) -> Session:
        try:
            return self.registry.value  # type: ignore[no-any-return]
        except AttributeError:
            session = self.registry.value = self.createfunc()
            self.registry.closer = _SessionCloser(session)
            return session

    def clear(self) -> None:
        super().clear()
        with suppress(AttributeError):
            del self.registry.closer


class Database:
    """A database shared safely by every thread of a process.

    Args:
        url: SQLAlchemy URL; defaults to ``$APP_DATABASE_URL``, then
            ``sqlite:///data/memory.db`` (its directory is created).
        **settings: any field of :class:`app.Settings`.

    Attributes:
        settings: the resolved :class:`app.Settings`.
        engine: the SQLAlchemy engine (pool and hooks installed).
        session: a ``scoped_session``; ``db.session()`` is this thread's Session.

    Raises:
        ConfigurationError: bad URL or setting, or a directory that cannot be created.
        NotADatabaseError, ReadOnlyDatabaseError: the file cannot hold the database.
        SchemaOutOfDateError: the schema is behind the code and ``auto_upgrade`` is off.
    """

    def __init__(self, url: str | None = None, /, **settings: Any) -> None:
        self.settings = Settings.resolve(url, **settings)
        self.url = self.settings.safe_url()
        self.engine = build_engine(self.settings)
        self._closed = False
        # An in-memory or single-connection database has one connection: units take turns
        # on it, reads included.
        self._exclusive = self.settings.is_memory or self.settings.single_connection
        self._counters = _Counters()
        self._wal_path = _wal_to_bound(self.settings)
        self._wal_retry_at = 0.0
        self._wal_retry_pause = _WAL_RETRY_FIRST
        # A write unit binds the thread's Session to the process's shared write connection,
        # where it opens a SAVEPOINT (see _write_group); a read unit binds it to the engine.
        self._factory = sessionmaker(
            self.engine, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        event.listen(self._factory, "before_flush", _refuse_flush_in_read_unit)
        self.session = scoped_session(self._factory)
        self._reset_thread_state()
        _LIVE.add(self)
        try:
            if self.settings.check_schema:
                from .schema import ensure_schema

                ensure_schema(self)
        except BaseException:
            self.dispose()
            raise

    # -- lifetime ---------------------------------------------------------------------

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    def dispose(self) -> None:
        """Close this thread's Session and every pooled connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        try:
            self.session.remove()
        finally:
            self.engine.dispose()

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClosedError(f"{self.url} was disposed; create a new Database")

    def _lock_key(self) -> str:
        path = self.settings.sqlite_path
        if path is not None:
            return "sqlite:" + os.path.realpath(path)
        if self.settings.is_memory:
            return f"memory:{id(self)}"
        return self.url

    def _reset_thread_state(self) -> None:
        self._write_lock = WRITE_LOCKS.get(self._lock_key())
        self._local = threading.local()
        # Per-process helpers of other modules (the chain's group committer), rebuilt after fork.
        self._per_process: dict[str, Any] = {}
        # The write transaction shared by successive units; touched only by the lock holder.
        self._group: WriteGroup | None = None
        # Cleared while a checkpoint empties the WAL: new snapshots wait (see _bound_wal).
        self._readers_may_start = threading.Event()
        self._readers_may_start.set()
        self._snapshots = _Snapshots()
        self.session.registry = _ThreadSessions(self._factory)

    def _after_fork_in_child(self) -> None:
        # The parent's connections must be neither used nor closed here: forget them.
        self.engine.dispose(close=False)
        _FORK_LEFTOVERS.append(self.session.registry)
        self._reset_thread_state()

    # -- units of work ------------------------------------------------------------------

    def in_write_unit(self) -> bool:
        """True when this thread is inside a write unit of this database."""
        return getattr(self._local, "mode", None) == _WRITE

    def _write_depth(self) -> int:
        """How many write units this thread has open (0 outside any)."""
        return int(getattr(self._local, "depth", 0))

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """One write unit: ``BEGIN IMMEDIATE``, commit on success, rollback on any exception.

        Writers of this process take turns first come, first served, and successive units
        may share one commit (see ``max_units_per_commit``); the unit returns once its work
        is committed. A unit opened inside another becomes a SAVEPOINT that rolls back alone.

        Raises:
            DatabaseBusyError: another process kept the write lock past ``busy_timeout``, or
                this process's writers kept it past ``retry_deadline``.
            TransactionStateError: opened inside a read unit.
        """
        session = self.session()
        with self._write_scope(None):
            yield session

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write unit for the layer's own statements: the shared write connection, in a
        SAVEPOINT of its own, without the ORM's bookkeeping."""
        with self._write_scope(None) as connection:
            yield connection

    @contextmanager
    def _write_scope(self, deadline: float | None) -> Iterator[Connection]:
        self._check_open()
        local = self._local
        mode = getattr(local, "mode", None)
        session = self.session()
        if mode == _WRITE:
            assert self._group is not None  # this thread holds the turn
            local.depth += 1
            try:
                with self._savepoint(self._group.connection, session):
                    yield self._group.connection
            finally:
                local.depth -= 1
            return
        if mode == _READ:
            raise errors.TransactionStateError(
                "cannot open a write unit inside a read unit: open the write unit first"
            )
        self._end_stray_transaction(session)
        if deadline is None:
            deadline = time.monotonic() + self.settings.retry_deadline
        self._take_turn(deadline)
        local.mode, local.depth = _WRITE, 1
        turn_ended = False
        failure: BaseException | None = None
        waiter: Waiter | None = None
        group_error: BaseException | None = None
        try:
            group = self._group or self._open_group(deadline)
            session.bind = group.connection
            # The first unit of a group needs no SAVEPOINT: if it fails, the whole
            # transaction is rolled back, as nobody else's work is in it yet.
            first = not group.units
            try:
                with self._savepoint(group.connection, session, isolate=not first):
                    yield group.connection
            except BaseException as exc:  # noqa: BLE001 - re-raised once the turn is ended
                failure = exc
                group.spoiled = first
                self._counters.add("rolled_back")
            turn_ended = True
            waiter, group_error = self._end_turn(group, failure)
        finally:
            session.bind = self.engine
            local.mode, local.depth = None, 0
            if not turn_ended:
                self._write_lock.release()
        if waiter is not None:
            group_error = waiter.wait()
        if failure is not None:
            raise failure
        if group_error is not None:
            raise group_error

    @contextmanager
    def _savepoint(
        self, connection: Connection, session: Session, *, isolate: bool = True
    ) -> Iterator[None]:
        """Run the body in a SAVEPOINT that a failure rolls back alone (with ``isolate``
        false, only the Session's part is ended and the caller rolls back the rest)."""
        if not isolate:
            try:
                yield
                if session.in_transaction():
                    session.commit()
            except BaseException:
                if session.in_transaction():
                    _rollback_quietly(session)
                raise
            return
        if session.in_transaction():
            # The Session already works in this unit: let it track the savepoint, so a
            # rollback also expires the objects it changed.
            with session.begin_nested():
                yield
            return
        name = f"app_unit_{self._local.depth}"
        raw_execute(connection, f"SAVEPOINT {name}")
        try:
            yield
            if session.in_transaction():  # the body used the Session: flush and end it
                session.commit()
        except BaseException:
            if session.in_transaction():
                _rollback_quietly(session)
            try:
                raw_execute(connection, f"ROLLBACK TO SAVEPOINT {name}")
                raw_execute(connection, f"RELEASE SAVEPOINT {name}")
            except Exception:
                log.debug("rolling back %s failed", name, exc_info=True)
            raise
        raw_execute(connection, f"RELEASE SAVEPOINT {name}")

    def _open_group(self, deadline: float) -> WriteGroup:
        """Start the process's write transaction (BEGIN IMMEDIATE / the PostgreSQL write lock)."""
        options: dict[str, Any] = {UNIT_OPTION: _WRITE}
        remaining = deadline - time.monotonic()
        if remaining < self.settings.busy_timeout:
            # Wait for another process's write lock no longer than the deadline allows.
            options[BUSY_OPTION] = max(1, int(remaining * 1000))
        connection = self._connect().execution_options(**options)
        try:
            connection.begin()
        except BaseException:
            connection.close()
            raise
        self._group = WriteGroup(connection)
        return self._group

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except PoolTimeout as exc:
            raise self._pool_exhausted() from exc

    def _end_turn(
        self, group: WriteGroup, failure: BaseException | None
    ) -> tuple[Waiter | None, BaseException | None]:
        """Pass the open transaction to the next writer, or commit it; releases the turn.

        ``failure`` is what the unit raised (None when it succeeded). Returns this unit's
        Waiter when a later unit will commit its work, else None and the error of the
        commit this unit made (None when it committed).
        """
        succeeded = failure is None
        handed_on = False
        try:
            if succeeded:
                group.units += 1
            alive = not group.spoiled and group.transaction_alive()
            if (
                alive
                and self._write_lock.queued()
                and group.units < self.settings.max_units_per_commit
            ):
                waiter = Waiter() if succeeded else None  # nothing to wait for after a failure
                if waiter is not None:
                    group.waiters.append(waiter)  # before the next writer can commit
                # The writer seen waiting may have given up since (its deadline passed): then
                # nobody would take the open transaction, and this unit's wait would never end.
                if self._write_lock.hand_over():
                    handed_on = True
                    return waiter, None
                if waiter is not None:
                    group.waiters.remove(waiter)
            self._group = None
            if not alive and not group.spoiled:
                # The database aborted the whole transaction under this unit (SQLite does on
                # a full disk or an I/O error): the units sharing it fail with that error.
                group.aborted_by = failure
            error = self._close_group(group, commit=alive)
            return None, error if succeeded else None
        finally:
            if not handed_on:
                self._write_lock.release()

    def _close_group(self, group: WriteGroup, *, commit: bool) -> BaseException | None:
        error: BaseException | None = None
        try:
            if commit and group.units:
                group.connection.commit()
                self._bound_wal(group.connection)
            else:
                group.connection.rollback()
                if group.units:
                    error = _shared_failure(self.url, group.aborted_by)
        except Exception as exc:  # noqa: BLE001 - handed to every unit of the group
            error = exc
        finally:
            try:
                group.connection.close()
            except Exception:
                log.debug("closing a write connection failed", exc_info=True)
        self._counters.add("rolled_back" if error else "committed", group.units)
        group.finish(error)
        return error

    def _bound_wal(self, connection: Connection) -> None:
        """Empty the WAL when it has grown past half of ``journal_size_limit`` (called after
        a commit, in the writer's turn). Never raises: the units are committed already.

        SQLite's automatic checkpoints copy the WAL into the database file, but the file
        starts over (and is cut back to ``journal_size_limit``) only at a moment when no
        reader is using it. Under a steady stream of readers that moment never comes and
        the WAL grows for as long as they run. So this process's new snapshots wait, the
        ones in progress are given time to end (up to ``_READER_HOLD_MAX``: a fixed short
        wait would fail for as long as reads take longer), and a TRUNCATE checkpoint,
        waiting a little for other processes' readers, empties the WAL. A long read
        snapshot makes it give up at once; it is then tried again after a pause that
        doubles with each failure, so a pinned WAL costs readers and writers little.
        """
        limit = self.settings.journal_size_limit
        if self._wal_path is None or limit is None:
            return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        now = time.monotonic()
        if size <= max(limit // 2, _WAL_FLOOR) or now < self._wal_retry_at:
            return
        busy = 1
        self._readers_may_start.clear()
        try:
            self._snapshots.drain(_READER_HOLD_MAX)
            raw = connection.connection.dbapi_connection
            assert raw is not None
            raw.execute(f"PRAGMA busy_timeout = {_WAL_WAIT_MS}")
            try:
                busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                raw.execute(f"PRAGMA busy_timeout = {int(self.settings.busy_timeout * 1000)}")
        except Exception:
            log.debug("checkpoint of %s failed", self.url, exc_info=True)
        finally:
            self._readers_may_start.set()
        if busy:
            self._wal_retry_at = now + self._wal_retry_pause
            self._wal_retry_pause = min(2 * self._wal_retry_pause, _WAL_RETRY_MAX)
        else:
            self._wal_retry_pause = _WAL_RETRY_FIRST

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read unit: a snapshot that never takes or waits for the write lock.

        Inside, any write is refused with :class:`~app.errors.ReadOnlyUnitError`. A read
        unit opened inside a write unit joins it (and sees its uncommitted changes).
        """
        self._check_open()
        mode = getattr(self._local, "mode", None)
        session = self.session()
        if mode is not None:
            yield session
            return
        self._end_stray_transaction(session)
        if not self._readers_may_start.is_set():
            self._readers_may_start.wait(_READER_HOLD_MAX)  # see _bound_wal
        if self._exclusive:
            self._take_turn(time.monotonic() + self.settings.retry_deadline)
        snapshot = self._snapshots.begin()
        self._local.mode = _READ
        session.info["read_unit"] = True
        try:
            try:
                session.begin()
                session.connection(execution_options={UNIT_OPTION: _READ})
                yield session
                if session.new or session.dirty or session.deleted:
                    raise errors.ReadOnlyUnitError(
                        "objects were added, changed or deleted inside a read unit; "
                        "use Database.unit_of_work() or Database.run() for writes"
                    )
                session.commit()  # nothing to write: ends the snapshot, keeps objects loaded
            except BaseException as exc:
                _rollback_quietly(session)
                if isinstance(exc, PoolTimeout):
                    raise self._pool_exhausted() from exc
                raise
        finally:
            session.info["read_unit"] = False
            self._local.mode = None
            self._snapshots.end(snapshot)
            if self._exclusive:
                self._write_lock.release()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A read snapshot for the layer's own queries, without the ORM's bookkeeping.

        Inside a unit of this thread it is that unit's connection (reads see its changes).
        """
        self._check_open()
        local = self._local
        mode = getattr(local, "mode", None)
        if mode == _WRITE:
            assert self._group is not None
            yield self._group.connection
            return
        if mode == _READ:
            own = getattr(local, "read_connection", None)
            yield own if own is not None else self.session().connection()
            return
        if not self._readers_may_start.is_set():
            self._readers_may_start.wait(_READER_HOLD_MAX)  # see _bound_wal
        if self._exclusive:
            self._take_turn(time.monotonic() + self.settings.retry_deadline)
        snapshot = self._snapshots.begin()
        local.mode = _READ
        try:
            with self._connect().execution_options(**{UNIT_OPTION: _SNAPSHOT}) as connection:
                local.read_connection = connection
                with connection.begin():
                    yield connection
        finally:
            local.mode = local.read_connection = None
            self._snapshots.end(snapshot)
            if self._exclusive:
                self._write_lock.release()

    def _pool_exhausted(self) -> errors.PoolExhaustedError:
        return errors.PoolExhaustedError(
            f"no connection to {self.url} became free within {self.settings.pool_timeout}s "
            "(pool_size + max_overflow are all in use); raise pool_size or max_overflow"
        )

    def run(
        self, fn: Callable[Concatenate[Session, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``fn(session, *args, **kwargs)`` in a write unit, re-running it while busy.

        When another process holds the write lock (or a server aborts the unit to avoid a
        conflict), the unit is rolled back and ``fn`` runs again from scratch after a
        jittered, growing pause, until ``retry_deadline`` seconds have passed. Inside an
        open write unit, ``fn`` runs once in a SAVEPOINT.

        Raises:
            DatabaseBusyError: still busy at the deadline; names the database and the wait.
        """
        session = self.session()
        return self._retrying(lambda _connection: fn(session, *args, **kwargs))

    def _run_writing(self, fn: Callable[[Connection], R]) -> R:
        """:meth:`run` for the layer's own statements: ``fn(connection)``."""
        return self._retrying(fn)

    def _retrying(self, body: Callable[[Connection], R]) -> R:
        if self.in_write_unit():
            with self._write_scope(None) as connection:
                return body(connection)
        started = time.monotonic()
        deadline = started + self.settings.retry_deadline
        attempt = 0
        while True:
            try:
                with self._write_scope(deadline) as connection:
                    return body(connection)
            except errors.DatabaseBusyError as exc:
                now = time.monotonic()
                if now >= deadline - 0.001:
                    waited = now - started
                    raise errors.DatabaseBusyError(
                        f"{self.url} stayed busy for {waited:.2f}s (retry_deadline is "
                        f"{self.settings.retry_deadline}s, {attempt + 1} attempts): another "
                        "writer holds the write lock; retry later or raise retry_deadline",
                        database=self.url,
                        waited=waited,
                    ) from exc
                attempt += 1
                self._counters.add("retries")
                pause = min(deadline - now, random.uniform(0, min(0.5, 0.005 * 2**attempt)))
                log.info("%s busy, retry %d in %.3fs: %s", self.url, attempt, pause, exc)
                time.sleep(pause)

    def _take_turn(self, deadline: float) -> None:
        started = time.monotonic()
        if not self._write_lock.acquire(timeout=max(0.0, deadline - started)):
            waited = time.monotonic() - started
            raise errors.DatabaseBusyError(
                f"waited {waited:.2f}s for a turn to write to {self.url}: other threads of "
                "this process kept the write lock; shorten their units or raise retry_deadline",
                database=self.url,
                waited=waited,
            )
        waited = time.monotonic() - started
        self._counters.record_wait(waited)
        if waited > self.settings.slow_wait_threshold:
            log.warning("writer waited %.3fs for its turn on %s", waited, self.url)

    def _end_stray_transaction(self, session: Session) -> None:
        """Close a transaction the thread's Session began outside any unit (e.g. a lazy load)."""
        if not session.in_transaction():
            return
        if session.new or session.dirty or session.deleted:
            raise errors.TransactionStateError(
                "this thread's Session holds changes made outside a unit of work; "
                "make changes inside Database.unit_of_work() or Database.run()"
            )
        session.commit()

    # -- maintenance ----------------------------------------------------------------------

    def checkpoint(self, mode: str = "passive") -> tuple[int, int, int]:
        """Copy the WAL's pages into the database file (SQLite's ``PRAGMA wal_checkpoint``).

        ``passive`` never waits. ``full``, ``restart`` and ``truncate`` first take this
        process's write turn (and commit the write group in progress), so they never wait
        for the process's own writers, then wait up to ``busy_timeout`` for other processes'
        writers and, for ``restart`` and ``truncate``, for readers still using the WAL.
        ``restart`` and ``truncate`` let the next writer start the WAL from its beginning,
        which is when the file is cut back to ``journal_size_limit`` (``truncate``: to zero).

        Returns:
            SQLite's triple ``(busy, log, checkpointed)``: 1 if the checkpoint could not
            finish, the WAL's frames, and how many of them are now in the database file
            (``log`` and ``checkpointed`` are -1 when the database is not in WAL mode).

        Raises:
            InvalidInputError: an unknown mode.
            ConfigurationError: not a SQLite database.
            TransactionStateError: called inside a unit (it would wait for that unit).
        """
        self._check_open()
        name = mode.lower() if isinstance(mode, str) else ""
        if name not in CHECKPOINT_MODES:
            raise errors.InvalidInputError(
                f"checkpoint mode must be one of {', '.join(CHECKPOINT_MODES)}; got {mode!r}"
            )
        if not self.settings.is_sqlite:
            raise errors.ConfigurationError(f"checkpoints are a SQLite feature; {self.url} is not")
        if getattr(self._local, "mode", None) is not None:
            raise errors.TransactionStateError(
                "cannot checkpoint inside a unit of work: it would wait for the unit itself"
            )
        take_turn = name != "passive" or self._exclusive
        if take_turn:
            self._take_turn(time.monotonic() + self.settings.retry_deadline)
        try:
            if take_turn and self._group is not None:
                # A write group handed to us stays open (and holds SQLite's write lock)
                # until someone commits it: do so, or the checkpoint would wait for it.
                group, self._group = self._group, None
                self._close_group(group, commit=group.transaction_alive())
            with self._connect() as connection:
                # The mode comes from the fixed list above, never from the caller's text.
                row = raw_execute(connection, f"PRAGMA wal_checkpoint({name.upper()})").fetchone()
        finally:
            if take_turn:
                self._write_lock.release()
        return int(row[0]), int(row[1]), int(row[2])

    # -- observability --------------------------------------------------------------------

    def stats(self) -> Stats:
        """Units committed and rolled back, busy retries, writer waits, connections."""
        pool: Any = self.engine.pool
        if hasattr(pool, "overflow"):
            # Each counter read once: checkedout() and checkedin() both read the pool's
            # queue, which other threads change in between, so their sum could exceed
            # pool_size + max_overflow. size() + overflow() is what the pool has open.
            opened = pool.size() + pool.overflow()
            checked_in = min(pool.checkedin(), opened)
            checked_out = opened - checked_in
        else:  # the single connection of a StaticPool
            opened, checked_out = 1, 0
        c = self._counters
        with c.lock:
            return Stats(
                units_committed=c.committed,
                units_rolled_back=c.rolled_back,
                busy_retries=c.retries,
                write_waits=c.waits,
                write_wait_total=c.wait_total,
                write_wait_max=c.wait_max,
                writers_queued=self._write_lock.queued(),
                connections_checked_out=checked_out,
                connections_open=opened,
                vector_cache_bytes=_vector_cache.cache_bytes(self),
            )


#: Errors after which SQLite may roll back the whole transaction, not only the statement:
#: the units that shared it fail with the same type, as if each had met the error itself.
_TRANSACTION_ABORTING = (
    errors.StorageFullError,
    errors.DatabaseUnavailableError,
    errors.CorruptDatabaseError,
    errors.ReadOnlyDatabaseError,
)


def _shared_failure(url: str, cause: BaseException | None) -> errors.AppError:
    """The error of a unit whose work was in a write transaction that another unit's
    failure ended, so nothing of it was written."""
    if isinstance(cause, _TRANSACTION_ABORTING):
        error = type(cause)(
            f"{cause} (this unit shared the write transaction that the error aborted, so "
            "nothing of it was written either)"
        )
        error.__cause__ = cause
        return error
    return errors.TransactionStateError(
        f"{url} aborted the write transaction after an error in another unit sharing its "
        "commit; nothing of this unit was written"
    )


def _rollback_quietly(session: Session) -> None:
    # The error that brought us here matters more than a failed rollback (for example on a
    # connection the error already broke); the pool discards such a connection.
    try:
        session.rollback()
    except Exception:
        log.debug("rollback after error failed", exc_info=True)


def _refuse_flush_in_read_unit(session: Session, *args: Any) -> None:
    if session.info.get("read_unit"):
        raise errors.ReadOnlyUnitError(
            "objects were added, changed or deleted inside a read unit; "
            "use Database.unit_of_work() or Database.run() for writes"
        )


def _wal_to_bound(settings: Settings) -> str | None:
    """The WAL file whose size the layer keeps in check, or None."""
    path = settings.sqlite_path
    if path is None or settings.journal_mode != "wal" or settings.single_connection:
        return None
    return path + "-wal"


_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()
_FORK_LEFTOVERS: list[object] = []


def _after_fork_in_child() -> None:
    WRITE_LOCKS.reset_after_fork()
    for database in list(_LIVE):
        database._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
