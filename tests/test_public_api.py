"""The public API is what app.__all__ lists, and every name there exists."""

from __future__ import annotations

import app

EXPECTED = {
    "BlockRecord",
    "BlockStore",
    "ChainHead",
    "Database",
    "DatabaseManager",
    "MemoryRecord",
    "ScoredBlock",
    "SearchHit",
    "Settings",
    "ShortTermMemories",
    "Stats",
    "__version__",
    "errors",
}


def test_all_lists_the_public_api() -> None:
    assert set(app.__all__) == EXPECTED
    for name in app.__all__:
        assert getattr(app, name) is not None


def test_errors_share_one_base() -> None:
    names = [n for n in dir(app.errors) if n.endswith("Error") and n != "AppError"]
    assert names
    for name in names:
        assert issubclass(getattr(app.errors, name), app.errors.AppError), name
