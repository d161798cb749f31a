"""Keyword search for short Korean words (``python -m benchmarks.search --short-words``).

Fills a database of each backend with N Korean notes (``_korean``) through
``BlockStore.append_many``, as a service writes them, after the schema exists; then, as a
bulk import's owner would, indexes what waits (SQLite: ``refresh_search_index``) or has the
planner's statistics gathered (PostgreSQL: ``ANALYZE``, which autovacuum does after such a
load where it runs). It then times ``search_keywords([word], limit=10)`` for each kind of
word (absent, rare and common words of one, two and three syllables, CJK, Latin, digits,
punctuation), one word of every kind in turn, and checks every word against the full scan
of revision 0002 (same blocks in the same order). On PostgreSQL it prints the plan of one
word of each kind: the statement the search sent, explained with its parameters.

With ``--grow-to M`` the same database then grows to M blocks and is timed again.

The module uses only the public API (and the driver's statement hook to see what was
sent), so that it times the code before a change as well as after it.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import schema
from app.blocks import BlockStore
from app.database import Database
from app.engine import _driver

from ._korean import Corpus
from ._search import reference_keywords

Progress = Callable[[str], None]
LIMIT = 10
#: Kinds whose plan is printed on PostgreSQL (one word each).
EXPLAINED = ("ko2-absent", "ko2-rare", "ko1-common", "cjk-1-2", "ko3-rare", "ascii-rare")


@dataclass
class KindTimes:
    """One kind of word on one backend at one size (ms)."""

    kind: str
    matches: list[int]
    p50: float
    p99: float
    reference_p50: float | None = None


@dataclass
class BackendRun:
    backend: str
    blocks: int
    revision: str
    fill_seconds: float
    catch_up_seconds: float
    kinds: list[KindTimes] = field(default_factory=list)
    identical: tuple[int, int] = (0, 0)
    plans: dict[str, str] = field(default_factory=dict)
    grown: list[KindTimes] = field(default_factory=list)
    grown_blocks: int = 0
    note: str = ""


def _p(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextmanager
def _postgres_schema(server_url: str) -> Iterator[str]:
    """A URL whose connections use a new, empty schema (dropped afterwards)."""
    name = "bench_short_" + uuid.uuid4().hex[:10]
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    url = make_url(server_url).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def _fill(store: BlockStore, corpus: Corpus, start: int, end: int, progress: Progress) -> float:
    started = time.perf_counter()
    for first in range(start, end, 5000):
        store.append_many(corpus.blocks(first, min(5000, end - first)))
        if (first // 5000) % 10 == 9 or first + 5000 >= end:
            progress(f"{store.db.url.split('?')[0]}: {min(first + 5000, end):,} blocks")
    return time.perf_counter() - started


def _catch_up(db: Database) -> float:
    """What a bulk load's owner does (see the module notes); seconds taken."""
    started = time.perf_counter()
    if db.settings.is_sqlite:
        BlockStore(db).refresh_search_index()
    else:
        with db.writing() as connection:
            connection.exec_driver_sql("ANALYZE blocks")
            connection.exec_driver_sql("ANALYZE block_keywords")
    return time.perf_counter() - started


def _time_kinds(
    store: BlockStore, words: dict[str, list[str]], queries: int, references: int
) -> list[KindTimes]:
    """p50/p99 per kind: query i of every kind runs before query i + 1 of any, so a noisy
    moment of the machine slows every kind alike."""
    times: dict[str, list[float]] = {kind: [] for kind in words}
    for number in range(queries):
        for kind, chosen in words.items():
            word = chosen[number % len(chosen)]
            started = time.perf_counter()
            store.search_keywords([word], limit=LIMIT)
            times[kind].append((time.perf_counter() - started) * 1000)
    found = []
    for kind, chosen in words.items():
        reference = []
        for word in chosen[:references]:
            started = time.perf_counter()
            reference_keywords(store.db, [word], LIMIT)
            reference.append((time.perf_counter() - started) * 1000)
        matches = [_count(store.db, word) for word in chosen]
        found.append(
            KindTimes(
                kind,
                matches,
                _p(times[kind], 0.5),
                _p(times[kind], 0.99),
                statistics.median(reference) if reference else None,
            )
        )
    return found


def _count(db: Database, word: str) -> int:
    """Blocks holding ``word`` (by the exact test, as a scan)."""
    with db.reading() as connection:
        position = "instr" if connection.dialect.name == "sqlite" else "strpos"
        mark = "?" if connection.dialect.name == "sqlite" else "%(w)s"
        parameters: Any = (word, word) if mark == "?" else {"w": word}
        query = (
            f"SELECT count(*) FROM (SELECT block_index FROM blocks WHERE {position}"
            f"(lower(context), lower({mark})) > 0 UNION SELECT block_index FROM block_keywords"
            f" WHERE {position}(lower(keyword), lower({mark})) > 0) AS found"
        )
        return int(connection.exec_driver_sql(query, parameters).scalar() or 0)


def _identical(
    store: BlockStore, words: dict[str, list[str]], pieces: list[str]
) -> tuple[int, int]:
    """Each word alone (limit 10), each kind's words together (limit 100), and random
    pieces of one or two characters of stored texts (limit 10), against the full scan."""
    cases = [([word], LIMIT) for chosen in words.values() for word in chosen]
    cases += [(chosen, 100) for chosen in words.values()]
    cases += [([piece], LIMIT) for piece in pieces]
    same = 0
    for chosen, limit in cases:
        got = [b.block_index for b in store.search_keywords(chosen, limit=limit)]
        same += got == reference_keywords(store.db, chosen, limit)
    return same, len(cases)


