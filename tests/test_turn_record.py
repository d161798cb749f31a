"""The ``-turn`` record as other processes read it: the holder's texts, cut to their room,
follow the holder as it changes; each process's figures stay right when written in part."""

from __future__ import annotations

import os
from pathlib import Path

from app.writers._holder import call_site
from app.writers._turn_record import TurnRecord


def test_holder_texts_follow_each_holder_and_are_cut_to_their_room(tmp_path: Path) -> None:
    writer = TurnRecord(str(tmp_path / "db-turn"))
    reader = TurnRecord(str(tmp_path / "db-turn"), read_only=True)
    try:
        for name, task, site in [
            ("worker-1", None, "app.py:10 in handler"),
            ("worker-2", "task-7", "x" * 400),
            ("worker-1", None, "app.py:10 in handler"),  # seen before: the same texts again
            ("w" * 100, "t" * 100, None),
        ]:
            writer.hold(123, name, task, site)
            holder = reader.holder()
            assert holder is not None and holder.pid == os.getpid()
            assert (holder.thread_name, holder.task, holder.site) == (
                name[:62],
                task[:62] if task else None,
                site[:254] if site else None,
            )
            writer.release(committed=True)
            assert reader.holder() is None
        assert reader.commits() == 4
    finally:
        writer.close()
        reader.close()


def test_a_commit_keeps_the_queued_writers_last_written(tmp_path: Path) -> None:
    writer = TurnRecord(str(tmp_path / "db-turn"))
    reader = TurnRecord(str(tmp_path / "db-turn"), read_only=True)
    try:
        writer.note_wait(0.25, 3)
        writer.hold(1, "worker", None, None)
        writer.release(committed=True)
        (mine,) = reader.processes()
        assert (mine.pid, mine.queued, mine.waits, mine.commits) == (os.getpid(), 3, 1, 1)
        assert mine.wait_total == 0.25
        writer.note_wait(0.5, 0)
        (mine,) = reader.processes()
        assert (mine.queued, mine.waits, mine.wait_total) == (0, 2, 0.75)
    finally:
        writer.close()
        reader.close()


def test_the_call_site_is_the_first_frame_outside_the_layer() -> None:
    def here() -> str | None:
        import sys

        return call_site(sys._getframe())

    for _ in range(2):  # the second time from what the walk remembered of each file
        site = here()
        assert site is not None and site.startswith(__file__) and site.endswith(" in here")
