"""A thread-safe database layer for a hash-chained block store on SQLite or PostgreSQL."""

from app import errors
from app._version import __version__
from app.blocks import BlockRecord, BlockStore, ChainCheck, ChainHead, ScoredBlock, SearchHit
from app.blocks.short_term import MemoryRecord, ShortTermMemories
from app.database import Database, ReplicaStats, Stats
from app.legacy import DatabaseManager, ThreadSafeDatabaseManager
from app.settings import Settings

__all__ = [
    "BlockRecord",
    "BlockStore",
    "ChainCheck",
    "ChainHead",
    "Database",
    "DatabaseManager",
    "MemoryRecord",
    "ReplicaStats",
    "ScoredBlock",
    "SearchHit",
    "Settings",
    "ShortTermMemories",
    "Stats",
    "ThreadSafeDatabaseManager",
    "__version__",
    "errors",
]
