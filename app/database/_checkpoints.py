"""WAL checkpoints on demand (``Database.checkpoint``): the mode checked, and this process's
write turn taken first by the modes that wait for writers.

:class:`Checkpoints` is built on the Database's unit core (``_units.UnitCore``, through its
public names) and its write units (for the read-only check and the write turn); the
Database delegates ``checkpoint()`` to it. The checkpoints that keep the WAL small by
themselves are ``_wal_bound``'s.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from app import errors
from app.database._units import Unit, UnitCore
from app.database._write_units import WriteUnits
from app.engine._driver import UnitKind, raw_execute
from app.writers._wal_bound import CHECKPOINT_MODES

__all__ = ["Checkpoints"]


class Checkpoints:
    """Checkpoints on demand of the Database whose unit core is ``core`` and whose write
    units are ``writes``."""

    def __init__(self, core: UnitCore, writes: WriteUnits) -> None:
        self.core = core
        self.writes = writes

    def checkpoint(self, mode: str = "passive") -> tuple[int, int, int]:
        """``Database.checkpoint``: ``PRAGMA wal_checkpoint`` in ``mode`` (see there)."""
        core, writes = self.core, self.writes
        core.check_open()
        name = mode.lower() if isinstance(mode, str) else ""
        if name not in CHECKPOINT_MODES:
            raise errors.InvalidInputError(
                f"checkpoint mode must be one of {', '.join(CHECKPOINT_MODES)}; got {mode!r}"
            )
        if not core.settings.is_sqlite:
            raise errors.ConfigurationError(f"checkpoints are a SQLite feature; {core.url} is not")
        writes.check_writable()
        if core.unit() is not None:
            raise errors.TransactionStateError(
                "cannot checkpoint inside a unit of work: it would wait for the unit itself"
            )
        take_turn = name != "passive" or core.exclusive
        unit = Unit(UnitKind.WRITE)
        core.enter(unit)
        try:
            turn = writes.exclusive_turn() if take_turn else nullcontext()
            with turn, core.connect() as connection:
                started = time.perf_counter()
                # The mode comes from the fixed list above, never from the caller's text.
                row = raw_execute(connection, f"PRAGMA wal_checkpoint({name.upper()})").fetchone()
                if core.telemetry is not None:
                    core.telemetry.checkpointed(name, time.perf_counter() - started)
        finally:
            core.leave(unit)
        return int(row[0]), int(row[1]), int(row[2])
