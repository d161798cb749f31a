"""Who holds a write turn: the thread, its asyncio task, since when, where its unit began,
and what it is doing now.

Taking the turn records the thread and the call site (the first frame outside the layer,
found by walking a few frames: no traceback is kept, so no frame stays alive). What the
holder is doing is read only when someone asks (an error, ``app top``): the holding thread's
current frame shows whether it is inside a driver call (running a statement, or a commit)
or in Python code, and where.
"""

from __future__ import annotations

import asyncio
import sys
import sysconfig
import threading
import time
from pathlib import Path
from types import FrameType

from app.errors import LockHolder

#: Frames in these directories are the layer's or the standard library's (a context
#: manager, an Event's wait): the call site, and where a holder idles, is the first frame
#: outside them (the application's own code, or a library it uses).
_LAYER = str(Path(__file__).resolve().parents[1]) + "/"
_STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve()) + "/"
_SITE_PACKAGES = "-packages/"  # site-packages and dist-packages live under the stdlib too


def _ours_or_stdlib(filename: str) -> bool:
    if filename.startswith(_LAYER):
        return True
    return filename.startswith(_STDLIB) and _SITE_PACKAGES not in filename


# _ours_or_stdlib by file name: every turn taken walks a dozen frames, mostly the same
# files each time. Bounded by the number of source files of the process.
_OURS_OR_STDLIB: dict[str, bool] = {}


#: Python frames that mean "inside a statement": the driver call of SQLAlchemy's default
#: dialect, the layer's own straight-to-the-driver calls, and psycopg's cursor.
_IN_STATEMENT = {
    ("default.py", "do_execute"),
    ("default.py", "do_executemany"),
    ("default.py", "do_execute_no_params"),
    ("default.py", "do_commit"),
    ("default.py", "do_rollback"),
    ("_driver.py", "raw_execute"),
    ("_driver.py", "raw_execute_all"),
    ("cursor.py", "execute"),
    ("cursor.py", "executemany"),
}


class Turn:
    """One thread's hold of a write turn, from the moment it took it."""

    __slots__ = ("since", "site", "task", "thread_id", "thread_name", "wall_since")

    def __init__(self) -> None:
        thread = threading.current_thread()
        self.thread_id = thread.ident or threading.get_ident()
        self.thread_name = thread.name
        self.task = _task_name()
        self.since = time.monotonic()
        self.wall_since = time.time()
        self.site = call_site(sys._getframe(1))

    def taken(self) -> None:
        """The turn was taken now (a Turn may be made before waiting for it)."""
        self.since = time.monotonic()
        self.wall_since = time.time()

    def holder(self) -> LockHolder:
        """What this hold looks like now (the thread's current frame read once)."""
        return LockHolder(
            pid=None,
            thread_name=self.thread_name,
            thread_id=self.thread_id,
            task=self.task,
            held=time.monotonic() - self.since,
            site=self.site,
            doing=doing(self.thread_id),
        )


def _task_name() -> str | None:
    loop = asyncio.events._get_running_loop()
    task = None if loop is None else asyncio.current_task(loop)
    return None if task is None else task.get_name()


def call_site(frame: FrameType | None) -> str | None:
    """``file:line in function`` of the first frame, from ``frame`` outwards, that is not
    the layer's own (None when every frame is)."""
    known = _OURS_OR_STDLIB
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        ours = known.get(filename)
        if ours is None:
            ours = known[filename] = _ours_or_stdlib(filename)
        if not ours:
            return f"{filename}:{frame.f_lineno} in {code.co_name}"
        frame = frame.f_back
    return None


def doing(thread_id: int) -> str:
    """What the thread ``thread_id`` is doing now: running a statement, or idle in Python
    (and where: the innermost frame outside the layer, else the layer's own)."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return "its thread has ended"
    innermost = frame
    while frame is not None:
        code = frame.f_code
        if (Path(code.co_filename).name, code.co_name) in _IN_STATEMENT:
            return "running a statement"
        frame = frame.f_back
    site = call_site(innermost)
    if site is None:
        code = innermost.f_code
        return f"in the layer at {code.co_filename}:{innermost.f_lineno} in {code.co_name}"
    return f"idle in Python at {site}"
