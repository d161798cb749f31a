"""The synthetic blocks ``app stress`` appends, and the latency figures it reports.

The same shape as a real memory block (text in two scripts, three keywords, two tags,
metadata and a 128-float embedding), made without measurable cost.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

EMBEDDING_DIM = 128

# A fixed set of vectors, built once, so generating a block costs nothing measurable.
_rng = random.Random(20240101)
_VECTORS = [[_rng.uniform(-1.0, 1.0) for _ in range(EMBEDDING_DIM)] for _ in range(32)]
_TOPICS = ("weather", "meeting", "travel", "music", "garden", "budget", "recipe", "project")


@dataclass(frozen=True, slots=True)
class StressBlock:
    """One block to append."""

    context: str
    keywords: tuple[str, ...]
    tags: tuple[str, ...]
    importance: float
    metadata: dict[str, Any]
    embedding: list[float]


def make_block(worker: int, seq: int) -> StressBlock:
    """The ``seq``-th block of thread ``worker``."""
    topic = _TOPICS[(worker + seq) % len(_TOPICS)]
    return StressBlock(
        context=(
            f"Worker {worker} note {seq}: talked about the {topic} with the team and wrote "
            f"down what to do next. 메모 {seq}."
        ),
        keywords=(topic, f"w{worker}", f"n{seq % 50}"),
        tags=("bench", "even" if seq % 2 == 0 else "odd"),
        importance=((worker * 7 + seq) % 10) / 10,
        metadata={"source": "stress", "worker": worker, "seq": seq},
        embedding=_VECTORS[(worker * 31 + seq) % len(_VECTORS)],
    )


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max (nearest rank) of ``values``; None each when there are none."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    return {"p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1]}


def now() -> str:
    return datetime.now().isoformat()
