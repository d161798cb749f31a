"""The load of the soak benchmark (``benchmarks.soak``): what a service does for months,
compressed. Each kind of work is a loop in threads of its own until the run stops:

* ``http``: clients of the example service: appends (POST), keyword searches, reads;
* ``per-request Database``: a Database opened and disposed per request (append, keyword,
  time-window and similarity searches), as code written per request does;
* ``per-request manager``: a DatabaseManager per request, as code written for the old
  class does: ``append_block``, reads, and a duplicate INSERT through ``conn`` whose
  error it swallows (the named error this load provokes on purpose);
* ``reader``: a long-lived Database whose read units hold their snapshot for a while;
* ``re-embed``: new embeddings for random blocks, in small batches;
* ``maintenance``: once, half-way: the latest migration down and up again, and a reindex.

Failures are counted by kind; the provoked ones apart.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx

from app import BlockStore, Database, DatabaseManager, errors, schema
from app.operations.maintenance import reindex

#: Errors this load provokes on purpose (the swallowed duplicate INSERT), and those a
#: migration may cause while the schema is one step behind (new objects refuse it).
PROVOKED = ("IntegrityError", "UniqueViolation", "IntegrityViolationError")
DIMENSION = 16


def _vector(rng: random.Random) -> list[float]:
    return [rng.uniform(-1, 1) for _ in range(DIMENSION)]


@dataclass
class Tally:
    """What the load did, shared by its threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    provoked: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    append_latencies: list[float] = field(default_factory=list)

    def ok(self, kind: str, latency: float | None = None) -> None:
        with self.lock:
            self.done[kind] += 1
            if latency is not None:
                self.append_latencies.append(latency)

    def failed(self, exc: BaseException, *, provoked: bool = False) -> None:
        name = type(exc).__name__
        with self.lock:
            (self.provoked if provoked else self.errors)[name] += 1
            self.examples.setdefault(name, " ".join(str(exc).split())[:300])

    def take_latencies(self) -> list[float]:
        with self.lock:
            taken, self.append_latencies = self.append_latencies, []
            return taken


