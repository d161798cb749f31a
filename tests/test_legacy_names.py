"""The legacy facade under both its names: ``ThreadSafeDatabaseManager`` (the design's name
for the class) and ``DatabaseManager`` (the old class's name, a subclass that adds nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import app
from app import DatabaseManager, ThreadSafeDatabaseManager, errors


@pytest.fixture(autouse=True)
def _thread_safe_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREEUM_THREAD_SAFE", raising=False)


def test_both_names_are_exported_and_the_old_one_is_a_plain_subclass() -> None:
    assert {"DatabaseManager", "ThreadSafeDatabaseManager"} <= set(app.__all__)
    assert DatabaseManager.__bases__ == (ThreadSafeDatabaseManager,)
    # No behaviour of its own: every attribute but the class's bookkeeping is inherited.
    bookkeeping = {"__doc__", "__module__", "__qualname__", "__firstlineno__"}
    assert set(vars(DatabaseManager)) <= bookkeeping
    assert DatabaseManager.__doc__ and ThreadSafeDatabaseManager.__doc__


def test_a_database_manager_is_a_thread_safe_database_manager(legacy_copy: Path) -> None:
    with DatabaseManager(str(legacy_copy)) as manager:
        assert isinstance(manager, ThreadSafeDatabaseManager)
        assert repr(manager) == (
            f"DatabaseManager({str(legacy_copy)!r}, db_type='sqlite', thread-safe)"
        )


def test_the_thread_safe_name_serves_the_legacy_calls(legacy_copy: Path) -> None:
    manager = ThreadSafeDatabaseManager(str(legacy_copy))
    assert not isinstance(manager, DatabaseManager)
    assert repr(manager) == (
        f"ThreadSafeDatabaseManager({str(legacy_copy)!r}, db_type='sqlite', thread-safe)"
    )
    before = manager.count_blocks()
    assert before > 0  # the file written by the old class is read as it is
    head = manager.get_recent_blocks(1)[0]
    index = manager.append_block("appended under the new name", keywords=["names"])
    assert index == head["block_index"] + 1
    newest = manager.get_recent_blocks(2)
    assert [b["block_index"] for b in newest] == [index, head["block_index"]]
    assert newest[0]["prev_hash"] == head["hash"]

    cursor = manager.conn.cursor()
    cursor.execute(
        "INSERT INTO short_term_memories (id, timestamp, content) VALUES (?, ?, ?)",
        ("names", "2024-01-01T00:00:00", "written through conn"),
    )
    manager.conn.commit()
    memory = manager.get_short_term_memory_by_id("names")
    assert memory is not None and memory["content"] == "written through conn"

    manager.close()
    assert manager.database.closed
    with pytest.raises(errors.ClosedError, match="create a new ThreadSafeDatabaseManager"):
        manager.count_blocks()
    manager.close()  # a second close does nothing

    with DatabaseManager(legacy_copy) as again:  # what it wrote is there for the old name
        assert again.count_blocks() == before + 1
