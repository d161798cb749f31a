"""The example service (``examples/memory_service.py``) under uvicorn in a subprocess, and
clients that drive it: for the asyncio benchmark and the service's test."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPOSITORY = str(Path(__file__).resolve().parent.parent)
#: Seconds the server may take to start answering, or to stop once asked.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A running service: its base URL and process."""

    url: str
    process: subprocess.Popen[bytes]

    def threads(self) -> int | None:
        """The server process's threads now (Linux), or None."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        return None


@contextmanager
def running_service(database_url: str, log_path: str | None = None) -> Iterator[Server]:
    """Start the example service on ``database_url`` at a free port of 127.0.0.1, wait until
    it answers, and stop it afterwards, whatever happened (killed if it does not stop).

    Raises:
        RuntimeError: it exited, or did not answer within ``START_TIMEOUT`` seconds (with
            what it wrote to stderr).
    """
    port = free_port()
    env = dict(os.environ, APP_DATABASE_URL=database_url)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (REPOSITORY, env.get("PYTHONPATH"))))
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed in the finally below
    command = [sys.executable, "-m", "uvicorn", "examples.memory_service:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(
        command, cwd=REPOSITORY, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    try:
        server = Server(f"http://127.0.0.1:{port}", process)
        _wait_until_up(server, log_path)
        yield server
    finally:
        try:
            _stop(process)
        finally:
            log.close()


def _wait_until_up(server: Server, log_path: str | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the service exited with code {server.process.returncode}: {_tail(log_path)}"
            )
        try:
            if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"the service did not answer within {START_TIMEOUT}s: {_tail(log_path)}"
            )
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # uvicorn shuts down cleanly, closing the database
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)  # bounded: SIGKILL cannot be ignored


def _tail(log_path: str | None) -> str:
    if log_path is None:
        return "(no log kept)"
    try:
        return Path(log_path).read_text(errors="replace")[-2000:] or "(nothing logged)"
    except OSError:
        return "(no log)"


@dataclass
class Phase:
    """What the clients of one phase saw."""

    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of the successful requests
    failures: dict[str, int] = field(default_factory=dict)  # by status code or exception
    bodies: list[object] = field(default_factory=list)  # JSON of the successful answers

    @property
    def errors(self) -> int:
        return sum(self.failures.values())


Request = Callable[[httpx.AsyncClient, int, int], Awaitable[httpx.Response]]


async def drive(
    base_url: str, clients: int, per_client: int, request: Request, expect: int
) -> Phase:
    """``clients`` concurrent clients, each sending ``per_client`` requests one after
    another: ``request(client, number, sequence)``. An answer other than ``expect`` counts
    as a failure, as does any exception (a timeout included)."""
    phase = Phase(requests=clients * per_client)
    tls = httpx.create_ssl_context()  # made once: every client would make its own

    async def one(number: int) -> None:
        # A client of its own per simulated user: one shared client with hundreds of
        # connections costs the driving process more per request than the service.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=base_url, limits=limits, timeout=120, verify=tls
        ) as client:
            await start.wait()
            for sequence in range(per_client):
                started = time.perf_counter()
                try:
                    response = await request(client, number, sequence)
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                    phase.failures[kind] = phase.failures.get(kind, 0) + 1
                    continue
                if response.status_code != expect:
                    kind = f"HTTP {response.status_code}"
                    phase.failures[kind] = phase.failures.get(kind, 0) + 1
                    continue
                phase.latencies.append(time.perf_counter() - started)
                phase.bodies.append(response.json())

    start = asyncio.Event()
    clients_done = asyncio.gather(*(one(number) for number in range(clients)))
    await asyncio.sleep(0)  # every client made, waiting for the start
    started = time.perf_counter()
    start.set()
    await clients_done
    phase.seconds = time.perf_counter() - started
    return phase
