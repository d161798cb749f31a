"""Helpers of the read-replica tests: the CI replica of the test server, and private clusters.

``APP_TEST_REPLICA_URL`` names a streaming replica of the server in ``APP_TEST_POSTGRES_URL``
(``.ci/run`` starts one with ``scripts/replica.sh``); tests that need it skip without it, and
fail instead when ``APP_REQUIRE_REPLICAS`` is set. Tests that stop or restart servers never
touch that pair: they get a private primary with its own replica (:class:`PrivateCluster`),
made with the same script when the PostgreSQL server tools are installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from .helpers import postgres_schema, require_backend, wait_until

REPLICA_ENV = "APP_TEST_REPLICA_URL"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "replica.sh"
#: Longest a server start, stop or base backup may take on a loaded machine.
SERVER_TIMEOUT = 120.0


def _missing(reason: str) -> None:
    if os.environ.get("APP_REQUIRE_REPLICAS"):
        pytest.fail(f"APP_REQUIRE_REPLICAS is set, but {reason}")
    pytest.skip(reason)


def replica_url() -> str:
    """The CI replica's URL (skips, or fails when replicas are required, without one)."""
    require_backend("postgres")
    url = os.environ.get(REPLICA_ENV)
    if not url:
        _missing(f"replica tests need {REPLICA_ENV} (scripts/replica.sh starts a replica)")
    assert url is not None
    return url


def same_schema(url: str, like: str) -> str:
    """``url`` with the ``options`` (the schema's search_path) of ``like``."""
    options = make_url(like).query.get("options")
    parsed = make_url(url)
    if options:
        parsed = parsed.update_query_dict({"options": options})
    return parsed.render_as_string(hide_password=False)


@contextmanager
def replicated_schema(prefix: str) -> Iterator[tuple[str, str]]:
    """A new schema on the test server: (primary URL, replica URL) of it, the replica's
    once the replica has replayed the schema's creation."""
    replica = replica_url()
    with postgres_schema(prefix) as primary:
        replica_schema = same_schema(replica, primary)
        wait_for_replay(primary, replica)
        yield primary, replica_schema


def wait_for_replay(primary: str, replica: str, timeout: float = 60.0) -> None:
    """Wait until ``replica`` has replayed everything ``primary`` has written so far."""
    with _engine(primary) as engine, engine.connect() as connection:
        target = connection.execute(text("SELECT pg_current_wal_lsn()")).scalar()
    with _engine(replica) as engine:

        def replayed() -> bool:
            with engine.connect() as connection:
                return bool(
                    connection.execute(
                        text("SELECT pg_last_wal_replay_lsn() >= CAST(:t AS pg_lsn)"),
                        {"t": target},
                    ).scalar()
                )

        wait_until(replayed, f"replica replays up to {target}", timeout=timeout, pause=0.01)


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        yield engine
    finally:
        engine.dispose()


def free_port() -> int:
    return int(_script("free-port").strip())


def _script(*args: str) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=SERVER_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"replica.sh {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def server_tools_missing() -> str | None:
    """Why private clusters cannot be made here, or None when they can."""
    if shutil.which("bash") is None:
        return "bash is not installed"
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not os.environ.get("PGBIN") and not versions and shutil.which("pg_ctl") is None:
        return "the PostgreSQL server tools (initdb, pg_ctl, pg_basebackup) are not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser to start servers as postgres"
    return None


class PrivateCluster:
    """A primary of its own with one streaming replica, each on a free port of 127.0.0.1,
    in a new temporary directory; stopped and removed by :meth:`remove`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="app-replica-test-"))
        self.root.chmod(0o755)  # the servers run as postgres when the tests run as root
        self.primary_dir, self.replica_dir = self.root / "primary", self.root / "replica"
        self.primary_port, self.replica_port = free_port(), free_port()
        while self.replica_port == self.primary_port:
            self.replica_port = free_port()
        try:
            _script("primary", str(self.primary_dir), str(self.primary_port))
            _script(
                "replica", str(self.replica_dir), str(self.replica_port), str(self.primary_port)
            )
        except BaseException:
            self.remove()
            raise

    def url(self, port: int, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"

    @property
    def primary(self) -> str:
        return self.url(self.primary_port)

    @property
    def replica(self) -> str:
        return self.url(self.replica_port)

    def stop_replica(self, mode: str = "immediate") -> None:
        _script("stop", str(self.replica_dir), mode)

    def start_replica(self) -> None:
        _script("start", str(self.replica_dir))

    def restart_primary(self, mode: str = "fast") -> None:
        _script("restart", str(self.primary_dir), mode)

    def delay_replica(self, setting: str) -> None:
        """Set the replica's ``recovery_min_apply_delay`` (``'0'`` ends the delay)."""
        _script("delay", str(self.replica_dir), setting)

    @contextmanager
    def database(self, prefix: str) -> Iterator[tuple[str, str]]:
        """A new database on the private primary: (primary URL, replica URL), the replica's
        once it has replayed the creation."""
        name = f"{prefix}{int(time.time() * 1000) % 10**9}_{os.getpid()}"
        with _engine(self.primary) as engine, engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            primary, replica = self.url(self.primary_port, name), self.url(self.replica_port, name)
            wait_for_replay(self.primary, self.replica)
            yield primary, replica
        finally:
            with _engine(self.primary) as engine, engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def remove(self) -> None:
        for directory in (self.replica_dir, self.primary_dir):
            if directory.exists():
                _script("remove", str(directory))
        shutil.rmtree(self.root, ignore_errors=True)


def private_cluster() -> PrivateCluster:
    """A new private cluster (skips, or fails when replicas are required, without tools)."""
    missing = server_tools_missing()
    if missing:
        _missing(f"the replica failure tests need a private cluster, but {missing}")
    return PrivateCluster()