class Load:
    """The load's threads on ``url`` (the service at ``service``), until :meth:`stop`."""

    def __init__(self, url: str, service: str, seconds: float, threads: int = 2) -> None:
        self.url, self.service, self.seconds = url, service, seconds
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._width = threads
        self.migrating = threading.Event()  # set while the schema is one step behind
        # The long-lived reader's Database: the similarity cache of this process (shared by
        # every Database on the file) grows with the embeddings it holds, not with requests.
        self.reader_db: Database | None = None

    def start(self) -> None:
        kinds: list[tuple[str, Callable[[random.Random], None], int]] = [
            ("http", self._http, 2 * self._width),
            ("per-request Database", self._per_request_database, self._width),
            ("per-request manager", self._per_request_manager, self._width),
            ("reader", self._reader, 1),
            ("re-embed", self._reembed, 1),
        ]
        for name, body, count in kinds:
            for number in range(count):
                thread = threading.Thread(
                    target=self._loop, args=(body, random.Random(f"{name}{number}")), name=name
                )
                self._threads.append(thread)
        maintenance = threading.Thread(target=self._maintenance, name="maintenance")
        self._threads.append(maintenance)
        for thread in self._threads:
            thread.start()

    def cache_mib(self) -> float:
        """What this process holds for similarity searches (the shared cache), in MiB."""
        db = self.reader_db
        if db is None or db.closed:
            return 0.0
        return db.stats().vector_cache_bytes / (1024 * 1024)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()  # bounded: each loop ends after its current request

    def _loop(self, body: Callable[[random.Random], None], rng: random.Random) -> None:
        while not self._stop.is_set():
            try:
                body(rng)
            except errors.SchemaOutOfDateError as exc:
                self.tally.failed(exc, provoked=self.migrating.is_set())
            except Exception as exc:  # noqa: BLE001 - counted and reported, never raised
                self.tally.failed(exc)
            self._stop.wait(0.005)  # a pause between requests, as a service has

    def _http(self, rng: random.Random) -> None:
        with httpx.Client(base_url=self.service, timeout=60) as client:
            while not self._stop.is_set():
                choice = rng.random()
                started = time.perf_counter()
                if choice < 0.6:
                    body = {
                        "context": f"soak memory {rng.randrange(10**6)} garden {rng.random()}",
                        "keywords": ["garden", f"k{rng.randrange(50)}"],
                        "embedding": _vector(rng),
                    }
                    response = client.post("/memories", json=body)
                    expected, kind = 201, "http append"
                elif choice < 0.85:
                    response = client.get("/memories/search", params={"q": f"k{rng.randrange(50)}"})
                    expected, kind = 200, "http search"
                else:
                    response = client.get(f"/memories/{rng.randrange(100)}")
                    expected, kind = (200, 404), "http read"
                if response.status_code not in (
                    expected if isinstance(expected, tuple) else (expected,)
                ):
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
                self.tally.ok(
                    kind, time.perf_counter() - started if kind == "http append" else None
                )
                self._stop.wait(0.005)

    def _per_request_database(self, rng: random.Random) -> None:
        with Database(self.url) as db:
            store = BlockStore(db)
            started = time.perf_counter()
            store.append(f"per request {rng.random()}", keywords=["req"], embedding=_vector(rng))
            self.tally.ok("db append", time.perf_counter() - started)
            store.search_keywords(["req"], limit=5)
            store.since(datetime.now(ZoneInfo("Asia/Seoul")) - timedelta(minutes=1), limit=5)
            store.similar(_vector(rng), top_k=5)
            self.tally.ok("db searches")

    def _per_request_manager(self, rng: random.Random) -> None:
        manager = DatabaseManager(self.url)
        try:
            started = time.perf_counter()
            manager.append_block(f"old code {rng.random()}", keywords=["old"])
            self.tally.ok("manager append", time.perf_counter() - started)
            manager.get_recent_blocks(5)
            try:  # old code: insert, swallow the duplicate key, never commit or roll back
                manager.conn.cursor().execute(
                    "INSERT INTO short_term_memories (id, timestamp, content) VALUES (?, ?, ?)",
                    ("soak-once", datetime.now(UTC).isoformat(), "the same id every time"),
                )
                manager.conn.commit()
            except Exception as exc:
                if type(exc).__name__ not in PROVOKED and not isinstance(exc, sqlite3.Error):
                    raise
                self.tally.failed(exc, provoked=True)
            self.tally.ok("manager requests")
        finally:
            manager.close()

    def _reader(self, rng: random.Random) -> None:
        with Database(self.url) as db:
            self.reader_db = db
            store = BlockStore(db)
            while not self._stop.is_set():
                with db.read():
                    store.count()
                    store.similar(_vector(rng), top_k=3)
                    self._stop.wait(0.2)  # a slow report: the snapshot stays open meanwhile
                self.tally.ok("reads")

    def _reembed(self, rng: random.Random) -> None:
        with Database(self.url) as db:
            store = BlockStore(db)
            while not self._stop.is_set():
                head = store.head()
                if head is not None:
                    picked = {rng.randrange(head.block_index + 1): _vector(rng) for _ in range(10)}
                    store.reembed(picked, model="soak-v2")
                    self.tally.ok("re-embedded blocks")
                self._stop.wait(0.5)

    def _maintenance(self) -> None:
        if self._stop.wait(self.seconds / 2):
            return
        try:
            with Database(self.url, check_schema=False) as db:
                head = schema.head_revision()
                previous = schema.history()[-2].revision
                self.migrating.set()
                try:
                    schema.downgrade(db, previous)
                    schema.upgrade(db, head)
                finally:
                    self.migrating.clear()
                self.tally.ok(f"migration {head} -> {previous} -> {head}")
                reindex(db)
                self.tally.ok("reindex")
        except Exception as exc:  # noqa: BLE001 - counted and reported
            self.tally.failed(exc)
