"""Processes and helpers for the crash and fault tests (importable by child processes).

The crash tests start many short-lived writers and kill them. Importing the package takes
about a second, so they run in a ``forkserver`` context that imports this module (and so
the package) once: each writer is then a fork that starts in milliseconds.

A writer reports every commit on a pipe *after* the call that made it returned, as one
``send_bytes`` message. A message this small is one ``write()`` on a pipe, which is atomic,
so a SIGKILL can cut a report short only by never sending it, never by sending half of it.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

from app import BlockStore, Database
from app.schema import head_revision

# Warm the migration script cache in the fork server, so forked writers open quickly.
head_revision()

#: Most blocks one writer call appends (one transaction: far below ``max_batch``).
MAX_CALL = 40


def context() -> Any:
    """The forkserver context, with this module preloaded in the server."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def expected_block(name: str, seq: int) -> dict[str, Any]:
    """The append arguments of block ``seq`` of writer ``name``: its context names both, so
    every stored block can be checked against what its writer meant to write."""
    rnd = random.Random(f"{name}/{seq}")
    return {
        "context": f"{name}#{seq} " + "lorem ipsum " * rnd.randint(1, 40),
        "keywords": [f"{name}-k{j}" for j in range(rnd.randint(0, 12))],
        "tags": [f"t{seq % 7}", name][: rnd.randint(0, 2)],
        "importance": rnd.randint(0, 100) / 100,
        "metadata": {"writer": name, "seq": seq} if rnd.random() < 0.7 else None,
        "embedding": [rnd.uniform(-1, 1) for _ in range(32)] if rnd.random() < 0.8 else None,
    }


def parse_context(context: str) -> tuple[str, int]:
    """``(writer name, seq)`` of a block written by :func:`expected_block`."""
    head = context.split(" ", 1)[0]
    name, _, seq = head.rpartition("#")
    return name, int(seq)


def append_writer(report: Connection, url: str, name: str, stop: Any = None) -> None:
    """Append blocks in a loop, one at a time or in small batches, and report each commit
    as JSON ``[[seq, index], ...]``; stops when ``stop`` is set (runs until killed if None).
    """
    db = Database(url)
    store = BlockStore(db)
    rnd = random.Random(name)
    seq = 0
    try:
        while stop is None or not stop.is_set():
            count = 1 if rnd.random() < 0.6 else rnd.randint(2, MAX_CALL)
            blocks = [expected_block(name, seq + i) for i in range(count)]
            records = [store.append(**blocks[0])] if count == 1 else store.append_many(blocks)
            pairs = [[seq + i, r.block_index] for i, r in enumerate(records)]
            report.send_bytes(json.dumps(pairs).encode())
            seq += count
        report.send_bytes(b'"done"')
    except BaseException:
        report.send_bytes(json.dumps({"error": traceback.format_exc()}).encode())
        raise
    finally:
        db.dispose()


def read_loop(report: Connection, url: str, stop: Any) -> None:
    """Read and check the chain in a loop until ``stop``; report ``{"reads", "errors"}``."""
    db = Database(url)
    store = BlockStore(db)
    reads, failures = 0, []
    try:
        while not stop.is_set():
            try:
                head = store.head()
                store.recent(5)
                if head is not None:
                    store.get(random.randrange(head.block_index + 1))
                store.search_tags(["t3"], limit=5)
                reads += 1
            except Exception:  # noqa: BLE001 - counted and reported
                failures.append(traceback.format_exc())
    finally:
        report.send_bytes(json.dumps({"reads": reads, "errors": failures[:3]}).encode())
        db.dispose()


class Reports:
    """The parent's end of a writer's report pipe."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.committed: dict[int, int] = {}  # seq -> block index
        self.done = False
        self.error: str | None = None
        self.summary: dict[str, Any] = {}

    def take(self, message: Any) -> None:
        if message == "done":
            self.done = True
        elif isinstance(message, dict) and "error" in message:
            self.error = message["error"]
        elif isinstance(message, dict):
            self.summary = message
        else:
            self.committed.update((seq, index) for seq, index in message)

    def wait(self, timeout: float) -> bool:
        """Read one report, waiting up to ``timeout`` seconds; False if none came."""
        if not self.connection.poll(timeout):
            return False
        try:
            self.take(json.loads(self.connection.recv_bytes()))
        except EOFError:
            return False
        return True

    def drain(self) -> None:
        """Read every report left in the pipe (the writer has exited)."""
        while True:
            try:
                if not self.connection.poll(0):
                    return
                self.take(json.loads(self.connection.recv_bytes()))
            except EOFError:
                return


@contextmanager
def started(target: Any, *args: Any) -> Iterator[tuple[Any, Reports]]:
    """Start ``target(report, *args)`` in a forked process; kill it on the way out."""
    ctx = context()
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(send, *args), daemon=True)
    process.start()
    send.close()
    try:
        yield process, Reports(receive)
    finally:
        if process.is_alive():
            process.kill()
        process.join(30)
        receive.close()
