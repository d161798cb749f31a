"""Metrics and traces through OpenTelemetry (``telemetry=True``), read back with the SDK's
in-memory reader and span exporter, on providers given with ``app._telemetry.use`` (the
global ones can be set only once per process).

The counts must equal the work done, exactly: units committed, appends summed over group
commits, units summed over shared commits, one turn wait per turn taken (summing to
``stats().write_wait_total``), one span per outermost unit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import BlockStore, Database, Settings, _telemetry, errors
from app._hints import install_hint
from app.database._stats import Counters, ReplicaStats, Stats
from app.models import ShortTermMemory

from .helpers import postgres_schema, require_backend, run_threads
from .test_object_lifetimes import alive

pytest.importorskip("opentelemetry.sdk", reason="the telemetry tests need opentelemetry-sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

pytestmark = pytest.mark.timeout(300)

THREADS = 100


@dataclass
class Recorded:
    """What the Databases opened in a test record on."""

    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    tracers: TracerProvider

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Every instrument's points, by name: ``(attributes, point)``."""
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for resource in [] if data is None else data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = found.setdefault(metric.name, [])
                    points += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found

    def units(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == "app.unit"]


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    spans = InMemorySpanExporter()
    tracers = TracerProvider(shutdown_on_exit=False)
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    _telemetry.use(meter_provider=meters, tracer_provider=tracers)
    try:
        yield Recorded(reader, spans, tracers)
    finally:
        _telemetry.use()


def one(metrics: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **where: Any) -> Any:
    """The single point of ``name`` whose attributes include ``where`` (dots as ``__``)."""
    wanted = {key.replace("__", "."): value for key, value in where.items()}
    points = [p for a, p in metrics.get(name, []) if wanted.items() <= a.items()]
    assert len(points) == 1, f"{name} {wanted}: {len(points)} points in {metrics.get(name)}"
    return points[0]


def value(metrics: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **where: Any) -> Any:
    return one(metrics, name, **where).value


def connections(metrics: dict[str, list[tuple[dict[str, Any], Any]]], state: str) -> Any:
    return value(metrics, "db.client.connection.count", db__client__connection__state=state)


def check_turns(metrics: dict[str, list[tuple[dict[str, Any], Any]]], stats: Stats) -> None:
    """One wait and one hold per turn taken; the waits sum to ``write_wait_total``."""
    waits = one(metrics, "app.write_turn.wait_time")
    assert waits.count == stats.write_waits
    assert waits.sum == pytest.approx(stats.write_wait_total, rel=1e-9, abs=1e-12)
    assert one(metrics, "app.write_turn.hold_time").count == stats.write_waits
    assert value(metrics, "app.units.committed") == stats.units_committed
    assert value(metrics, "app.units.rolled_back") == stats.units_rolled_back
    assert value(metrics, "app.units.retried") == stats.busy_retries
    per_commit = one(metrics, "app.units.per_commit")
    assert per_commit.sum == stats.units_committed


def test_units_of_a_hundred_threads_are_counted_exactly(
    make_db: Callable[..., Database], recorded: Recorded
) -> None:
    db = make_db(telemetry=True)
    before = db.stats().units_committed

    def work(number: int) -> None:
        for item in range(3):
            with db.unit_of_work() as session:
                session.add(ShortTermMemory(id=f"m{number}-{item}", timestamp="t", content="c"))

    assert run_threads(THREADS, work) == []
    stats = db.stats()
    assert stats.units_committed == before + 3 * THREADS
    metrics = recorded.metrics()
    check_turns(metrics, stats)
    # Units shared commits: fewer commits than units, and none with more than the limit.
    per_commit = one(metrics, "app.units.per_commit")
    assert per_commit.count <= stats.units_committed
    assert per_commit.max <= db.settings.max_units_per_commit
    writes = [s for s in recorded.units() if s.attributes["app.unit.kind"] == "write"]
    assert len(writes) >= 3 * THREADS
    assert all(s.attributes["app.unit.outcome"] == "committed" for s in writes)


def test_appends_of_a_hundred_threads_are_counted_exactly(
    make_db: Callable[..., Database], recorded: Recorded
) -> None:
    db = make_db(telemetry=True)
    store = BlockStore(db)

    def work(number: int) -> None:
        for item in range(5):
            store.append(f"thread {number} block {item}")

    assert run_threads(THREADS, work) == []
    assert store.count() == 5 * THREADS
    metrics = recorded.metrics()
    appends = one(metrics, "app.appends.per_commit")
    assert appends.sum == 5 * THREADS
    assert appends.count < 5 * THREADS  # group commits
    check_turns(metrics, db.stats())


