"""Time windows over block timestamps (``since``, ``date_range``), compared as instants.

A timestamp is text, as its writer gave it: ``datetime.isoformat()`` without a UTC offset
(naive: the old class's default, in the writer's local time), with one (``+09:00``,
``Z``), or any other text the old class accepted. Compared as text, such values sort in
time order only within one zone and one format. So a window compares instants:

* a timestamp with an offset names its instant; one without names a wall-clock time in
  ``Settings.timezone`` (the process's local zone by default), like Python's
  ``datetime.astimezone()``; the window's bounds are read the same way;
* a stored text that is not ISO-8601 but starts with a date and time (the old class kept
  any text: a second of 60, say) is read leniently, as the database's date functions read
  it; any other text is compared as text with the bounds as given (what the old class did
  with every value). When a bound itself is not ISO-8601, the whole window is compared as
  text, as before.

Results are exact: rows are picked by the index of revision 0004, which keys a block by
what the database reads in its timestamp (the instant of an aware text, the wall-clock
time of a naive one taken as if it were UTC, NULL otherwise), over a key range wide enough
for every offset the zone had in the window, and each candidate's instant is then worked
out here, in Python, which decides. Newest first: candidates come in key order, and the
scan stops once no later key can name an instant newer than the last one kept.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy.engine import Connection

from app.engine._driver import placeholder, raw_execute


@functools.cache
def key_expression(sqlite: bool) -> str:
    """The key of revision 0004's index, as that revision defines it: the queries use the
    same expression, so that the index serves them."""
    from app.schema import revision_module

    module = revision_module("0004")
    return str(module.SQLITE_KEY if sqlite else module.POSTGRES_KEY)


_UTC = UTC
_OLDEST = datetime.min.replace(tzinfo=_UTC)  # where texts without a date go, newest first
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_JULIAN_EPOCH = 2440587.5  # julianday() of 1970-01-01T00:00:00
#: Keys are read to about a millisecond (SQLite keeps Julian days in milliseconds); the
#: range asked of the index is this much wider on both sides, and Python decides.
_SLACK = timedelta(seconds=1)
_DAY = timedelta(days=1)
#: A window longer than this samples the zone's offsets over the stored times only.
_LONG = timedelta(days=366)
#: Candidates read per query while scanning newest first: a few more than asked for, as
#: some may fall outside the window, within these bounds.
_PAGE_MIN, _PAGE_MAX = 64, 4096
#: A lenient reading of a text that is not ISO-8601 but starts like it (a second of 60,
#: say), only to place it among the others in the newest-first order.
_PREFIX = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?")


@dataclass(frozen=True)
class Bound:
    """One end of a window: its instant, and its text for values compared as text."""

    instant: datetime
    text: str


def zone_of(name: str | None) -> tzinfo | None:
    """The zone of naive timestamps: ``name`` (IANA), or None for the process's local zone."""
    if name is None:
        return None
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def instant(text: str, zone: tzinfo | None) -> datetime | None:
    """The instant (in UTC) a timestamp names, or None when it is not ISO-8601."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.astimezone() if zone is None else moment.replace(tzinfo=zone)
    return moment.astimezone(_UTC)


def bound(text: str, zone: tzinfo | None) -> Bound | None:
    """A window's end, or None when its text is not ISO-8601 (then the window is text)."""
    found = instant(text, zone)
    return None if found is None else Bound(found, text)


def window(
    connection: Connection,
    low: Bound,
    high: Bound | None,
    limit: int,
    zone: tzinfo | None,
) -> list[int]:
    """The block indices stamped within ``[low, high]``, newest first, at most ``limit``
    (ties: the highest index first)."""
    if limit <= 0:
        return []
    sqlite = connection.dialect.name == "sqlite"
    key = key_expression(sqlite)
    if high is not None:
        top = high.instant
    else:  # up to the newest stored key (a wall-clock time or an instant: a day covers both)
        newest = _stored_key(connection, key, sqlite, "DESC")
        top = low.instant if newest is None else max(newest + _DAY, low.instant)
    bottom = low.instant
    if top - bottom > _LONG:  # the offsets that matter are those of the stored times
        oldest = _stored_key(connection, key, sqlite, "ASC")
        if oldest is not None:
            bottom = min(max(bottom, oldest - _DAY), top)
    west, east = _offsets(zone, bottom, top)
    # A naive text's key is its wall-clock time: its instant plus its zone's offset.
    key_low = low.instant + min(west, timedelta(0)) - _SLACK
    key_high = top + max(east, timedelta(0)) + _SLACK
    kept: list[tuple[datetime, int]] = []
    text_rule: list[tuple[datetime, int]] = []

    def decide(index: int, text: str) -> None:
        moment = instant(text, zone) or _lenient(text, zone)
        if moment is None:
            if low.text <= text and (high is None or text <= high.text):
                text_rule.append((_OLDEST, index))
        elif low.instant <= moment and (high is None or moment <= high.instant):
            kept.append((moment, index))

    for index, text in _null_keys(connection, key):
        decide(index, text)
    # Newest first by key; a row's instant is at most its key minus the zone's least offset.
    behind = min(west, timedelta(0))
    page = min(max(limit + limit // 4 + 16, _PAGE_MIN), _PAGE_MAX)
    for page_last_key, rows in _pages(connection, key, sqlite, key_low, key_high, page):
        for index, text in rows:
            decide(index, text)
        if page_last_key is not None and len(kept) + len(text_rule) >= limit:
            last_kept = sorted(kept + text_rule, reverse=True)[limit - 1][0]
            if page_last_key - behind < last_kept - _SLACK:
                break
    chosen = sorted(kept + text_rule, reverse=True)[:limit]
    return [index for _, index in chosen]


def _lenient(text: str, zone: tzinfo | None) -> datetime | None:
    """A reading of a text that is not ISO-8601 but starts with a date and time in its
    form (what the old class accepted): a second of 60 is the last moment of its minute, a
    day past the month's end runs on into the next month, as the database's own date
    functions read them. None when the text has no such start (it is compared as text)."""
    match = _PREFIX.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part or 0) for part in match.groups())
    try:
        moment = datetime(year, month, 1) + timedelta(
            days=day - 1, hours=hour, minutes=minute, seconds=min(second, 59.999999)
        )
    except (ValueError, OverflowError):
        return None
    return instant(moment.isoformat(), zone)


