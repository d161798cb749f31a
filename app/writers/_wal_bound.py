"""Keeping SQLite's WAL small while readers never stop (see docs/architecture.md).

SQLite copies the WAL into the database file at its automatic checkpoints, but the WAL
starts over (and is cut back to ``journal_size_limit``) only at a moment when no reader uses
it; under a steady stream of readers that moment never comes. :class:`WalBound` makes one:
after a commit that leaves the WAL too large, new snapshots of this process wait briefly,
the ones in progress get a moment to end, and a TRUNCATE checkpoint runs.

Every Database object of the process on one file shares that state (its snapshots in
progress, whether new ones wait, when to try again), as they share the writers' turn:
otherwise the snapshots of a Database opened per request would never be waited for. Other
processes' snapshots cannot be held back; the checkpoint waits for those that began before
it, a little longer after each failure (up to ``READER_HOLD_MAX``), so that readers that
come and go without pause (a search per request in several processes) still leave it a
moment: new snapshots read the database file once the WAL is copied, and do not hold it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection

from app import _process
from app._telemetry import Telemetry
from app.settings import Settings
from app.writers._holder import Turn

log = logging.getLogger(__name__)

#: ``PRAGMA wal_checkpoint`` modes, mildest first (see ``Database.checkpoint``).
CHECKPOINT_MODES = ("passive", "full", "restart", "truncate")

# Below SQLite's own checkpoint size (1000 pages of 4 KiB) its automatic checkpoints
# suffice. The checkpoint's own wait (for other processes' readers) is short because
# writers of the process wait for it too; after a failure, a long snapshot is the likely
# cause, and the next try waits longer.
_WAL_FLOOR = 4 * 1024 * 1024
_WAL_WAIT_MS = 100
_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0
#: Longest a new snapshot waits for the checkpoint (copying a large WAL takes time), and
#: longest the checkpoint waits for this process's snapshots in progress to end.
READER_HOLD_MAX = 1.0


class _Snapshots:
    """The read snapshots of this process in progress: when each began, in which thread,
    and where its unit began (to name a reader that pins the WAL)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._began: dict[object, Turn] = {}

    def begin(self, token: object) -> None:
        began = Turn()
        with self._changed:
            self._began[token] = began

    def oldest(self) -> Turn | None:
        with self._changed:
            return min(self._began.values(), key=lambda turn: turn.since, default=None)

    def end(self, token: object) -> None:
        """Forget a snapshot (again is harmless)."""
        with self._changed:
            if self._began.pop(token, None) is not None:
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
                oldest = min(turn.since for turn in self._began.values())
                if now >= deadline or now - oldest > limit:
                    return False
                self._changed.wait(deadline - now)
            return True


class _FileState:
    """What every Database of this process on one file shares (see the module notes)."""

    __slots__ = ("__weakref__", "failures", "readers_may_start", "retry_at", "snapshots")

    def __init__(self) -> None:
        self.retry_at = 0.0
        self.failures = 0  # checkpoints in a row that readers of other processes kept busy
        # Cleared while a checkpoint empties the WAL: new snapshots wait.
        self.readers_may_start = threading.Event()
        self.readers_may_start.set()
        self.snapshots = _Snapshots()


_STATES: weakref.WeakValueDictionary[str, _FileState] = weakref.WeakValueDictionary()
_STATES_LOCK = threading.Lock()


def _state_of(key: str) -> _FileState:
    with _STATES_LOCK:
        state = _STATES.get(key)
        if state is None:
            state = _STATES[key] = _FileState()
        return state


def _forget_after_fork() -> None:
    # The parent's threads, and their snapshots and checkpoints, are not in the child.
    global _STATES_LOCK
    _STATES_LOCK = threading.Lock()
    _STATES.clear()


_process.on_fork("WAL bound", after_in_child=_forget_after_fork)


class WalBound:
    """The WAL bound of one Database in this process (rebuilt after fork).

    Args:
        key: what names the database in this process (the file's real path): Databases
            with the same key share the bound's state.
        telemetry: told how long each checkpoint took (``app.checkpoint.duration``).
    """

    def __init__(self, settings: Settings, key: str, telemetry: Telemetry | None = None) -> None:
        self._settings = settings
        self._telemetry = telemetry
        path = settings.sqlite_path
        bounded = (
            settings.journal_mode == "wal"
            and not settings.single_connection
            and not settings.read_only
        )
        self._wal_path = path + "-wal" if path is not None and bounded else None
        self._state = _state_of(key)
        self._readers_may_start = self._state.readers_may_start
        self._snapshots = self._state.snapshots

    @contextmanager
    def snapshot(self, token: object) -> Iterator[None]:
        """Around a read snapshot: wait (at most ``READER_HOLD_MAX``) while a checkpoint
        empties the WAL, then count the snapshot as in progress until it ends."""
        if not self._readers_may_start.is_set():
            self._readers_may_start.wait(READER_HOLD_MAX)  # bounded: goes on after it
        try:
            self._snapshots.begin(token)
            yield
        finally:
            try:
                self._snapshots.end(token)
            except BaseException:
                self._snapshots.end(token)  # interrupted: once more, it is idempotent
                raise

    def _name_the_pinning_reader(self, failures: int) -> None:
        """Warn who keeps the WAL from being emptied: this process's oldest read unit, held
        longer than a reader may hold a checkpoint up (at the 1st, 2nd, 4th, 8th... failure
        in a row, so a reader that stays does not flood the log)."""
        oldest = self._snapshots.oldest()
        if oldest is None or failures & (failures - 1):
            return
        log.warning(
            "the WAL of %s cannot be emptied while a read unit pins it: %s; end read units "
            "sooner (each one keeps the WAL from being reused until it ends)",
            self._settings.safe_url(),
            oldest.holder().describe(),
        )

    def after_commit(self, connection: Connection) -> None:
        """Empty the WAL when it has grown past half of ``journal_size_limit``; called after
        a commit, in the writer's turn. Never raises: the units are committed already.

        A long read snapshot makes the checkpoint give up at once; it is then tried again
        after a pause that doubles with each failure, so a pinned WAL costs little.
        """
        limit = self._settings.journal_size_limit
        if self._wal_path is None or limit is None:
            return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        now = time.monotonic()
        state = self._state
        if size <= max(limit // 2, _WAL_FLOOR) or now < state.retry_at:
            return
        busy = 1
        # Other processes' readers that began before the WAL was copied: waited for a
        # little longer after each failure, never longer than a reader hold.
        wait_ms = min(_WAL_WAIT_MS << min(state.failures, 8), int(READER_HOLD_MAX * 1000))
        started = time.perf_counter()
        self._readers_may_start.clear()
        try:
            if not self._snapshots.drain(READER_HOLD_MAX):
                self._name_the_pinning_reader(state.failures)
            raw: Any = connection.connection.dbapi_connection
            raw.execute(f"PRAGMA busy_timeout = {wait_ms}")
            try:
                busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                raw.execute(f"PRAGMA busy_timeout = {self._settings.busy_timeout_ms}")
        except Exception:
            log.debug("checkpoint of %s failed", self._settings.safe_url(), exc_info=True)
        finally:
            self._readers_may_start.set()
        if self._telemetry is not None:
            # From the moment new snapshots waited: what the process's readers paid for it.
            self._telemetry.checkpointed("truncate", time.perf_counter() - started)
        if busy:
            state.retry_at = now + min(_RETRY_FIRST * 2 ** min(state.failures, 8), _RETRY_MAX)
            state.failures += 1
        else:
            state.failures = 0
