"""The similarity benchmark runs end to end at tiny sizes: both stages measured in fresh
processes, the copy's file built then mapped, results identical to the full scan, the
growth printed and written as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from benchmarks.similarity import bench_similarity


def test_a_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "similarity.json"
    result = CliRunner().invoke(
        bench_similarity,
        [
            "--blocks",
            "400",
            "--dim",
            "8",
            "--queries",
            "3",
            "--rounds",
            "2",
            "--checks",
            "2",
            "--workdir",
            str(tmp_path),
            "--json-out",
            str(out),
            "--quantize-above",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "growth 40 -> 400 blocks (10x): p50" in result.output
    figures = json.loads(out.read_text())
    assert [stage["blocks"] for stage in figures["stages"]] == [40, 400]
    for stage in figures["stages"]:
        assert stage["absent"]["sidecar_rebuilt"] and not stage["absent"]["sidecar_present"]
        assert stage["present"]["sidecar_present"] and not stage["present"]["sidecar_rebuilt"]
        assert stage["present"]["compact"]
        assert stage["present"]["identical"] == stage["present"]["checked"] == 2
        assert stage["present"]["p50_ms"] > 0 and stage["present"]["held_mib"] > 0
    assert set(figures["growth"]) >= {"p50_ms", "held_mib", "first_query_s"}