def _null_keys(connection: Connection, key: str) -> Iterator[tuple[int, str]]:
    """Blocks whose timestamp the database does not read as a date-time: Python decides."""
    rows = raw_execute(
        connection, f"SELECT block_index, timestamp FROM blocks WHERE {key} IS NULL"
    ).fetchall()
    yield from ((int(index), text) for index, text in rows)


def _pages(
    connection: Connection, key: str, sqlite: bool, low: datetime, high: datetime, page: int
) -> Iterator[tuple[datetime | None, list[tuple[int, str]]]]:
    """Candidates with their key in ``[low, high]``, highest key first, a page at a time,
    each with the lowest key of its page (None for the last page). The order (key, then
    index) is the index's own, and keys are not selected: the database computes none per
    row."""
    mark = placeholder(connection)
    order = f"ORDER BY {key} DESC, block_index DESC LIMIT {mark}"
    first = (
        f"SELECT block_index, timestamp FROM blocks "
        f"WHERE {key} >= {mark} AND {key} <= {mark} {order}"
    )
    after = (
        f"SELECT block_index, timestamp FROM blocks "
        f"WHERE {key} >= {mark} AND ({key}, block_index) < ({mark}, {mark}) {order}"
    )
    key_of = f"SELECT {key} FROM blocks WHERE block_index = {mark}"
    floor, ceiling = _key(low, sqlite), _key(high, sqlite)
    rows = raw_execute(connection, first, (floor, ceiling, page)).fetchall()
    while rows:
        found = [(int(r[0]), r[1]) for r in rows]
        if len(rows) < page:
            yield None, found
            return
        last_index = rows[-1][0]
        last_key = raw_execute(connection, key_of, (last_index,)).fetchone()[0]
        yield _from_key(last_key, sqlite), found
        parameters = (floor, last_key, last_index, page)
        rows = raw_execute(connection, after, parameters).fetchall()


def _stored_key(connection: Connection, key: str, sqlite: bool, order: str) -> datetime | None:
    """The lowest (``ASC``) or highest (``DESC``) key stored: one step down the index."""
    row = raw_execute(
        connection,
        f"SELECT {key} FROM blocks WHERE {key} IS NOT NULL "
        f"ORDER BY {key} {order}, block_index {order} LIMIT 1",
    ).fetchone()
    return None if row is None else _from_key(row[0], sqlite)


def _key(moment: datetime, sqlite: bool) -> float:
    seconds = (moment - _EPOCH).total_seconds()
    return seconds / 86400 + _JULIAN_EPOCH if sqlite else seconds


def _from_key(value: Any, sqlite: bool) -> datetime:
    seconds = (float(value) - _JULIAN_EPOCH) * 86400 if sqlite else float(value)
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        return (
            datetime.max.replace(tzinfo=_UTC) if seconds > 0 else datetime.min.replace(tzinfo=_UTC)
        )


def _offsets(zone: tzinfo | None, low: datetime, high: datetime) -> tuple[timedelta, timedelta]:
    """The least and greatest UTC offset the zone had between ``low`` and ``high`` (a day
    either side), sampled at both ends and twice a year in between: offsets change at
    daylight-saving transitions and, rarely, for good."""
    start = max(low - timedelta(days=1), datetime(1, 1, 2, tzinfo=_UTC))
    end = min(high + timedelta(days=1), datetime(9999, 12, 30, tzinfo=_UTC))
    samples = [start, end]
    for year in range(start.year, end.year + 1):
        samples += [datetime(year, 1, 1, tzinfo=_UTC), datetime(year, 7, 1, tzinfo=_UTC)]
    offsets = [_offset(zone, moment) for moment in samples if start <= moment <= end]
    return min(offsets), max(offsets)


def _offset(zone: tzinfo | None, moment: datetime) -> timedelta:
    if zone is None:
        try:
            local = time.localtime(moment.timestamp())
        except (OverflowError, OSError, ValueError):
            return timedelta(0)
        return timedelta(seconds=local.tm_gmtoff)
    return moment.astimezone(zone).utcoffset() or timedelta(0)
