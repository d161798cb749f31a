"""``python -m benchmarks.search``: the search benchmark on the command line (see
``_search``)."""

from __future__ import annotations

from typing import Any

import click


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 4GiB or 500M") from None


@click.command("bench-search")
@click.option("--blocks", default=100_000, show_default=True, type=click.IntRange(1))
@click.option(
    "--dim", default=384, show_default=True, type=click.IntRange(1), help="Embedding size."
)
@click.option(
    "--queries",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Timed queries per call.",
)
@click.option(
    "--reference-queries",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Timed queries of the full-scan reference.",
)
@click.option(
    "--check-queries",
    default=200,
    show_default=True,
    type=click.IntRange(1),
    help="Random keyword queries checked against the reference (a quarter as many similarity).",
)
@click.option(
    "--peer-queries",
    default=10,
    show_default=True,
    type=click.IntRange(0),
    help="Timed queries of the peer (0: skip it).",
)
@click.option("--append-threads", default=100, show_default=True, type=click.IntRange(1))
@click.option("--append-units", default=2000, show_default=True, type=click.IntRange(1))
@click.option(
    "--append-rounds",
    default=3,
    show_default=True,
    type=click.IntRange(0),
    help="Rounds of appends with and without revision 0003 (0: skip).",
)
@click.option(
    "--cache-limit", default="4GiB", show_default=True, help="vector_cache_limit for the run."
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Keep the files here (default: a temporary directory, removed).",
)
@click.option("--json-out", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option(
    "--compare-to",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON of a smaller run: also check how p50 grew.",
)
@click.option(
    "--scale-to",
    type=click.Path(exists=True, dir_okay=False),
    help="A larger database filled by an earlier run (--workdir keeps it): time the searches "
    "on it in turn with this run's, to measure their growth in one run.",
)
@click.option("--markdown", is_flag=True, help="Also print the table as Markdown.")
@click.option(
    "--short-words",
    is_flag=True,
    help="Instead: time Korean words of one, two and three characters (and CJK, Latin, "
    "digits, punctuation) on BLOCKS Korean notes, on SQLite and PostgreSQL (--queries per "
    "kind of word); see benchmarks/harness/_search_short.py.",
)
@click.option(
    "--postgres-url",
    envvar="APP_TEST_POSTGRES_URL",
    help="With --short-words: the server (a schema is made and dropped in it); default "
    "$APP_TEST_POSTGRES_URL.",
)
@click.option(
    "--backends",
    default="sqlite,postgres",
    show_default=True,
    help="With --short-words: which backends, comma-separated.",
)
@click.option(
    "--grow-to",
    type=click.IntRange(1),
    help="With --short-words: then grow the same databases to this many blocks (1000000, "
    "say) and time the words again.",
)
def bench_search(
    blocks: int,
    dim: int,
    queries: int,
    reference_queries: int,
    check_queries: int,
    peer_queries: int,
    append_threads: int,
    append_units: int,
    append_rounds: int,
    cache_limit: str,
    workdir: str | None,
    json_out: str | None,
    compare_to: str | None,
    scale_to: str | None,
    markdown: bool,
    short_words: bool,
    postgres_url: str | None,
    backends: str,
    grow_to: int | None,
) -> None:
    """Fill BLOCKS blocks and time keyword, similarity and hybrid search against a full
    scan of the old code (same run) and the write-queue peer; appends with and without the
    keyword index."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from . import _search

    console = Console(highlight=False, stderr=False)
    if short_words:
        _short_words(
            console, blocks, queries, backends, postgres_url, grow_to, workdir, json_out, markdown
        )
        return
    result = _search.run_search_bench(
        blocks=blocks,
        dim=dim,
        queries=queries,
        reference_queries=reference_queries,
        check_queries=check_queries,
        peer_queries=peer_queries,
        append_threads=append_threads,
        append_units=append_units,
        append_rounds=append_rounds,
        cache_limit=_size(cache_limit),
        workdir=workdir,
        scale_to=scale_to,
        progress=lambda message: console.log(escape(message)),
    )
    table = Table(title=f"bench-search: {blocks:,} blocks x {dim}-d", title_justify="left")
    for header in _search.HEADERS:
        table.add_column(header, justify="left" if header == "call" else "right")
    for row in _search.table_rows(result):
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    for line in _search.summary(result):
        console.print(escape(line))
    baseline = _search.read_json(compare_to) if compare_to else None
    for goal, met in _search.goals(result, baseline):
        console.print(
            f"[{'green' if met else 'red'}]{'met' if met else 'not met'}[/] {escape(goal)}"
        )
    if markdown:
        click.echo(_search.markdown(result))
    if json_out:
        _search.write_json(json_out, result)
        console.print(f"results written to {escape(json_out)}")


def _short_words(
    console: Any,
    blocks: int,
    queries: int,
    backends: str,
    postgres_url: str | None,
    grow_to: int | None,
    workdir: str | None,
    json_out: str | None,
    markdown: bool,
) -> None:
    """``--short-words``: run, then print the table, the checks and the plans."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from . import _search_short

    runs = _search_short.run_short_words(
        blocks=blocks,
        queries=queries,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
        postgres_url=postgres_url,
        grow_to=grow_to,
        workdir=workdir,
        progress=lambda message: console.log(escape(message)),
    )
    title = f"search_keywords([word], limit=10) on {blocks:,} Korean notes"
    table = Table(title=title, title_justify="left")
    for header in _search_short.HEADERS:
        table.add_column(header, justify="left" if header in ("backend", "words") else "right")
    rows = _search_short.rows(runs)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
    for run in runs:
        same, total = run.identical
        line = (
            f"{run.backend} (revision {run.revision}): fill {run.blocks / run.fill_seconds:,.0f} "
            f"blocks/s, then {run.catch_up_seconds:.1f}s to index or analyze; {same} of "
            f"{total} queries identical to the full scan"
        )
        if run.grown_blocks:
            line += f"; grown to {run.grown_blocks:,} blocks"
        console.print(escape(line + (f"; {run.note}" if run.note else "")))
        for kind, plan in run.plans.items():
            console.print(escape(f"-- {run.backend} plan for {kind}:\n{plan}"))
    if markdown:
        headers = _search_short.HEADERS
        click.echo("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
        click.echo("\n".join("| " + " | ".join(row) + " |" for row in rows))
    if json_out:
        with open(json_out, "w", encoding="utf-8") as out:
            json.dump(_search_short.as_dict(runs), out, indent=2)
        console.print(f"results written to {escape(json_out)}")
