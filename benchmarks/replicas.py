"""Reads with and without a read replica: a read-heavy mix from many threads, side by side.

Every thread repeats one cycle: append a block, read it straight back (``get``; a miss is a
read-your-writes failure), then nine searches (keywords, tags, recent blocks, importance).
The same run is made against the primary alone and against the primary with one streaming
replica (``Database(url, replicas=[...])``), alternating, each on a fresh schema seeded with
the same blocks. Reported: reads/s and appends/s, read latency, errors, read-your-writes
misses, the share of reads the replica served, and the chain check afterwards.

Run from the repository root:

    python -m benchmarks.replicas                      # a private primary + replica
    python -m benchmarks.replicas --primary URL --replica URL

Without URLs the run makes a primary of its own with one replica (``scripts/replica.sh``:
the PostgreSQL server tools must be installed) and removes them afterwards. With URLs, the
replica must stream from that primary; schemas named ``bench_replica_*`` are made in the
database and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import BlockStore, Database

from .harness import machine

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replica.sh"
WORDS = [f"w{i:02d}" for i in range(40)]
TAGS = [f"t{i}" for i in range(10)]
#: Searches per cycle (one append and its read-back make the rest of the cycle).
SEARCHES = ("keywords", "keywords", "keywords", "tags", "tags", "recent", "recent")
SEARCHES += ("importance", "importance")


@dataclass
class Case:
    """One run of the mix on one set-up. Latencies are in seconds."""

    setup: str
    round: int
    threads: int
    cycles: int
    seconds: float = 0.0
    reads: int = 0
    appends: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    ryw_misses: int = 0
    replica_reads: int = 0
    primary_reads: int = 0
    read_p50: float | None = None
    read_p99: float | None = None
    chain: str = ""

    @property
    def reads_per_second(self) -> float:
        return self.reads / self.seconds if self.seconds else 0.0

    @property
    def appends_per_second(self) -> float:
        return self.appends / self.seconds if self.seconds else 0.0


def _with_schema(url: str, schema: str) -> str:
    parsed = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return parsed.render_as_string(hide_password=False)


@contextmanager
def fresh_schema(primary: str, replica: str) -> Iterator[tuple[str, str]]:
    """A new schema: its (primary URL, replica URL), once the replica has it too."""
    schema = "bench_replica_" + uuid.uuid4().hex[:10]
    admin = create_engine(primary, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _with_schema(primary, schema), _with_schema(replica, schema)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def wait_for_replica(primary: str, replica: str, timeout: float = 120.0) -> None:
    """Wait until ``replica`` has replayed what ``primary`` has written so far."""
    with create_engine(primary).connect() as connection:
        target = connection.execute(text("SELECT pg_current_wal_lsn()")).scalar()
    engine = create_engine(replica)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as connection:
                done = connection.execute(
                    text("SELECT pg_last_wal_replay_lsn() >= CAST(:t AS pg_lsn)"), {"t": target}
                ).scalar()
            if done:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the replica did not replay up to {target} in {timeout}s")
            time.sleep(0.01)
    finally:
        engine.dispose()


def seed(url: str, blocks: int) -> None:
    rng = random.Random(7)
    db = Database(url, auto_upgrade=True)
    try:
        BlockStore(db).append_many(
            {
                "context": f"seed block {i} " + " ".join(rng.sample(WORDS, 3)),
                "keywords": rng.sample(WORDS, 2),
                "tags": [rng.choice(TAGS)],
                "importance": rng.random(),
            }
            for i in range(blocks)
        )
    finally:
        db.dispose()


def run_case(case: Case, primary: str, replica: str | None) -> Case:
    """The mix on ``primary`` (with ``replica`` when given): fills in ``case``."""
    db = Database(primary, replicas=[replica] if replica else [])
    store = BlockStore(db)
    latencies: list[list[float]] = [[] for _ in range(case.threads)]
    errors: Counter[str] = Counter()
    counts = {"reads": 0, "appends": 0, "misses": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(case.threads + 1)

    def worker(number: int) -> None:
        rng = random.Random(number)
        mine = latencies[number]
        reads = appends = misses = 0
        barrier.wait(60)
        for cycle in range(case.cycles):
            try:
                block = store.append(
                    f"thread {number} cycle {cycle}",
                    keywords=[rng.choice(WORDS)],
                    tags=[rng.choice(TAGS)],
                    importance=rng.random(),
                )
                appends += 1
                started = time.perf_counter()
                if store.get(block.block_index) != block:
                    misses += 1
                mine.append(time.perf_counter() - started)
                reads += 1
                for search in SEARCHES:
                    started = time.perf_counter()
                    if search == "keywords":
                        store.search_keywords([rng.choice(WORDS)], limit=20)
                    elif search == "tags":
                        store.search_tags([rng.choice(TAGS)], limit=20)
                    elif search == "recent":
                        store.recent(10)
                    else:
                        store.by_importance(0.95, limit=20)
                    mine.append(time.perf_counter() - started)
                    reads += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors[f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"] += 1
        with lock:
            counts["reads"] += reads
            counts["appends"] += appends
            counts["misses"] += misses

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(case.threads)]
    for thread in threads:
        thread.start()
    barrier.wait(60)
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    case.seconds = time.perf_counter() - started
    stats = db.stats()
    case.reads, case.appends, case.ryw_misses = counts["reads"], counts["appends"], counts["misses"]
    case.errors, case.error_kinds = sum(errors.values()), dict(errors)
    case.replica_reads = sum(r.reads for r in stats.replicas)
    case.primary_reads = stats.primary_reads if replica else case.reads
    every = sorted(x for per_thread in latencies for x in per_thread)
    if every:
        case.read_p50 = every[len(every) // 2]
        case.read_p99 = every[min(len(every) - 1, int(len(every) * 0.99))]
    db.dispose()
    return case


def check_chain(url: str, expected: int) -> str:
    db = Database(url)
    try:
        store = BlockStore(db)
        found = store.count()
        check = store.verify_chain()
    finally:
        db.dispose()
    if not check:
        return f"BROKEN: {check}"
    return "intact" if found == expected else f"{found} blocks, expected {expected}"


@contextmanager
def private_servers() -> Iterator[tuple[str, str]]:
    """A primary of its own and its replica (``scripts/replica.sh``), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="app-bench-replica-"))
    root.chmod(0o755)

    def script(*args: str) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300
        )
        if done.returncode:
            raise SystemExit(f"replica.sh {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    ports = [script("free-port"), script("free-port")]
    while ports[1] == ports[0]:
        ports[1] = script("free-port")
    try:
        script("primary", str(root / "primary"), ports[0])
        script("replica", str(root / "replica"), ports[1], ports[0])
        yield tuple(  # type: ignore[misc]
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres" for port in ports
        )
    finally:
        for name in ("replica", "primary"):
            if (root / name).exists():
                script("remove", str(root / name))
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def markdown(cases: list[Case]) -> str:
    lines = [
        "| set-up | round | reads/s | appends/s | read p50 ms | read p99 ms | errors "
        "| read-your-writes misses | reads on the replica | chain |",
        "|---" * 10 + "|",
    ]
    for c in cases:
        share = f"{c.replica_reads / c.reads:.0%}" if c.reads else "-"
        lines.append(
            f"| {c.setup} | {c.round} | {c.reads_per_second:,.0f} | {c.appends_per_second:,.0f} "
            f"| {_ms(c.read_p50)} | {_ms(c.read_p99)} | {c.errors} | {c.ryw_misses} | "
            f"{share} | {c.chain} |"
        )
    return "\n".join(lines)


def summary(cases: list[Case]) -> str:
    by_setup: dict[str, list[float]] = {}
    for c in cases:
        by_setup.setdefault(c.setup, []).append(c.reads_per_second)
    alone = statistics.median(by_setup.get("primary alone", [0.0]))
    replica = statistics.median(by_setup.get("primary + 1 replica", [0.0]))
    ratio = f"{replica / alone:.2f}" if alone else "-"
    clean = all(c.errors == 0 and c.ryw_misses == 0 and c.chain == "intact" for c in cases)
    return (
        f"median reads/s: primary alone {alone:,.0f}, with the replica {replica:,.0f} "
        f"(x {ratio}); zero errors, read-your-writes and intact chains in every run: "
        f"{'yes' if clean else 'NO'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__)
    parser.add_argument("--primary", help="primary URL (default: a private primary)")
    parser.add_argument("--replica", help="URL of a streaming replica of --primary")
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=20, help="cycles per thread (10 reads each)")
    parser.add_argument("--seed-blocks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each set-up, alternating")
    parser.add_argument("--json-out", help="write the cases and the machine to this file")
    options = parser.parse_args(argv)
    if bool(options.primary) != bool(options.replica):
        parser.error("--primary and --replica go together")
    servers = (
        private_servers() if options.primary is None else _given(options.primary, options.replica)
    )
    cases: list[Case] = []
    with servers as (primary_server, replica_server):
        for number in range(1, options.rounds + 1):
            for setup in ("primary alone", "primary + 1 replica"):
                with fresh_schema(primary_server, replica_server) as (primary, replica):
                    seed(primary, options.seed_blocks)
                    wait_for_replica(primary_server, replica_server)
                    case = Case(setup, number, options.threads, options.cycles)
                    use = replica if setup != "primary alone" else None
                    run_case(case, primary, use)
                    case.chain = check_chain(primary, options.seed_blocks + case.appends)
                    cases.append(case)
                    print(
                        f"{setup}, round {number}: {case.reads_per_second:,.0f} reads/s",
                        file=sys.stderr,
                    )
    print(markdown(cases))
    print()
    print(summary(cases))
    if options.json_out:
        with open(options.json_out, "w") as handle:
            json.dump({"machine": machine(), "cases": [asdict(c) for c in cases]}, handle, indent=2)
    clean = all(c.errors == 0 and c.ryw_misses == 0 and c.chain == "intact" for c in cases)
    return 0 if clean else 1


@contextmanager
def _given(primary: str, replica: str) -> Iterator[tuple[str, str]]:
    yield primary, replica


if __name__ == "__main__":
    sys.exit(main())
