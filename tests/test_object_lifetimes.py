"""Objects opened and closed the way a long-running service does it: per request, thousands
of times, a file per tenant. A closed object must die: whatever it registered process-wide
(event listeners, helper threads, caches, write sides) must not keep it alive.

Each case checks with weak references, after ``gc.collect()``, that every closed object is
gone; nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from app import BlockStore, Database, DatabaseManager
from app.aio import AsyncBlockStore, AsyncDatabase
from app.models import ShortTermMemory

from .helpers import run_threads

pytestmark = pytest.mark.timeout(300)


def alive(refs: list[weakref.ref[object]]) -> int:
    # A collection can free objects whose finalizers drop the last reference to a further
    # cycle (asyncio's loop, a driver's connection): collect until nothing more is freed.
    for _ in range(5):
        if not gc.collect():
            break
    return sum(ref() is not None for ref in refs)


def cycles(count: int, open_and_close: Callable[[int], weakref.ref[object]]) -> int:
    """Run ``count`` cycles and return how many of the closed objects are still alive."""
    refs = [open_and_close(number) for number in range(count)]
    return alive(refs)


#: Open-and-close cycles per backend (a PostgreSQL cycle costs a few server connections).
REQUESTS = {"sqlite": 1000, "postgres": 200}


@pytest.fixture
def url(db_url: str) -> str:
    with Database(db_url, auto_upgrade=True):
        pass
    return db_url


def test_a_database_per_request_dies_when_disposed(url: str, backend: str) -> None:
    def request(number: int) -> weakref.ref[object]:
        with Database(url) as db:
            BlockStore(db).append(f"request {number}")
            return weakref.ref(db)

    assert cycles(REQUESTS[backend], request) == 0


def test_a_manager_per_request_dies_when_closed(url: str, backend: str) -> None:
    def request(number: int) -> weakref.ref[object]:
        manager = DatabaseManager(url)
        manager.append_block(f"request {number}")
        manager.get_block(0)
        refs = weakref.ref(manager.database)
        manager.close()
        return refs

    assert cycles(REQUESTS[backend], request) == 0


def test_objects_that_used_every_part_of_the_layer_die(url: str) -> None:
    """Searches (the vector cache, the keyword index), read units, ORM sessions in other
    threads, asyncio appends (the batcher's helper thread) and the legacy conn."""

    def request(number: int) -> weakref.ref[object]:
        db = Database(url)
        store = BlockStore(db)
        store.append(f"garden {number}", keywords=["garden"], embedding=[0.1, 0.2, 0.3])
        store.similar([0.1, 0.2, 0.3], top_k=2)
        store.search_keywords(["garden"])
        store.since("2000-01-01T00:00:00")
        with db.read() as session:
            session.execute(text("SELECT 1"))

        def in_a_thread(_: int) -> None:
            db.run(lambda s: s.merge(ShortTermMemory(id=f"m{number}", timestamp="t", content="c")))
            store.append("from a thread")

        assert run_threads(2, in_a_thread) == []

        async def from_asyncio() -> None:
            async_db = AsyncDatabase.wrap(db)
            await AsyncBlockStore(async_db).append("from a task")
            await async_db.aclose()

        asyncio.run(from_asyncio())
        db.dispose()
        return weakref.ref(db)

    assert cycles(40, request) == 0


def test_a_legacy_manager_that_used_conn_and_transactions_dies(url: str) -> None:
    def request(number: int) -> weakref.ref[object]:
        manager = DatabaseManager(url)
        conn = manager.conn
        conn.execute(
            "INSERT INTO short_term_memories (id, timestamp, content) VALUES (?, ?, ?)",
            (f"m{number}", "2026-01-01T00:00:00", "c"),
        )
        conn.commit()
        conn.cursor().execute("SELECT count(*) FROM blocks").fetchall()
        with manager.transaction():
            manager.get_last_block_info()
        manager.search_blocks_by_keyword(["x"])
        ref = weakref.ref(manager.database)
        manager.close()
        return ref

    assert cycles(100, request) == 0


def test_a_file_per_tenant_leaves_nothing_behind(tmp_path: Path) -> None:
    def tenant(number: int) -> weakref.ref[object]:
        with Database(f"sqlite:///{tmp_path / f'tenant-{number}.db'}") as db:
            BlockStore(db).append("hello")
            return weakref.ref(db.engine)

    assert cycles(100, tenant) == 0
