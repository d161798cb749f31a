"""Helpers that tests import. Fixtures live in conftest.py, the legacy class's pieces in
legacy_helpers.py, the soak and fault harnesses and the hostile-input tables in modules of
their own.

Every blocking wait here has a deadline, and every thread started here hands its exception
back to the test (returned, or raised in the test's own thread).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import BlockStore, Database

#: How long a test waits for a thread to end, or for something to happen, before it fails:
#: long enough for a loaded two-core machine; a deadlock hits it.
JOIN_TIMEOUT = 60.0

# -- threads -----------------------------------------------------------------------------------


def run_threads(
    count: int, target: Callable[[int], None], *, timeout: float = JOIN_TIMEOUT
) -> list[BaseException]:
    """Run ``target(i)`` in ``count`` threads started together.

    Returns:
        The exceptions the threads raised (the test asserts on them).

    Raises:
        AssertionError: a thread was still running after ``timeout`` seconds (a hang).
    """
    failures: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def body(number: int) -> None:
        try:
            barrier.wait(timeout)
            target(number)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported by the test
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = sum(thread.is_alive() for thread in threads)
    assert not hung, f"{hung} of {count} threads still running after {timeout}s"
    return failures


class Background:
    """``fn()`` in a thread of its own, for a test that does something else meanwhile.

    Used as a context manager, the thread starts on entry and is joined on exit, where its
    exception is raised in the test's thread (unless the test's block failed first: that
    error is the one to see). ``join()`` does the same at any point; ``outcome()`` returns
    the exception instead of raising it.
    """

    def __init__(
        self, fn: Callable[[], Any], *, name: str | None = None, timeout: float = JOIN_TIMEOUT
    ) -> None:
        self._fn = fn
        self.timeout = timeout
        self._outcome: list[tuple[bool, Any]] = []  # (raised, value), once fn has ended
        self.thread = threading.Thread(target=self._body, name=name, daemon=True)

    def _body(self) -> None:
        try:
            self._outcome.append((False, self._fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test by join()/outcome()
            self._outcome.append((True, exc))

    def start(self) -> Background:
        self.thread.start()
        return self

    def outcome(self, timeout: float | None = None) -> Any:
        """What ``fn()`` returned, or the exception it raised.

        Raises:
            AssertionError: the thread is still running after ``timeout`` seconds
                (default: the one given to the constructor).
        """
        wait = self.timeout if timeout is None else timeout
        self.thread.join(wait)
        name = self.thread.name
        assert not self.thread.is_alive(), f"thread {name} still running after {wait}s"
        # Empty only if an exception was raised into the thread from outside (the
        # interruption tests do) after fn had ended.
        assert self._outcome, f"thread {name} ended without finishing its function"
        return self._outcome[0][1]

    def join(self, timeout: float | None = None) -> Any:
        """What ``fn()`` returned.

        Raises:
            Exception: what ``fn()`` raised, raised again here.
            AssertionError: the thread is still running after ``timeout`` seconds, or
                ``fn()`` raised a BaseException that is not an Exception (raised here,
                a KeyboardInterrupt would stop the whole test run).
        """
        result = self.outcome(timeout)
        if self._outcome[0][0]:
            if isinstance(result, Exception):
                raise result
            raise AssertionError(f"thread {self.thread.name} raised {result!r}") from result
        return result

    def __enter__(self) -> Background:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.join()
        else:
            self.thread.join(self.timeout)


def in_thread(fn: Callable[[], Any], timeout: float = JOIN_TIMEOUT) -> Any:
    """Run ``fn`` in a new thread; return its result or the exception it raised.

    Raises:
        AssertionError: the thread was still running after ``timeout`` seconds.
    """
    return Background(fn, timeout=timeout).start().outcome()


def join_processes(processes: list[Any], timeout: float) -> list[int | None]:
    """Wait for ``multiprocessing`` processes, ``timeout`` seconds for all of them together;
    kill any still running then (a hung child must not outlive the test).

    Returns:
        Their exit codes, in order (a killed one's is ``-SIGKILL``).
    """
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(10)
    return [process.exitcode for process in processes]


def wait_for_child(pid: int, timeout: float = JOIN_TIMEOUT) -> int:
    """The exit code of the forked child ``pid``.

    Raises:
        AssertionError: the child was still running after ``timeout`` seconds (it is
            killed first).
    """
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # returns at once: SIGKILL cannot be ignored
            raise AssertionError(f"the forked child {pid} still ran after {timeout}s")
        time.sleep(0.01)


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = JOIN_TIMEOUT, pause: float = 0.001
) -> None:
    """Poll ``condition()`` until it is true.

    Raises:
        AssertionError: naming ``what`` was awaited, once ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        time.sleep(pause)


def wait_for_queue(db: Database, count: int, timeout: float = 30.0) -> None:
    """Wait until ``count`` writers of ``db`` queue for the write turn."""
    wait_until(
        lambda: db.stats().writers_queued >= count, f"{count} writers queued", timeout=timeout
    )


# -- a counter for read-modify-write units -----------------------------------------------------


def make_counter_table(db: Database) -> None:
    """A one-row counter for read-modify-write tests."""
    with db.unit_of_work() as session:
        session.execute(
            text("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)")
        )
        session.execute(text("INSERT INTO counter VALUES (1, 0)"))


def increment_counter(session: Session) -> None:
    """Read the counter, then write it back plus one: loses updates unless units serialise."""
    value = session.execute(text("SELECT value FROM counter WHERE id = 1")).scalar_one()
    session.execute(text("UPDATE counter SET value = :v WHERE id = 1"), {"v": value + 1})


def counter_value(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(text("SELECT value FROM counter WHERE id = 1")).scalar_one())


# -- the chain ---------------------------------------------------------------------------------


def assert_chain_intact(db: Database, expected: int) -> None:
    """The chain has exactly ``expected`` blocks, 0..expected-1, each linked to the one before
    and with the hash the legacy formula gives."""
    with db.read() as session:
        rows = session.execute(
            text("SELECT block_index, hash, prev_hash FROM blocks ORDER BY block_index")
        ).all()
    assert [row[0] for row in rows] == list(range(expected))
    assert all(rows[i][2] == rows[i - 1][1] for i in range(1, len(rows)))
    if rows:
        assert rows[0][2] == ""
    assert BlockStore(db).verify_chain().ok


# -- the process -------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_cli(*args: str) -> Result:
    """Run the command line in-process with ``args``."""
    from app.cli import cli

    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result: Result) -> str:
    """The command failed (exit 1) with exactly one ``Error:`` line and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# -- the PostgreSQL test server ----------------------------------------------------------------

POSTGRES_ENV = "APP_TEST_POSTGRES_URL"


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def require_backend(backend: str) -> None:
    """Skip a PostgreSQL case when no server is named (fail instead when CI demands one)."""
    if backend == "postgres" and not postgres_url():
        reason = f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql+psycopg://127.0.0.1/test)"
        if os.environ.get("APP_REQUIRE_POSTGRES"):
            pytest.fail(f"APP_REQUIRE_POSTGRES is set, but {reason}")
        pytest.skip(reason)


def _postgres_schema_url(schema: str) -> str:
    base = make_url(postgres_url() or "")
    return base.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A URL for a new, empty schema on the test server, dropped afterwards."""
    schema = prefix + uuid.uuid4().hex[:12]
    admin = create_engine(postgres_url() or "", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _postgres_schema_url(schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
