"""What a ``Database`` reports about itself: ``stats()`` (units, writer waits, connections,
replicas, and the caches of the layers above, see :func:`add_stats_contributor`) and
``check_replicas()``.

:class:`DatabaseStats` reads the Database's unit core (``_units.UnitCore``, through its
public names); the Database delegates both methods to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from app.database._stats import ReplicaStats, Stats
from app.database._units import UnitCore

__all__ = ["DatabaseStats", "add_stats_contributor"]


class DatabaseStats:
    """The stats and replica checks of the Database whose unit core is ``core``."""

    def __init__(self, core: UnitCore, database: object = None) -> None:
        self.core = core
        if core.telemetry is not None and database is not None:
            # The observable instruments read stats() of the Database, held weakly.
            core.telemetry.watch(cast(Any, database), core.counters)

    def check_replicas(self) -> tuple[ReplicaStats, ...]:
        """``Database.check_replicas``: every replica checked now (see there)."""
        core = self.core
        core.check_open()
        return () if core.replicas is None else core.replicas.check_all()

    def stats(self, database: object) -> Stats:
        """``Database.stats``; ``database`` is the Database, which the contributors (see
        :func:`add_stats_contributor`) are asked about."""
        core = self.core
        pool: Any = core.engine.pool
        if hasattr(pool, "overflow"):
            # Each counter read once: checkedout() and checkedin() both read the pool's
            # queue, which other threads change in between, so their sum could exceed
            # pool_size + max_overflow. size() + overflow() is what the pool has open.
            opened = pool.size() + pool.overflow()
            checked_in = min(pool.checkedin(), opened)
            checked_out = opened - checked_in
        else:  # the single connection of a StaticPool
            opened, checked_out = 1, 0
        # The caches of layers above this one (the vector cache), which this module does not
        # import: they register what they hold (see add_stats_contributor).
        cache_bytes = sum(contributor(database) for contributor in _stats_contributors)
        replicas = core.replicas
        c = core.counters
        with c.lock:
            return Stats(
                units_committed=c.committed,
                units_rolled_back=c.rolled_back,
                busy_retries=c.retries,
                write_waits=c.waits,
                write_wait_total=c.wait_total,
                write_wait_max=c.wait_max,
                writers_queued=core.side.turn.queued(),
                connections_checked_out=checked_out,
                connections_open=opened,
                replicas=() if replicas is None else replicas.stats(),
                primary_reads=0 if replicas is None else replicas.primary_reads,
                vector_cache_bytes=cache_bytes,
                conflicts=c.conflicts,
            )


#: What :meth:`Database.stats` asks the modules above this one (see add_stats_contributor).
_stats_contributors: tuple[Callable[[Any], int], ...] = ()


def add_stats_contributor(contributor: Callable[[Any], int]) -> None:
    """For the layer's modules: ``contributor(db)`` is the memory (bytes) a per-process
    cache of that module holds for ``db``; :meth:`Database.stats` reports the sum as
    ``vector_cache_bytes``. A module registers once, when it is imported, so this module
    needs no import of it (the vector cache and numpy stay out of the session core)."""
    global _stats_contributors
    if contributor not in _stats_contributors:
        # A new tuple, never one changed in place: stats() may iterate it meanwhile.
        _stats_contributors = (*_stats_contributors, contributor)
