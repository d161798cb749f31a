"""Many threads and processes appending to one chain: one contiguous, linked chain."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest
from sqlalchemy import text

from app import BlockStore, Database
from app.errors import IntegrityViolationError
from app.legacy import DatabaseManager

from .helpers import assert_chain_intact, join_processes, run_threads
from .legacy_helpers import append_with_transaction

THREADS = 100
APPENDS = 20


def test_hundred_threads_append_one_chain(db: Database) -> None:
    store = BlockStore(db)
    returned: list[int] = []

    def work(number: int) -> None:
        for i in range(APPENDS):
            block = store.append(f"thread {number} block {i}", keywords=[f"t{number}"])
            returned.append(block.block_index)

    assert run_threads(THREADS, work) == []
    assert sorted(returned) == list(range(THREADS * APPENDS))
    assert_chain_intact(db, THREADS * APPENDS)
    with db.read() as session:
        per_thread = session.execute(
            text("SELECT keyword, count(*) FROM block_keywords GROUP BY keyword")
        ).all()
    assert sorted(n for _, n in per_thread) == [APPENDS] * THREADS
    assert db.stats().connections_checked_out == 0


def _process_worker(url: str, kind: str, threads: int, appends: int, name: str) -> None:
    """``threads`` threads of one process append ``appends`` blocks each: through
    ``BlockStore.append`` (group commit, tagged ``name``), or through the facade's
    transaction pattern (read the last block, add the next, in one transaction; tagged t)."""
    if kind == "store":
        db = Database(url)
        store = BlockStore(db)
        errors = run_threads(
            threads,
            lambda n: [store.append(f"{name}-{n}-{i}", tags=[name]) for i in range(appends)],
        )
        db.dispose()
    else:
        with DatabaseManager(url) as manager:
            errors = run_threads(threads, lambda n: append_with_transaction(manager, appends))
    if errors:
        raise SystemExit(f"{len(errors)} errors, first: {errors[0]!r}")


@pytest.mark.parametrize(
    "kinds",
    [("store",) * 4, ("store", "store", "store", "facade")],
    ids=["four-stores", "three-stores-and-a-facade"],
)
def test_four_processes_of_25_threads_append_one_chain(
    db: Database, db_url: str, kinds: tuple[str, ...]
) -> None:
    """Four processes, each of 25 threads, extend one chain; in the second case one of them
    writes through the facade's transaction pattern, among group-committed appends."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_process_worker, args=(db_url, kind, 25, APPENDS, f"p{k}"))
        for k, kind in enumerate(kinds)
    ]
    for process in processes:
        process.start()
    assert join_processes(processes, timeout=240) == [0, 0, 0, 0]
    assert_chain_intact(db, 4 * 25 * APPENDS)
    with db.read() as session:
        tags = dict(
            session.execute(text("SELECT tag, count(*) FROM block_tags GROUP BY tag")).all()
        )
    expected = {f"p{k}" if kind == "store" else "t": 25 * APPENDS for k, kind in enumerate(kinds)}
    assert tags == expected


POISON_TRIGGERS: dict[str, list[str]] = {
    "sqlite": [
        "CREATE TRIGGER poison BEFORE INSERT ON blocks WHEN NEW.context = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poisoned block'); END"
    ],
    "postgres": [
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.context = 'poison' THEN RAISE EXCEPTION 'poisoned block' "
        "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER poison BEFORE INSERT ON blocks FOR EACH ROW EXECUTE FUNCTION poison()",
    ],
}


def test_a_database_error_fails_only_the_guilty_append(db: Database, backend: str) -> None:
    """The group commit retries a failed batch append by append, so neighbours succeed."""
    with db.unit_of_work() as session:
        for statement in POISON_TRIGGERS[backend]:
            session.execute(text(statement))
    store = BlockStore(db)
    failures: list[tuple[int, int, Any]] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        for i in range(10):
            context = "poison" if (number, i) == (0, 5) else f"{number}-{i}"
            try:
                store.append(context)
            except IntegrityViolationError as exc:
                with lock:
                    failures.append((number, i, exc))

    assert run_threads(50, work) == []
    assert [(n, i) for n, i, _ in failures] == [(0, 5)]
    assert "poisoned block" in str(failures[0][2])
    assert_chain_intact(db, 499)
