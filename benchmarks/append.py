"""Chain appends: bare sqlite3, the write-queue peer, this layer, and the legacy facade.

Cases (labels are the docstrings of the strategy functions in ``benchmarks/harness/``):

- ``sqlite3-lock``: bare sqlite3, one transaction per append under a lock (the floor)
- ``greeum-5.3.0``: Greeum 5.3.0 ``ThreadSafeDatabaseManager``, ``run_serialized`` around
  read-last + ``add_block`` (install with ``pip install --no-deps greeum==5.3.0``)
- ``layer``: ``BlockStore.append`` (group commit)
- ``facade-transaction``: ``with db.transaction(): get_last_block_info(); add_block(...)``
- ``facade-append-block``: ``DatabaseManager.append_block`` (group commit)

Every case appends the same blocks, computes hashes with the legacy formula, and checks the
chain afterwards. Run from the repository root: ``python -m benchmarks.append [--json-out FILE]``.

``--telemetry`` also runs each of the layer's cases with telemetry on (key ``...+otel``, see
``harness/_telemetry.py``) right after it with it off, in every round, and reports the
ratio of their throughputs: the cost of telemetry, measured as an A/B in one run.
"""

from __future__ import annotations

from ._common import arguments, pick, run
from .harness import CaseResult

KEYS = ("sqlite3-lock", "greeum-5.3.0", "layer", "facade-transaction", "facade-append-block")
LAYER_KEYS = ("layer", "facade-transaction", "facade-append-block")
#: Throughput with telemetry on, at least this share of it off (``--telemetry``).
TELEMETRY_SHARE = 0.97


def with_telemetry(keys: tuple[str, ...]) -> tuple[str, ...]:
    """``keys`` with each of the layer's followed by its variant with telemetry on."""
    return tuple(k for key in keys for k in (key, *((key + "+otel",) * (key in LAYER_KEYS))))


def telemetry_goals(runs: list[list[CaseResult]]) -> list[tuple[str, bool]]:
    """Throughput with telemetry on against off, per layer case and thread count: the
    ratio within each round (the two cases ran one right after the other), and its median
    over the rounds, which a slow spell of a shared machine moves less than the ratio of
    the medians."""
    checks = []
    threads = sorted({r.threads for results in runs for r in results})
    for count in threads:
        for key in LAYER_KEYS:
            pairs = [(pick(rs, key, count), pick(rs, key + "+otel", count)) for rs in runs]
            ratios = sorted(on.throughput / off.throughput for off, on in pairs if off and on)
            if not ratios:
                continue
            middle = len(ratios) // 2
            median = ratios[middle] if len(ratios) % 2 else sum(ratios[middle - 1 : middle + 1]) / 2
            each = ", ".join(f"{r:.3f}" for r in ratios)
            checks.append(
                (
                    f"{key} @ {count}: telemetry on / off, median of {len(ratios)} rounds "
                    f"{median:.3f} (each: {each}) (>= {TELEMETRY_SHARE})",
                    median >= TELEMETRY_SHARE,
                )
            )
    return checks


def goals(results: list[CaseResult]) -> list[tuple[str, bool]]:
    most = max(r.threads for r in results)
    peer = pick(results, "greeum-5.3.0", most)
    checks = []
    for key in ("layer", "facade-transaction", "facade-append-block"):
        mine = pick(results, key, most)
        if mine is None:
            continue
        checks.append(
            (f"{key}: zero errors and an intact chain", mine.errors == 0 and bool(mine.intact))
        )
        if key == "layer":
            one = pick(results, key, 1)
            if one is not None:
                gain = mine.throughput / one.throughput
                checks.append(
                    (f"layer: {gain:.2f} x its 1-thread throughput at {most} (>= 3)", gain >= 3)
                )
        if peer is None or peer.p99 is None or mine.p99 is None:
            continue
        ratio = mine.throughput / peer.throughput
        wanted, p99_share = {"layer": (4.0, 0.5), "facade-transaction": (1.2, 1.0)}.get(
            key, (4.0, None)
        )
        checks.append(
            (f"{key}: {ratio:.2f} x the peer's throughput at {most} (>= {wanted})", ratio >= wanted)
        )
        if p99_share is not None:
            checks.append(
                (
                    f"{key}: p99 {mine.p99 * 1000:.1f} ms vs the peer's {peer.p99 * 1000:.1f} ms "
                    f"(<= {p99_share:g} x)",
                    mine.p99 <= p99_share * peer.p99,
                )
            )
    return checks


if __name__ == "__main__":
    options = arguments(__doc__.splitlines()[0], threads=(1, 100), units=2000, telemetry=True)
    if options.telemetry:
        run(
            "append",
            with_telemetry(KEYS),
            options,
            "chain appends, telemetry off and on",
            goals,
            round_goals=telemetry_goals,
        )
    else:
        run("append", KEYS, options, "chain appends", goals)
