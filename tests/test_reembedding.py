"""Re-embedding: new vectors for stored blocks, through the API, raw SQL or another process,
are seen by the next similarity search of every object in every process, exactly as a full
scan ranks them; and a whole store moves to a new model in batches while it serves.
"""

from __future__ import annotations

import multiprocessing
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app import BlockStore, Database, DatabaseManager, errors

from .helpers import Background, join_processes, run_threads
from .legacy_helpers import LEGACY_FIXTURE

pytestmark = pytest.mark.timeout(240)


def vector(rng: random.Random, size: int = 4) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(size)]


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[BlockStore, BlockStore]]:
    """A store with 200 embedded blocks (its cache warmed), and a reference store on the
    same database that never caches (every search a full scan)."""
    rng = random.Random(7)
    with Database(db_url, auto_upgrade=True) as db, Database(db_url, vector_cache_limit=0) as ref:
        store = BlockStore(db)
        store.append_many([{"context": f"b{i}", "embedding": vector(rng)} for i in range(200)])
        store.similar([1, 0, 0, 0], top_k=3)  # the cache now holds every row
        yield store, BlockStore(ref)


def ranking(store: BlockStore, query: list[float], k: int = 10, **kw: Any) -> list[Any]:
    return [(hit.block.block_index, hit.similarity) for hit in store.similar(query, k, **kw)]


def test_a_rewritten_embedding_is_seen_by_the_same_object(
    stores: tuple[BlockStore, BlockStore],
) -> None:
    store, reference = stores
    query = [0.3, -0.2, 0.9, 0.1]
    assert 17 not in [i for i, _ in ranking(store, query, 3)]
    assert store.set_embedding(17, query, model="v2")
    assert ranking(store, query, 3)[0] == (17, pytest.approx(1.0))
    assert ranking(store, query) == ranking(reference, query)
    assert store.get(17).embedding_model == "v2"  # type: ignore[union-attr]
    assert store.verify_chain().ok  # the hash does not cover the embedding
    assert not store.set_embedding(10_000, query)  # no such block: nothing written


def test_raw_sql_rewrites_deletes_and_inserts_below_are_seen(
    stores: tuple[BlockStore, BlockStore], db_url: str
) -> None:
    store, reference = stores
    query = [0.5, 0.5, -0.5, 0.5]
    raw = np.asarray(query, dtype=np.float32).tobytes()
    best = ranking(store, query, 1)[0][0]
    with Database(db_url) as other, other.writing() as connection:
        connection.exec_driver_sql(
            "UPDATE block_embeddings SET embedding = ? WHERE block_index = 42"
            if other.settings.is_sqlite
            else "UPDATE block_embeddings SET embedding = %s WHERE block_index = 42",
            (raw,),
        )
        connection.exec_driver_sql(f"DELETE FROM block_embeddings WHERE block_index = {best}")
    found = ranking(store, query)
    assert found[0] == (42, pytest.approx(1.0)) and best not in [i for i, _ in found]
    assert found == ranking(reference, query)
    store.set_embedding(best, [-x for x in query])  # inserted again, below the last one
    assert ranking(store, [-x for x in query], 1)[0][0] == best
    assert ranking(store, query, 200) == ranking(reference, query, 200)


def _rewrite_in_child(url: str, index: int, values: list[float], report: Any) -> None:
    try:
        with Database(url) as db:
            BlockStore(db).set_embedding(index, values, model="child")
        report.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        report.put(repr(exc))


def test_a_rewrite_by_another_process_is_seen(stores: tuple[BlockStore, BlockStore]) -> None:
    store, reference = stores
    query = [-0.1, 0.7, 0.7, -0.1]
    context = multiprocessing.get_context("spawn")
    report = context.Queue()
    child = context.Process(
        target=_rewrite_in_child, args=(store.db.settings.url, 99, query, report)
    )
    child.start()
    assert join_processes([child], 60) == [0]
    assert report.get(timeout=10) == "ok"
    assert ranking(store, query, 1) == [(99, pytest.approx(1.0))]
    assert ranking(store, query, 50, model="child") == ranking(reference, query, 50, model="child")


def test_random_rewrites_keep_every_search_equal_to_a_full_scan(
    stores: tuple[BlockStore, BlockStore],
) -> None:
    store, reference = stores
    rng = random.Random(11)
    for round_ in range(30):
        changes: dict[int, Any] = {}
        for _ in range(rng.randrange(1, 12)):
            index = rng.randrange(200)
            changes[index] = None if rng.random() < 0.1 else vector(rng)
        store.reembed(changes, model=rng.choice(["default", "v2"]))
        for _ in range(3):
            query = vector(rng)
            for model in (None, "v2"):
                k = rng.choice([1, 5, 30])
                assert ranking(store, query, k, model=model) == ranking(
                    reference, query, k, model=model
                ), (round_, model, k)


