"""PostgreSQL read replicas: where reads go, read-your-writes, and replicas that fail.

Tests on ``APP_TEST_REPLICA_URL`` (a replica of the test server) never stop or slow it; the
ones that stop, restart or delay a server run on a private primary with its own replica.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from app import BlockStore, Database, DatabaseManager, Settings, errors
from app.operations.doctor import diagnose
from app.schema import head_revision
from benchmarks.replicas import main as replicas_benchmark

from .helpers import Background, assert_chain_intact, run_cli, run_threads, wait_until
from .replica_helpers import (
    PrivateCluster,
    free_port,
    private_cluster,
    replica_url,
    replicated_schema,
    same_schema,
    wait_for_replay,
)

pytestmark = pytest.mark.postgres

IN_RECOVERY = text("SELECT pg_is_in_recovery()")
#: The first pause before a failed replica is tried again (docs/guide/postgresql.md).
FIRST_PAUSE = 0.25


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    made = private_cluster()
    yield made
    made.remove()


@pytest.fixture
def replicated() -> Iterator[tuple[str, str]]:
    """(primary URL, replica URL) of a new schema on the test server and its CI replica."""
    with replicated_schema("r_") as urls:
        yield urls


def open_db(primary: str, replicas: list[str], **settings: Any) -> Database:
    return Database(primary, replicas=replicas, auto_upgrade=True, **settings)


def only_replica(db: Database) -> Any:
    (replica,) = db.stats().replicas
    return replica


# -- settings ----------------------------------------------------------------------------------


def test_replicas_come_from_the_environment_separated_by_commas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary = "postgresql+psycopg://u@db1/app"
    monkeypatch.setenv("APP_REPLICAS", " postgresql://u@db2/app , postgresql+psycopg://u@db3/app,")
    monkeypatch.setenv("APP_MAX_REPLICA_LAG", "2.5")
    settings = Settings.resolve(primary)
    # A bare postgresql:// gets the driver the layer uses, as the primary's URL does.
    assert settings.replicas == ("postgresql+psycopg://u@db2/app", "postgresql+psycopg://u@db3/app")
    assert settings.max_replica_lag == 2.5
    assert Settings.resolve(primary, replicas=[]).replicas == ()


@pytest.mark.parametrize(
    ("primary", "replicas", "message"),
    [
        ("sqlite:///x.db", ["postgresql+psycopg://u@db2/app"], "need a PostgreSQL primary"),
        ("postgresql+psycopg://u@db1/app", ["sqlite:///y.db"], "is not a PostgreSQL URL"),
        ("postgresql+psycopg://u@db1/app", ["postgresql+psycopg://u@db1/app"], "primary's own"),
        (
            "postgresql+psycopg://u@db1/app",
            ["postgresql+psycopg://u@db2/app", "postgresql://u@db2/app"],
            "listed twice",
        ),
        ("postgresql+psycopg://u@db1/app", [3], "must be a list of PostgreSQL URLs"),
        ("postgresql+psycopg://u@db1/app", ["postgresql+psycopg2://u@db2/app"], "psycopg2"),
    ],
)
def test_bad_replica_settings_are_refused(primary: str, replicas: Any, message: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=message):
        Settings.resolve(primary, replicas=replicas)


def test_a_negative_max_replica_lag_is_refused() -> None:
    with pytest.raises(errors.ConfigurationError, match="max_replica_lag"):
        Settings.resolve("postgresql+psycopg://u@db1/app", max_replica_lag=-1)


def test_replica_passwords_are_hidden_in_stats(replicated: tuple[str, str]) -> None:
    primary, replica = replicated
    with_password = replica.replace("postgres@", "postgres:s3cret@", 1)
    db = open_db(primary, [with_password])
    try:
        (shown,) = db.stats().replicas
        assert "s3cret" not in shown.url and "***" in shown.url
    finally:
        db.dispose()


# -- where reads and writes go -----------------------------------------------------------------


def test_reads_go_to_the_replica_when_it_is_current(replicated: tuple[str, str]) -> None:
    primary, replica = replicated
    db = open_db(primary, [replica])
    try:
        store = BlockStore(db)
        block = store.append("written on the primary", keywords=["garden"])
        wait_for_replay(primary, replica)
        with db.read() as session:
            assert session.execute(IN_RECOVERY).scalar() is True
        with db.reading() as connection:
            assert connection.execute(IN_RECOVERY).scalar() is True
        assert store.get(block.block_index) == block
        assert store.search_keywords(["garden"]) == [block]
        # Writes, whatever the unit, run on the primary.
        assert db.run(lambda session: session.execute(IN_RECOVERY).scalar()) is False
        with db.unit_of_work() as session:
            assert session.execute(IN_RECOVERY).scalar() is False
        stats = db.stats()
        served = only_replica(db)
        assert (served.state, served.reads, served.failures) == ("up", 4, 0)
        assert stats.primary_reads == 0
        assert served.lag is not None and served.replayed is not None
    finally:
        db.dispose()


def test_read_your_writes_on_a_current_replica(replicated: tuple[str, str]) -> None:
    """50 threads each append, then read their block at once: always found."""
    primary, replica = replicated
    db = open_db(primary, [replica], pool_size=10)
    store = BlockStore(db)
    try:

        def append_then_read(number: int) -> None:
            block = store.append(f"thread {number}", keywords=[f"word{number:03d}x"])
            assert store.get(block.block_index) == block
            assert store.search_keywords([f"word{number:03d}x"]) == [block]

        assert run_threads(50, append_then_read) == []
        assert_chain_intact(db, 50)
        stats = db.stats()
        # Every read of a thread went to the replica or the primary, none failed.
        assert only_replica(db).reads + stats.primary_reads >= 100
        assert only_replica(db).failures == 0
    finally:
        db.dispose()


def test_reads_are_balanced_across_healthy_replicas(replicated: tuple[str, str]) -> None:
    primary, replica = replicated
    # The same replica under two URLs: two replicas, equally fit.
    twins = [replica + "&application_name=first", replica + "&application_name=second"]
    db = open_db(primary, twins)
    try:
        store = BlockStore(db)
        block = store.append("read by both")
        wait_for_replay(primary, replica)
        for _ in range(100):
            assert store.get(block.block_index) == block
        first, second = db.stats().replicas
        assert first.reads + second.reads + db.stats().primary_reads == 100
        # Turn about, but for the checks (about one a second each), which read at once.
        assert first.reads >= 25 and second.reads >= 25
    finally:
        db.dispose()


def test_migrations_run_on_the_primary_with_replicas_configured(
    replicated: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, replica = replicated
    monkeypatch.setenv("APP_REPLICAS", replica)
    upgraded = run_cli("--url", primary, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert f"none -> {head_revision()} (head)" in upgraded.output
    db = Database(primary)  # replicas from the environment; the schema is current
    try:
        assert db.settings.replicas == (replica,)
        assert BlockStore(db).count() == 0
    finally:
        db.dispose()


def test_the_facade_reads_from_the_replica(
    replicated: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, replica = replicated
    Database(primary, auto_upgrade=True).dispose()  # the schema: a deployment step
    monkeypatch.setenv("APP_REPLICAS", replica)
    manager = DatabaseManager(primary)
    try:
        index = manager.append_block("through the old API", keywords=["legacy"])
        wait_for_replay(primary, replica)
        assert manager.get_block(index)["context"] == "through the old API"
        assert [b["block_index"] for b in manager.search_blocks_by_keyword(["legacy"])] == [index]
        served = only_replica(manager.database)
        assert served.reads >= 2 and served.failures == 0
    finally:
        manager.close()


def test_a_primary_listed_as_replica_serves_no_reads(replicated: tuple[str, str]) -> None:
    primary, _ = replicated
    # The same server under another URL: it is not in recovery.
    not_a_replica = primary + "&application_name=not-a-replica"
    db = open_db(primary, [not_a_replica])
    try:
        store = BlockStore(db)
        block = store.append("only on the primary")
        assert store.get(block.block_index) == block
        assert store.count() == 1
        listed = only_replica(db)
        assert (listed.state, listed.reads) == ("not a replica", 0)
        assert db.stats().primary_reads == 2
    finally:
        db.dispose()


# -- replicas that fail ------------------------------------------------------------------------


def test_an_unreachable_replica_is_skipped_and_tried_again_after_a_pause(
    replicated: tuple[str, str],
) -> None:
    primary, replica = replicated
    dead = same_schema(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing", primary)
    db = open_db(primary, [dead, replica])
    try:
        store = BlockStore(db)
        block = store.append("x")
        started = time.monotonic()
        for _ in range(200):
            assert store.get(block.block_index) == block
        down, _ = db.stats().replicas
        assert down.state == "down" and down.reads == 0 and down.failures >= 1
        elapsed = time.monotonic() - started
        # Tried again only after a pause, not by every read (the pause doubles each time).
        assert down.failures <= 1 + elapsed / FIRST_PAUSE
        before = down.failures

        def tried_again() -> bool:
            store.get(block.block_index)
            return db.stats().replicas[0].failures > before

        wait_until(tried_again, "the unreachable replica is tried again", pause=0.01)
        good = db.stats().replicas[1]
        assert good.failures == 0 and good.reads + db.stats().primary_reads >= 200
    finally:
        db.dispose()


@pytest.fixture
def kill_replica_statements() -> Iterator[Callable[[str, int], None]]:
    """``arm(replica_url, times)``: the next ``times`` statements sent through SQLAlchemy to
    that replica find their server connection terminated (``pg_terminate_backend``)."""
    admins: list[Engine] = []
    listeners: list[Callable[..., None]] = []

    def arm(replica: str, times: int) -> None:
        admin = create_engine(replica, isolation_level="AUTOCOMMIT")
        admins.append(admin)
        port = admin.url.port
        left = itertools.count(times, -1)

        def kill(conn: Any, *args: Any) -> None:
            if conn.engine.url.port != port or conn.engine is admin or next(left) <= 0:
                return
            pid = conn.connection.dbapi_connection.info.backend_pid
            with admin.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})

        event.listen(Engine, "before_cursor_execute", kill)
        listeners.append(kill)

    yield arm
    for kill in listeners:
        event.remove(Engine, "before_cursor_execute", kill)
    for admin in admins:
        admin.dispose()


def test_a_read_unit_whose_replica_fails_says_so_and_the_next_read_works(
    replicated: tuple[str, str], kill_replica_statements: Callable[[str, int], None]
) -> None:
    primary, replica = replicated
    db = open_db(primary, [replica])
    try:
        wait_for_replay(primary, replica)
        kill_replica_statements(replica, 1)
        with (
            pytest.raises(errors.ReplicaUnavailableError, match="run the read again"),
            db.read() as session,
        ):
            session.execute(IN_RECOVERY).scalar()
        assert only_replica(db).state == "down"
        with db.read() as session:  # the replica is skipped: the primary answers
            assert session.execute(IN_RECOVERY).scalar() is False
        assert only_replica(db).failures == 1
    finally:
        db.dispose()


def test_the_block_store_reads_again_when_its_replica_fails_half_way(
    replicated: tuple[str, str], kill_replica_statements: Callable[[str, int], None]
) -> None:
    primary, replica = replicated
    db = open_db(primary, [replica])
    try:
        store = BlockStore(db)
        blocks = store.append_many([{"context": f"block {i}"} for i in range(5)])
        wait_for_replay(primary, replica)
        kill_replica_statements(replica, 1)
        assert store.page(1, 3) == blocks[1:4]  # its first query lost the replica
        assert only_replica(db).failures == 1
        assert db.stats().primary_reads == 1
    finally:
        db.dispose()


def test_a_lagging_replica_is_skipped_until_it_catches_up(cluster: PrivateCluster) -> None:
    with cluster.database("lag_") as (primary, replica):
        db = open_db(primary, [replica], max_replica_lag=1.0)
        store = BlockStore(db)
        wait_for_replay(primary, replica)  # the schema, before the delay
        cluster.delay_replica("4s")
        try:

            def lagging() -> bool:
                store.append("keeps the primary moving")
                return db.check_replicas()[0].state == "lagging"

            wait_until(lagging, "the delayed replica is seen lagging", pause=0.05)
            served = only_replica(db).reads
            with db.allow_stale():  # even a stale read skips a lagging replica
                for _ in range(20):
                    assert store.count() >= 1
            assert only_replica(db).reads == served
        finally:
            cluster.delay_replica("0")
        wait_until(
            lambda: db.check_replicas()[0].state == "up", "the replica caught up", pause=0.05
        )
        with db.allow_stale(), db.read() as session:
            assert session.execute(IN_RECOVERY).scalar() is True
        db.dispose()


def test_read_your_writes_while_the_replica_is_delayed(cluster: PrivateCluster) -> None:
    """50 threads each append then read their own block at once: always found, although
    the replica applies changes only 5 seconds after they are committed."""
    with cluster.database("ryw_") as (primary, replica):
        db = open_db(primary, [replica], max_replica_lag=60.0, pool_size=10)
        store = BlockStore(db)
        wait_for_replay(primary, replica)  # the schema, before the delay
        cluster.delay_replica("5s")
        try:

            def append_then_read(number: int) -> None:
                block = store.append(f"thread {number}", keywords=[f"word{number:03d}x"])
                assert store.get(block.block_index) == block
                assert store.search_keywords([f"word{number:03d}x"]) == [block]
                with db.read() as session:
                    assert (
                        session.execute(
                            text("SELECT hash FROM blocks WHERE block_index = :i"),
                            {"i": block.block_index},
                        ).scalar()
                        == block.hash
                    )

            assert run_threads(50, append_then_read) == []
            assert_chain_intact(db, 50)
            # The delay was real: a stale read (allowed on the replica) misses a new block.
            newest = store.append("not applied on the replica for 5 seconds")
            with db.allow_stale():
                assert store.get(newest.block_index) is None
            assert store.get(newest.block_index) == newest
            assert only_replica(db).state == "up" and only_replica(db).failures == 0
        finally:
            cluster.delay_replica("0")
            db.dispose()


@pytest.mark.slow
def test_replica_stopped_mid_load_and_started_again(cluster: PrivateCluster) -> None:
    """Readers and writers go on while the replica is stopped at once (pg_ctl stop -m
    immediate) and started again: no read fails, and reads return to the replica once it
    has caught up."""
    with cluster.database("stop_") as (primary, replica):
        db = open_db(primary, [replica], pool_size=8)
        store = BlockStore(db)
        store.append_many([{"context": f"seed {i}", "keywords": ["seed"]} for i in range(20)])
        stop = threading.Event()

        def reader(number: int) -> int:
            reads = 0
            while not stop.is_set():
                head = store.head()
                assert head is not None
                assert store.get(head.block_index) is not None
                assert store.search_keywords(["seed"], limit=5)
                assert len(store.recent(3)) == 3
                reads += 4
            return reads

        def writer() -> int:
            appended = 0
            while not stop.is_set():
                block = store.append(f"during the load {appended}", keywords=["load"])
                assert store.get(block.block_index) == block
                appended += 1
            return appended

        workers = [Background(lambda n=n: reader(n), name=f"reader-{n}") for n in range(6)]
        workers.append(Background(writer, name="writer"))
        try:
            for worker in workers:
                worker.start()
            wait_until(lambda: only_replica(db).reads >= 50, "reads on the replica", pause=0.01)
            cluster.stop_replica("immediate")
            wait_until(lambda: only_replica(db).state == "down", "the replica seen down")
            on_primary = db.stats().primary_reads
            wait_until(
                lambda: db.stats().primary_reads >= on_primary + 100,
                "reads go on on the primary",
                pause=0.01,
            )
            cluster.start_replica()
            served = only_replica(db).reads
            wait_until(
                lambda: only_replica(db).reads >= served + 100,
                "reads return to the replica",
                pause=0.01,
            )
            assert only_replica(db).state == "up"
        finally:
            stop.set()
        results = [worker.join() for worker in workers]  # a failed read fails the test here
        assert all(count > 0 for count in results)
        assert only_replica(db).failures >= 1
        appended = results[-1]
        assert_chain_intact(db, 20 + appended)
        db.dispose()


@pytest.mark.slow
def test_primary_restarted_mid_load(cluster: PrivateCluster) -> None:
    """Writers go on while the primary restarts: each append either returns (and is then
    in the chain for good) or raises a named error; the chain is intact afterwards."""
    with cluster.database("restart_") as (primary, replica):
        db = open_db(primary, [replica], pool_size=8, retry_deadline=20.0)
        store = BlockStore(db)
        committed: dict[int, str] = {}
        refused: list[errors.AppError] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(number: int) -> None:
            for attempt in itertools.count():
                if stop.is_set():
                    return
                try:
                    block = store.append(f"writer {number} append {attempt}")
                except (errors.DatabaseUnavailableError, errors.DatabaseBusyError) as exc:
                    with lock:
                        refused.append(exc)
                    time.sleep(0.01)  # the server is away: do not spin
                    continue
                with lock:
                    committed[block.block_index] = block.hash

        workers = [Background(lambda n=n: writer(n), name=f"writer-{n}") for n in range(4)]
        try:
            for worker in workers:
                worker.start()
            wait_until(lambda: len(committed) >= 50, "appends before the restart", pause=0.01)
            cluster.restart_primary("fast")
            after_restart = len(committed)
            wait_until(
                lambda: len(committed) >= after_restart + 50,
                "appends after the restart",
                pause=0.01,
            )
        finally:
            stop.set()
        for worker in workers:
            worker.join()  # any other error (an unnamed one) fails the test here
        db.dispose()
        with Database(primary) as check:
            with check.read() as session:
                rows = session.execute(text("SELECT block_index, hash FROM blocks"))
                stored = {index: digest for index, digest in rows}
            assert {index: stored.get(index) for index in committed} == committed
            assert_chain_intact(check, len(stored))


@pytest.mark.slow
def test_a_primary_started_by_crash_recovery_is_still_not_a_replica(
    cluster: PrivateCluster,
) -> None:
    """After a crash, a primary's pg_last_wal_replay_lsn() keeps where its recovery ended
    (not NULL); what tells it from a replica is pg_is_in_recovery()."""
    cluster.restart_primary("immediate")  # a crash: the start replays the WAL
    with cluster.database("crashed_") as (primary, replica):
        engine = create_engine(primary)
        try:
            with engine.connect() as connection:
                recovered = connection.execute(
                    text("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() IS NOT NULL")
                ).one()
        finally:
            engine.dispose()
        assert tuple(recovered) == (False, True)
        db = open_db(primary, [primary + "?application_name=crashed-primary", replica])
        try:
            store = BlockStore(db)
            block = store.append("after the crash")
            wait_for_replay(primary, replica)
            for _ in range(10):
                assert store.get(block.block_index) == block
            listed, real = db.stats().replicas
            assert (listed.state, listed.reads) == ("not a replica", 0)
            assert real.state == "up" and real.reads + db.stats().primary_reads == 10
        finally:
            db.dispose()


# -- observability -----------------------------------------------------------------------------


def test_doctor_and_stats_show_each_replica(
    replicated: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    primary, replica = replicated
    Database(primary, auto_upgrade=True).dispose()
    dead = same_schema(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing", primary)
    monkeypatch.setenv("APP_REPLICAS", f"{replica},{dead}")
    report = diagnose(primary)
    lines = {check.name: check for check in report.checks}
    assert lines["replica 1"].status == "ok"
    assert ": up, lag " in lines["replica 1"].value and "reads served " in lines["replica 1"].value
    assert lines["replica 2"].status == "warn" and ": down," in lines["replica 2"].value
    assert "reads on the primary" in lines["stats"].value
    assert report.ok  # a replica that is down is a warning: reads go elsewhere


def test_the_replica_benchmark_runs_clean_at_a_tiny_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    replica = replica_url()
    primary = os.environ["APP_TEST_POSTGRES_URL"]
    argv = ["--primary", primary, "--replica", replica, "--threads", "4", "--cycles", "2"]
    assert replicas_benchmark([*argv, "--seed-blocks", "20", "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| primary")]
    assert len(rows) == 2
    # 4 threads x 2 cycles: 8 appends and 80 reads each, no error, no miss, intact chains.
    assert all("| 0 | 0 |" in row and row.endswith("| intact |") for row in rows)
