"""The search benchmark (``app bench-search``, ``benchmarks/search.py``).

Fills a SQLite file with N blocks (text, three keywords, a D-dimensional embedding) at
revision 0002, times the upgrade to 0003 (the keyword index build), then times each search
in this run against:

* the reference: the full-scan code of revision 0002 (SQL substring tests over every row;
  every embedding streamed and scored), which also decides what "identical" means: a
  randomized set of queries, hostile words included, must give the same blocks in the same
  order (similarity values equal to 1e-12);
* the write-queue peer, Greeum 5.3.0's ``ThreadSafeDatabaseManager`` (its
  ``search_blocks_by_keyword`` and ``search_blocks_by_embedding``) on a copy of the file,
  when it is installed;

and appends at 100 threads with and without revision 0003 (``BlockStore.append``, each
case in its own process on a fresh file, alternating, median of the rounds).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Select, Text, func, literal, select, union

from app import errors, schema
from app.blocks import BlockStore
from app.database import Database
from app.engine._driver import raw_execute
from app.models import blocks_table, embeddings_table, keywords_table

from ._peer import PEER_MODULE, load_peer_module, peer_missing
from ._runner import Case, _run_child, workspace

TOPICS = ("weather", "meeting", "travel", "music", "garden", "budget", "recipe", "project")
PEOPLE = ("Ana", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana")
WORKERS = 9973  # a prime: "w4242" names about one block in ten thousand
HOSTILE = (
    "%",
    "_",
    "'",
    '"',
    "\\",
    "100%",
    "a_b",
    "%_\\%",
    "'; DROP TABLE blocks; --",
    '" OR "1"="1',
    "Über",
    "메모",
    "🙂",
    "NOTE",
    "L" * 60_000,
    "w1" * 30_000,
    "ab",
    "w",
)
REFUSED = ("a\x00b", "\ud800x")

Progress = Callable[[str], None]
T = TypeVar("T")


@dataclass
class Timing:
    """One call's latencies (ms) in this run."""

    name: str
    call: str
    layer_p50: float
    layer_p90: float
    reference_p50: float | None = None
    peer_p50: float | None = None
    identical: str = ""

    @property
    def vs_reference(self) -> float | None:
        return None if self.reference_p50 is None else self.reference_p50 / self.layer_p50

    @property
    def vs_peer(self) -> float | None:
        return None if self.peer_p50 is None else self.peer_p50 / self.layer_p50


