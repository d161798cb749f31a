"""A small record next to a SQLite database (``<file>-turn``) that says who holds its write
lock, and how each process's writers are doing, for other processes to read.

SQLite says "database is locked" but never who locks it. So the process whose write
transaction is open keeps a record current in a shared memory map: its process id, the
thread holding its turn, that thread's asyncio task, since when, and where its unit began.
Only the holder of SQLite's write lock writes the holder part (the lock makes it the only
writer); readers (an error in another process, ``app top``) copy it and check its sequence
number, which is odd while a write is under way, so they never see a half-written record.
Below the holder part, each process using the file keeps one slot of figures (writers
queued, turn waits, commits), written by that process only.

Writing is a copy into the map (no system call). The record is advisory: a process that
cannot create or map it (a read-only directory, say) goes on without it. Each process maps
it while a ``Database`` on the file lives (the write side owns it), so a file closed by
every Database is no longer mapped (a file per tenant does not pile up mappings, and a
file system can be remounted read-only).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass

from app.errors import LockHolder

log = logging.getLogger(__name__)

SUFFIX = "-turn"
_MAGIC = b"appturn1"
# Header: magic, sequence, holder pid (0: none), thread id, since (wall clock), total
# commits; then three UTF-8 texts of fixed room: thread name, task, call site.
_HEAD = struct.Struct("<8sQiQdQ")
_TEXTS = (64, 64, 256)
# The three texts, each a length and its room's bytes, written in one call.
_TEXT_ROWS = struct.Struct("<" + "".join(f"H{room - 2}s" for room in _TEXTS))
_HOLDER_SIZE = 512
# Encoded texts kept for the holders seen last (a turn is taken per write unit, mostly by
# the same threads from the same call sites); emptied when it grows past this many.
_ENCODED_MAX = 256
# One slot per process: pid, writers queued, turn waits, their total seconds, commits,
# when it was written (wall clock).
_SLOT = struct.Struct("<iiQdQd")
SLOTS = 64
_SIZE = _HOLDER_SIZE + SLOTS * _SLOT.size


@dataclass(frozen=True)
class ProcessFigures:
    """One process's slot: its writers queued now, its turn waits and commits so far."""

    pid: int
    queued: int
    waits: int
    wait_total: float
    commits: int
    updated: float


