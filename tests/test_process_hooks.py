"""The layer's fork hooks (``app._process``): none until the first Database is made, then
installed once, running in the stages' order. Each case runs in a fresh interpreter, since
the test process has long made Databases."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app import _process

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

ROOT = Path(__file__).resolve().parents[1]

#: Records what is given to os.register_at_fork and which stage callbacks run, before the
#: package is imported; ``fork_and_report()`` forks and returns the child's record.
_PRELUDE = """
import json, os, sys
registered = []
_register = os.register_at_fork
def spy(**hooks):
    registered.append(hooks)
    _register(**hooks)
os.register_at_fork = spy

import app, app.aio, app.cli, app.operations.doctor  # everything the package has to import
from app import _process
ran = []
_run = _process._run
def record(stage, when):
    ran.append([stage, when])
    _run(stage, when)
_process._run = record  # what install_fork_hooks() will register

def from_layer(hooks):  # a callback of the package, or a stage's (which calls record)
    called = [getattr(hook, "func", hook) for hook in hooks.values()]
    return any(f is record or f.__module__.startswith("app") for f in called)

def fork_and_report():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, json.dumps({"ran": ran, "installed": _process.installed()}).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    return child
"""


def _run_python(body: str, *args: str) -> None:
    code = _PRELUDE + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr


def test_importing_the_package_installs_no_fork_hook() -> None:
    _run_python(
        """
        assert not _process.installed()
        assert not any(from_layer(hooks) for hooks in registered), registered
        child = fork_and_report()
        assert child == {"ran": [], "installed": False}, child
        assert ran == []  # nor in the parent, before or after the fork
        """
    )


def test_the_first_databases_install_the_hooks_once(tmp_path: Path) -> None:
    _run_python(
        """
        import threading
        from app import Database

        folder = sys.argv[1]
        start = threading.Barrier(8)
        made = []

        def open_one(number):
            start.wait(30)
            made.append(Database(f"sqlite:///{folder}/db{number}.db"))

        threads = [threading.Thread(target=open_one, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(made) == 8
        assert _process.installed()
        ours = [hooks for hooks in registered if from_layer(hooks)]
        assert len(ours) == len(_process.STAGES), ours  # once, one registration per stage

        stages = list(_process.STAGES)
        child = fork_and_report()
        # Before the fork the stages run last first, after it first to last.
        assert ran == [[s, 0] for s in reversed(stages)] + [[s, 1] for s in stages], ran
        assert child["ran"] == [[s, 0] for s in reversed(stages)] + [[s, 2] for s in stages]
        assert child["installed"]
        _process.install_fork_hooks()  # again: nothing more is registered
        assert len([hooks for hooks in registered if from_layer(hooks)]) == len(stages)
        for database in made:
            database.dispose()
        """,
        str(tmp_path),
    )


def test_locks_a_thread_held_at_the_fork_are_free_in_the_child(tmp_path: Path) -> None:
    """A fork while another thread holds a lock of the layer's small registries (keyword
    index upkeep, replica positions, asyncio inboxes): the child gets locks of its own, so
    it neither waits forever nor gives up its keyword-index upkeep."""
    _run_python(
        """
        import asyncio, threading
        from app import BlockStore, Database, aio
        from app.database import _replica_positions
        from app.schema import _keyword_index

        db = Database(f"sqlite:///{sys.argv[1]}/memory.db")
        BlockStore(db).append("before the fork", keywords=["garden"])
        _keyword_index.catch_up(db, wait=True)  # its drain lock now exists
        locks = [
            _keyword_index._DRAINING_GUARD,
            _keyword_index._DRAINING[db],
            _replica_positions.POSITIONS._lock,
            aio._inbox._INBOXES_LOCK,
        ]
        held, release = threading.Event(), threading.Event()

        def holder():
            for lock in locks:
                lock.acquire()
            held.set()
            release.wait(60)
            for lock in locks:
                lock.release()

        thread = threading.Thread(target=holder)
        thread.start()
        assert held.wait(30)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                BlockStore(db).append("in the child", keywords=["garden"])
                _replica_positions.POSITIONS.note("primary", 7)
                loop = asyncio.new_event_loop()
                aio._inbox.inbox_for(loop)
                loop.close()
                assert _keyword_index.catch_up(db, wait=False) >= 0
                assert not _keyword_index._DRAINING_GUARD.locked()
                found = BlockStore(db).search_keywords(["garden"])
                assert [b.context for b in found] == ["before the fork", "in the child"]
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        waited = os.waitpid(pid, 0)[1]
        release.set()
        thread.join(30)
        assert os.waitstatus_to_exitcode(waited) == 0
        assert all(not lock.locked() for lock in locks)
        db.dispose()
        """,
        str(tmp_path),
    )


def test_a_stage_must_be_one_of_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown fork stage"):
        _process.on_fork("somewhere", after_in_child=lambda: None)
