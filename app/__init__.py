"""A thread-safe database layer for a hash-chained block store on SQLite or PostgreSQL."""

from . import errors
from .blocks import BlockRecord, BlockStore, ChainCheck, ChainHead, ScoredBlock, SearchHit
from .database import Database, ReplicaStats, Stats
from .legacy import DatabaseManager, ThreadSafeDatabaseManager
from .settings import Settings
from .short_term import MemoryRecord, ShortTermMemories

__version__ = "0.1.0"

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