def _pieces(db: Database, count: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    with db.reading() as connection:
        total = int(connection.exec_driver_sql("SELECT count(*) FROM blocks").scalar() or 0)
        found = []
        for _ in range(count):
            context = connection.exec_driver_sql(
                "SELECT context FROM blocks WHERE block_index = "
                + ("?" if db.settings.is_sqlite else "%(i)s"),
                (rng.randrange(total),) if db.settings.is_sqlite else {"i": rng.randrange(total)},
            ).scalar()
            start = rng.randrange(max(1, len(context) - 1))
            found.append(context[start : start + rng.randint(1, 2)])
    return found


@contextmanager
def _recorded() -> Iterator[list[tuple[str, Any]]]:
    """The statements sent straight to the driver meanwhile (the layer's searches)."""
    seen: list[tuple[str, Any]] = []
    original = _driver.raw_execute_all

    def recording(connection: Any, statements: Any) -> Any:
        statements = list(statements)
        seen.extend(statements)
        return original(connection, statements)

    _driver.raw_execute_all = recording  # type: ignore[assignment]
    try:
        yield seen
    finally:
        _driver.raw_execute_all = original  # type: ignore[assignment]


def _plan(store: BlockStore, word: str) -> str:
    """EXPLAIN ANALYZE of the statement the search of ``word`` sent to look it up."""
    with _recorded() as seen:
        store.search_keywords([word], limit=LIMIT)
    lookups = [
        (statement, parameters)
        for statement, parameters in seen
        if parameters and word in parameters and "FROM blocks" in statement
    ]
    if not lookups:
        return "(no lookup statement was sent)"
    statement, parameters = lookups[0]
    with store.db.reading() as connection:
        rows = _driver.raw_execute(
            connection, "EXPLAIN (ANALYZE, COSTS OFF) " + statement, parameters
        )
        return "\n".join(row[0] for row in rows)


def run_backend(
    backend: str,
    url: str,
    blocks: int,
    queries: int,
    grow_to: int | None,
    progress: Progress,
) -> BackendRun:
    corpus = Corpus()
    words = corpus.words()
    db = Database(url, auto_upgrade=True)
    try:
        store = BlockStore(db)
        revision = schema.current_revision(db) or "-"
        filled = _fill(store, corpus, 0, blocks, progress)
        run = BackendRun(backend, blocks, revision, filled, _catch_up(db))
        if backend == "postgres":
            with db.reading() as connection:
                autovacuum = connection.exec_driver_sql("SHOW autovacuum").scalar()
            run.note = f"autovacuum {autovacuum} on the server; ANALYZE ran after the load"
        progress(f"{backend}: timing {len(words)} kinds of words at {blocks:,} blocks")
        run.kinds = _time_kinds(store, words, queries, 3)
        run.identical = _identical(store, words, _pieces(db, 40, blocks))
        progress(f"{backend}: {run.identical[0]} of {run.identical[1]} identical to the scan")
        if backend == "postgres":
            run.plans = {kind: _plan(store, words[kind][0]) for kind in EXPLAINED}
        if grow_to and grow_to > blocks:
            _fill(store, corpus, blocks, grow_to, progress)
            _catch_up(db)
            run.grown_blocks = grow_to
            run.grown = _time_kinds(store, words, queries, 1)
    finally:
        db.dispose()
    return run


def run_short_words(
    *,
    blocks: int,
    queries: int,
    backends: tuple[str, ...],
    postgres_url: str | None,
    grow_to: int | None,
    workdir: str | None,
    progress: Progress,
) -> list[BackendRun]:
    from ._runner import workspace

    runs = []
    for backend in backends:
        if backend == "sqlite":
            with workspace(workdir, "app-bench-short-") as root:
                path = os.path.join(root, f"short-{blocks}.db")
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + suffix):
                        os.remove(path + suffix)
                url = f"sqlite:///{path}"
                runs.append(run_backend(backend, url, blocks, queries, grow_to, progress))
        elif postgres_url:
            with _postgres_schema(postgres_url) as url:
                runs.append(run_backend(backend, url, blocks, queries, grow_to, progress))
        else:
            progress("postgres: skipped (no --postgres-url or APP_TEST_POSTGRES_URL)")
    return runs


def rows(runs: list[BackendRun]) -> list[list[str]]:
    """One row per kind of word and backend."""
    table = []
    for run in runs:
        grown = {k.kind: k for k in run.grown}
        for kind in run.kinds:
            matches = f"{min(kind.matches):,}-{max(kind.matches):,}"
            later = grown.get(kind.kind)
            table.append(
                [
                    run.backend,
                    kind.kind,
                    matches,
                    f"{kind.p50:.2f}",
                    f"{kind.p99:.2f}",
                    "-" if kind.reference_p50 is None else f"{kind.reference_p50:.1f}",
                    "-" if later is None else f"{later.p50:.2f}",
                    "-" if later is None else f"{later.p50 / kind.p50:.1f}x",
                ]
            )
    return table


HEADERS = [
    "backend",
    "words",
    "blocks holding each",
    "p50 ms",
    "p99 ms",
    "full scan p50 ms",
    "p50 ms grown",
    "growth",
]


def as_dict(runs: list[BackendRun]) -> list[dict[str, Any]]:
    return [asdict(run) for run in runs]
