"""A small memory service on Starlette: POST a memory, GET a search, on ``app.aio``.

Run it from the root of a clone (``pip install -e '.[examples]'``)::

    APP_DATABASE_URL=sqlite:///data/memory.db uvicorn examples.memory_service:app

* ``POST /memories`` with a JSON object ``{"context": ..., "keywords": [...], "tags": [...],
  "importance": 0.5, "metadata": {...}, "embedding": [...]}`` (only ``context`` is required)
  appends a block and answers 201 with it;
* ``GET /memories/search?q=garden+ana&limit=10`` finds blocks by keyword (any word);
* ``GET /memories/{index}`` returns one block (404 when there is none);
* ``GET /health`` answers once the database is open, with the chain's length;
* ``GET /metrics``, with ``APP_TELEMETRY=true``: the layer's metrics in Prometheus's text
  format (needs ``pip install 'hashchain-memory-db[telemetry]' opentelemetry-sdk
  opentelemetry-exporter-prometheus``; see docs/guide/observability.md).

Bad input is a 422 with the layer's message; a database kept busy past its deadline is a
503. Every database call is awaited: appends join the group commit without a thread, and
reads run on the AsyncDatabase's few worker threads, so the event loop never blocks.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import BlockRecord, errors
from app.aio import AsyncBlockStore, AsyncDatabase
from app.settings import parse_flag

_FIELDS = ("keywords", "tags", "importance", "metadata", "embedding", "embedding_model")


def create_app(url: str | None = None) -> Starlette:
    """The service on the database at ``url`` (default: ``$APP_DATABASE_URL``, then the
    layer's default), opened when the server starts and closed when it stops."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = await AsyncDatabase.open(url or os.environ.get("APP_DATABASE_URL"))
        app.state.store = AsyncBlockStore(db)
        try:
            yield
        finally:
            await db.aclose()

    async def add_memory(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(422, "the body must be a JSON object")
        if not isinstance(body, dict) or "context" not in body:
            return _error(422, "the body must be a JSON object with a 'context'")
        unknown = set(body) - {"context", *_FIELDS}
        if unknown:
            return _error(422, f"unknown fields: {', '.join(sorted(unknown))}")
        store: AsyncBlockStore = request.app.state.store
        arguments = {name: body[name] for name in _FIELDS if name in body}
        block = await store.append(body["context"], **arguments)
        return JSONResponse(_block(block), status_code=201)

    async def search(request: Request) -> JSONResponse:
        words = request.query_params.get("q", "").split()
        limit = request.query_params.get("limit", "10")
        if not limit.isdigit():
            return _error(422, f"limit must be a whole number, got {limit!r}")
        store: AsyncBlockStore = request.app.state.store
        found = await store.search_keywords(words, limit=int(limit))
        return JSONResponse({"blocks": [_block(block) for block in found]})

    async def get_memory(request: Request) -> JSONResponse:
        store: AsyncBlockStore = request.app.state.store
        block = await store.get(request.path_params["index"])
        if block is None:
            return _error(404, f"no block {request.path_params['index']}")
        return JSONResponse(_block(block))

    async def health(request: Request) -> JSONResponse:
        store: AsyncBlockStore = request.app.state.store
        return JSONResponse({"status": "ok", "blocks": await store.count()})

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return _error(422, str(exc))

    async def busy(request: Request, exc: Exception) -> JSONResponse:
        return _error(503, str(exc))

    routes = [
        Route("/memories", add_memory, methods=["POST"]),
        Route("/memories/search", search, methods=["GET"]),
        Route("/memories/{index:int}", get_memory, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    if parse_flag(os.environ.get("APP_TELEMETRY", "")):
        routes.append(Route("/metrics", _prometheus_endpoint(), methods=["GET"]))
    return Starlette(
        routes=routes,
        exception_handlers={
            errors.InvalidInputError: invalid,
            errors.DatabaseBusyError: busy,
            errors.CommitTimeoutError: busy,
        },
        lifespan=lifespan,
    )


_metrics_reader: Any = None


def _prometheus_endpoint() -> Any:
    """``GET /metrics``: what OpenTelemetry's Prometheus reader collects, in Prometheus's
    text format. The reader goes on the global MeterProvider, set once per process (each
    worker process of a server serves its own figures: see docs/guide/observability.md)."""
    global _metrics_reader
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    except ImportError as exc:
        raise RuntimeError(
            "APP_TELEMETRY=true: /metrics needs OpenTelemetry's SDK and Prometheus exporter: "
            "pip install 'hashchain-memory-db[telemetry]' opentelemetry-sdk "
            "opentelemetry-exporter-prometheus"
        ) from exc
    if _metrics_reader is None:
        _metrics_reader = PrometheusMetricReader()  # registers with prometheus_client
        metrics.set_meter_provider(MeterProvider(metric_readers=[_metrics_reader]))

    async def endpoint(request: Request) -> Response:
        # Collecting reads every Database's figures: off the event loop.
        body = await run_in_threadpool(generate_latest, REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return endpoint


def _block(block: BlockRecord) -> dict[str, Any]:
    return {
        "index": block.block_index,
        "timestamp": block.timestamp,
        "context": block.context,
        "importance": block.importance,
        "keywords": list(block.keywords),
        "tags": list(block.tags),
        "metadata": dict(block.metadata),
        "hash": block.hash,
        "prev_hash": block.prev_hash,
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


app = create_app()
