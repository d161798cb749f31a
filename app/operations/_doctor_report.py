"""What ``app doctor`` reports: the statuses, one line of the report (``Check``), the report
and its verdict, and sizes as its lines show them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"


@dataclass(frozen=True)
class Check:
    """One line of the report. ``advice`` says what to do when the status is warn or fail."""

    name: str
    value: str
    status: str = INFO
    advice: str = ""


@dataclass
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status in (WARN, FAIL)]

    @property
    def verdict(self) -> str:
        """One line: the overall result, counting failures and warnings."""
        failures = sum(c.status == FAIL for c in self.checks)
        warnings = sum(c.status == WARN for c in self.checks)
        counted = ", ".join(
            f"{n} {word}{'s' if n != 1 else ''}"
            for n, word in ((failures, "failure"), (warnings, "warning"))
            if n
        )
        if failures:
            return f"verdict: NOT OK, {counted}: fix what the advice above says"
        if warnings:
            return f"verdict: OK, with {counted} (see the advice above)"
        return "verdict: OK, no problems found"

    def add(self, name: str, value: Any, status: str = INFO, advice: str = "") -> None:
        self.checks.append(Check(name, str(value), status, advice))


Progress = Callable[[int, int], None]


def mib(size: int | None) -> str:
    return "absent" if size is None else f"{size / 1024 / 1024:.2f} MiB ({size:,} bytes)"
