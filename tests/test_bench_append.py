"""``python -m benchmarks.append`` at tiny sizes: the sqlite3 ceiling writes the same chain
as every other case, on the layer's schema and triggers, and the goal lines are ratios
within each round."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app import Database
from benchmarks import append
from benchmarks.harness import APPEND, CaseResult
from benchmarks.harness._child import run_case
from benchmarks.harness._raw import CEILING_BATCH

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    Database(f"sqlite:///{path}", auto_upgrade=True).dispose()
    return path


@pytest.mark.parametrize("threads", [1, 3])
def test_ceiling_writes_an_intact_chain_in_transactions_of_a_thousand(
    threads: int, template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "memory.db"
    shutil.copyfile(template, path)
    units = 2 * CEILING_BATCH + 7  # two full transactions and a partial one
    result = run_case(
        {
            "workload": "append",
            "strategy": "sqlite3-ceiling",
            "threads": threads,
            "units": units,
            "path": str(path),
        }
    )
    assert (result["ok"], result["errors"]) == (units, 0), result["error_kinds"]
    assert result["intact"], result["problem"]
    conn = sqlite3.connect(path)
    try:
        # The layer's triggers ran: the keyword index has a row per block.
        triggers = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")
        assert triggers.fetchone()[0] > 0
        (stored,) = conn.execute("SELECT count(*) FROM blocks").fetchone()
    finally:
        conn.close()
    assert stored == units


def test_ceiling_is_labelled() -> None:
    assert "1,000 appends per" in APPEND["sqlite3-ceiling"].label


def _result(key: str, threads: int, throughput: float, p99: float) -> CaseResult:
    result = CaseResult("append", key, key, threads, 100, attempted=100, ok=100)
    result.throughput, result.p99, result.intact = throughput, p99, True
    return result


def _round(scale: float) -> list[CaseResult]:
    return [
        _result("sqlite3-ceiling", 1, 10000 * scale, 0.001),
        _result("greeum-5.3.0", 1, 2000 * scale, 0.001),
        _result("layer", 1, 3000 * scale, 0.001),
        _result("greeum-5.3.0", 100, 2000 * scale, 0.050),
        _result("layer", 100, 6000 * scale, 0.010),
        _result("facade-transaction", 100, 2500 * scale, 0.045),
    ]


def test_goals_are_medians_of_ratios_within_each_round() -> None:
    # The machine slows down between rounds: the ratios within a round do not move.
    runs = [_round(1.0), _round(0.5), _round(1.5)]
    checks = dict(append.round_goals(runs))
    share = "layer @ 100: share of the ceiling: 0.60, median of 3 rounds"
    assert checks[f"{share} (each: 0.60, 0.60, 0.60) (>= 0.5)"] is True
    assert checks["greeum-5.3.0 @ 100: share of the ceiling: 0.20, median of 3 rounds "
                  "(each: 0.20, 0.20, 0.20)"] is None  # fmt: skip
    one = "one thread: layer x the peer: 1.50, median of 3 rounds (each: 1.50, 1.50, 1.50)"
    assert checks[f"{one} (>= 1)"] is True
    p99 = "layer @ 100: p99 x the peer's: 0.20, median of 3 rounds (each: 0.20, 0.20, 0.20)"
    assert checks[f"{p99} (<= 0.4)"] is True
    gain = "facade-transaction @ 100: throughput x the peer's: 1.25, median of 3 rounds"
    assert checks[f"{gain} (each: 1.25, 1.25, 1.25) (>= 1.5)"] is False
    late = "facade-transaction @ 100: p99 x the peer's: 0.90, median of 3 rounds"
    assert checks[f"{late} (each: 0.90, 0.90, 0.90) (<= 0.8)"] is False


@pytest.mark.slow
def test_python_m_benchmarks_append_runs_the_ceiling_once_per_round(tmp_path: Path) -> None:
    out = tmp_path / "append.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.append", "--threads", "2", "--units", "20",
            "--rounds", "2", "--json-out", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "layer @ 2: share of the ceiling" in done.stdout
    data = json.loads(out.read_text())
    rows = {(r["strategy"], r["threads"]) for r in data["results"] if not r["skipped"]}
    assert ("sqlite3-ceiling", 1) in rows and ("sqlite3-ceiling", 2) not in rows
    assert all(r["intact"] for r in data["results"] if not r["skipped"])
