"""Time windows (``since``, ``date_range`` and the facade's date searches) compare instants,
whatever zone each timestamp and each bound was written in; old callers' naive timestamps
keep working as before, and text that is not ISO-8601 is compared as text.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app import BlockStore, Database, DatabaseManager, errors

from .legacy_helpers import LEGACY_FIXTURE, legacy_hash, next_block

SEOUL = ZoneInfo("Asia/Seoul")
NEW_YORK = ZoneInfo("America/New_York")
UTC = UTC


@pytest.fixture
def utc_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local zone is UTC (a server's clock), whatever the machine's is."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_seoul_window_finds_blocks_stamped_by_a_utc_server(
    db_url: str, utc_process: None
) -> None:
    with Database(db_url, auto_upgrade=True) as db:
        store = BlockStore(db)
        for number in range(10):
            store.append(f"request {number}")  # stamped datetime.now(): naive, the server's UTC
        an_hour_ago = datetime.now(SEOUL) - timedelta(hours=1)
        assert [b.context for b in store.since(an_hour_ago)] == [
            f"request {n}" for n in reversed(range(10))
        ]
        assert store.since(datetime.now(SEOUL) + timedelta(minutes=1)) == []
        day = store.date_range(an_hour_ago, datetime.now(SEOUL) + timedelta(hours=1))
        assert len(day) == 10


def test_a_utc_window_finds_blocks_stamped_in_korean_time(db_url: str, utc_process: None) -> None:
    with Database(db_url, auto_upgrade=True) as db:
        store = BlockStore(db)
        stamped = datetime(2026, 12, 8, 2, 30, tzinfo=SEOUL)  # 2026-12-07T17:30Z
        for minute in range(5):
            store.append(f"kst {minute}", timestamp=stamped + timedelta(minutes=minute))
        window = store.date_range(
            datetime(2026, 12, 7, 17, 0, tzinfo=UTC), datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
        )
        assert [b.context for b in window] == [f"kst {m}" for m in reversed(range(5))]
        # A naive bound is a time in the configured zone (here the process's UTC).
        assert len(store.since("2026-12-07T17:32:00")) == 3
        assert store.date_range("2026-12-08T02:00:00", "2026-12-08T03:00:00") == []


def test_naive_timestamps_are_read_in_the_configured_zone(db_url: str) -> None:
    with Database(db_url, auto_upgrade=True, timezone="Asia/Seoul") as db:
        store = BlockStore(db)
        store.append("written in Seoul", timestamp="2026-12-08T02:30:00")
        found = store.date_range(
            datetime(2026, 12, 7, 17, 0, tzinfo=UTC), datetime(2026, 12, 7, 18, 0, tzinfo=UTC)
        )
        assert [b.context for b in found] == ["written in Seoul"]
        assert found[0].timestamp == "2026-12-08T02:30:00"  # the text is kept as written


def test_a_bad_timezone_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigurationError, match="IANA time zone"):
        Database(f"sqlite:///{tmp_path / 'x.db'}", timezone="Asia/Seol")
    assert not (tmp_path / "x.db").exists()


def test_old_callers_naive_windows_work_as_before(legacy_copy: Path, utc_process: None) -> None:
    """The old class's database: naive stamps, naive string bounds through the facade."""
    with DatabaseManager(str(legacy_copy)) as manager:
        everything = manager.get_blocks(limit=1000)
        stamps = sorted(b["timestamp"] for b in everything)
        low, high = stamps[50], stamps[150]
        expected = sorted(
            (b for b in everything if low <= b["timestamp"] <= high),
            key=lambda b: (b["timestamp"], b["block_index"]),
            reverse=True,
        )
        found = manager.search_blocks_by_date_range(low, high, limit=1000)
        assert [b["block_index"] for b in found] == [b["block_index"] for b in expected]
        since = manager.get_blocks_since_time(datetime.fromisoformat(high), limit=1000)
        assert {b["block_index"] for b in since} == {
            b["block_index"] for b in everything if b["timestamp"] >= high
        }
        # An aware bound in Korean time reads the naive stamps in the process's zone.
        aware = datetime.fromisoformat(low).replace(tzinfo=UTC).astimezone(SEOUL)
        assert len(manager.blocks.since(aware, limit=1000)) == sum(
            b["timestamp"] >= low for b in everything
        )