@dataclass
class SearchBench:
    blocks: int
    dim: int
    seed: int
    queries: int
    cache_limit: int
    fill_seconds: float = 0.0
    index_build_seconds: float = 0.0
    file_mib: float = 0.0
    first_similar_ms: float = 0.0
    vector_cache_mib: float = 0.0
    timings: list[Timing] = field(default_factory=list)
    keyword_identical: tuple[int, int] = (0, 0)
    similar_identical: tuple[int, int] = (0, 0)
    similar_max_difference: float = 0.0
    appends_with: list[float] = field(default_factory=list)
    appends_without: list[float] = field(default_factory=list)
    append_errors: int = 0
    append_threads: int = 0
    peer_note: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    # The same searches on a larger database (``scale_to``), timed in turn with these.
    scale_blocks: int = 0
    scale_cache_mib: float = 0.0
    scale_p50: dict[str, list[float]] = field(default_factory=dict)  # name -> [here, there]
    # Median over the timed queries of keyword + similarity - hybrid for the same inputs,
    # timed back to back (less shaken by the machine's noise than a difference of p50s).
    hybrid_saving_ms: float = 0.0

    @property
    def append_ratio(self) -> float | None:
        if not self.appends_with or not self.appends_without:
            return None
        return statistics.median(self.appends_with) / statistics.median(self.appends_without)

    def timing(self, name: str) -> Timing | None:
        return next((t for t in self.timings if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["append_ratio"] = self.append_ratio
        for item, timing in zip(data["timings"], self.timings, strict=True):
            item["vs_reference"] = timing.vs_reference
            item["vs_peer"] = timing.vs_peer
        return data


# -- the data ----------------------------------------------------------------------------------


def bench_block(index: int, vector: np.ndarray[Any, Any]) -> dict[str, Any]:
    topic = TOPICS[index % len(TOPICS)]
    worker = index % WORKERS
    return {
        "context": (
            f"Worker w{worker} note {index}: talked about the {topic} with "
            f"{PEOPLE[index // 8 % 8]} and wrote down what to do next. 메모 {index}."
        ),
        "keywords": (topic, f"w{worker}", f"n{index % 50}"),
        "tags": ("bench",),
        "importance": (index * 7 % 10) / 10,
        "embedding": vector,
    }


def fill(path: str, blocks: int, dim: int, seed: int, progress: Progress) -> tuple[float, float]:
    """Write ``blocks`` blocks at revision 0002, then upgrade to head.

    Returns:
        Seconds of the fill and of the upgrade (the keyword index build).
    """
    db = Database(f"sqlite:///{path}", check_schema=False)
    try:
        schema.upgrade(db, "0002")
        store = BlockStore(db)
        rng = np.random.default_rng(seed)
        started = time.perf_counter()
        for start in range(0, blocks, 5000):
            count = min(5000, blocks - start)
            vectors = rng.standard_normal((count, dim), dtype=np.float32)
            store.append_many(bench_block(start + i, vectors[i]) for i in range(count))
            progress(f"filled {start + count:,} of {blocks:,} blocks")
        filled = time.perf_counter() - started
        started = time.perf_counter()
        schema.upgrade(db)
        built = time.perf_counter() - started
        progress(f"revision 0003 built the keyword index in {built:.1f}s")
    finally:
        db.dispose()
    return filled, built


# -- the reference: revision 0002's search code --------------------------------------------------


def reference_keywords(db: Database, words: Sequence[str], limit: int) -> list[int]:
    """``search_keywords`` as revision 0002 ran it (a substring test on every row), up to
    loading the blocks: the indices of those that exist."""
    from app.chain._validate import check_limit, check_words

    checked = [w for w in check_words(words, "keywords") if w]
    count = check_limit(limit)
    if not checked:
        return []
    found: set[int] = set()
    with db.reading() as connection:
        position = func.instr if connection.dialect.name == "sqlite" else func.strpos
        for start in range(0, len(checked), 200):
            matches: list[Select[Any]] = []
            for word in checked[start : start + 200]:
                folded = func.lower(literal(word, Text()))
                for table, column in (
                    (keywords_table, keywords_table.c.keyword),
                    (blocks_table, blocks_table.c.context),
                ):
                    matches.append(
                        select(table.c.block_index).where(position(func.lower(column), folded) > 0)
                    )
            union_of = union(*matches).subquery()
            query = select(union_of.c.block_index).order_by(union_of.c.block_index)
            found.update(connection.execute(query.limit(count)).scalars())
        return _existing(connection, sorted(found)[:count])


def _existing(connection: Any, indices: list[int]) -> list[int]:
    if not indices:
        return []
    query = select(blocks_table.c.block_index).where(blocks_table.c.block_index.in_(indices))
    present = set(connection.execute(query).scalars())
    return [i for i in indices if i in present]


def reference_similar(db: Database, query: Any, top_k: int) -> list[tuple[int, float]]:
    """``similar`` as revision 0002 ran it: every embedding streamed and scored in float64."""
    vector = np.asarray(query, dtype=np.float32).astype(np.float64)
    norm = float(np.linalg.norm(vector))
    best_index = np.empty(0, dtype=np.int64)
    best_score = np.empty(0, dtype=np.float64)
    stmt = select(
        embeddings_table.c.block_index,
        embeddings_table.c.embedding,
        embeddings_table.c.embedding_dim,
    )
    with db.reading() as connection:
        result = connection.execute(stmt.execution_options(yield_per=4096))
        for chunk in result.partitions():
            indices = np.array([row[0] for row in chunk], dtype=np.int64)
            matrix = np.stack(
                [np.frombuffer(row[1], dtype=np.float32)[: row[2]] for row in chunk]
            ).astype(np.float64)
            norms = np.linalg.norm(matrix, axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                scores = matrix @ vector / (norms * norm)
            keep = norms > 0
            best_index = np.concatenate([best_index, indices[keep]])
            best_score = np.concatenate([best_score, scores[keep]])
            if best_score.size > top_k:
                top = np.argpartition(-best_score, top_k)[:top_k]
                best_index, best_score = best_index[top], best_score[top]
        order = np.lexsort((best_index, -best_score))[:top_k]
        return [(int(best_index[i]), float(best_score[i])) for i in order]


# -- timing ------------------------------------------------------------------------------------


def _ms(call: Callable[[T], object], items: Sequence[T]) -> list[float]:
    """Milliseconds of ``call(item)`` for each item."""
    times = []
    for item in items:
        started = time.perf_counter()
        call(item)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _p(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _check_words(rng: np.random.Generator, db: Database, count: int) -> list[tuple[list[str], int]]:
    """Random keyword queries: worker names of every length, topics in any case, random
    pieces of stored texts (1 to 12 characters), several words at once, hostile words."""
    with db.reading() as connection:
        total = int(raw_execute(connection, "SELECT count(*) FROM blocks").fetchone()[0])
        chosen = [int(i) for i in rng.integers(0, total, 64)]
        query = select(blocks_table.c.context).where(blocks_table.c.block_index.in_(chosen))
        samples = list(connection.execute(query).scalars())
    queries: list[tuple[list[str], int]] = []
    limits = (1, 10, 100, 1000)
    for number in range(count):
        kind = number % 5
        if kind == 0:
            words = [f"w{int(rng.integers(0, WORKERS)) // 10 ** int(rng.integers(0, 4))}"]
        elif kind == 1:
            topic = TOPICS[int(rng.integers(0, len(TOPICS)))]
            words = [topic.upper() if rng.random() < 0.5 else topic]
        elif kind == 2:
            text = samples[int(rng.integers(0, len(samples)))]
            start = int(rng.integers(0, len(text)))
            words = [text[start : start + int(rng.integers(1, 13))]]
        elif kind == 3:
            words = [f"w{int(rng.integers(0, WORKERS))}" for _ in range(int(rng.integers(2, 6)))]
        else:
            words = [HOSTILE[number // 5 % len(HOSTILE)]]
        queries.append((words, limits[int(rng.integers(0, len(limits)))]))
    queries += [([word], 10) for word in HOSTILE + REFUSED]
    return queries


def _same_keywords(store: BlockStore, words: list[str], limit: int) -> bool:
    """The layer finds what the reference finds, or both refuse the words."""
    try:
        got = [b.block_index for b in store.search_keywords(words, limit=limit)]
    except errors.InvalidInputError:
        try:
            reference_keywords(store.db, words, limit)
        except errors.InvalidInputError:
            return True
        return False
    return got == reference_keywords(store.db, words, limit)


def run_search_bench(
    *,
    blocks: int = 100_000,
    dim: int = 384,
    queries: int = 100,
    reference_queries: int = 10,
    check_queries: int = 200,
    peer_queries: int = 10,
    append_threads: int = 100,
    append_units: int = 2000,
    append_rounds: int = 3,
    cache_limit: int = 4 * 1024**3,
    seed: int = 20261201,
    workdir: str | None = None,
    scale_to: str | None = None,
    progress: Progress = lambda message: None,
) -> SearchBench:
    """Run the whole benchmark (see the module notes) and return its figures.

    Args:
        scale_to: a larger database that an earlier run filled (``--workdir`` keeps it):
            the keyword and similarity searches are timed on it and on this run's file in
            turn, so their growth is measured in one run, without filling it again.
    """
    from ._report import machine

    result = SearchBench(blocks, dim, seed, queries, cache_limit, machine=machine())
    with workspace(workdir, "app-bench-search-") as root:
        path = os.path.join(root, "search.db")
        result.fill_seconds, result.index_build_seconds = fill(path, blocks, dim, seed, progress)
        db = Database(f"sqlite:///{path}", vector_cache_limit=cache_limit)
        try:
            _measure(
                result, db, root, queries, reference_queries, check_queries, peer_queries, progress
            )
            result.file_mib = os.path.getsize(path) / 1024 / 1024
            if scale_to is not None:
                _scale(result, db, scale_to, queries, progress)
        finally:
            db.dispose()
        if append_rounds:
            _appends(result, root, append_threads, append_units, append_rounds, progress)
    return result


def _measure(
    result: SearchBench,
    db: Database,
    root: str,
    queries: int,
    reference_queries: int,
    check_queries: int,
    peer_queries: int,
    progress: Progress,
) -> None:
    store = BlockStore(db)
    rng = np.random.default_rng(result.seed + 1)
    words = [f"w{int(w)}" for w in rng.integers(1000, WORKERS, queries)]
    vectors = [rng.standard_normal(result.dim).astype(np.float32) for _ in range(queries)]
    texts = [f"{w} {TOPICS[i % len(TOPICS)]}" for i, w in enumerate(words)]

    started = time.perf_counter()
    store.similar(vectors[0], 10)  # builds the cache
    result.first_similar_ms = (time.perf_counter() - started) * 1000
    result.vector_cache_mib = db.stats().vector_cache_bytes / 1024 / 1024
    progress(f"first similarity search (cache build) {result.first_similar_ms:,.0f} ms")

    # Query i of every call runs before query i + 1 of any: a noisy moment of the machine
    # slows all calls alike.
    keyword, similar, hybrid, hybrid_two = [], [], [], []
    for word, vector, two_words in zip(words, vectors, texts, strict=True):
        keyword += _ms(lambda w: store.search_keywords([w], limit=10), [word])
        similar += _ms(lambda v: store.similar(v, 10), [vector])
        hybrid += _ms(lambda pair: store.search(pair[0], pair[1], top_k=10), [(word, vector)])
        hybrid_two += _ms(
            lambda pair: store.search(pair[0], pair[1], top_k=10), [(two_words, vector)]
        )
    result.hybrid_saving_ms = statistics.median(
        k + v - h for k, v, h in zip(keyword, similar, hybrid, strict=True)
    )
    progress("timed the layer's searches")
    few = slice(0, reference_queries)
    keyword_ref = _ms(lambda w: reference_keywords(db, [w], 10), words[few])
    similar_ref = _ms(lambda v: reference_similar(db, v, 10), vectors[few])
    progress("timed the reference scans")
    peer_keyword, peer_similar = _peer_times(
        result, db, root, words, vectors, peer_queries, progress
    )

    result.timings = [
        Timing(
            "keyword",
            'search_keywords(["wNNNN"], limit=10)',
            _p(keyword, 0.5),
            _p(keyword, 0.9),
            _p(keyword_ref, 0.5),
            peer_keyword,
        ),
        Timing(
            "similar",
            "similar(q, top_k=10), cache warm",
            _p(similar, 0.5),
            _p(similar, 0.9),
            _p(similar_ref, 0.5),
            peer_similar,
        ),
        Timing(
            "hybrid",
            'search("wNNNN", q, top_k=10): the two calls above in one',
            _p(hybrid, 0.5),
            _p(hybrid, 0.9),
        ),
        Timing(
            "hybrid-two-words",
            'search("wNNNN topic", q, top_k=10)',
            _p(hybrid_two, 0.5),
            _p(hybrid_two, 0.9),
        ),
    ]
    _check(result, db, store, rng, check_queries, progress)


def _scale(result: SearchBench, db: Database, path: str, queries: int, progress: Progress) -> None:
    """Time keyword and similarity search here and on the larger file at ``path``, in turn."""
    larger = Database(f"sqlite:///{path}", vector_cache_limit=result.cache_limit)
    try:
        stores = (BlockStore(db), BlockStore(larger))
        result.scale_blocks = stores[1].count()
        rng = np.random.default_rng(result.seed + 2)
        stores[1].similar(rng.standard_normal(result.dim), 10)  # builds its cache
        result.scale_cache_mib = larger.stats().vector_cache_bytes / 1024 / 1024
        times: dict[str, tuple[list[float], list[float]]] = {
            "keyword": ([], []),
            "similar": ([], []),
        }
        for _ in range(queries):
            word = f"w{int(rng.integers(1000, WORKERS))}"
            vector = rng.standard_normal(result.dim).astype(np.float32)
            for side, store in enumerate(stores):
                times["keyword"][side].extend(
                    _ms(lambda pair: pair[0].search_keywords([pair[1]], limit=10), [(store, word)])
                )
                times["similar"][side].extend(
                    _ms(lambda pair: pair[0].similar(pair[1], 10), [(store, vector)])
                )
        result.scale_p50 = {
            name: [_p(here, 0.5), _p(there, 0.5)] for name, (here, there) in times.items()
        }
        progress(f"timed the searches on {result.scale_blocks:,} blocks in turn with these")
    finally:
        larger.dispose()


def _check(
    result: SearchBench,
    db: Database,
    store: BlockStore,
    rng: np.random.Generator,
    check_queries: int,
    progress: Progress,
) -> None:
    keyword_cases = _check_words(rng, db, check_queries)
    same = sum(_same_keywords(store, words, limit) for words, limit in keyword_cases)
    result.keyword_identical = (same, len(keyword_cases))
    progress(f"keyword search: {same} of {len(keyword_cases)} queries identical to the reference")
    count = max(1, check_queries // 4)
    identical, worst = 0, 0.0
    for number in range(count):
        vector = rng.standard_normal(result.dim).astype(np.float32)
        k = (1, 10, 100)[number % 3]
        got = [(s.block.block_index, s.similarity) for s in store.similar(vector, k)]
        want = reference_similar(db, vector, k)
        if [i for i, _ in got] == [i for i, _ in want]:
            difference = max(
                (abs(a[1] - b[1]) for a, b in zip(got, want, strict=True)), default=0.0
            )
            worst = max(worst, difference)
            identical += difference <= 1e-12
    result.similar_identical = (identical, count)
    result.similar_max_difference = worst
    first = result.timing("keyword")
    if first is not None:
        first.identical = f"{same}/{len(keyword_cases)}"
    second = result.timing("similar")
    if second is not None:
        second.identical = f"{identical}/{count}"
    progress(
        f"similarity: {identical} of {count} queries identical (largest difference {worst:.1e})"
    )


def _peer_times(
    result: SearchBench,
    db: Database,
    root: str,
    words: Sequence[str],
    vectors: Sequence[np.ndarray[Any, Any]],
    count: int,
    progress: Progress,
) -> tuple[float | None, float | None]:
    if count <= 0:
        result.peer_note = "not run (--peer-queries 0)"
        return None, None
    # Once loaded, the peer's package is a stand-in without an import spec to look up.
    missing = None if PEER_MODULE in sys.modules else peer_missing()
    if missing is not None:
        result.peer_note = missing
        return None, None
    copy = os.path.join(root, "peer", "memory.db")
    os.makedirs(os.path.dirname(copy))
    source_path = db.settings.sqlite_path
    assert source_path is not None
    # A copy: the peer adds its own tables and columns to any file it opens.
    with sqlite3.connect(source_path) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    os.environ["GREEUM_STM_DB"] = os.path.join(root, "peer", "stm_anchors.db")
    manager = load_peer_module().ThreadSafeDatabaseManager(copy)
    try:
        keyword = _ms(lambda w: manager.search_blocks_by_keyword([w], limit=10), words[:count])
        similar = _ms(
            lambda v: manager.search_blocks_by_embedding(v.tolist(), top_k=10), vectors[:count]
        )
    finally:
        with suppress(Exception):
            manager.shutdown()
        manager.close()
    result.peer_note = "Greeum 5.3.0 ThreadSafeDatabaseManager on a copy of the file"
    progress("timed the peer")
    return _p(keyword, 0.5), _p(similar, 0.5)


def _appends(
    result: SearchBench, root: str, threads: int, units: int, rounds: int, progress: Progress
) -> None:
    """BlockStore.append at ``threads`` threads on empty files at 0002 and at 0003, alternating."""
    templates = {}
    for revision in ("0002", "0003"):
        path = os.path.join(root, f"template-{revision}.db")
        db = Database(f"sqlite:///{path}", check_schema=False)
        schema.upgrade(db, revision)
        db.dispose()
        templates[revision] = path
    case = Case("append", "layer", threads, units, None)
    previous = os.environ.get("APP_CHECK_SCHEMA")
    os.environ["APP_CHECK_SCHEMA"] = "false"  # the 0002 file must stay at 0002
    try:
        for number in range(rounds):
            for revision in ("0002", "0003") if number % 2 == 0 else ("0003", "0002"):
                directory = os.path.join(root, f"append-{number}-{revision}")
                os.mkdir(directory)
                path = os.path.join(directory, "memory.db")
                shutil.copyfile(templates[revision], path)
                outcome = _run_child(case, "BlockStore.append", path, 600.0, None)
                shutil.rmtree(directory, ignore_errors=True)
                result.append_errors += outcome.errors + (0 if outcome.intact else 1)
                runs = result.appends_with if revision == "0003" else result.appends_without
                runs.append(outcome.throughput)
                rate = f"{outcome.throughput:,.0f}/s"
                progress(f"appends at {threads} threads, revision {revision}: {rate}")
    finally:
        if previous is None:
            os.environ.pop("APP_CHECK_SCHEMA", None)
        else:
            os.environ["APP_CHECK_SCHEMA"] = previous
    result.append_threads = threads


# -- reports -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def table_rows(result: SearchBench) -> list[list[str]]:
    """The table: one row per call, then appends and the index build."""
    rows = []
    for t in result.timings:
        rows.append(
            [
                t.call,
                _fmt(t.layer_p50, 2),
                _fmt(t.layer_p90, 2),
                _fmt(t.reference_p50, 1),
                _fmt(t.peer_p50, 1),
                _fmt(t.vs_reference, 0, "x"),
                _fmt(t.vs_peer, 0, "x"),
                t.identical or "-",
            ]
        )
    ratio = result.append_ratio
    if ratio is not None:
        rows.append(
            [
                f"BlockStore.append, {result.append_threads} threads (appends/s, median of "
                f"{len(result.appends_with)})",
                _fmt(statistics.median(result.appends_with), 0),
                "-",
                f"{_fmt(statistics.median(result.appends_without), 0)} without 0003",
                "-",
                f"{ratio:.2f}x",
                "-",
                f"{result.append_errors} errors",
            ]
        )
    return rows


HEADERS = [
    "call",
    "layer p50 ms",
    "layer p90 ms",
    "reference scan p50 ms",
    "peer p50 ms",
    "x reference",
    "x peer",
    "identical",
]


def markdown(result: SearchBench) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines)


def summary(result: SearchBench) -> list[str]:
    lines = []
    if result.scale_p50:
        keyword, similar = result.scale_p50["keyword"], result.scale_p50["similar"]
        lines.append(
            f"in turn on {result.blocks:,} and {result.scale_blocks:,} blocks: keyword p50 "
            f"{keyword[0]:.2f} and {keyword[1]:.2f} ms, similarity p50 {similar[0]:.2f} and "
            f"{similar[1]:.2f} ms; vector cache of the larger one {result.scale_cache_mib:,.1f} MiB"
        )
    return [
        *lines,
        f"{result.blocks:,} blocks x {result.dim}-d embeddings; fill {result.fill_seconds:.0f}s; "
        f"revision 0003 index build {result.index_build_seconds:.1f}s; "
        f"file {result.file_mib:,.0f} MiB",
        f"vector cache {result.vector_cache_mib:,.1f} MiB (first similarity search, which "
        f"builds it: {result.first_similar_ms:,.0f} ms)",
        f"peer: {result.peer_note}",
    ]


def goals(result: SearchBench, baseline: SearchBench | None = None) -> list[tuple[str, bool]]:
    """The design's goals, met or not, from this run (and a smaller run to compare with)."""
    checks = []
    keyword, similar, hybrid = (result.timing(n) for n in ("keyword", "similar", "hybrid"))
    if keyword is not None and keyword.vs_peer is not None:
        checks.append(
            (
                f"keyword search {keyword.vs_peer:,.0f}x faster than the peer (>= 50)",
                keyword.vs_peer >= 50,
            )
        )
    if similar is not None and similar.vs_peer is not None:
        checks.append(
            (
                f"similarity top-10 {similar.vs_peer:,.0f}x faster than the peer (>= 20)",
                similar.vs_peer >= 20,
            )
        )
    if keyword and similar and hybrid:
        total = keyword.layer_p50 + similar.layer_p50
        saving = result.hybrid_saving_ms
        checks.append(
            (
                f"hybrid search under keyword + similarity: p50 {hybrid.layer_p50:.2f} ms "
                f"against {total:.2f} ms; for the same query, {saving:+.2f} ms (median)",
                hybrid.layer_p50 < total and saving > 0,
            )
        )
    same, total_k = result.keyword_identical
    checks.append(
        (
            f"keyword search identical to the reference for {same} of {total_k} queries",
            same == total_k,
        )
    )
    same_s, total_s = result.similar_identical
    checks.append(
        (
            f"similarity identical to the reference for {same_s} of {total_s} queries",
            same_s == total_s,
        )
    )
    ratio = result.append_ratio
    if ratio is not None:
        checks.append(
            (
                f"appends keep {ratio:.2f} of their throughput with revision 0003 (>= 0.85)",
                ratio >= 0.85,
            )
        )
    for name, most in (("keyword", 3.0), ("similar", 12.0)):
        if name in result.scale_p50:
            small, large = result.scale_p50[name]
            checks.append(
                (
                    f"{name} p50 at {result.scale_blocks:,} blocks is {large / small:.1f}x its "
                    f"figure at {result.blocks:,}, timed in turn in this run (<= {most:g})",
                    large / small <= most,
                )
            )
    if baseline is not None:
        for name, most in (("keyword", 3.0), ("similar", 12.0)):
            mine, theirs = result.timing(name), baseline.timing(name)
            if mine is not None and theirs is not None:
                grown = mine.layer_p50 / theirs.layer_p50
                checks.append(
                    (
                        f"{name} p50 at {result.blocks:,} blocks is {grown:.1f}x its figure at "
                        f"{baseline.blocks:,} (<= {most:g})",
                        grown <= most,
                    )
                )
    return checks


def write_json(path: str, result: SearchBench) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(result.to_dict(), out, indent=2)


def read_json(path: str) -> SearchBench:
    with open(path, encoding="utf-8") as source:
        data = json.load(source)
    timings = [
        Timing(**{k: v for k, v in t.items() if k not in ("vs_reference", "vs_peer")})
        for t in data.pop("timings")
    ]
    data.pop("append_ratio", None)
    data["keyword_identical"] = tuple(data["keyword_identical"])
    data["similar_identical"] = tuple(data["similar_identical"])
    return SearchBench(**data, timings=timings)