def test_one_span_per_unit_with_its_outcome(
    make_db: Callable[..., Database], recorded: Recorded
) -> None:
    db = make_db(telemetry=True)
    recorded.spans.clear()
    with db.unit_of_work() as session:
        session.execute(text("SELECT 1"))
        session.execute(text("SELECT 2"))
        with db.unit_of_work() as inner:  # a SAVEPOINT: no span of its own
            inner.execute(text("SELECT 3"))
    with pytest.raises(RuntimeError), db.unit_of_work() as session:
        session.add(ShortTermMemory(id="gone", timestamp="t", content="c"))
        raise RuntimeError("the body failed")
    with db.read() as session:
        session.execute(text("SELECT 4"))
    BlockStore(db).count()  # the layer's own read snapshot
    units = recorded.units()
    assert [(s.attributes["app.unit.kind"], s.attributes["app.unit.outcome"]) for s in units] == [
        ("write", "committed"),
        ("write", "rolled_back"),
        ("read", "committed"),
        ("snapshot", "committed"),
    ]
    written, failed, read, snapshot = units
    backend = "sqlite" if db.settings.is_sqlite else "postgresql"
    for span in units:
        assert span.attributes["db.system.name"] == backend
        assert span.parent is None
    # Three SELECTs, and a SAVEPOINT and its RELEASE for the Session joining the unit's
    # transaction and for the nested unit.
    assert written.attributes["app.unit.statements"] == 7
    assert written.attributes["app.unit.turn_wait"] >= 0
    assert written.attributes["app.unit.turn_held"] > 0
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in failed.events] == ["RuntimeError"]
    assert read.attributes["app.unit.statements"] == 1
    assert "app.unit.turn_wait" not in read.attributes
    assert snapshot.attributes["app.unit.statements"] == 1
    assert db.stats().units_rolled_back == 1


def test_conflicts_retries_and_a_unit_that_never_ran(
    make_db: Callable[..., Database], recorded: Recorded
) -> None:
    """A unit aborted by another unit counts as a conflict (its body failed: rolled back);
    run() runs it again (a retry), which commits. A unit that never got the turn is an
    error."""
    db = make_db(telemetry=True, retry_deadline=0.2)
    attempts = []

    def body(session: Any) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise errors.UnitAbortedError("aborted by another unit (simulated)")

    recorded.spans.clear()
    db.run(body)
    stats = db.stats()
    assert (stats.conflicts, stats.busy_retries, len(attempts)) == (1, 1, 2)
    metrics = recorded.metrics()
    assert value(metrics, "app.units.conflicts") == 1
    assert value(metrics, "app.units.retried") == 1
    assert [s.attributes["app.unit.outcome"] for s in recorded.units()] == [
        "rolled_back",
        "committed",
    ]

    taken, release = threading.Event(), threading.Event()

    def hold_the_turn(_: int) -> None:
        with db.unit_of_work():
            taken.set()
            release.wait(10)

    def wait_past_the_deadline(_: int) -> None:
        assert taken.wait(10)
        try:
            with pytest.raises(errors.DatabaseBusyError), db.unit_of_work():
                pass  # pragma: no cover - never runs
        finally:
            release.set()

    recorded.spans.clear()
    assert run_threads(2, lambda n: (hold_the_turn, wait_past_the_deadline)[n](n)) == []
    outcomes = sorted(s.attributes["app.unit.outcome"] for s in recorded.units())
    assert outcomes == ["committed", "error"]
    (never,) = [s for s in recorded.units() if s.attributes["app.unit.outcome"] == "error"]
    assert never.status.status_code is StatusCode.ERROR
    assert "app.unit.turn_held" not in never.attributes


def test_spans_started_inside_a_unit_are_its_children(
    make_db: Callable[..., Database], recorded: Recorded
) -> None:
    db = make_db(telemetry=True)
    tracer = recorded.tracers.get_tracer("test")
    recorded.spans.clear()
    with db.unit_of_work() as session, tracer.start_as_current_span("inside"):
        session.execute(text("SELECT 1"))
    with db.read(), tracer.start_as_current_span("inside a read"):
        pass
    spans = {s.name: s for s in recorded.spans.get_finished_spans()}
    write, read = recorded.units()
    assert spans["inside"].parent is not None
    assert spans["inside"].parent.span_id == write.context.span_id
    assert spans["inside a read"].parent.span_id == read.context.span_id


def test_statement_spans_of_the_sqlalchemy_instrumentation_are_children(
    make_db: Callable[..., Database], recorded: Recorded
) -> None:
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.sqlalchemy")
    db = make_db(telemetry=True)
    instrumentor = instrumentation.SQLAlchemyInstrumentor()
    # The package names SQLAlchemy < 2.1 as what it instruments; it works with 2.1.
    instrumentor.instrument(engine=db.engine, tracer_provider=recorded.tracers, skip_dep_check=True)
    try:
        recorded.spans.clear()
        with db.unit_of_work() as session:
            session.execute(text("SELECT 42"))
    finally:
        instrumentor.uninstrument()
    (unit,) = recorded.units()
    (statement,) = [
        s
        for s in recorded.spans.get_finished_spans()
        if "SELECT 42" in str(s.attributes.get("db.statement", s.attributes.get("db.query.text")))
    ]
    assert statement.parent is not None and statement.parent.span_id == unit.context.span_id


