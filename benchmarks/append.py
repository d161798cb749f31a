"""Chain appends: bare sqlite3, the write-queue peer, this layer, and the legacy facade.

Cases (labels are the docstrings of the strategy functions in ``benchmarks/harness/``):

- ``sqlite3-ceiling``: bare sqlite3, one thread, 1,000 appends per transaction, the head
  kept in memory, on the layer's schema and triggers (the ceiling; run at one thread only)
- ``sqlite3-lock``: bare sqlite3, one transaction per append under a lock (the floor)
- ``greeum-5.3.0``: Greeum 5.3.0 ``ThreadSafeDatabaseManager``, ``run_serialized`` around
  read-last + ``add_block`` (install with ``pip install --no-deps greeum==5.3.0``)
- ``layer``: ``BlockStore.append`` (group commit)
- ``facade-transaction``: ``with db.transaction(): get_last_block_info(); add_block(...)``
- ``facade-append-block``: ``DatabaseManager.append_block`` (group commit)

Every case appends the same blocks, computes hashes with the legacy formula, and checks the
chain afterwards. Run from the repository root: ``python -m benchmarks.append [--json-out FILE]``.

The goals are ratios within one round (the ceiling and the peer ran minutes apart at most
from the case they divide), their median over the rounds (5 by default): a slow spell of a
shared machine moves that less than it moves the figures themselves. Each layer case's
throughput is also reported as a share of the ceiling.

``--telemetry`` also runs each of the layer's cases with telemetry on (key ``...+otel``, see
``harness/_telemetry.py``) right after it with it off, in every round, and reports the
ratio of their throughputs: the cost of telemetry, measured as an A/B in one run.
"""

from __future__ import annotations

from collections.abc import Callable

from ._common import Check, arguments, pick, run
from .harness import CaseResult

CEILING = "sqlite3-ceiling"
PEER = "greeum-5.3.0"
KEYS = ("sqlite3-lock", PEER, "layer", "facade-transaction", "facade-append-block")
LAYER_KEYS = ("layer", "facade-transaction", "facade-append-block")
#: Throughput with telemetry on, at least this share of it off (``--telemetry``).
TELEMETRY_SHARE = 0.97
#: ``layer`` at 100 threads and more: at least this share of the ceiling's throughput...
CEILING_SHARE = 0.5
#: ... and a p99 latency at most this share of the peer's.
LAYER_P99 = 0.4
#: ``facade-transaction``: at least this many times the peer's throughput, with a p99 at
#: most this share of the peer's, at 100, 200 and 500 threads.
TRANSACTION_GAIN, TRANSACTION_P99 = 1.5, 0.8
#: ``facade-append-block``: at least this many times the peer's throughput.
APPEND_BLOCK_GAIN = 5.0

Figure = Callable[[CaseResult], float | None]


def throughput(result: CaseResult) -> float | None:
    return result.throughput


def p99(result: CaseResult) -> float | None:
    return result.p99


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else sum(ordered[middle - 1 : middle + 1]) / 2


def round_ratios(
    runs: list[list[CaseResult]],
    case: tuple[str, int],
    reference: tuple[str, int],
    figure: Figure = throughput,
) -> list[float]:
    """``figure`` of ``case`` (key, threads) over that of ``reference`` in each round that
    measured both."""
    ratios = []
    for results in runs:
        mine, other = pick(results, *case), pick(results, *reference)
        if mine is None or other is None:
            continue
        top, bottom = figure(mine), figure(other)
        if top is not None and bottom:
            ratios.append(top / bottom)
    return ratios


def ratio_check(
    what: str, ratios: list[float], wanted: float | None, *, at_most: bool = False, digits: int = 2
) -> Check:
    """A goal line: the median of the per-round ``ratios`` (each listed, to ``digits``
    decimals) against ``wanted`` (a lower bound, or an upper one ``at_most``); a measured
    figure when ``wanted`` is None."""
    value = median(ratios)
    each = ", ".join(f"{r:.{digits}f}" for r in ratios)
    line = f"{what}: {value:.{digits}f}, median of {len(ratios)} rounds (each: {each})"
    if wanted is None:
        return line, None
    bound = "<=" if at_most else ">="
    return f"{line} ({bound} {wanted:g})", value <= wanted if at_most else value >= wanted


