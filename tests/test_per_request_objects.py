"""A Database per request shares with the others of its process what belongs to the file,
not to the object: the WAL bound (whose snapshots a checkpoint waits for) and the
similarity cache (so a request does not read every embedding again)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from app import BlockStore, Database, errors, schema

from .helpers import postgres_schema, require_backend, run_threads

pytestmark = pytest.mark.timeout(180)

MIB = 1024 * 1024


def test_readers_of_per_request_objects_let_the_wal_be_emptied(tmp_path: Path) -> None:
    """Readers that open a Database per request, one after another without a pause, with
    snapshots (150 ms) longer than a checkpoint waits for another object's readers and
    always overlapping: the writer's checkpoint holds them back and waits for theirs, so
    the WAL stays near its bound instead of growing with every write."""
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    limit = 4 * MIB
    with Database(url, journal_size_limit=limit) as writer:
        store = BlockStore(writer)
        store.append("first")
        stop = threading.Event()
        wal_sizes: list[int] = []

        def reader(number: int) -> None:
            if number == 0:  # the writer: 40 MiB of blocks, 200 KiB each
                try:
                    for block in range(200):
                        store.append(f"{block} " + "x" * 200_000)
                        wal_sizes.append(os.path.getsize(tmp_path / "memory.db-wal"))
                finally:
                    stop.set()
                return
            while not stop.is_set():  # a request: its own Database, a report's snapshot
                with Database(url, journal_size_limit=limit) as request, request.read():
                    BlockStore(request).count()
                    stop.wait(0.15)

        assert run_threads(4, reader) == []
    # Without a shared bound the WAL only grew (the readers' snapshots always overlap).
    assert max(wal_sizes[-50:]) <= 3 * limit, [s // MIB for s in wal_sizes[::10]]


def test_databases_per_request_share_the_similarity_cache(tmp_path: Path) -> None:
    from app.search import _vector_cache

    url = f"sqlite:///{tmp_path / 'memory.db'}"
    with Database(url) as first:
        BlockStore(first).append_many(
            [{"context": f"b{i}", "embedding": [i, 1.0]} for i in range(50)]
        )
        BlockStore(first).similar([1.0, 1.0], top_k=3)
        with Database(url) as second:
            found = BlockStore(second).similar([1.0, 1.0], top_k=3)
            assert [hit.block.block_index for hit in found] == [1, 2, 3]
            assert _vector_cache.cache_for(second) is _vector_cache.cache_for(first)
            assert second.stats().vector_cache_bytes == first.stats().vector_cache_bytes > 0
        with Database(url, vector_cache_limit=0) as uncached:  # its own setting: no cache
            assert BlockStore(uncached).similar([1.0, 1.0], top_k=1)[0].block.block_index == 1
            assert uncached.stats().vector_cache_bytes == 0


def test_a_database_per_request_finds_the_cache_of_the_one_before(tmp_path: Path) -> None:
    """No Database stays open between two requests: the cache they use outlives them."""
    from app.search import _vector_cache

    url = f"sqlite:///{tmp_path / 'memory.db'}"
    caches = []
    for request in range(3):
        with Database(url) as db:
            store = BlockStore(db)
            store.append(f"request {request}", embedding=[1.0, float(request)])
            assert store.similar([1.0, float(request)], top_k=1)[0].block.block_index == request
            caches.append(_vector_cache.cache_for(db))
    assert caches[0] is caches[1] is caches[2]


def test_new_files_opened_at_once_from_threads_are_all_migrated(tmp_path: Path) -> None:
    """A file per tenant, the first request of each at the same moment: Alembic runs one
    migration at a time per process (it keeps the running one in module globals), so every
    file gets the whole schema and its first block."""

    def first_request(tenant: int) -> None:
        with Database(f"sqlite:///{tmp_path / f'tenant{tenant}.db'}") as db:
            BlockStore(db).append(f"tenant {tenant}")

    assert run_threads(8, first_request) == []
    for tenant in range(8):
        with Database(f"sqlite:///{tmp_path / f'tenant{tenant}.db'}") as db:
            assert schema.current_revision(db) == schema.head_revision()
            assert [b.context for b in BlockStore(db).page()] == [f"tenant {tenant}"]


@pytest.mark.postgres
def test_new_schemas_opened_at_once_from_threads_are_all_migrated() -> None:
    require_backend("postgres")
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(postgres_schema("tenant_")) for _ in range(4)]

        def first_request(tenant: int) -> None:
            with Database(urls[tenant], auto_upgrade=True) as db:
                BlockStore(db).append(f"tenant {tenant}")

        assert run_threads(4, first_request) == []
        for tenant, url in enumerate(urls):
            with Database(url) as db:
                assert [b.context for b in BlockStore(db).page()] == [f"tenant {tenant}"]


def test_a_migration_waiting_past_its_deadline_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'late.db'}"
    with (
        schema._ONE_MIGRATION,  # another migration of this process, running long
        pytest.raises(errors.DatabaseBusyError, match="another migration"),
    ):
        Database(url, retry_deadline=0.2)
    with Database(url, check_schema=False) as db:
        assert schema.current_revision(db) is None
    with Database(url) as db:  # once it ended, the file is migrated as usual
        assert schema.current_revision(db) == schema.head_revision()