def test_text_that_is_not_iso_is_compared_as_text(db_url: str, utc_process: None) -> None:
    with DatabaseManager(db_url) as manager:
        last = None
        for text in ["2025-08-05T06:00:59", "2025-08-05T06:00:60", "2025-08-05T06:01:00"]:
            block = next_block(last)
            block["timestamp"] = text  # the old add_block stored any text
            block["hash"] = legacy_hash(
                block["block_index"],
                text,
                block["context"],
                block["importance"],
                block["prev_hash"],
            )
            manager.add_block(block)
            last = manager.get_last_block_info()
        found = manager.blocks.since("2025-08-05T06:00:59")
        assert [b.timestamp for b in found] == [
            "2025-08-05T06:01:00",
            "2025-08-05T06:00:60",
            "2025-08-05T06:00:59",
        ]
        aware = manager.blocks.since(datetime(2025, 8, 5, 15, 0, 30, tzinfo=SEOUL))
        assert [b.timestamp for b in aware] == [
            "2025-08-05T06:01:00",
            "2025-08-05T06:00:60",
            "2025-08-05T06:00:59",
        ]
        assert manager.blocks.since(datetime(2025, 8, 5, 6, 0, 59, 500000, tzinfo=UTC)) == [
            found[0],
            found[1],
        ]
        # Bounds that are not ISO themselves: the whole window is text, as before.
        legacy = manager.search_blocks_by_date_range("2025-08-05T06:00:60", "2025-08-05T06:00:60")
        assert [b["timestamp"] for b in legacy] == ["2025-08-05T06:00:60"]


# -- a randomized check against a reference ------------------------------------------------


FORMATS = ["naive", "naive-space", "naive-micro", "seoul", "utc-z", "new-york", "minute"]


def render(moment: datetime, form: str, zone: tzinfo) -> str:
    if form == "seoul":
        return moment.astimezone(SEOUL).isoformat()
    if form == "utc-z":
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if form == "new-york":
        return moment.astimezone(NEW_YORK).isoformat()
    wall = moment.astimezone(zone).replace(tzinfo=None)
    if form == "naive-space":
        return wall.isoformat(sep=" ", timespec="seconds")
    if form == "naive-micro":
        return wall.isoformat(timespec="microseconds")
    if form == "minute":
        return wall.isoformat(timespec="minutes")
    return wall.isoformat(timespec="seconds")


def reference_instant(text: str, zone: tzinfo) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


@pytest.mark.parametrize("zone_name", ["UTC", "Asia/Seoul", "America/New_York"])
def test_windows_match_a_reference_over_mixed_zones(db_url: str, zone_name: str) -> None:
    """Stamps in seven forms and four zones over ten days around a daylight-saving change
    (New York, 2026-11-01); 150 windows of every kind of bound, against a reference."""
    rng = random.Random(f"windows-{zone_name}")
    zone = ZoneInfo(zone_name)
    start = datetime(2026, 10, 27, tzinfo=UTC)
    stamps = []
    with Database(db_url, auto_upgrade=True, timezone=zone_name) as db:
        store = BlockStore(db)
        for index in range(400):
            moment = start + timedelta(seconds=rng.randrange(10 * 86400))
            if index % 37 == 0 and stamps:  # the same instant written another way
                moment = reference_instant(stamps[rng.randrange(len(stamps))], zone)
            text = render(moment, rng.choice(FORMATS), zone)
            stamps.append(text)
        store.append_many([{"context": f"b{i}", "timestamp": t} for i, t in enumerate(stamps)])
        instants = [reference_instant(t, zone) for t in stamps]
        for _ in range(150):
            low = start + timedelta(seconds=rng.randrange(-86400, 11 * 86400))
            high = low + timedelta(seconds=rng.choice([60, 3600, 86400, 5 * 86400]))
            limit = rng.choice([1, 5, 50, 1000])
            bounds = [render(x, rng.choice(FORMATS), zone) for x in (low, high)]
            low_i, high_i = (reference_instant(b, zone) for b in bounds)
            inside = [i for i, t in enumerate(instants) if low_i <= t <= high_i]
            expected = sorted(inside, key=lambda i: (instants[i], i), reverse=True)[:limit]
            found = store.date_range(bounds[0], bounds[1], limit=limit)
            assert [int(b.context[1:]) for b in found] == expected, (bounds, limit)
            since = store.since(bounds[0], limit=limit)
            later = [i for i, t in enumerate(instants) if t >= low_i]
            expected = sorted(later, key=lambda i: (instants[i], i), reverse=True)[:limit]
            assert [int(b.context[1:]) for b in since] == expected, (bounds[0], limit)


def test_windows_use_the_timestamp_index(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    shutil.copyfile(LEGACY_FIXTURE, path)
    with Database(f"sqlite:///{path}") as db, db.reading() as connection:
        from app.chain._time_window import key_expression

        key = key_expression(sqlite=True)
        plan = connection.exec_driver_sql(
            f"EXPLAIN QUERY PLAN SELECT block_index FROM blocks WHERE {key} >= ? "
            f"AND {key} <= ? ORDER BY {key} DESC",
            (2461000.0, 2462000.0),
        ).fetchall()
        assert any("ix_blocks_instant" in str(row) for row in plan), plan
