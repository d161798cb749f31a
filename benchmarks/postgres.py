"""Chain appends from 4 processes of 25 threads: PostgreSQL and SQLite side by side.

Each run appends ``processes x threads x appends`` blocks through ``BlockStore.append`` (the
``app stress`` workload, no readers) to a fresh database: a new schema on the PostgreSQL
server, a new file for SQLite. Runs alternate between the backends, so a busy moment of the
machine does not fall on one backend only; the summary shows each backend's median run.
After each run the chain is checked independently of the library: indices 0..n-1 without
gaps, every hash and link right by the legacy formula, and every block's keywords, tags,
metadata and embedding present.

Run from the repository root:
``python -m benchmarks.postgres --url postgresql+psycopg://user@host/db`` (default:
``$APP_TEST_POSTGRES_URL``). The database must exist; schemas named ``bench_*`` are created
in it and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from app import Database
from app.models import blocks_table
from app.operations.stress import run_stress

from .harness import legacy_hash, machine
from .harness._workload import KEYWORDS_PER_BLOCK, TAGS_PER_BLOCK

URL_ENV = "APP_TEST_POSTGRES_URL"


@dataclass
class Run:
    """One run of the workload on one backend. Latencies are in seconds."""

    backend: str
    round: int
    blocks: int
    appended: int
    errors: int
    error_kinds: dict[str, int]
    seconds: float
    blocks_per_second: float
    p50: float | None
    p99: float | None
    max: float | None
    intact: bool
    problem: str


def check_chain(url: str, appended: int) -> str:
    """'' when the chain is whole and right by the legacy formula, else what is wrong."""
    engine = create_engine(url)
    columns = [blocks_table.c[name] for name in ("block_index", "timestamp", "context")]
    columns += [blocks_table.c[name] for name in ("importance", "hash", "prev_hash")]
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(*columns)
                .order_by(blocks_table.c.block_index)
                .execution_options(yield_per=5000)
            )
            expected, previous = 0, ""
            for index, timestamp, context, importance, digest, prev_hash in rows:
                if index != expected:
                    return f"index {index} where {expected} was expected (gap)"
                if prev_hash != previous:
                    return f"block {index} does not link to block {index - 1}"
                if legacy_hash(index, timestamp, context, importance, prev_hash) != digest:
                    return f"block {index} has a wrong hash"
                expected, previous = index + 1, digest
            if expected != appended:
                return f"{expected} blocks stored but {appended} appends succeeded"
            children = {
                "block_keywords": KEYWORDS_PER_BLOCK * expected,
                "block_tags": TAGS_PER_BLOCK * expected,
                "block_metadata": expected,
                "block_embeddings": expected,
            }
            for table, want in children.items():
                got = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                if got != want:
                    return f"{table} has {got} rows, expected {want} (partial blocks)"
    finally:
        engine.dispose()
    return ""


@contextmanager
def fresh_postgres(server_url: str) -> Iterator[str]:
    """A URL whose connections use a new, empty schema (dropped afterwards)."""
    schema = "bench_" + uuid.uuid4().hex[:12]
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def fresh_sqlite() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="app-bench-") as directory:
        yield f"sqlite:///{os.path.join(directory, 'memory.db')}"


def run_once(
    backend: str,
    url: str,
    number: int,
    options: argparse.Namespace,
    progress: Callable[[int], None],
) -> Run:
    Database(url, auto_upgrade=True).dispose()  # the schema, before the clock starts
    blocks = options.processes * options.threads * options.appends
    result = run_stress(
        url,
        threads=options.threads,
        blocks=blocks,
        processes=options.processes,
        read_threads=0,
        progress=progress,
    )
    problem = check_chain(url, result.appended)
    if not result.chain_intact and not problem:
        problem = f"the library's own check fails at block {result.first_bad_block}"
    return Run(
        backend=backend,
        round=number,
        blocks=blocks,
        appended=result.appended,
        errors=result.errors,
        error_kinds=result.error_kinds,
        seconds=result.seconds,
        blocks_per_second=result.throughput,
        p50=result.p50,
        p99=result.p99,
        max=result.max,
        intact=not problem,
        problem=problem,
    )


def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.blocks_per_second)
    return ordered[(len(ordered) - 1) // 2]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def table(runs: list[Run], title: str, reference: dict[str, Run] | None = None) -> Table:
    shown = Table(title=title, title_justify="left")
    names = ["backend", "round", "blocks", "blocks/s", "p50 ms", "p99 ms", "max ms"]
    names += ["errors", "chain"]
    if reference is not None:
        names.append("x SQLite")
    for name in names:
        shown.add_column(name, justify="left" if name in ("backend", "chain") else "right")
    for r in runs:
        chain = Text("intact", style="green") if r.intact else Text("BROKEN", style="bold red")
        cells: list[Any] = [r.backend, str(r.round), f"{r.appended:,}/{r.blocks:,}"]
        cells += [f"{r.blocks_per_second:,.0f}", _ms(r.p50), _ms(r.p99), _ms(r.max)]
        cells += [Text(str(r.errors), style="red" if r.errors else ""), chain]
        if reference is not None:
            base = reference["sqlite"].blocks_per_second
            cells.append(f"{r.blocks_per_second / base:.2f}" if base else "-")
        shown.add_row(*cells)
    return shown


def markdown(runs: list[Run]) -> str:
    lines = ["| backend | blocks/s | p50 ms | p99 ms | max ms | errors | chain |", "|---" * 7 + "|"]
    for r in runs:
        chain = "intact" if r.intact else "BROKEN"
        lines.append(
            f"| {r.backend} | {r.blocks_per_second:,.0f} | {_ms(r.p50)} | {_ms(r.p99)} | "
            f"{_ms(r.max)} | {r.errors} | {chain} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get(URL_ENV), help=f"default ${URL_ENV}")
    parser.add_argument("--processes", type=int, default=4, help="default 4")
    parser.add_argument("--threads", type=int, default=25, help="per process (default 25)")
    parser.add_argument("--appends", type=int, default=20, help="per thread (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per backend (default 3)")
    parser.add_argument("--json-out", help="write the runs as JSON")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    options = parser.parse_args()
    if not options.url:
        parser.error(f"give --url postgresql+psycopg://user@host/db (or set {URL_ENV})")
    if make_url(options.url).get_backend_name() != "postgresql":
        parser.error("--url must be a PostgreSQL URL")
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    layout = f"{options.processes} processes x {options.threads} threads"
    blocks = options.processes * options.threads * options.appends
    runs: list[Run] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("", total=blocks)
        for number in range(1, options.rounds + 1):
            # Alternate which backend goes first, so neither always runs on a warm machine.
            order = ["postgresql", "sqlite"] if number % 2 else ["sqlite", "postgresql"]
            for backend in order:
                bar.update(task, description=f"{backend}, round {number}", completed=0)
                fresh = fresh_postgres(options.url) if backend == "postgresql" else fresh_sqlite()
                with fresh as url:
                    runs.append(
                        run_once(
                            backend,
                            url,
                            number,
                            options,
                            lambda done: bar.update(task, completed=done),
                        )
                    )
    summary = {b: median_run([r for r in runs if r.backend == b]) for b in ("postgresql", "sqlite")}
    title = f"BlockStore.append, {layout}, {options.appends} appends each ({blocks:,} blocks)"
    console.print(table(runs, escape(f"every run: {title}")))
    console.print(table(list(summary.values()), escape(f"median run: {title}"), summary))
    for r in runs:
        if r.errors or r.problem:
            kinds = ", ".join(f"{n} {kind}" for kind, n in r.error_kinds.items())
            note = "; ".join(part for part in (kinds, r.problem) if part)
            console.print(f"[yellow]note[/] {r.backend} round {r.round}: {escape(note)}")
    if options.markdown:
        print(markdown(list(summary.values())))
    if options.json_out:
        with open(options.json_out, "w", encoding="utf-8") as handle:
            settings = {k: v for k, v in vars(options).items() if k not in ("url", "json_out")}
            settings["url"] = make_url(options.url).render_as_string(hide_password=True)
            json.dump(
                {"machine": machine(), "settings": settings, "runs": [asdict(r) for r in runs]},
                handle,
                indent=2,
            )
            handle.write("\n")
    return 0 if all(r.intact and not r.errors for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
