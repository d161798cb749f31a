"""What the layer does around ``os.fork()``, in one place, and only once it is needed.

A forked child has the parent's memory but only the forking thread: a lock another thread
held stays held, SQLite's in-process lock bookkeeping says a write transaction is open, and
descriptors (eventfd gates, pooled connections) are shared with the parent. The modules that
keep such process-wide state register callbacks here with :func:`on_fork`; nothing is given
to ``os.register_at_fork`` until :func:`install_fork_hooks`, which ``Database()`` calls (and
a thread's first eventfd gate, see ``_fairlock``). A process that imports the package but
never opens a Database forks as if it had not: no callback of the layer runs, and no fork
waits for a writer's turn.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable

Hook = Callable[[], None]

#: The stages of the layer's fork handling, in the order their callbacks run after a fork
#: (in the parent and in the child); before a fork they run in the reverse order, as
#: ``os.register_at_fork`` runs its own (so a stage's before and after callbacks bracket
#: those of the stages after it). The order is the one the modules' imports gave when each
#: registered itself with ``os.register_at_fork``, and it matters after a fork in the child:
#:
#: * ``keyword index``, ``replica positions``, ``asyncio inboxes`` (``_keyword_index``,
#:   ``_replica_positions``, ``aio._inbox``): new locks for their small registries, which a
#:   thread of the parent may have held when it was copied (the child would wait for it
#:   forever, or skip its keyword-index upkeep for good). They use no other stage's state.
#: * ``vector caches`` (``_vector_cache``): forgets the parent's similarity caches and
#:   makes a new lock for them. It uses no other stage's state, and none uses its.
#: * ``WAL bound`` (``_wal_bound``): a new lock and an empty map of per-file states, which
#:   ``databases`` then fills: each Database's new WAL bound looks its file up there.
#: * ``turn gates`` (``_fairlock``): forgets the parent's eventfd gates, before anything in
#:   the child can wait for a turn on them.
#: * ``write sides`` (``_write_side``): a new registry of write sides that remembers which
#:   databases the child must not write to (noted by its before-fork callback, the only
#:   one: it takes every write turn so no write transaction is open while the process is
#:   copied, and its after-in-parent callback gives them back). ``databases`` then asks it
#:   for each Database's write side, so it must come first.
#: * ``databases`` (``database``): each live Database forgets its pooled connections and
#:   makes its per-process state again from the stages above: last.
STAGES = (
    "keyword index",
    "replica positions",
    "asyncio inboxes",
    "vector caches",
    "WAL bound",
    "turn gates",
    "write sides",
    "databases",
)

_BEFORE, _AFTER_IN_PARENT, _AFTER_IN_CHILD = range(3)

_hooks: dict[str, tuple[Hook | None, Hook | None, Hook | None]] = {}
_install_lock = threading.Lock()
_installed = False


def on_fork(
    stage: str,
    *,
    before: Hook | None = None,
    after_in_parent: Hook | None = None,
    after_in_child: Hook | None = None,
) -> None:
    """Register a module's fork callbacks as ``stage`` (one of :data:`STAGES`); called when
    the module is imported. They run from the first :func:`install_fork_hooks` on, even if
    registered after it."""
    if stage not in STAGES:
        raise ValueError(f"unknown fork stage {stage!r}; the stages are {STAGES}")
    _hooks[stage] = (before, after_in_parent, after_in_child)


def install_fork_hooks() -> None:
    """Give the stages' callbacks to ``os.register_at_fork``, once per process (safe to call
    from many threads at once, and cheap once done)."""
    global _installed
    if _installed:
        return
    with _install_lock:
        if installed():  # another thread was first
            return
        # One registration per stage, in STAGES order: os.register_at_fork then runs them in
        # that order after a fork and in the reverse one before it, and reports a callback
        # that raises without skipping the others. Each looks its stage up when it runs.
        for stage in STAGES:
            os.register_at_fork(
                before=functools.partial(_run, stage, _BEFORE),
                after_in_parent=functools.partial(_run, stage, _AFTER_IN_PARENT),
                after_in_child=functools.partial(_run, stage, _AFTER_IN_CHILD),
            )
        _installed = True


def installed() -> bool:
    """Whether this process runs the layer's fork callbacks (for tests and diagnostics)."""
    return _installed


def _run(stage: str, when: int) -> None:
    hook = _hooks.get(stage, (None, None, None))[when]
    if hook is not None:
        hook()
