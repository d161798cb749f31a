"""The benchmark library at tiny sizes: every strategy runs, counts are exact, the checks see
what they must see, and the runner's subprocess path and reports work."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app import Database
from benchmarks._common import main as bench_main
from benchmarks.harness import (
    APPEND,
    COUNTER,
    Case,
    CaseResult,
    add_ratios,
    chart_title,
    check_chain,
    markdown_table,
    median_of_rounds,
    plot,
    print_report,
    problems,
    rich_table,
    run_cases,
    summarise_error,
    unavailable,
    write_json,
)
from benchmarks.harness._child import run_case

#: Strategies that promise an intact chain (or an exact counter) and no error.
SAFE = {
    "sqlite3-lock",
    "sqlite3-pool",
    "layer",
    "facade-transaction",
    "facade-append-block",
    "greeum-5.3.0",
    "layer-run",
    "layer-unit",
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    Database(f"sqlite:///{path}", auto_upgrade=True).dispose()
    return path


def fresh(template: Path, directory: Path, *, own_schema: bool = False) -> str:
    path = directory / "memory.db"
    if not own_schema:
        shutil.copyfile(template, path)
    return str(path)


@pytest.mark.parametrize("key", list(APPEND))
def test_every_append_strategy(
    key: str, template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = APPEND[key]
    reason = unavailable(item)
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("GREEUM_STM_DB", str(tmp_path / "stm.db"))  # the peer sets it
    path = fresh(template, tmp_path, own_schema=item.own_schema)
    threads, units = 4, 40
    result = run_case(
        {"workload": "append", "strategy": key, "threads": threads, "units": units, "path": path}
    )
    assert result["attempted"] == units
    assert result["ok"] + result["errors"] == units
    assert result["peak_connections"] >= 1
    assert result["peak_rss_kib"] > 0
    latency = result["latency"]
    if result["ok"]:
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    if key in SAFE:
        assert result["errors"] == 0, result["error_kinds"]
        assert result["intact"], result["problem"]
        assert result["ok"] == units
    else:
        # Unsafe strategies may fail appends, but the check must agree with what is stored.
        assert result["intact"] or result["problem"]
    conn = sqlite3.connect(path)
    try:
        (stored,) = conn.execute("SELECT count(*) FROM blocks").fetchone()
    finally:
        conn.close()
    if result["intact"]:
        assert stored == result["ok"]


@pytest.mark.parametrize("key", list(COUNTER))
def test_every_counter_strategy(key: str, template: Path, tmp_path: Path) -> None:
    path = fresh(template, tmp_path)
    result = run_case(
        {"workload": "counter", "strategy": key, "threads": 4, "units": 60, "path": path}
    )
    assert result["ok"] + result["errors"] == 60
    if key in SAFE:
        assert result["errors"] == 0 and result["intact"] and result["ok"] == 60


def test_time_limit_stops_early(template: Path, tmp_path: Path) -> None:
    path = fresh(template, tmp_path)
    spec: dict[str, Any] = {
        "workload": "append",
        "strategy": "sqlite3-lock",
        "threads": 2,
        "units": 100_000,
        "path": path,
        "max_seconds": 0.3,
    }
    result = run_case(spec)
    assert 0 < result["attempted"] < 100_000
    assert result["intact"] and result["errors"] == 0
    assert result["seconds"] < 5


def test_check_chain_finds_tampering(template: Path, tmp_path: Path) -> None:
    path = fresh(template, tmp_path)
    run_case({"workload": "append", "strategy": "layer", "threads": 2, "units": 10, "path": path})
    assert check_chain(path, 10).intact
    assert "10 blocks stored but 11" in check_chain(path, 11).problem
    conn = sqlite3.connect(path)
    conn.execute("UPDATE blocks SET context = 'changed' WHERE block_index = 4")
    conn.commit()
    conn.close()
    verdict = check_chain(path, 10)
    assert not verdict.intact and "block 4 has a wrong hash" in verdict.problem


@pytest.mark.slow
def test_run_cases_in_subprocesses_with_ratios(tmp_path: Path) -> None:
    cases = [
        Case("append", key, threads, 30) for threads in (1, 3) for key in ("sqlite3-lock", "layer")
    ]
    seen: list[int] = []
    results = run_cases(
        cases, on_progress=lambda case, done: seen.append(done), directory=str(tmp_path)
    )
    assert [(r.strategy, r.threads) for r in results] == [(c.strategy, c.threads) for c in cases]
    for r in results:
        assert r.ok == 30 and r.errors == 0 and r.intact, (r.strategy, r.problem)
        assert r.throughput > 0 and r.peak_connections and r.peak_connections >= 1
        assert r.peak_rss_mib and r.peak_rss_mib > 10
        assert r.p50 is not None and r.p99 is not None and r.max is not None
        assert r.p50 <= r.p99 <= r.max
        assert r.vs_floor is not None and r.vs_one_thread is not None
    by_key = {(r.strategy, r.threads): r for r in results}
    assert by_key[("sqlite3-lock", 1)].vs_floor == 1.0
    assert by_key[("layer", 1)].vs_one_thread == 1.0
    assert by_key[("layer", 3)].vs_one_thread == pytest.approx(
        by_key[("layer", 3)].throughput / by_key[("layer", 1)].throughput
    )
    assert not list(tmp_path.glob("case-*"))  # case files are removed


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_crashing_case_is_a_failed_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, "echo boom >&2; exit 3"))
    (result,) = run_cases([Case("append", "sqlite3-lock", 1, 5)], directory=str(tmp_path))
    assert result.problem == "case failed: boom"
    assert result.errors == 5 and result.ok == 0 and result.intact is None
    assert "failed" in markdown_table([result])


def test_hanging_case_is_stopped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, "exec sleep 30"))
    (result,) = run_cases(
        [Case("append", "sqlite3-lock", 1, 5)], timeout=0.5, directory=str(tmp_path)
    )
    assert result.problem == "timed out after 0.5s" and result.errors == 5


def test_unavailable_strategy_is_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("benchmarks.harness._runner.unavailable", lambda item: "not installed here")
    (result,) = run_cases([Case("append", "greeum-5.3.0", 1, 5)], directory=str(tmp_path))
    assert result.skipped == "not installed here" and result.ok == 0


def _result(strategy: str, threads: int, throughput: float, **extra: Any) -> CaseResult:
    r = CaseResult("append", strategy, strategy.upper(), threads, 100, ok=100, **extra)
    r.throughput, r.seconds, r.intact = throughput, 100 / throughput, True
    r.p50, r.p99, r.max = 0.001, 0.01, 0.02
    return r


def test_reports(tmp_path: Path) -> None:
    results = [
        _result("sqlite3-lock", 1, 1000.0),
        _result("layer", 1, 500.0),
        _result("sqlite3-lock", 10, 800.0),
        _result("layer", 10, 2000.0, errors=2, error_kinds={"BusyError": [2, "[SQL: x]"]}),
    ]
    add_ratios(results)
    assert results[3].vs_one_thread == 4.0 and results[3].vs_floor == 2.5
    table = rich_table(results)
    assert table.row_count == 4
    text = markdown_table(results)
    assert "| layer | 10 | 2,000 | 4.00 | 2.50 |" in text
    assert text.splitlines()[6:] == ["", "- `sqlite3-lock`: SQLITE3-LOCK", "- `layer`: LAYER"]
    assert problems(results) == ["layer @ 10 threads: 2 of 100 units failed (2 BusyError)"]
    out = tmp_path / "r.json"
    write_json(str(out), results, {"units": 100})
    data = json.loads(out.read_text())
    assert data["settings"] == {"units": 100} and len(data["results"]) == 4
    pytest.importorskip("matplotlib")
    chart = tmp_path / "r.png"
    plot(str(chart), results, title="t")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SQL_DUMP = (
    "(sqlite3.IntegrityError) UNIQUE constraint failed: blocks.block_index [SQL: INSERT INTO "
    "blocks (block_index, timestamp, context, importance, hash, prev_hash) VALUES (?, ?, ?, ?, "
    "?, ?)] [parameters: (0, '2024-01-01T00:00:00', 'x', 0.5, 'abc', '')] (Background on this "
    "error at: https://sqlalche.me/e/21/gkpj)"
)


@pytest.mark.parametrize(
    ("kind", "example", "summary"),
    [
        (
            "IntegrityError",
            SQL_DUMP,
            "IntegrityError: two threads read the same chain head and wrote the same block index",
        ),
        (
            "OperationalError",
            "(sqlite3.OperationalError) database is locked [SQL: BEGIN]",
            "OperationalError: the database stayed locked past busy_timeout",
        ),
        ("KeyError", "(x.Y) 'missing' [SQL: SELECT 1]", "KeyError: 'missing'"),
        ("RuntimeError", "", "RuntimeError"),
        (
            "ValueError",
            "word " * 40,
            "ValueError: " + ("word " * 18).strip() + " ...",
        ),
    ],
)
def test_errors_are_summarised_in_words(kind: str, example: str, summary: str) -> None:
    assert summarise_error(kind, example) == summary


def _case_rows() -> list[CaseResult]:
    keys = ["sqlite3-lock", "sqlite3-thread-local", "sqlite3-pool", "sqlalchemy-default",
            "layer", "facade-transaction", "facade-append-block"]  # fmt: skip
    results = []
    for threads in (1, 10, 100):
        for key in keys:
            r = _result(key, threads, 123456.0)
            r.label = APPEND[key].label
            r.p99, r.max = 3.3082, 4.9125
            r.peak_rss_mib, r.peak_connections = 100.0, 100
            if key == "sqlalchemy-default" and threads > 1:
                r.errors, r.error_kinds = 977, {"IntegrityError": [977, SQL_DUMP]}
            results.append(r)
        skipped = CaseResult("append", "greeum-5.3.0", APPEND["greeum-5.3.0"].label, threads, 100)
        skipped.skipped = "greeum is not installed (pip install --no-deps greeum==5.3.0)"
        results.append(skipped)
    add_ratios(results)
    return results


def test_the_report_fits_120_columns_one_line_per_case() -> None:
    from rich.console import Console

    results = _case_rows()
    console = Console(width=120, record=True, highlight=False)
    print_report(console, results, "bench: append, 2,000 units per case")
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 120
    legend_at = next(i for i, x in enumerate(lines) if "one shared connection" in x)
    rows = [line for line in lines[1:legend_at] if line.strip() and set(line.strip()) != {"─"}]
    assert len(rows) == 1 + 21  # the heading and one line per case that ran, none wrapped
    assert not [row for row in rows if row.startswith("greeum")]  # skipped: a footnote instead
    assert lines[legend_at].rstrip().split(None, 1) == [
        "sqlite3-lock",
        "sqlite3: one shared connection behind a threading.Lock",
    ]
    text = "\n".join(lines)
    assert text.count("greeum-5.3.0 was skipped: greeum is not installed") == 1
    assert "Greeum 5.3.0, a later release of the legacy class's own project" in text
    assert "[SQL:" not in text and "INSERT INTO" not in text
    assert (
        "failed: sqlalchemy-default @ 10 threads: 977 of 100 units failed (977 IntegrityError: two "
        "threads read the same chain head and wrote the same block index)"
    ) in " ".join(text.split())


def test_failed_strategies_are_marked_in_the_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    results = _case_rows()
    crashed = CaseResult("append", "sqlite3-pool", "pool", 100, 100, errors=100)
    crashed.problem = "case failed: boom"
    results = [r for r in results if (r.strategy, r.threads) != ("sqlite3-pool", 100)]
    results.append(crashed)  # nothing measured: in the legend as failed, no point to mark
    saved: list[Any] = []
    real_close = plt.close
    plt.close = lambda figure=None: saved.append(figure)  # type: ignore[assignment]
    try:
        plot(str(tmp_path / "c.png"), results, title=chart_title(results, {"units": 100}))
    finally:
        plt.close = real_close
    (figure,) = saved
    left, right = figure.axes
    lines = {line.get_label(): line for line in left.get_lines()}
    failed = lines["sqlalchemy-default  FAILED at 10, 100 threads"]
    assert failed.get_linestyle() == "--" and failed.get_color() == "0.55"
    layer = lines["layer  (this layer)"]
    assert layer.get_linewidth() > lines["sqlite3-lock"].get_linewidth()
    assert [t.get_text() for t in left.texts] == ["977 errors", "977 errors"]
    assert "sqlite3-pool  FAILED at 100 threads" in lines
    assert len([t for t in right.get_yticklabels() if t.get_text()]) >= 2
    assert "append: 100 units per case at 1, 10, 100 threads" in figure._suptitle.get_text()
    real_close(figure)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


# -- the command line: python -m benchmarks ----------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_python_m_benchmarks_writes_table_json_and_plot(tmp_path: Path) -> None:
    """As a user runs it from a clone: a subprocess, from the repository root."""
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra")
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks", "-s", "sqlite3-lock", "-s", "layer",
            "--threads", "1,3", "--units", "30", "--json-out", str(out), "--plot", str(chart),
            "--markdown",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "this layer: BlockStore.append" in done.stdout
    assert "| strategy | threads |" in done.stdout
    data = json.loads(out.read_text())
    assert [(r["strategy"], r["threads"]) for r in data["results"]] == [
        ("sqlite3-lock", 1),
        ("layer", 1),
        ("sqlite3-lock", 3),
        ("layer", 3),
    ]
    assert all(r["ok"] == 30 and r["intact"] for r in data["results"])
    assert data["machine"]["cpus"] >= 1
    assert chart.stat().st_size > 1000


def test_plot_without_matplotlib_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(SystemExit) as exited:
        bench_main(["-s", "layer", "--threads", "1", "--plot", str(tmp_path / "c.png")])
    assert exited.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-s", "nope"], "unknown strategy nope"),
        (["--threads", "1,x"], "separated by commas"),
        (["--threads", "0"], "whole numbers >= 1"),
        (["--units", "0"], "--units must be at least 1"),
        (["--rounds", "0"], "--rounds must be at least 1"),
    ],
)
def test_bad_options_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _measured(strategy: str, throughput: float, p99: float, **changes: Any) -> CaseResult:
    result = CaseResult("append", strategy, strategy, 10, 100, attempted=100, ok=100)
    result.throughput, result.p50, result.p99, result.max = throughput, p99 / 2, p99, p99 * 2
    result.intact, result.seconds = True, 100 / throughput
    for name, value in changes.items():
        setattr(result, name, value)
    return result


def test_median_of_rounds_takes_each_figure_median_and_keeps_every_failure() -> None:
    rounds = [
        [_measured("layer", 900.0, 0.030), _measured("peer", 500.0, 0.050)],
        [_measured("layer", 1500.0, 0.010), _measured("peer", 400.0, 0.090)],
        [
            _measured(
                "layer", 1000.0, 0.020, errors=2, error_kinds={"DatabaseBusyError": [2, "x"]}
            ),
            _measured("peer", 450.0, 0.070, intact=False, problem="a gap at 7"),
        ],
    ]
    layer, peer = median_of_rounds(rounds)
    assert (layer.strategy, layer.rounds, layer.throughput, layer.p99) == (
        "layer",
        3,
        1000.0,
        0.020,
    )
    assert layer.p50 == 0.010 and layer.max == 0.040
    assert (layer.ok, layer.errors, layer.error_kinds) == (300, 2, {"DatabaseBusyError": [2, "x"]})
    assert layer.intact is True
    assert (peer.throughput, peer.p99) == (450.0, 0.070)
    assert peer.intact is False and peer.problem == "a gap at 7"  # one bad round is enough


@pytest.mark.slow
def test_rounds_alternate_and_report_medians(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks", "-s", "sqlite3-lock", "-s", "layer",
            "--threads", "2", "--units", "20", "--rounds", "2", "--json-out", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "median of 2 rounds" in done.stdout
    data = json.loads(out.read_text())
    assert data["settings"]["rounds"] == 2
    rows = [(r["strategy"], r["rounds"], r["ok"], r["intact"]) for r in data["results"]]
    assert rows == [("sqlite3-lock", 2, 40, True), ("layer", 2, 40, True)]
    assert data["results"][0]["vs_floor"] == 1.0
