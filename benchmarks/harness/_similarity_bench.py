"""The similarity benchmark (``python -m benchmarks.similarity``): exact top-10 at two sizes
of one growing chain, in one run.

Fills a SQLite file with random D-dimensional embeddings (``BlockStore.append_many``: valid,
chained rows) up to each size in turn (by default a tenth of ``--blocks``, then
``--blocks``), and at each size measures, each in a fresh process
(``_similarity_child``):

* the first query with the vector copy's file absent (it is built) and present (mapped);
* p50/p99 of top-10 queries (median over rounds), the process's RSS and the bytes the
  vector cache holds;
* that a sample of queries returns exactly the blocks and scores of the full scan;

then prints the growth of each figure from the first size to the last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import BlockStore, Database
from app.search._quantized_file import sidecar_path

ROOT = Path(__file__).resolve().parents[2]
Progress = Callable[[str], None]


@dataclass
class Stage:
    """The figures at one size."""

    blocks: int
    fill_seconds: float
    absent: dict[str, Any]  # the child's figures, the copy's file removed first
    present: dict[str, Any]  # ... and with the file the run before left


@dataclass
class SimilarityBench:
    dim: int
    stages: list[Stage] = field(default_factory=list)

    def growth(self) -> dict[str, float]:
        """Each figure at the last size over the first."""
        if len(self.stages) < 2:
            return {}
        low, high = self.stages[0], self.stages[-1]
        ratios = {"blocks": high.blocks / low.blocks}
        for name in ("p50_ms", "p99_ms", "held_mib", "rss_mib", "first_query_s"):
            ratios[name] = high.present[name] / max(low.present[name], 1e-9)
        ratios["first_query_absent_s"] = high.absent["first_query_s"] / max(
            low.absent["first_query_s"], 1e-9
        )
        return ratios

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "stages": [asdict(s) for s in self.stages],
            "growth": self.growth(),
        }


def fill_to(path: str, have: int, blocks: int, dim: int, seed: int, progress: Progress) -> float:
    """Append random embeddings until the chain has ``blocks`` blocks; seconds taken."""
    db = Database(f"sqlite:///{path}")
    try:
        store = BlockStore(db)
        rng = np.random.default_rng([seed, have])
        started = time.perf_counter()
        for start in range(have, blocks, 5000):
            count = min(5000, blocks - start)
            vectors = rng.standard_normal((count, dim), dtype=np.float32)
            store.append_many(
                {"context": f"block {start + i}", "embedding": vectors[i]} for i in range(count)
            )
            if (start + count) % 100_000 == 0 or start + count == blocks:
                progress(f"filled {start + count:,} of {blocks:,} blocks")
        return time.perf_counter() - started
    finally:
        db.dispose()


def child(
    path: str,
    dim: int,
    queries: int,
    rounds: int,
    checks: int,
    seed: int,
    quantize_above: int | None = None,
) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.harness._similarity_child", path]
    command += [str(dim), str(queries), str(rounds), str(checks), str(seed)]
    if quantize_above is not None:
        command.append(str(quantize_above))
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_similarity_bench(
    blocks: int,
    dim: int,
    sizes: list[int] | None = None,
    queries: int = 50,
    rounds: int = 3,
    checks: int = 5,
    seed: int = 1,
    workdir: str | None = None,
    progress: Progress = lambda _: None,
    quantize_above: int | None = None,
) -> SimilarityBench:
    """Measure at each of ``sizes`` (default: a tenth of ``blocks``, then ``blocks``);
    ``quantize_above``: the compact tier's threshold in the measuring processes (default:
    the layer's)."""
    sizes = sizes or sorted({max(1, blocks // 10), blocks})
    directory = Path(workdir or os.environ.get("TMPDIR", "/tmp")) / f"similarity-{dim}"
    directory.mkdir(parents=True, exist_ok=True)
    path = str(directory / "similarity.db")
    for suffix in ("", "-wal", "-shm", "-vectors", "-turn"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    result = SimilarityBench(dim)
    have = 0
    for size in sizes:
        filled = fill_to(path, have, size, dim, seed, progress)
        have = size
        if os.path.exists(sidecar_path(path)):
            os.remove(sidecar_path(path))
        progress(f"{size:,} blocks: first query with no vector copy (it is built)")
        absent = child(path, dim, 1, 1, 0, seed, quantize_above)
        progress(f"{size:,} blocks: first query with the copy, then {rounds}x{queries} queries")
        present = child(path, dim, queries, rounds, checks, seed + 1, quantize_above)
        result.stages.append(Stage(size, filled, absent, present))
        progress(summary_line(result.stages[-1]))
    return result


def summary_line(stage: Stage) -> str:
    a, p = stage.absent, stage.present
    tier = "int8 copy" if p.get("compact") else "float32 rows"
    return (
        f"{stage.blocks:>9,} blocks ({tier}): first query {a['first_query_s']:.2f}s "
        f"without the copy's file, {p['first_query_s']:.3f}s with it "
        f"({p['since_process_start_s']:.2f}s from process start); "
        f"top-10 p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms; held "
        f"{p['held_mib']:.0f} MiB, RSS {p['rss_mib']:.0f} MiB; identical to the full scan "
        f"{p['identical']}/{p['checked']}"
    )


def report(result: SimilarityBench) -> list[str]:
    lines = [f"exact top-10 similarity, {result.dim}-d embeddings"]
    lines += [summary_line(stage) for stage in result.stages]
    growth = result.growth()
    if growth:
        lines.append(
            f"growth {result.stages[0].blocks:,} -> {result.stages[-1].blocks:,} blocks "
            f"({growth['blocks']:.0f}x): p50 {growth['p50_ms']:.2f}x, p99 {growth['p99_ms']:.2f}x, "
            f"held {growth['held_mib']:.2f}x, RSS {growth['rss_mib']:.2f}x, first query with "
            f"the copy {growth['first_query_s']:.2f}x, "
            f"without {growth['first_query_absent_s']:.2f}x"
        )
    return lines
