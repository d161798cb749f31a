"""What a ``Database`` reports about itself: ``stats()`` (units, writer waits, connections,
replicas, and the caches of the layers above, see :func:`add_stats_contributor`) and
``check_replicas()``.

``Database`` inherits :class:`DatabaseStats`; its methods are ``Database``'s (their ``self``
is the Database).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._stats import ReplicaStats, Stats
from ._units import UnitHost

__all__ = ["DatabaseStats", "add_stats_contributor"]


class DatabaseStats(UnitHost):
    """Database's stats and replica checks (see the module notes)."""

    def check_replicas(self) -> tuple[ReplicaStats, ...]:
        """Check every replica now: reachable, really a replica, and how far behind.

        Returns:
            Each replica's :class:`ReplicaStats` (empty without replicas); a replica found
            down or lagging is skipped by reads from now on, one found well again used.
        """
        self._check_open()
        return () if self._replicas is None else self._replicas.check_all()

    def stats(self) -> Stats:
        """Units committed and rolled back, busy retries, writer waits, connections, and
        each replica's state, lag and reads served."""
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
        # The caches of layers above this one (the vector cache), which this module does not
        # import: they register what they hold (see add_stats_contributor).
        cache_bytes = sum(contributor(self) for contributor in _stats_contributors)
        c = self._counters
        with c.lock:
            return Stats(
                units_committed=c.committed,
                units_rolled_back=c.rolled_back,
                busy_retries=c.retries,
                write_waits=c.waits,
                write_wait_total=c.wait_total,
                write_wait_max=c.wait_max,
                writers_queued=self._side.turn.queued(),
                connections_checked_out=checked_out,
                connections_open=opened,
                replicas=() if self._replicas is None else self._replicas.stats(),
                primary_reads=0 if self._replicas is None else self._replicas.primary_reads,
                vector_cache_bytes=cache_bytes,
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
