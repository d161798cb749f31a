"""Search at scale: keyword, similarity and hybrid search against the old full scan and the
write-queue peer, on N blocks with embeddings; appends with and without the keyword index.

Run from the repository root: ``python -m benchmarks.search [--blocks 100000]
[--json-out FILE] [--markdown]`` (``--help`` lists every option).
"""

from __future__ import annotations

from .harness._search_cli import bench_search

if __name__ == "__main__":
    bench_search(prog_name="python -m benchmarks.search")
