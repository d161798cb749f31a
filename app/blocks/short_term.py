"""Short-term memories: a small keyed table of recent utterances with a time-to-live."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select

from app.chain._block_values import decode_json_object, encode_json
from app.chain._validate import check_limit, check_number, check_text, check_timestamp
from app.database._read_units import retried_reads
from app.models import ShortTermMemory, short_term_table

if TYPE_CHECKING:
    from app.database import Database


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """One short-term memory."""

    id: str
    timestamp: str
    content: str
    speaker: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@retried_reads("recent", "get", "count")
class ShortTermMemories:
    """Add, list, look up, expire and clear short-term memories. Safe from any thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        memory_id: str,
        content: str,
        *,
        timestamp: str | datetime | None = None,
        speaker: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Insert, or replace the memory with the same id. Returns the id."""
        row = ShortTermMemory(
            id=check_text(memory_id, "id", allow_empty=False),
            timestamp=check_timestamp(datetime.now() if timestamp is None else timestamp),
            content=check_text(content, "content"),
            speaker=None if speaker is None else check_text(speaker, "speaker"),
            json="{}" if not metadata else encode_json(metadata, "metadata"),
        )
        with self.db.unit_of_work() as session:
            session.merge(row)
        return row.id

    def recent(self, count: int = 10) -> list[MemoryRecord]:
        """The newest ``count`` memories, newest first."""
        query = (
            select(ShortTermMemory)
            .order_by(ShortTermMemory.timestamp.desc(), ShortTermMemory.id.desc())
            .limit(check_limit(count, "count"))
        )
        with self.db.read() as session:
            return [_record(row) for row in session.scalars(query)]

    def get(self, memory_id: str) -> MemoryRecord | None:
        with self.db.read() as session:
            row = session.get(ShortTermMemory, check_text(memory_id, "id"))
            return None if row is None else _record(row)

    def delete(self, memory_id: str) -> bool:
        """Delete one memory; True if it existed."""
        stmt = delete(short_term_table).where(short_term_table.c.id == check_text(memory_id, "id"))
        with self.db.unit_of_work() as session:
            return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def expire(self, ttl_seconds: float, *, now: datetime | None = None) -> int:
        """Delete memories stamped more than ``ttl_seconds`` before ``now``; returns how many."""
        ttl = check_number(ttl_seconds, "ttl_seconds")
        moment = now or datetime.now()
        try:
            cutoff = (moment - timedelta(seconds=ttl)).isoformat()
        except OverflowError:
            # Beyond the calendar: nothing is that old (or, for a huge negative TTL,
            # everything is).
            cutoff = (datetime.min if ttl > 0 else datetime.max).isoformat()
        stmt = delete(short_term_table).where(short_term_table.c.timestamp < cutoff)
        with self.db.unit_of_work() as session:
            return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def clear(self) -> int:
        """Delete every memory; returns how many there were."""
        with self.db.unit_of_work() as session:
            return int(session.execute(delete(short_term_table)).rowcount)  # type: ignore[attr-defined]

    def count(self) -> int:
        with self.db.read() as session:
            return int(
                session.execute(select(func.count()).select_from(short_term_table)).scalar_one()
            )


def _record(row: ShortTermMemory) -> MemoryRecord:
    return MemoryRecord(
        id=row.id,
        timestamp=row.timestamp,
        content=row.content,
        speaker=row.speaker,
        metadata=decode_json_object(row.json),
    )
