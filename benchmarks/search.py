"""Search at scale: keyword, similarity and hybrid search against the old full scan and the
write-queue peer, on N blocks with embeddings; appends with and without the keyword index.

The same as ``python -m app bench-search`` (the options are its own; ``--help`` lists them):
``python benchmarks/search.py [--blocks 100000] [--json-out FILE] [--markdown]``.
"""

from __future__ import annotations

from app._bench._search_cli import bench_search

if __name__ == "__main__":
    bench_search(prog_name="benchmarks/search.py")