def ceiling_shares(runs: list[list[CaseResult]]) -> list[Check]:
    """Each case's throughput as a share of the ceiling's in the same round; ``layer`` at
    100 threads and more has a goal."""
    checks = []
    threads = sorted({r.threads for results in runs for r in results if r.strategy != CEILING})
    for count in threads:
        for key in (PEER, *LAYER_KEYS):
            ratios = round_ratios(runs, (key, count), (CEILING, 1))
            if ratios:
                wanted = CEILING_SHARE if key == "layer" and count >= 100 else None
                checks.append(ratio_check(f"{key} @ {count}: share of the ceiling", ratios, wanted))
    return checks


def peer_goals(runs: list[list[CaseResult]]) -> list[Check]:
    """Against the peer at the same thread count, in the same round."""
    checks = []
    threads = sorted({r.threads for results in runs for r in results if r.strategy != CEILING})
    for count in threads:
        peer = (PEER, count)
        if count == 1:
            for key in LAYER_KEYS:
                ratios = round_ratios(runs, (key, 1), peer)
                if ratios:
                    checks.append(ratio_check(f"one thread: {key} x the peer", ratios, 1.0))
            continue
        wanted: list[tuple[str, Figure, float, bool]] = [
            ("facade-transaction", throughput, TRANSACTION_GAIN, False),
            ("facade-transaction", p99, TRANSACTION_P99, True),
            ("facade-append-block", throughput, APPEND_BLOCK_GAIN, False),
        ]
        if count >= 100:
            wanted.insert(0, ("layer", p99, LAYER_P99, True))
        for key, figure, bound, at_most in wanted:
            ratios = round_ratios(runs, (key, count), peer, figure)
            if ratios:
                name = "throughput" if figure is throughput else "p99"
                what = f"{key} @ {count}: {name} x the peer's"
                checks.append(ratio_check(what, ratios, bound, at_most=at_most))
    return checks


def telemetry_goals(runs: list[list[CaseResult]]) -> list[Check]:
    """Throughput with telemetry on against off, per layer case and thread count: the
    ratio within each round (the two cases ran one right after the other), and its median
    over the rounds."""
    checks = []
    threads = sorted({r.threads for results in runs for r in results})
    for count in threads:
        for key in LAYER_KEYS:
            ratios = round_ratios(runs, (key + "+otel", count), (key, count))
            if ratios:
                what = f"{key} @ {count}: telemetry on / off"
                checks.append(ratio_check(what, ratios, TELEMETRY_SHARE, digits=3))
    return checks


def with_telemetry(keys: tuple[str, ...]) -> tuple[str, ...]:
    """``keys`` with each of the layer's followed by its variant with telemetry on."""
    return tuple(k for key in keys for k in (key, *((key + "+otel",) * (key in LAYER_KEYS))))


def goals(results: list[CaseResult]) -> list[Check]:
    """Of the medians: no errors and an intact chain, and ``layer``'s gain from threads."""
    most = max(r.threads for r in results)
    checks: list[Check] = []
    for key in LAYER_KEYS:
        mine = pick(results, key, most)
        if mine is None:
            continue
        checks.append(
            (f"{key}: zero errors and an intact chain", mine.errors == 0 and bool(mine.intact))
        )
        one = pick(results, key, 1)
        if key == "layer" and one is not None and most > 1:
            gain = mine.throughput / one.throughput
            checks.append(
                (f"layer: {gain:.2f} x its 1-thread throughput at {most} (>= 3)", gain >= 3)
            )
    return checks


def round_goals(runs: list[list[CaseResult]]) -> list[Check]:
    return ceiling_shares(runs) + peer_goals(runs)


if __name__ == "__main__":
    options = arguments(
        __doc__.splitlines()[0], threads=(1, 100), units=2000, telemetry=True, rounds=5
    )
    if options.telemetry:
        run(
            "append",
            with_telemetry(KEYS),
            options,
            "chain appends, telemetry off and on",
            goals,
            round_goals=lambda runs: round_goals(runs) + telemetry_goals(runs),
            once=(CEILING,),
        )
    else:
        run("append", KEYS, options, "chain appends", goals, round_goals, once=(CEILING,))
