"""`Database`: the surface that applications and the layer's modules call, and the object's
lifetime, delegated to the parts it is composed of.

Each Database owns one unit core (``_units.UnitCore``: the engine, the thread's Session and
unit, the write side, the WAL bound, the counters, the replicas, and the counting of units
in progress that closing waits for), and parts built on that core: its write units and
write turn (``_write_units.WriteUnits``), its read units and where reads run
(``_read_units.ReadUnits``), checkpoints on demand (``_checkpoints``) and what ``stats()``
reports (``_database_stats``). The methods here document the surface and hand each call to
its part. Writers' turns and shared transactions are ``app.writers``'; what the thread's
Session does outside units is ``_sessions``'.

Layer 4, units and sessions. May import: the package root, ``app.engine``,
``app.writers``, ``app.schema``. Nothing here imports the block store, search or numpy;
the caches of the layers above report their size through ``add_stats_contributor``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app import _process
from app.database._checkpoints import Checkpoints
from app.database._database_stats import DatabaseStats
from app.database._database_stats import add_stats_contributor as add_stats_contributor
from app.database._read_units import ReadUnits, retried_reads
from app.database._stats import ReplicaStats, Stats
from app.database._units import Unit, UnitCore
from app.database._write_units import WriteUnits
from app.engine._driver import UnitKind
from app.schema import ensure_schema
from app.settings import Settings
from app.writers._shared_transaction import WriteOutcome
from app.writers._wal_bound import CHECKPOINT_MODES

__all__ = ["CHECKPOINT_MODES", "Database", "ReplicaStats", "Stats", "UnitKind", "retried_reads"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
K = TypeVar("K")


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
        core: for the layer's modules and tests: the :class:`~app.database._units.UnitCore` its
            units run on (its docstring names what it holds).

    Raises:
        ConfigurationError: bad URL or setting, or a directory that cannot be created.
        NotADatabaseError, ReadOnlyDatabaseError: the file cannot hold the database.
        SchemaOutOfDateError: the schema is behind the code and ``auto_upgrade`` is off.

    Applications use :meth:`unit_of_work`, :meth:`read`, :meth:`run`, :attr:`session`,
    :meth:`checkpoint`, :meth:`stats` and :meth:`dispose` (with replicas also
    :meth:`allow_stale` and :meth:`check_replicas`). The layer's own modules (the block
    store, the facade, maintenance) use a few more, documented as such: a read connection
    (:meth:`reading`), a write connection (:meth:`writing`), a retried write
    (:meth:`run_on_connection`), a read run again when its replica fails
    (:meth:`retrying_read`), the current unit's kind (:meth:`unit_kind`), a per-process
    helper (:meth:`process_local`) and the write turn alone (:meth:`exclusive_turn`).
    """

    def __init__(self, url: str | None = None, /, **settings: Any) -> None:
        # From here on the process holds state that a fork() must handle (see _process).
        _process.install_fork_hooks()
        core = self.core = UnitCore(Settings.resolve(url, **settings))
        self.settings = core.settings
        self.url = core.url
        self.engine = core.engine
        writes = self._writes = WriteUnits(core)
        # The thread's Session takes the write turn as write units do when it writes
        # outside them.
        core.open_sessions(
            take_turn=writes.take_turn_for_session, release_turn=writes.release_session_turn
        )
        self.session = core.session
        reads = self._reads = ReadUnits(core, writes.exclusive_turn)
        self._checkpoints = Checkpoints(core, writes)
        self._stats = DatabaseStats(core, self)
        # Bound once, for the methods that every unit, read or append of the layer calls
        # (many threads at once): each call then costs one call into its part, no lookups.
        self._unit = core.unit
        self._reading = reads.reading
        self._writing = writes.writing
        self._run_on_connection = writes.run_on_connection
        self._retrying_read = reads.retrying_read
        self._check_may_wait_for_turn = writes.check_may_wait_for_turn
        self._process_local: dict[str, Any] = {}
        _LIVE.add(self)
        try:
            if self.settings.check_schema:
                ensure_schema(self)
            if core.replicas is not None:
                # Reads then see at least the schema and rows the primary has now.
                core.replicas.note_primary()
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
        return self.core.closed

    def dispose(self) -> None:
        """Close this Database: later calls raise :class:`~app.errors.ClosedError`.

        Units and appends already in progress in other threads finish normally; the pooled
        connections are closed now, or when the last of those units ends. Other Database
        objects on the same database are not affected. Safe to call twice.
        """
        self.core.close(self._closing)

    def close(self) -> None:
        """The same as :meth:`dispose` (the name the old class and ``DatabaseManager`` use)."""
        self.dispose()

    def _closing(self) -> None:
        """What dispose() closes besides the core: the thread's Session, and the
        per-process helpers (see :meth:`process_local`) that have a ``close()``: their
        threads must not outlive the Database for long, nor keep it alive."""
        _LIVE.discard(self)
        self.session.remove()
        for helper in list(self._process_local.values()):
            close = getattr(helper, "close", None)
            if close is not None:
                close()

    def _after_fork_in_child(self) -> None:
        self.core.after_fork()
        self._process_local = {}  # the parent's helpers (and their threads) stay behind

    @property
    def key(self) -> str:
        """For the layer's modules: what names the database in this process (a SQLite
        file's real path, or the URL; each in-memory database is its own). Databases with
        the same key share the writers' turn, the WAL bound and the similarity cache."""
        return self.core.key

    def process_local(self, key: str, make: Callable[[], K]) -> K:
        """For the layer's modules: the helper ``make()`` built once per process for this
        Database (the chain's append batcher); a forked child builds its own."""
        local = self._process_local
        found = local.get(key)
        if found is None:
            found = local.setdefault(key, make())
        return found  # type: ignore[no-any-return]

    # -- the thread's unit ----------------------------------------------------------------

    def current_unit(self) -> Unit | None:
        """For the layer's modules: the unit this thread (and asyncio task) has open here."""
        return self._unit()

    def unit_kind(self) -> UnitKind | None:
        """The kind of unit this thread is inside (None outside any)."""
        unit = self._unit()
        return None if unit is None else unit.kind

    def in_write_unit(self) -> bool:
        """True when this thread is inside a write unit of this database."""
        unit = self._unit()
        return unit is not None and unit.kind is UnitKind.WRITE

    def write_depth(self) -> int:
        """How many write units this thread has open here (0 outside any); for the layer."""
        unit = self._unit()
        return unit.depth if unit is not None and unit.kind is UnitKind.WRITE else 0

    def adopt_write_turn(self, unit: Unit) -> bool:
        """For the layer's modules: take over the write turn of the thread that opened the
        write unit ``unit`` and left it idle, so that this thread can end that unit
        (committing or rolling back its work and handing the turn on).

        Returns:
            True once this thread holds the turn; False when the unit's thread no longer
            held it.
        """
        return self.core.side.turn.adopt(unit.thread)

    # -- write units (WriteUnits) -----------------------------------------------------------

    def unit_of_work(self) -> AbstractContextManager[Session]:
        """One write unit: ``BEGIN IMMEDIATE``, commit on success, rollback on any exception.

        Writers of this process take turns first come, first served, and successive units
        may share one commit (see ``max_units_per_commit``); the unit returns once its work
        is committed. A unit opened inside another becomes a SAVEPOINT that rolls back alone.
        The thread's Session starts the unit with its objects expired (rows are read
        afresh).

        Raises:
            DatabaseBusyError: another process kept the write lock past ``busy_timeout``, or
                this process's writers kept it past ``retry_deadline``.
            CommitTimeoutError: the unit ran, but the transaction it shares with later units
                was still open ``retry_deadline`` seconds after it ended.
            TransactionStateError: opened inside a read unit, or while this thread is in a
                write unit of another Database object on the same database.
        """
        return self._writes.unit_of_work()

    def writing(self) -> AbstractContextManager[Connection]:
        """For the layer's own statements: a write unit's connection, in a SAVEPOINT of its
        own (joining the thread's write unit if there is one), without the ORM."""
        return self._writing()

    def run(
        self, fn: Callable[Concatenate[Session, P], R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``fn(session, *args, **kwargs)`` in a write unit, re-running it while busy.

        When another process holds the write lock (or a server aborts the unit to avoid a
        conflict), the unit is rolled back and ``fn`` runs again from scratch after a
        jittered, growing pause, until ``retry_deadline`` seconds have passed. A unit rolled
        back because another unit sharing its transaction failed (``UnitAbortedError``)
        runs again at once. Inside an open write unit, ``fn`` runs once in a SAVEPOINT.

        Raises:
            DatabaseBusyError: still busy at the deadline; names the database and the wait.
        """
        return self._writes.run(fn, *args, **kwargs)

    def run_on_connection(
        self, body: Callable[[Connection], R], outcome: WriteOutcome | None = None
    ) -> R:
        """:meth:`run` for the layer's own statements: ``body(connection)``.

        ``outcome`` records where the last attempt's work went (see ``WriteOutcome``).
        Each attempt is a write unit; busy attempts are rolled back and run again after a
        jittered pause that doubles (to at most half a second) until ``retry_deadline``.
        """
        return self._run_on_connection(body, outcome)

    def check_writable(self) -> None:
        """Refuse a write to a database opened read-only, before anything starts.

        Raises:
            ReadOnlyDatabaseError: ``read_only`` (or ``immutable``) is set.
        """
        self._writes.check_writable()

    def check_may_wait_for_turn(self) -> None:
        """Refuse, up front, to wait for the write turn in a thread that holds it.

        Raises:
            TransactionStateError: this thread is inside a write unit of another Database
                object on the same database (waiting would wait for itself).
            ConfigurationError: called from a gevent greenlet without thread patching.
        """
        self._check_may_wait_for_turn()

    def exclusive_turn(self, deadline: float | None = None) -> AbstractContextManager[None]:
        """Hold this database's write turn without joining a unit's transaction (a
        transaction left open is committed first); for migrations, checkpoints and the
        units of a one-connection database.

        Raises:
            DatabaseBusyError: the turn did not come within ``retry_deadline``.
            TransactionStateError: this thread holds the turn already.
        """
        return self._writes.exclusive_turn(deadline)

    # -- read units (ReadUnits) -------------------------------------------------------------

    def read(self, *, allow_stale: bool = False) -> AbstractContextManager[Session]:
        """One read unit: a snapshot that never takes or waits for the write lock.

        Inside, any write is refused with :class:`~app.errors.ReadOnlyUnitError`. A read
        unit opened inside a write unit joins it (and sees its uncommitted changes).

        With ``replicas``, the unit runs on a replica that has replayed this process's last
        commit on the primary and is within ``max_replica_lag``, else on the primary.

        Args:
            allow_stale: any replica within ``max_replica_lag`` will do, even one that has
                not replayed this process's last commit yet (see :meth:`allow_stale`).

        Raises:
            ReplicaUnavailableError: the replica failed in the middle of the unit; nothing
                was changed, and running the unit again uses another replica or the primary.
        """
        return self._reads.read(allow_stale=allow_stale)

    def reading(self) -> AbstractContextManager[Connection]:
        """For the layer's own queries: a read snapshot's connection, without the ORM.

        Inside a unit of this thread it is that unit's connection (reads see its changes).
        Otherwise it goes where :meth:`read` goes (a replica, or the primary).

        Raises:
            ReplicaUnavailableError: the replica failed in the middle of the snapshot (see
                :meth:`retrying_read`).
        """
        return self._reading()

    def allow_stale(self) -> AbstractContextManager[None]:
        """Reads made inside (by this thread or asyncio task: units, the block store's
        searches, the facade) may go to any replica within ``max_replica_lag``, even one
        that has not replayed this process's last commit yet: for reads that need not see
        the latest writes, to keep load off the primary. No effect without replicas."""
        return self._reads.allow_stale()

    def retrying_read(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """For the layer's modules: ``fn(*args, **kwargs)``, whose reads use :meth:`reading`
        or :meth:`read`, run again when the replica one of them ran on failed in the
        middle of it (the replica is skipped then, so the next run goes to another replica
        or the primary). Without replicas, or inside a unit, ``fn`` runs once.

        Raises:
            ReplicaUnavailableError: every replica failed in turn.
        """
        return self._retrying_read(fn, *args, **kwargs)

    # -- checkpoints and stats ------------------------------------------------------------

    def checkpoint(self, mode: str = "passive") -> tuple[int, int, int]:
        """Copy the WAL's pages into the database file (SQLite's ``PRAGMA wal_checkpoint``).

        ``passive`` never waits. ``full``, ``restart`` and ``truncate`` first take this
        process's write turn (committing a write transaction left open), so they never wait
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
        return self._checkpoints.checkpoint(mode)

    def stats(self) -> Stats:
        """Units committed and rolled back, busy retries, writer waits, connections, and
        each replica's state, lag and reads served."""
        return self._stats.stats(self)

    def check_replicas(self) -> tuple[ReplicaStats, ...]:
        """Check every replica now: reachable, really a replica, and how far behind.

        Returns:
            Each replica's :class:`ReplicaStats` (empty without replicas); a replica found
            down or lagging is skipped by reads from now on, one found well again used.
        """
        return self._stats.check_replicas()


@contextmanager
def migration_database(url: str | None) -> Iterator[Database]:
    """A Database for running migrations (no schema check: that is what they fix)."""
    database = Database(url, check_schema=False)
    try:
        yield database
    finally:
        database.dispose()


_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for database in list(_LIVE):
        database._after_fork_in_child()


_process.on_fork("databases", after_in_child=_after_fork_in_child)
