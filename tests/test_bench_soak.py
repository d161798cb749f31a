"""The soak benchmark's short form: a minute of the example service and a service's life
(per-request objects, swallowed conn failures, held snapshots, re-embedding, a migration
half-way), then its goals: no error but the provoked ones, the chain intact, descriptors and
threads flat, memory within the bound after the warm-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the soak samples /proc")
def test_a_minute_of_soak_meets_its_goals(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    chart = tmp_path / "soak.png"
    options = ["--seconds", "60", "--interval", "3", "--warmup", "20"]
    files = ["--json-out", str(out), "--plot", str(chart)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", *options, *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    result = json.loads(out.read_text(encoding="utf-8"))
    unmet = [goal for goal in result["goals"] if not goal["met"]]
    assert done.returncode == 0 and not unmet, (unmet, done.stdout[-3000:], done.stderr[-3000:])
    assert result["chain_intact"] and result["errors"] == {}
    # The load did what it is for: every kind of work ran, and the provoked error was met.
    for kind in ("http append", "db append", "manager append", "reads", "re-embedded blocks"):
        assert result["done"].get(kind, 0) > 0, kind
    assert any(kind.startswith("migration") for kind in result["done"])
    assert sum(result["provoked"].values()) > 0
    assert len(result["samples"]) >= 15 and chart.stat().st_size > 0
