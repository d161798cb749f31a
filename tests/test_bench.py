"""The benchmark library at tiny sizes: every strategy runs, counts are exact, the checks see
what they must see, and the runner's subprocess path and reports work."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from app import Database
from app._bench import (
    APPEND,
    COUNTER,
    Case,
    CaseResult,
    add_ratios,
    check_chain,
    markdown_table,
    plot,
    problems,
    rich_table,
    run_cases,
    unavailable,
    write_json,
)
from app._bench._child import run_case

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
    monkeypatch.setattr("app._bench._runner.unavailable", lambda item: "not installed here")
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
    table = rich_table(results, title="t")
    assert table.row_count == 4
    text = markdown_table(results)
    assert text.count("\n") == 5 and "| LAYER | 10 | 2,000 | 4.00 | 2.50 |" in text
    assert problems(results) == ["LAYER @ 10 threads: 2 errors: 2 BusyError ([SQL: x])"]
    out = tmp_path / "r.json"
    write_json(str(out), results, {"units": 100})
    data = json.loads(out.read_text())
    assert data["settings"] == {"units": 100} and len(data["results"]) == 4
    pytest.importorskip("matplotlib")
    chart = tmp_path / "r.png"
    plot(str(chart), results, title="t")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
