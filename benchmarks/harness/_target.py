"""What a benchmark strategy builds: an object whose ``unit`` does one unit of work from any
thread, plus the registry that names strategies by key (each labelled by its docstring)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from ._workload import BenchBlock


class Target:
    """One strategy set up on one database file.

    ``unit`` must be safe to call from many threads at once; it raises on failure.
    """

    def unit(self, block: BenchBlock) -> None:
        raise NotImplementedError

    def thread_done(self) -> None:
        """Called by each worker thread when it has finished its units."""

    def close(self) -> None:
        """Release everything (called once, after every thread is done)."""


Factory = Callable[[str], Target]


@dataclass(frozen=True)
class Strategy:
    """A named way of doing the workload.

    Attributes:
        key: short name used on the command line and in JSON.
        workload: ``"append"`` (a chain append) or ``"counter"`` (read-modify-write).
        factory: builds the :class:`Target` on a database file path.
        needs: the module that must be importable, if any (checked before running).
        own_schema: the strategy creates its own tables on an empty file.
    """

    key: str
    workload: str
    factory: Factory
    needs: str | None = None
    own_schema: bool = False

    @property
    def label(self) -> str:
        """The factory's docstring on one line."""
        return " ".join((inspect.getdoc(self.factory) or self.key).split())
