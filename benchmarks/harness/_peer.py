"""Strategies through a legacy-style API: this project's ``DatabaseManager`` facade, and the
write-queue peer (Greeum 5.3.0's ``ThreadSafeDatabaseManager``), both driven the way their
callers use them: read the last block, compute the next one, ``add_block``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

from ._target import Target
from ._workload import BenchBlock, legacy_block, now

PEER_MODULE = "greeum.core.thread_safe_db"
PEER_INSTALL = "pip install --no-deps greeum==5.3.0"


def peer_missing() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    if importlib.util.find_spec("greeum") is None:
        return f"greeum is not installed ({PEER_INSTALL})"
    return None


def load_peer_module() -> Any:
    """Import ``greeum.core.thread_safe_db`` without running ``greeum/__init__.py``.

    The package's ``__init__`` imports most of Greeum (and needs its long dependency list);
    the write-queue class needs only a few sibling modules. Empty stand-ins for the parent
    packages, pointing at the installed directories, let the normal import machinery find
    just those.
    """
    if PEER_MODULE in sys.modules:
        return sys.modules[PEER_MODULE]
    spec = importlib.util.find_spec("greeum")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"greeum is not installed ({PEER_INSTALL})")
    root = next(iter(spec.submodule_search_locations))
    for name, directory in (("greeum", root), ("greeum.core", os.path.join(root, "core"))):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [directory]
            sys.modules[name] = stub
    return importlib.import_module(PEER_MODULE)


class _Peer(Target):
    def __init__(self, path: str) -> None:
        # Keep the peer's side database (STM anchors) next to the case's file.
        os.environ["GREEUM_STM_DB"] = os.path.join(os.path.dirname(path), "stm_anchors.db")
        module = load_peer_module()
        self.manager = module.ThreadSafeDatabaseManager(path)

    def unit(self, block: BenchBlock) -> None:
        manager = self.manager

        def read_last_then_add() -> Any:
            last = manager.get_last_block_info()
            head = None if last is None else (last["block_index"], last["hash"])
            return manager.add_block(legacy_block(block, head))

        # add_block logs and swallows its errors, returning None instead of the index.
        if manager.run_serialized(read_last_then_add) is None:
            raise RuntimeError("add_block returned None (the peer swallowed an error)")

    def close(self) -> None:
        self.manager.shutdown()
        self.manager.close()


def greeum_queue(path: str) -> Target:
    """Greeum 5.3.0, a later release of the legacy class's own project: its write queue,
    run_serialized(read last + add_block)"""
    return _Peer(path)


def _facade(path: str) -> Any:
    module = importlib.import_module("app.legacy")
    return module.DatabaseManager(path)


class _FacadeTransaction(Target):
    def __init__(self, path: str) -> None:
        self.manager = _facade(path)

    def unit(self, block: BenchBlock) -> None:
        manager = self.manager
        with manager.transaction():
            last = manager.get_last_block_info()
            head = None if last is None else (last["block_index"], last["hash"])
            manager.add_block(legacy_block(block, head))

    def close(self) -> None:
        self.manager.close()


def facade_transaction(path: str) -> Target:
    """facade: with transaction(): get_last_block_info + add_block"""
    return _FacadeTransaction(path)


class _FacadeAppend(Target):
    def __init__(self, path: str) -> None:
        self.manager = _facade(path)

    def unit(self, block: BenchBlock) -> None:
        self.manager.append_block(
            block.context,
            keywords=list(block.keywords),
            tags=list(block.tags),
            importance=block.importance,
            metadata=block.metadata,
            embedding=block.embedding,
            timestamp=now(),
        )

    def close(self) -> None:
        self.manager.close()


def facade_append_block(path: str) -> Target:
    """facade: append_block (group commit)"""
    return _FacadeAppend(path)
