"""What ``app doctor`` says about search: the keyword index, the embedding cache, and the
vector extensions the layer looked for."""

from __future__ import annotations

import importlib.util
import sqlite3
from typing import TYPE_CHECKING

from app.engine._driver import raw_execute
from app.schema import _keyword_index
from app.search import _vector_arrays, _vector_cache

if TYPE_CHECKING:
    from app.database import Database


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:,.1f} MiB"


def search_report(db: Database) -> list[tuple[str, str]]:
    """(name, value) lines on the keyword index, the vector cache and vector extensions."""
    with db.reading() as connection:
        keyword = _keyword_index.status(connection)
        count, widest = raw_execute(
            connection,
            "SELECT count(*), max(coalesce(embedding_dim, length(embedding) / 4)) "
            "FROM block_embeddings",
        ).fetchone()
        extension = _vector_extension(connection.dialect.name, connection)
    limit = db.settings.vector_cache_limit
    needed = int(count or 0) * _vector_arrays.row_bytes(int(widest or 0))
    if limit <= 0:
        cache = "off (vector_cache_limit=0): similarity searches stream the embeddings"
    else:
        fits = "within" if needed <= limit else "over (similarity searches stream)"
        cache = (
            f"{int(count or 0):,} embeddings need about {_mib(needed)} per searching process, "
            f"{fits} vector_cache_limit {_mib(limit)}; held by this process: "
            f"{_mib(_vector_cache.cache_bytes(db))}"
        )
    return [("keyword index", keyword), ("vector cache", cache), ("vector extension", extension)]


def _vector_extension(dialect: str, connection: object) -> str:
    if dialect == "sqlite":
        if not hasattr(sqlite3.Connection, "enable_load_extension"):
            return "none: this Python's sqlite3 cannot load extensions (exact search in numpy)"
        if importlib.util.find_spec("sqlite_vec") is None:
            return "none: sqlite-vec is not installed (exact search in numpy)"
        return "sqlite-vec is installed but not used: exact search runs in numpy"
    row = raw_execute(
        connection,  # type: ignore[arg-type]
        "SELECT installed_version FROM pg_available_extensions WHERE name = 'vector'",
    ).fetchone()
    if row is None:
        return "none: pgvector is not available on the server (exact search in numpy)"
    return "pgvector is available but not used: exact search runs in numpy"
