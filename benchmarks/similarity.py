"""Exact top-10 similarity at two sizes of one chain, in one run: first query in a fresh
process with the vector copy's file absent and present, p50/p99, memory, a check against
the full scan, and the growth between the sizes (``harness/_similarity_bench.py``).

Run from the repository root: ``python -m benchmarks.similarity [--blocks 1000000]
[--dim 384] [--json-out FILE]`` (``--help`` lists every option).
"""

from __future__ import annotations

import json

import click

from .harness._similarity_bench import report, run_similarity_bench


@click.command("bench-similarity")
@click.option("--blocks", default=100_000, show_default=True, type=click.IntRange(1))
@click.option("--dim", default=384, show_default=True, type=click.IntRange(1))
@click.option(
    "--sizes",
    default=None,
    help="Comma-separated sizes to measure at (default: a tenth of --blocks, then --blocks).",
)
@click.option("--queries", default=50, show_default=True, type=click.IntRange(1))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1))
@click.option(
    "--checks",
    default=5,
    show_default=True,
    type=click.IntRange(1),
    help="Queries compared with the full scan at each size.",
)
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--workdir", default=None, help="Where the database is filled (default: TMPDIR).")
@click.option("--json-out", default=None, help="Write every figure to this JSON file.")
@click.option(
    "--quantize-above",
    default=None,
    type=click.IntRange(0),
    help="Bytes of float32 rows past which the int8 copy serves (default: the layer's).",
)
def bench_similarity(
    blocks: int,
    dim: int,
    sizes: str | None,
    queries: int,
    rounds: int,
    checks: int,
    seed: int,
    workdir: str | None,
    json_out: str | None,
    quantize_above: int | None,
) -> None:
    """Exact similarity search at two sizes, and its growth between them."""
    measured = [int(s) for s in sizes.split(",")] if sizes else None
    result = run_similarity_bench(
        blocks,
        dim,
        measured,
        queries=queries,
        rounds=rounds,
        checks=checks,
        seed=seed,
        workdir=workdir,
        progress=lambda line: click.echo(line, err=True),
        quantize_above=quantize_above,
    )
    for line in report(result):
        click.echo(line)
    if json_out:
        with open(json_out, "w", encoding="utf-8") as out:
            json.dump(result.to_dict(), out, indent=2)


if __name__ == "__main__":
    bench_similarity(prog_name="python -m benchmarks.similarity")