def test_pool_instruments(make_db: Callable[..., Database], recorded: Recorded) -> None:
    db = make_db(telemetry=True, pool_size=2, max_overflow=1, pool_timeout=2.0)
    held = [db.engine.connect() for _ in range(3)]
    failures: list[BaseException] = []

    def wait_for_a_connection() -> None:
        try:
            with db.read() as session:
                session.execute(text("SELECT 1"))
        except BaseException as exc:  # noqa: BLE001 - the test asserts on it
            failures.append(exc)

    waiter = threading.Thread(target=wait_for_a_connection)
    try:
        metrics = recorded.metrics()
        assert value(metrics, "db.client.connection.max") == 3
        assert connections(metrics, "used") == 3
        assert connections(metrics, "idle") == 0
        waiter.start()
        deadline, pending = time.monotonic() + 1.5, 0
        while pending == 0 and time.monotonic() < deadline:
            pending = value(recorded.metrics(), "db.client.connection.pending_requests")
            time.sleep(0.01)
        assert pending == 1
    finally:
        waiter.join(10)
        for connection in held:
            connection.close()
    assert len(failures) == 1 and isinstance(failures[0], errors.PoolExhaustedError)
    metrics = recorded.metrics()
    assert value(metrics, "db.client.connection.timeouts") == 1
    assert value(metrics, "db.client.connection.pending_requests") == 0
    assert connections(metrics, "used") == 0
    assert one(metrics, "db.client.connection.wait_time").count >= 3
    assert one(metrics, "db.client.connection.create_time").count >= 3
    assert one(metrics, "db.client.connection.use_time").count >= 3
    names = {a["db.client.connection.pool.name"] for a, _ in metrics["db.client.connection.count"]}
    assert len(names) == 1


def test_checkpoints_wal_and_vector_cache(tmp_path: Path, recorded: Recorded) -> None:
    with Database(f"sqlite:///{tmp_path / 'memory.db'}", telemetry=True) as db:
        store = BlockStore(db)
        store.append("with an embedding", embedding=[0.1, 0.2, 0.3])
        store.similar([0.1, 0.2, 0.3], top_k=1)
        db.checkpoint("truncate")
        metrics = recorded.metrics()
        assert one(metrics, "app.checkpoint.duration", app__checkpoint__mode="truncate").count == 1
        assert value(metrics, "app.wal.size") == os.path.getsize(tmp_path / "memory.db-wal")
        cached = db.stats().vector_cache_bytes
        assert cached > 0 and value(metrics, "app.vector_cache.size") == cached


class _FakeDatabase:
    """What the observable instruments read of a Database, with a replica's figures."""

    def __init__(self, reads: int) -> None:
        self.closed = False
        self.engine = None
        self.reads = reads

    def stats(self) -> Stats:
        replica = ReplicaStats(
            url="postgresql+psycopg://app:***@replica.example:5433/prod",
            state="up",
            lag=0.25,
            replayed=None,
            reads=self.reads,
            failures=0,
        )
        return Stats(0, 0, 0, 0, 0.0, 0.0, 0, 0, 1, replicas=(replica,))


def test_replica_lag_and_reads_and_counts_outliving_a_database(recorded: Recorded) -> None:
    settings = Settings(url="postgresql+psycopg://app:s3cret@db.example:6543/prod", telemetry=True)
    telemetry = _telemetry.Telemetry(settings, settings.safe_url())
    database, counters = _FakeDatabase(reads=7), Counters()
    counters.add("committed", 5)
    telemetry.watch(database, counters)  # type: ignore[arg-type]
    metrics = recorded.metrics()
    replica = {"app__replica__address": "replica.example", "app__replica__port": 5433}
    assert value(metrics, "app.replica.lag", **replica) == 0.25
    assert value(metrics, "app.replica.reads", **replica) == 7
    assert value(metrics, "app.units.committed", db__namespace="prod") == 5
    database.closed = True  # disposed: no longer read, its counts stay
    metrics = recorded.metrics()
    assert "app.replica.lag" not in metrics or not metrics["app.replica.lag"]
    assert value(metrics, "app.replica.reads", **replica) == 7
    assert value(metrics, "app.units.committed", db__namespace="prod") == 5


