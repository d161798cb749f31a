"""What ``app doctor`` says about search: the keyword index, the embedding cache (float32
rows, or the compact int8 copy and its file beside a SQLite database), and the vector
extensions the layer looked for."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from typing import TYPE_CHECKING

from app.engine._driver import raw_execute
from app.schema import _keyword_index
from app.search import _quantized, _quantized_file, _vector_arrays, _vector_cache, _vector_quant

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
    rows, size = int(count or 0), int(widest or 0)
    needed = rows * _vector_arrays.row_bytes(size)
    form = ""
    if needed > _vector_quant.QUANTIZE_ABOVE:
        needed, form = rows * _quantized.row_bytes(size), " as an int8 copy"
    if limit <= 0:
        cache = "off (vector_cache_limit=0): similarity searches stream the embeddings"
    else:
        fits = "within" if needed <= limit else "over (similarity searches stream)"
        cache = (
            f"{rows:,} embeddings need about {_mib(needed)}{form} per searching process, "
            f"{fits} vector_cache_limit {_mib(limit)}; held by this process: "
            f"{_mib(_vector_cache.cache_bytes(db))}"
        )
    lines = [("keyword index", keyword), ("vector cache", cache)]
    path = db.settings.sqlite_path
    if path is not None:
        lines.append(("vector copy file", _copy_file(_quantized_file.sidecar_path(path))))
    return [*lines, ("vector extension", extension)]


def _copy_file(path: str) -> str:
    """What the compact copy's file beside the database holds (its header only: a process
    that maps it checks every byte)."""
    try:
        with open(path, "rb") as header:
            head = header.read(_quantized_file.HEADER)
        size = os.path.getsize(path)
    except FileNotFoundError:
        return f"none at {path} (made by the first search of a store past the float32 size)"
    except OSError as exc:
        return f"{path} cannot be read: {exc}"
    try:
        fields, _ = _quantized_file.parse_header(head)
    except _quantized_file.Corrupt as exc:
        return f"{path} is not usable ({exc}): the next search builds it again"
    return (
        f"{path}: {fields[4]:,} rows of {fields[2]} dimensions, "
        f"{_mib(fields[4] * _quantized.row_bytes(fields[2]))} used ({_mib(size)} file, sparse)"
    )


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
