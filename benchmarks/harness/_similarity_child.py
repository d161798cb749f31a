"""One process of the similarity benchmark (``_similarity_bench``): opens the database, times
its first ``similar`` (the vector copy mapped, or built when absent), then rounds of top-10
queries, and checks a sample against the full scan (a Database with the cache off).

Run as ``python -m benchmarks.harness._similarity_child PATH DIM QUERIES ROUNDS CHECKS SEED
[QUANTIZE_ABOVE]`` (the last: where the compact tier starts, to try it on small stores);
prints one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import psutil

from app import BlockStore, Database
from app.search import _vector_cache, _vector_quant
from app.search._quantized_file import sidecar_path


def _ranking(store: BlockStore, query: Any, k: int) -> list[tuple[int, float]]:
    return [(s.block.block_index, s.similarity) for s in store.similar(query, k)]


def measure(
    path: str, dim: int, queries: int, rounds: int, checks: int, seed: int
) -> dict[str, Any]:
    sidecar = sidecar_path(path)
    present = os.path.exists(sidecar) and os.path.getsize(sidecar) > 0
    before = os.stat(sidecar).st_ino if present else None
    db = Database(f"sqlite:///{path}")
    reference = Database(f"sqlite:///{path}", vector_cache_limit=0)
    try:
        store = BlockStore(db)
        rng = np.random.default_rng(seed)
        first_query = rng.standard_normal(dim).astype(np.float32)
        opened = time.perf_counter()
        first = _ranking(store, first_query, 10)
        first_seconds = time.perf_counter() - opened
        since_start = time.time() - psutil.Process().create_time()
        rebuilt = before is None or os.stat(sidecar).st_ino != before
        p50s, p99s = [], []
        for _ in range(rounds):
            times = []
            for _ in range(queries):
                query = rng.standard_normal(dim).astype(np.float32)
                begin = time.perf_counter()
                store.similar(query, 10)
                times.append((time.perf_counter() - begin) * 1000)
            times.sort()
            p50s.append(statistics.median(times))
            p99s.append(times[min(len(times) - 1, int(len(times) * 0.99))])
        rss = psutil.Process().memory_info().rss
        held = _vector_cache.cache_for(db).nbytes
        identical = 0
        sample = [first_query] + [
            rng.standard_normal(dim).astype(np.float32) for _ in range(checks)
        ]
        for number, query in enumerate(sample[: checks or 1]):
            got = first if number == 0 else _ranking(store, query, 10)
            identical += got == _ranking(BlockStore(reference), query, 10)
        return {
            "sidecar_present": present,
            "sidecar_rebuilt": rebuilt,
            "first_query_s": first_seconds,
            "since_process_start_s": since_start,
            "p50_ms": statistics.median(p50s),
            "p99_ms": statistics.median(p99s),
            "p50_rounds_ms": p50s,
            "rss_mib": rss / 2**20,
            "held_mib": held / 2**20,
            "compact": _vector_cache.cache_for(db)._quant is not None,
            "checked": max(checks, 1),
            "identical": identical,
        }
    finally:
        db.dispose()
        reference.dispose()


if __name__ == "__main__":
    path, dim, queries, rounds, checks, seed = sys.argv[1:7]
    if len(sys.argv) > 7:
        _vector_quant.QUANTIZE_ABOVE = int(sys.argv[7])
    result = measure(path, int(dim), int(queries), int(rounds), int(checks), int(seed))
    print(json.dumps(result))