def test_attributes_name_the_database_without_credentials(
    tmp_path: Path, recorded: Recorded
) -> None:
    url = "postgresql+psycopg://app_user:s3cret@db.example:6543/prod?sslmode=require"
    telemetry = _telemetry.Telemetry(Settings(url=url, telemetry=True), "key")
    assert telemetry.attributes == {
        "db.system.name": "postgresql",
        "db.namespace": "prod",
        "server.address": "db.example",
        "server.port": 6543,
    }
    assert telemetry.pool_attributes["db.client.connection.pool.name"] == "db.example:6543/prod"
    replica = telemetry.replica_attributes("postgresql+psycopg://app_user:***@r1/prod")
    everything = [
        telemetry.attributes,
        telemetry.pool_attributes,
        *telemetry.connection_attributes.values(),
        *telemetry.unit_attributes.values(),
        replica,
    ]
    assert not [a for a in everything if "s3cret" in repr(a) or "app_user" in repr(a)]
    path = tmp_path / "memory.db"
    key = f"sqlite:{os.path.realpath(path)}"  # what Database.key is for the file
    sqlite = _telemetry.Telemetry(Settings(url=f"sqlite:///{path}", telemetry=True), key)
    assert sqlite.attributes == {
        "db.system.name": "sqlite",
        "db.namespace": os.path.realpath(path),
    }


@pytest.mark.postgres
def test_no_credentials_reach_any_attribute(recorded: Recorded) -> None:
    require_backend("postgres")
    with postgres_schema("t_") as schema_url:
        # The test server trusts local connections: a password in the URL is sent, unused.
        url = make_url(schema_url).set(password="s3cret-pw").render_as_string(hide_password=False)
        with Database(url, telemetry=True, auto_upgrade=True) as db:
            store = BlockStore(db)
            store.append("a block")
            store.count()
            with db.read() as session:
                session.execute(text("SELECT 1"))
            metrics = recorded.metrics()
    values = [repr(a) for points in metrics.values() for a, _ in points]
    values += [repr(dict(s.attributes or {})) for s in recorded.spans.get_finished_spans()]
    assert values and not [v for v in values if "s3cret" in v or "postgres@" in v]


def test_a_closed_database_dies_and_stops_being_reported(db_url: str, recorded: Recorded) -> None:
    with Database(db_url, auto_upgrade=True):
        pass

    def request(number: int) -> weakref.ref[object]:
        db = Database(db_url, telemetry=True)
        BlockStore(db).append(f"request {number}")
        with db.read() as session:
            session.execute(text("SELECT 1"))
        assert recorded.metrics()["db.client.connection.count"]  # reported while open
        db.dispose()
        return weakref.ref(db)

    refs = [request(number) for number in range(20)]
    assert alive(refs) == 0
    metrics = recorded.metrics()
    assert not metrics.get("db.client.connection.count")  # no pool of a live Database
    # Their counts stay: 20 appends committed (and whatever the opens wrote).
    assert value(metrics, "app.units.committed") >= 20
    assert one(metrics, "app.appends.per_commit").sum == 20


def test_the_setting_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.resolve("sqlite://").telemetry is False
    monkeypatch.setenv("APP_TELEMETRY", "true")
    assert Settings.resolve("sqlite://").telemetry is True
    monkeypatch.setenv("APP_TELEMETRY", "sometimes")
    with pytest.raises(errors.ConfigurationError, match="APP_TELEMETRY"):
        Settings.resolve("sqlite://")
    with pytest.raises(errors.ConfigurationError, match="telemetry must be True or False"):
        Settings(url="sqlite://", telemetry="yes")  # type: ignore[arg-type]


def test_telemetry_without_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if not installed: an import of these names fails.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(errors.ConfigurationError) as raised:
        Database("sqlite://", telemetry=True)
    assert install_hint("telemetry") in str(raised.value)


def test_off_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'memory.db'}"
    script = (
        "import sys\n"
        "from app import BlockStore, Database\n"
        f"db = Database({url!r})\n"
        "BlockStore(db).append('hello')\n"
        "db.dispose()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "APP_TELEMETRY"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    assert out.stdout.strip() == "[]"


def test_the_example_service_serves_metrics(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("starlette", reason="the example service needs the examples extra")
    pytest.importorskip("uvicorn", reason="the example service needs the examples extra")
    pytest.importorskip("opentelemetry.exporter.prometheus")
    import httpx

    from benchmarks._service import running_service

    with Database(db_url, auto_upgrade=True):
        pass
    monkeypatch.setenv("APP_TELEMETRY", "true")
    with running_service(db_url, log_path=str(tmp_path / "server.log")) as server:
        posted = httpx.post(server.url + "/memories", json={"context": "hello"}, timeout=30)
        assert posted.status_code == 201
        answer = httpx.get(server.url + "/metrics", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    for name in (
        "app_units_committed_total",
        "app_write_turn_wait_time_seconds_bucket",
        "app_appends_per_commit_sum",
        "db_client_connection_count",
    ):
        assert name in answer.text, name