class TurnRecord:
    """The ``-turn`` record of one SQLite file, mapped into this process."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        """``read_only``: only read the record (``app top``), never create or write it."""
        self.path = path
        self._read_only = read_only
        self._map: mmap.mmap | None = None
        self._failed = False
        self._slot = -1
        self._lock = threading.Lock()
        self._waits = 0
        self._wait_total = 0.0
        self._commits = 0
        self._queued = 0  # writers queued, as last written to this process's slot
        self._encoded: dict[tuple[str, str | None, str | None], tuple[object, ...]] = {}

    def _mapped(self, create: bool) -> mmap.mmap | None:
        if self._map is not None or self._failed:
            return self._map
        if self._read_only and create:
            return None
        try:
            flags = os.O_RDONLY if self._read_only else os.O_RDWR | (os.O_CREAT if create else 0)
            fd = os.open(self.path, flags, 0o600)
            try:
                if os.fstat(fd).st_size < _SIZE:
                    if not create:
                        return None
                    os.ftruncate(fd, _SIZE)
                access = mmap.ACCESS_READ if self._read_only else mmap.ACCESS_WRITE
                self._map = mmap.mmap(fd, _SIZE, access=access)
            finally:
                os.close(fd)
        except OSError as exc:
            if create:
                self._failed = True  # advisory: go on without it
                log.debug("no turn record at %s: %s", self.path, exc)
            return None
        return self._map

    # -- the holder (written by the process whose write transaction is open) ------------

    def hold(self, thread_id: int, thread_name: str, task: str | None, site: str | None) -> None:
        """This process's thread ``thread_id`` holds the write lock from now."""
        m = self._map
        if m is None:
            m = self._mapped(create=True)
            if m is None:
                return
        _magic, sequence, _pid, _thread, _since, commits = _HEAD.unpack_from(m, 0)
        _HEAD.pack_into(m, 0, _MAGIC, sequence | 1, 0, 0, 0.0, commits)  # odd: writing
        key = (thread_name, task, site)
        texts = self._encoded.get(key)
        if texts is None:
            if len(self._encoded) >= _ENCODED_MAX:
                self._encoded.clear()
            texts = self._encoded[key] = _encode_texts(thread_name, task or "", site or "")
        _TEXT_ROWS.pack_into(m, _HEAD.size, *texts)
        _HEAD.pack_into(
            m, 0, _MAGIC, (sequence | 1) + 1, os.getpid(), thread_id, time.time(), commits
        )

    def release(self, committed: bool) -> None:
        """This process's write transaction ended (``committed``: by a commit)."""
        m = self._map
        if m is None:
            return
        magic, sequence, pid, _thread, _since, commits = _HEAD.unpack_from(m, 0)
        if magic != _MAGIC or pid != os.getpid():
            return
        commits += 1 if committed else 0
        _HEAD.pack_into(m, 0, _MAGIC, sequence + 2, 0, 0, 0.0, commits)
        if committed:
            with self._lock:
                self._commits += 1
            self._publish(None)

    def holder(self) -> LockHolder | None:
        """Who holds the write lock as the record says (None: nobody, no record, or a
        process that is gone)."""
        m = self._mapped(create=False)
        if m is None:
            return None
        for _attempt in range(50):
            magic, sequence, pid, thread_id, since, _commits = _HEAD.unpack_from(m, 0)
            if magic != _MAGIC or pid == 0:
                return None
            texts = []
            offset = _HEAD.size
            for room in _TEXTS:
                length, data = struct.unpack_from(f"<H{room - 2}s", m, offset)
                texts.append(data[:length].decode("utf-8", "replace"))
                offset += room
            if sequence % 2 == 0 and _HEAD.unpack_from(m, 0)[1] == sequence:
                break
            time.sleep(0.0001)
        else:
            return None
        if not _alive(pid):
            return None
        return LockHolder(
            pid=pid,
            thread_name=texts[0],
            thread_id=thread_id,
            task=texts[1] or None,
            held=max(0.0, time.time() - since),
            site=texts[2] or None,
            doing=None if pid != os.getpid() else "in this process",
        )

    def commits(self) -> int:
        """Commits recorded by every process since the record was made."""
        m = self._mapped(create=False)
        return 0 if m is None else int(_HEAD.unpack_from(m, 0)[5])

    # -- each process's figures ---------------------------------------------------------

    def note_wait(self, seconds: float, queued: int) -> None:
        """A writer of this process took the turn after ``seconds``; ``queued`` wait."""
        with self._lock:
            self._waits += 1
            self._wait_total += seconds
        self._publish(queued)

    def _publish(self, queued: int | None) -> None:
        m = self._map
        if m is None:
            m = self._mapped(create=True)
            if m is None:
                return
        with self._lock:
            slot = self._claim(m)
            if slot < 0:
                return
            offset = _HOLDER_SIZE + slot * _SLOT.size
            if queued is None:
                queued = self._queued
            self._queued = queued
            _SLOT.pack_into(
                m,
                offset,
                os.getpid(),
                queued,
                self._waits,
                self._wait_total,
                self._commits,
                time.time(),
            )

    def _claim(self, m: mmap.mmap) -> int:
        pid = os.getpid()
        mine = self._slot
        if mine >= 0 and _SLOT.unpack_from(m, _HOLDER_SIZE + mine * _SLOT.size)[0] == pid:
            return mine
        for slot in range(SLOTS):
            owner = _SLOT.unpack_from(m, _HOLDER_SIZE + slot * _SLOT.size)[0]
            if owner == pid or owner == 0 or not _alive(owner):
                _SLOT.pack_into(m, _HOLDER_SIZE + slot * _SLOT.size, pid, 0, 0, 0.0, 0, time.time())
                self._slot = slot
                self._queued = 0
                return slot
        return -1

    def processes(self) -> list[ProcessFigures]:
        """The figures of every live process that keeps a slot."""
        m = self._mapped(create=False)
        if m is None:
            return []
        found = []
        for slot in range(SLOTS):
            figures = ProcessFigures(*_SLOT.unpack_from(m, _HOLDER_SIZE + slot * _SLOT.size))
            if figures.pid and _alive(figures.pid):
                found.append(figures)
        return found

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def _encode_texts(thread_name: str, task: str, site: str) -> tuple[object, ...]:
    """The arguments of ``_TEXT_ROWS`` for the holder's texts, each cut to its room."""
    values: list[object] = []
    for text, room in zip((thread_name, task, site), _TEXTS, strict=True):
        data = text.encode("utf-8", "replace")[: room - 2]
        values += (len(data), data)
    return tuple(values)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another account's process
    return True