def test_a_read_unit_keeps_its_snapshot_while_others_reembed(
    stores: tuple[BlockStore, BlockStore],
) -> None:
    store, _ = stores
    db = store.db
    query = [0.9, 0.1, 0.1, -0.4]
    before = ranking(store, query, 5)
    with db.read():
        assert ranking(store, query, 5) == before  # the snapshot starts here

        def rewrite() -> None:
            BlockStore(db).set_embedding(before[-1][0] + 1, query)
            assert ranking(BlockStore(db), query, 1)[0][0] == before[-1][0] + 1

        Background(rewrite).start().join()
        assert ranking(store, query, 5) == before  # still the snapshot's embeddings
    assert ranking(store, query, 1)[0][0] == before[-1][0] + 1


def test_notes_pruned_past_a_cache_make_it_rebuild(
    stores: tuple[BlockStore, BlockStore], db_url: str
) -> None:
    store, reference = stores
    query = [0.2, 0.2, 0.2, 0.9]
    store.set_embedding(5, query)
    assert ranking(store, query, 1)[0][0] == 5
    with Database(db_url) as other:
        BlockStore(other).reembed({6: query, 7: [-x for x in query]})
        with other.writing() as connection:  # what pruning does to a cache that lags
            connection.exec_driver_sql("DELETE FROM embedding_changes")
        BlockStore(other).set_embedding(8, query)
    assert ranking(store, query, 20) == ranking(reference, query, 20)


def test_a_store_moves_to_a_new_model_while_it_serves(db_url: str) -> None:
    """The recipe in docs/guide/search.md: the service embeds new blocks with the new
    model, while a job re-embeds the old blocks in batches of 50 and other threads search
    either model; then every block is on the new model and searches equal the full scan."""
    rng = random.Random(3)
    with Database(db_url, auto_upgrade=True) as db, Database(db_url, vector_cache_limit=0) as ref:
        store, reference = BlockStore(db), BlockStore(ref)
        store.append_many([{"context": f"b{i}", "embedding": vector(rng)} for i in range(300)])
        done = threading.Event()

        def new_model(context: str) -> list[float]:
            seeded = random.Random(context)
            return [seeded.uniform(-1, 1) for _ in range(8)]  # another model, another size

        def migrate() -> None:
            try:
                while True:  # until no block is left on the old model
                    left = [b for b in store.page(limit=10_000) if b.embedding_model == "default"]
                    if not left:
                        return
                    for start in range(0, len(left), 50):
                        batch = left[start : start + 50]
                        vectors = {b.block_index: new_model(b.context) for b in batch}
                        assert store.reembed(vectors, model="v2") == len(batch)
            finally:
                done.set()

        def serve(number: int) -> None:
            local = random.Random(number)
            while not done.is_set():
                text = f"new {number} {local.random()}"
                store.append(text, embedding=new_model(text), embedding_model="v2")
                for model, query in (("default", vector(local)), ("v2", new_model(text))):
                    found = ranking(store, query, 5, model=model)
                    assert len(found) <= 5 and all(abs(s) <= 1 + 1e-9 for _, s in found)

        assert run_threads(4, lambda n: migrate() if n == 0 else serve(n)) == []
        blocks = store.page(limit=10_000)
        assert len(blocks) > 300 and all(b.embedding_model == "v2" for b in blocks)
        assert store.verify_chain().ok
        for _ in range(5):
            query = new_model(f"final {rng.random()}")
            assert ranking(store, query, 20, model="v2") == ranking(
                reference, query, 20, model="v2"
            )
            assert ranking(store, query, 20) == ranking(reference, query, 20)


def test_the_facade_updates_an_embedding_of_the_old_class_database(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    shutil.copyfile(LEGACY_FIXTURE, path)
    with DatabaseManager(str(path)) as manager:
        query = [0.0] * 127 + [1.0]
        manager.search_blocks_by_embedding(query)  # the cache is warm
        assert manager.update_block_embedding(3, query, embedding_model="new")
        assert manager.search_blocks_by_embedding(query, top_k=1)[0]["block_index"] == 3
        assert manager.get_block_embedding(3)["embedding_model"] == "new"  # type: ignore[index]
        assert not manager.update_block_embedding(999, query)
        with pytest.raises(errors.InvalidInputError, match="block 3"):
            manager.update_block_embedding(3, [float("nan")] * 128)
        assert manager.blocks.verify_chain().ok


def test_a_change_log_made_again_by_a_migration_is_not_mistaken(
    stores: tuple[BlockStore, BlockStore], db_url: str
) -> None:
    """Down to 0004 and up again: the new log numbers its notes from 1; a warm cache that
    had applied more notes than that still sees the next rewrite."""
    from app import schema

    store, reference = stores
    rng = random.Random(5)
    for index in range(30):  # the old log counts 30 notes
        store.set_embedding(index, vector(rng))
    query = [0.1, 0.9, -0.3, 0.2]
    ranking(store, query)  # applied: 30
    with Database(db_url, check_schema=False) as migrator:
        schema.downgrade(migrator, "0004")
        schema.upgrade(migrator)
    store.set_embedding(150, query)  # note 1 of the new log
    assert ranking(store, query, 1)[0][0] == 150
    assert ranking(store, query, 50) == ranking(reference, query, 50)
