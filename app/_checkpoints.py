"""WAL checkpoints on demand (``Database.checkpoint``): the mode checked, and this process's
write turn taken first by the modes that wait for writers.

``Database`` inherits :class:`Checkpoints`; its method is ``Database``'s (its ``self`` is
the Database). The checkpoints that keep the WAL small by themselves are ``_wal_bound``'s.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

from . import errors
from ._driver import UnitKind, raw_execute
from ._units import Unit, UnitHost
from ._wal_bound import CHECKPOINT_MODES

__all__ = ["Checkpoints"]


class Checkpoints(UnitHost):
    """Database's checkpoints on demand (see the module notes)."""

    if TYPE_CHECKING:

        def check_writable(self) -> None: ...

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
        self._check_open()
        name = mode.lower() if isinstance(mode, str) else ""
        if name not in CHECKPOINT_MODES:
            raise errors.InvalidInputError(
                f"checkpoint mode must be one of {', '.join(CHECKPOINT_MODES)}; got {mode!r}"
            )
        if not self.settings.is_sqlite:
            raise errors.ConfigurationError(f"checkpoints are a SQLite feature; {self.url} is not")
        self.check_writable()
        if self._unit() is not None:
            raise errors.TransactionStateError(
                "cannot checkpoint inside a unit of work: it would wait for the unit itself"
            )
        take_turn = name != "passive" or self._exclusive
        unit = Unit(UnitKind.WRITE)
        self._enter(unit)
        try:
            turn = self.exclusive_turn() if take_turn else nullcontext()
            with turn, self._connect() as connection:
                # The mode comes from the fixed list above, never from the caller's text.
                row = raw_execute(connection, f"PRAGMA wal_checkpoint({name.upper()})").fetchone()
        finally:
            self._leave(unit)
        return int(row[0]), int(row[1]), int(row[2])
