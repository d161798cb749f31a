"""Every strategy the benchmark knows, by workload, in the order tables show them."""

from __future__ import annotations

import importlib.util

from . import _counter, _orm, _peer, _raw
from ._target import Strategy
from ._telemetry import APPEND_RECORDED

APPEND: dict[str, Strategy] = {
    s.key: s
    for s in (
        Strategy("sqlite3-lock", "append", _raw.sqlite3_lock),
        Strategy("sqlite3-ceiling", "append", _raw.sqlite3_ceiling),
        Strategy("sqlite3-thread-local", "append", _raw.sqlite3_thread_local),
        Strategy("sqlite3-pool", "append", _raw.sqlite3_pool),
        Strategy("sqlalchemy-default", "append", _orm.sqlalchemy_default),
        Strategy("layer", "append", _orm.layer_append),
        Strategy("facade-transaction", "append", _peer.facade_transaction, needs="app.legacy"),
        Strategy("facade-append-block", "append", _peer.facade_append_block, needs="app.legacy"),
        Strategy("greeum-5.3.0", "append", _peer.greeum_queue, needs="greeum", own_schema=True),
    )
}

COUNTER: dict[str, Strategy] = {
    s.key: s
    for s in (
        Strategy("sqlalchemy-default", "counter", _counter.counter_sqlalchemy_default),
        Strategy("layer-run", "counter", _counter.counter_layer_run),
        Strategy("layer-unit", "counter", _counter.counter_layer_unit),
    )
}

STRATEGIES: dict[str, dict[str, Strategy]] = {"append": APPEND, "counter": COUNTER}

#: Strategies run only when asked for (``benchmarks.append --telemetry``), by workload.
EXTRA: dict[str, dict[str, Strategy]] = {"append": APPEND_RECORDED}

#: The strategy each workload's figures are divided by ("x sqlite3" column).
FLOOR: dict[str, str] = {"append": "sqlite3-lock"}


def strategy(workload: str, key: str) -> Strategy:
    """Look a strategy up; ``KeyError`` names the known ones."""
    try:
        return STRATEGIES[workload].get(key) or EXTRA.get(workload, {})[key]
    except KeyError:
        known = ", ".join(STRATEGIES.get(workload, {}))
        raise KeyError(f"unknown {workload} strategy {key!r}; known: {known}") from None


def unavailable(item: Strategy) -> str | None:
    """Why a strategy cannot run in this environment, or None."""
    if item.needs is None:
        return None
    if item.needs == "greeum":
        return _peer.peer_missing()
    try:
        found = importlib.util.find_spec(item.needs) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"{item.needs} is not available"
