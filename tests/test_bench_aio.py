"""The asyncio benchmark at tiny sizes: every append case appends exactly what it says with an
intact chain, the subprocess path works, and the table and goals are made from the results."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.aio import (
    HEADERS,
    _options,
    case_aio,
    case_threads,
    case_to_thread,
    goals,
    rows,
    run_case,
)

pytestmark = pytest.mark.timeout(300)


def test_the_append_cases_at_tiny_sizes(tmp_path: Path) -> None:
    options = _options(["--tasks", "20", "--appends", "2", "--threads", "4"])
    results = {}
    for name, case in (("aio", case_aio), ("threads", case_threads), ("to-thread", case_to_thread)):
        result = case(options, str(tmp_path / f"{name}.db"))
        assert (result["ok"], result["errors"], result["intact"]) == (40, 0, True), result
        results[name] = result
    assert results["aio"]["loop"]["ticks"] > 0
    assert results["aio"]["loop"]["threads"] <= results["aio"]["workers"] + 1
    assert results["threads"]["threads"] == 4
    table = rows(results)
    assert [row[0] for row in table] == ["aio", "threads", "to-thread"]
    assert all(len(row) == len(HEADERS) for row in table)
    assert table[1][3] == "1.00"  # threads against itself
    checked = dict(goals(results))
    assert any("zero errors" in goal and met for goal, met in checked.items())


@pytest.mark.slow
def test_a_case_runs_in_its_own_process() -> None:
    result = run_case("ticker", _options([]))
    assert "failed" not in result, result
    assert result["loop"]["ticks"] > 100
    assert result["loop"]["threads"] == 0


def test_options_are_checked() -> None:
    with pytest.raises(SystemExit):
        _options(["--tasks", "0"])
