"""The search benchmark runs end to end on a small chain: its reference agrees with the
layer, its report and JSON hold every figure, and the command line prints the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.harness import _search
from benchmarks.harness._search_cli import bench_search

from .search_reference import need_backend


@pytest.mark.slow
def test_a_small_run_reports_every_figure(tmp_path: Path) -> None:
    result = _search.run_search_bench(
        blocks=1500,
        dim=16,
        queries=4,
        reference_queries=2,
        check_queries=40,
        peer_queries=2,
        append_threads=8,
        append_units=200,
        append_rounds=1,
        workdir=str(tmp_path / "work"),
    )
    checked = 40 + len(_search.HOSTILE) + len(_search.REFUSED)
    assert result.keyword_identical == (checked, checked)
    assert result.similar_identical == (10, 10)
    assert result.similar_max_difference <= 1e-12
    assert [t.name for t in result.timings] == ["keyword", "similar", "hybrid", "hybrid-two-words"]
    assert all(t.layer_p50 > 0 for t in result.timings)
    assert result.index_build_seconds > 0 and result.vector_cache_mib > 0
    assert len(result.appends_with) == len(result.appends_without) == 1
    assert result.append_errors == 0
    path = tmp_path / "bench.json"
    _search.write_json(str(path), result)
    again = _search.read_json(str(path))
    assert json.loads(json.dumps(again.to_dict())) == json.loads(path.read_text())
    table = _search.markdown(result)
    assert table.count("\n") == 1 + len(_search.table_rows(result))
    goals = dict(_search.goals(result, again))
    assert goals[f"keyword search identical to the reference for {checked} of {checked} queries"]
    assert sum("p50 at 1,500 blocks is 1.0x" in goal for goal in goals) == 2


def test_the_command_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    result = CliRunner().invoke(
        bench_search,
        [
            "--blocks",
            "300",
            "--dim",
            "8",
            "--queries",
            "2",
            "--reference-queries",
            "1",
            "--check-queries",
            "10",
            "--peer-queries",
            "0",
            "--append-rounds",
            "0",
            "--cache-limit",
            "64MiB",
            "--json-out",
            str(out),
            "--markdown",
        ],
    )
    assert result.exit_code == 0, result.output
    assert '| search_keywords(["wNNNN"], limit=10) |' in result.output
    assert "keyword search identical to the reference for 30 of 30 queries" in result.output
    assert json.loads(out.read_text())["blocks"] == 300


def test_a_bad_cache_limit_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(bench_search, ["--blocks", "10", "--cache-limit", "lots"])
    assert result.exit_code == 2
    assert "is not a size such as 4GiB" in result.output


@pytest.mark.slow
def test_growth_is_timed_against_a_larger_file_in_one_run(tmp_path: Path) -> None:
    larger = _search.run_search_bench(
        blocks=2000, dim=8, queries=2, reference_queries=1, check_queries=5,
        peer_queries=0, append_rounds=0, workdir=str(tmp_path / "large"),
    )  # fmt: skip
    result = _search.run_search_bench(
        blocks=200, dim=8, queries=6, reference_queries=1, check_queries=5,
        peer_queries=0, append_rounds=0, scale_to=str(tmp_path / "large" / "search.db"),
    )  # fmt: skip
    assert larger.blocks == result.scale_blocks == 2000
    assert set(result.scale_p50) == {"keyword", "similar"}
    assert all(small > 0 and large > 0 for small, large in result.scale_p50.values())
    assert result.scale_cache_mib > 0
    goals = [goal for goal, _ in _search.goals(result) if "in turn in this run" in goal]
    assert len(goals) == 2 and all("at 2,000 blocks is" in goal for goal in goals)
    assert "in turn on 200 and 2,000 blocks" in _search.summary(result)[0]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_short_word_run_checks_every_word_and_prints_the_plans(
    tmp_path: Path, backend: str
) -> None:
    """``--short-words``: Korean notes, every kind of word timed and checked against the
    full scan, grown and timed again; on PostgreSQL the plans are printed."""
    need_backend(backend)
    out = tmp_path / "short.json"
    arguments = ["--short-words", "--blocks", "300", "--queries", "2", "--grow-to", "400"]
    arguments += ["--backends", backend, "--json-out", str(out), "--markdown"]
    result = CliRunner().invoke(bench_search, arguments)
    assert result.exit_code == 0, result.output
    (run,) = json.loads(out.read_text())
    assert run["identical"][0] == run["identical"][1] > 100
    assert run["grown_blocks"] == 400 and len(run["grown"]) == len(run["kinds"]) == 11
    assert f"| {backend} | ko2-absent | 0-0 |" in result.output
    assert ("postgres plan for ko2-absent" in result.output) == (backend == "postgres")
