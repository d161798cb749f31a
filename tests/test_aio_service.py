"""The example service (examples/memory_service.py) under uvicorn, on every backend: 200
concurrent clients append and then search, with no error and an intact chain; the server is
always stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app import BlockStore, Database
from benchmarks._service import drive, running_service

from .aio_helpers import run_async
from .helpers import assert_chain_intact

pytest.importorskip("starlette", reason="the example service needs the examples extra")
pytest.importorskip("uvicorn", reason="the example service needs the examples extra")

CLIENTS = 200

pytestmark = pytest.mark.timeout(300)


def test_two_hundred_concurrent_clients_append_and_search(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    async def post(client: Any, number: int, _: int) -> Any:
        body = {"context": f"client {number} met Ana", "keywords": [f"k{number:03d}x"]}
        return await client.post("/memories", json=body)

    async def search(client: Any, number: int, _: int) -> Any:
        return await client.get("/memories/search", params={"q": f"k{number:03d}x"})

    async def refused(client: Any, number: int, _: int) -> Any:
        return await client.post("/memories", json={"context": "x", "importance": 7})

    with running_service(db_url, log_path=str(tmp_path / "server.log")) as server:
        posts = run_async(lambda: drive(server.url, CLIENTS, 1, post, 201))
        searches = run_async(lambda: drive(server.url, CLIENTS, 1, search, 200))
        bad = run_async(lambda: drive(server.url, 1, 1, refused, 422))
    assert server.process.poll() is not None  # stopped, not left running

    assert posts.failures == {} and searches.failures == {} and bad.failures == {}
    indices = sorted(body["index"] for body in posts.bodies)  # type: ignore[index]
    assert indices == list(range(CLIENTS))
    # Each search finds exactly the block its client posted.
    found = [body["blocks"] for body in searches.bodies]  # type: ignore[index]
    assert all(len(blocks) == 1 for blocks in found)
    assert sorted(blocks[0]["context"] for blocks in found) == sorted(
        f"client {n} met Ana" for n in range(CLIENTS)
    )
    assert "importance" in bad.bodies[0]["error"]  # type: ignore[index]
    assert_chain_intact(db, CLIENTS)
    assert BlockStore(db).count() == CLIENTS
