"""Read-modify-write units on one counter row: this layer against a plain scoped_session.

Each unit reads the counter and writes it back plus one. Cases (labels are the docstrings of
the strategy functions in ``benchmarks/harness/_counter.py``):

- ``sqlalchemy-default``: plain ``scoped_session`` on ``create_engine(url)``, default settings
- ``layer-run``: ``db.run(increment)``
- ``layer-unit``: ``with db.unit_of_work() as session: increment(session)``

The "check" column says whether the final counter equals the number of successful units
(no lost update). Run from the repository root:
``python -m benchmarks.session_layer [--json-out FILE]``.
"""

from __future__ import annotations

from ._common import arguments, pick, run
from .harness import CaseResult

KEYS = ("sqlalchemy-default", "layer-run", "layer-unit")


def goals(results: list[CaseResult]) -> list[tuple[str, bool]]:
    checks = []
    most = max(r.threads for r in results)
    for key in ("layer-run", "layer-unit"):
        one, many = pick(results, key, 1), pick(results, key, most)
        if one is None or many is None or one.p50 is None or many.p99 is None:
            continue
        kept = many.throughput / one.throughput
        checks.append(
            (f"{key}: {kept:.2f} of its 1-thread throughput at {most} (>= 0.75)", kept >= 0.75)
        )
        bound = 2 * most * one.p50
        checks.append(
            (
                f"{key}: p99 {many.p99 * 1000:.1f} ms at {most} threads <= 2 x threads x median "
                f"unit time = {bound * 1000:.1f} ms",
                many.p99 <= bound,
            )
        )
        checks.append(
            (f"{key}: zero errors, counter exact", many.errors == 0 and bool(many.intact))
        )
    return checks


if __name__ == "__main__":
    options = arguments(__doc__.splitlines()[0], threads=(1, 100), units=2000)
    run("counter", KEYS, options, "session layer: read-modify-write counter units", goals)
