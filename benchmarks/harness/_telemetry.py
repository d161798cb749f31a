"""The layer's append strategies with telemetry on (``python -m benchmarks.append
--telemetry``), to measure its cost against the same strategies with it off in one run.

Each variant sets ``APP_TELEMETRY=true`` in its case's own process and records on an SDK
MeterProvider whose only reader is an in-memory one that nothing collects from while the
case runs (no periodic export), so what is measured is the recording itself; the metrics
are collected once after the last unit. Traces go to OpenTelemetry's global
TracerProvider, which nobody sets here: spans are the API's non-recording ones.
"""

from __future__ import annotations

import os
from typing import Any

from . import _orm, _peer
from ._target import Factory, Strategy, Target
from ._workload import BenchBlock

#: The key of the variant of a strategy with telemetry on.
SUFFIX = "+otel"


class _Recorded(Target):
    """A strategy's target whose Database records on an SDK MeterProvider."""

    def __init__(self, factory: Factory, path: str) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from app import _telemetry

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        _telemetry.use(meter_provider=self.provider)
        os.environ["APP_TELEMETRY"] = "true"  # this case's process only
        self.target = factory(path)

    def unit(self, block: BenchBlock) -> None:
        self.target.unit(block)

    def thread_done(self) -> None:
        self.target.thread_done()

    def close(self) -> None:
        self.target.close()
        data: Any = self.reader.get_metrics_data()  # once, after the timed part
        assert data is not None and data.resource_metrics, "telemetry recorded nothing"
        self.provider.shutdown()


def layer_append_recorded(path: str) -> Target:
    """this layer: BlockStore.append (group commit), telemetry on"""
    return _Recorded(_orm.layer_append, path)


def facade_transaction_recorded(path: str) -> Target:
    """facade: with transaction(): get_last_block_info + add_block, telemetry on"""
    return _Recorded(_peer.facade_transaction, path)


def facade_append_block_recorded(path: str) -> Target:
    """facade: append_block (group commit), telemetry on"""
    return _Recorded(_peer.facade_append_block, path)


#: The append strategies with telemetry on, by key (``layer+otel``...).
APPEND_RECORDED: dict[str, Strategy] = {
    s.key: s
    for s in (
        Strategy("layer" + SUFFIX, "append", layer_append_recorded, needs="opentelemetry.sdk"),
        Strategy(
            "facade-transaction" + SUFFIX,
            "append",
            facade_transaction_recorded,
            needs="opentelemetry.sdk",
        ),
        Strategy(
            "facade-append-block" + SUFFIX,
            "append",
            facade_append_block_recorded,
            needs="opentelemetry.sdk",
        ),
    )
}
