"""Keyword search through an index, with exactly the semantics of a full scan.

A block matches a word when ``lower(word)`` is a substring of ``lower(context)`` or of
``lower(keyword)`` for one of its keywords (``%`` and ``_`` are plain characters). The index
only narrows the rows that this exact test runs on; it never decides a match by itself.

SQLite (revision 0003): two contentless FTS5 tables with the trigram tokenizer, one row per
block (its context; its keywords joined by newlines), with ``rowid = block_index``. Any
substring of three or more characters of a text has all its trigrams in the text's index
entry, so ``"tri" AND "rig" AND ...`` returns every block that can match (and some that
cannot, which the exact test drops). Case: FTS5 folds every letter; SQLite's ``lower()``
folds ASCII letters only, so the index may return more candidates than match, never fewer.

The FTS5 tables are not written by triggers: with ``trusted_schema=OFF`` (set on every
connection of the layer) SQLite refuses virtual tables inside triggers. Instead, triggers
that any writer fires (this layer, another process, the legacy class) note each new or
changed block in the plain table ``search_pending``; searches test those blocks by a scan
and, once enough have gathered, move them into the index in one write (:func:`drain`).
Words under three characters cannot use trigrams: revision 0006 adds two more FTS5 tables
holding every 1- and 2-gram of each text, which the same drain fills (``_short_grams``).

PostgreSQL: GIN indexes with ``pg_trgm`` on ``lower(context)`` and ``lower(keyword)``, kept
by the server. The query asks ``lower(column) LIKE '%' || escaped(lower(word)) || '%'``,
which the trigram index serves, and keeps the exact ``strpos`` test beside it. Revision
0006 adds GIN indexes on the arrays of 1- and 2-grams of the same texts
(``app_short_grams``), for words of one or two characters.

This module keeps the index (whether it is ready, the blocks waiting for it, moving them in,
putting it back, its status); the words' lookups through it are ``_keyword_search``'s.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Collection
from typing import Protocol

from sqlalchemy.engine import Connection

from app import _process, errors
from app.engine._driver import raw_execute
from app.schema import _search_schema, _short_grams
from app.schema._revisions import applied_revisions
from app.settings import Settings

log = logging.getLogger(__name__)


class IndexedDatabase(Protocol):
    """What :func:`catch_up` uses of an :class:`app.Database`: declared here because the
    schema layer, below the database, uses this module to restore the index."""

    url: str
    settings: Settings

    def in_write_unit(self) -> bool: ...
    def run_on_connection(self, body: Callable[[Connection], int]) -> int: ...


#: Blocks that may wait in ``search_pending`` before a search moves them into the index.
DRAIN_AT = 256
#: Pending blocks moved per write unit, so appenders get their turn in between.
DRAIN_BATCH = 5000


#: Whether this process's SQLite library folds ASCII letters only in lower() (asked once).
_LOWER: dict[str, bool] = {}


_INDEX_OBJECTS = """
    SELECT type, name FROM sqlite_master WHERE name IN (
        'search_context_fts', 'search_keyword_fts', 'search_pending',
        'search_context_grams', 'search_keyword_grams',
        'search_pending_block_insert', 'search_pending_block_update',
        'search_pending_keyword_insert', 'search_pending_keyword_update')"""
_TRIGRAM_OBJECTS = {
    *(("table", name) for name in (*_search_schema.FTS_TABLES, _search_schema.PENDING_TABLE)),
    *(("trigger", name) for name in _search_schema.TRIGGERS),
}
_GRAM_OBJECTS = {("table", name) for name in _short_grams.TABLES}


def sqlite_indexes(connection: Connection) -> tuple[bool, bool]:
    """Whether the trigram index is ready, and whether the 1-/2-gram index (revision 0006)
    is ready too, in one look at the schema.

    The trigram index is ready when its FTS5 tables, the pending table and the triggers
    that fill it exist, and ``lower()`` folds ASCII letters only (an ICU build of SQLite
    folds more, and could match where trigrams or grams do not). Without its triggers the
    index misses new blocks, so searches scan until it is restored (see
    ``_search_schema``). The gram tables share its pending blocks and its conditions.
    """
    present = {tuple(row) for row in raw_execute(connection, _INDEX_OBJECTS)}
    if not present >= _TRIGRAM_OBJECTS:
        return False, False
    if "ascii_only" not in _LOWER:
        folded = raw_execute(connection, "SELECT lower('ÀÉÎõü')").fetchone()[0]
        _LOWER["ascii_only"] = folded == "ÀÉÎõü"
    if not _LOWER["ascii_only"]:
        return False, False
    return True, present >= _GRAM_OBJECTS


def sqlite_index_ready(connection: Connection) -> bool:
    """True when the trigram index can be trusted (see :func:`sqlite_indexes`)."""
    return sqlite_indexes(connection)[0]


def pending_count(connection: Connection, at_most: int | None = None) -> int:
    """Blocks waiting in ``search_pending`` (counted up to ``at_most`` when given)."""
    if at_most is None:
        return int(raw_execute(connection, "SELECT count(*) FROM search_pending").fetchone()[0])
    row = raw_execute(
        connection, "SELECT count(*) FROM (SELECT 1 FROM search_pending LIMIT ?)", (at_most,)
    ).fetchone()
    return int(row[0])


# Pending blocks up to the last one of a batch (the parameter), texts with or without NUL.
_DRAIN_CONTEXTS = """
    INSERT INTO search_context_fts (rowid, context)
    SELECT block_index, context FROM blocks
    WHERE block_index IN (SELECT block_index FROM search_pending WHERE block_index <= ?)
      AND instr(CAST(context AS BLOB), x'00') = 0
    ORDER BY block_index"""
_DRAIN_KEYWORDS = """
    INSERT INTO search_keyword_fts (rowid, keywords)
    SELECT block_index, group_concat(keyword, char(10)) FROM block_keywords
    WHERE block_index IN (SELECT block_index FROM search_pending WHERE block_index <= ?)
    GROUP BY block_index HAVING max(instr(CAST(keyword AS BLOB), x'00')) = 0
    ORDER BY block_index"""
_CONTEXTS_WITH_NUL = """
    SELECT block_index, context FROM blocks
    WHERE block_index IN (SELECT block_index FROM search_pending WHERE block_index <= ?)
      AND instr(CAST(context AS BLOB), x'00') > 0"""
_KEYWORDS_WITH_NUL = """
    SELECT block_index, keyword FROM block_keywords WHERE block_index IN (
        SELECT block_index FROM block_keywords
        WHERE block_index IN (SELECT block_index FROM search_pending WHERE block_index <= ?)
          AND instr(CAST(keyword AS BLOB), x'00') > 0)"""


def drain(connection: Connection, batch: int = DRAIN_BATCH) -> int:
    """Move up to ``batch`` pending blocks into the FTS5 tables (inside a write unit): the
    trigram tables, and the 1-/2-gram tables of revision 0006 where they exist.

    NUL ends a text for the trigram tokenizer (and SQLite's ``replace()`` cannot replace
    it), so the rare texts holding one (written by the legacy class; the layer refuses NUL)
    are indexed from Python with a space in its place: a word never contains NUL, so every
    trigram of a match is still indexed.

    Returns:
        How many pending blocks were handled.
    """
    rows = raw_execute(
        connection,
        "SELECT block_index FROM search_pending ORDER BY block_index LIMIT ?",
        (batch,),
    ).fetchall()
    if not rows:
        return 0
    last = (rows[-1][0],)
    raw_execute(connection, _DRAIN_CONTEXTS, last)
    raw_execute(connection, _DRAIN_KEYWORDS, last)
    for index, context in raw_execute(connection, _CONTEXTS_WITH_NUL, last).fetchall():
        raw_execute(
            connection,
            "INSERT INTO search_context_fts (rowid, context) VALUES (?, ?)",
            (index, context.replace("\x00", " ")),
        )
    keywords: dict[int, list[str]] = {}
    for index, keyword in raw_execute(connection, _KEYWORDS_WITH_NUL, last).fetchall():
        keywords.setdefault(index, []).append(keyword.replace("\x00", " "))
    for index, held in keywords.items():
        raw_execute(
            connection,
            "INSERT INTO search_keyword_fts (rowid, keywords) VALUES (?, ?)",
            (index, "\n".join(held)),
        )
    if sqlite_indexes(connection)[1]:
        _short_grams.index_pending(connection, last[0])
    raw_execute(connection, "DELETE FROM search_pending WHERE block_index <= ?", last)
    return len(rows)


def restore(
    connection: Connection, applied: Collection[str], *, level: int = logging.WARNING
) -> list[str]:
    """Put back whatever of the search indexes is missing (see ``_search_schema``) inside
    the caller's write transaction; on SQLite the keyword index is then rebuilt from the
    rows, since blocks written meanwhile were never noted for it.

    Args:
        applied: the revisions the database is at or past.
        level: how the restoring is logged (INFO after a migration, where it is expected:
            batch mode drops them; WARNING when found missing later).

    Returns:
        What was missing ([] when nothing was, and nothing was done).
    """
    missing = _search_schema.restore_objects(connection, applied)
    if missing:
        if connection.dialect.name == "sqlite" and sqlite_index_ready(connection):
            rebuild(connection)
        log.log(level, "restored the search indexes: %s", "; ".join(missing))
    return missing


def reindex(connection: Connection) -> tuple[list[str], int]:
    """Restore what is missing of the search indexes and, on SQLite, index every block
    afresh in the keyword index (inside the caller's write transaction).

    On PostgreSQL, whose indexes the server keeps, the block tables are analyzed instead:
    the planner tells common words from rare ones by those statistics (autovacuum keeps
    them, where it runs).

    Returns:
        What was missing, and how many blocks were indexed (0 on PostgreSQL).
    """
    missing = _search_schema.restore_objects(connection, applied_revisions(connection))
    indexed = 0
    if connection.dialect.name == "sqlite":
        if sqlite_index_ready(connection):
            indexed = rebuild(connection)
    else:
        _search_schema.analyze_filled(connection)
    return missing, indexed


def rebuild(connection: Connection) -> int:
    """Index every block afresh (SQLite, inside the caller's write transaction).

    Returns:
        How many blocks were indexed.
    """
    tables: tuple[str, ...] = _search_schema.FTS_TABLES
    if sqlite_indexes(connection)[1]:
        tables += _short_grams.TABLES
    for name in tables:
        raw_execute(connection, f"INSERT INTO {name} ({name}) VALUES ('delete-all')")
    raw_execute(connection, "DELETE FROM search_pending")
    raw_execute(
        connection, "INSERT INTO search_pending (block_index) SELECT block_index FROM blocks"
    )
    total = 0
    while done := drain(connection):
        total += done
    return total


_DRAINING: weakref.WeakKeyDictionary[IndexedDatabase, threading.Lock] = weakref.WeakKeyDictionary()
_DRAINING_GUARD = threading.Lock()


def _forget_after_fork() -> None:
    """In a forked child: locks of its own (a parent's thread may have held one)."""
    global _DRAINING, _DRAINING_GUARD
    _DRAINING, _DRAINING_GUARD = weakref.WeakKeyDictionary(), threading.Lock()


_process.on_fork("keyword index", after_in_child=_forget_after_fork)


def catch_up(db: IndexedDatabase, *, wait: bool) -> int:
    """Move every pending block into the index, a batch per write unit.

    Only one thread of the process does this at a time: with ``wait`` false, a thread that
    finds another one at it returns at once.

    Returns:
        How many pending blocks were handled.
    """
    with _DRAINING_GUARD:
        lock = _DRAINING.get(db)
        if lock is None:
            lock = _DRAINING[db] = threading.Lock()
    if not lock.acquire(blocking=wait, timeout=db.settings.retry_deadline if wait else -1):
        return 0
    try:
        total = 0
        while True:
            done = db.run_on_connection(drain)
            total += done
            if done < DRAIN_BATCH:
                return total
    finally:
        lock.release()


def catch_up_quietly(db: IndexedDatabase) -> None:
    """:func:`catch_up` after a search: a failure (a read-only file, a busy database) is
    logged and left for the next search, whose results stay exact meanwhile."""
    if db.in_write_unit() or db.settings.read_only:
        return  # inside the caller's unit (not this search's work to commit), or read-only
    try:
        catch_up(db, wait=False)
    except errors.AppError as exc:
        log.info("indexing pending blocks of %s failed, searches scan them: %s", db.url, exc)


def status(connection: Connection) -> str:
    """One line on the keyword index of the connection's database (for ``app doctor``)."""
    if connection.dialect.name == "sqlite":
        trigrams, grams = sqlite_indexes(connection)
        if not trigrams:
            return "none (searches scan): schema before revision 0003, or no FTS5 trigram"
        waiting = pending_count(connection)
        short = "1-/2-gram tables for shorter words" if grams else "words under 3 characters scan"
        return f"FTS5 trigram, {waiting:,} blocks waiting to be indexed; {short}"
    found = {
        row[0]
        for row in raw_execute(
            connection,
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND indexname "
            "IN ('ix_blocks_context_trgm', 'ix_block_keywords_keyword_trgm', "
            "'ix_blocks_context_grams', 'ix_block_keywords_keyword_grams')",
        )
    }
    parts = []
    if {"ix_blocks_context_trgm", "ix_block_keywords_keyword_trgm"} <= found:
        parts.append("pg_trgm GIN indexes on lower(context) and lower(keyword)")
    if {"ix_blocks_context_grams", "ix_block_keywords_keyword_grams"} <= found:
        short = "GIN indexes of their 1-/2-grams (app_short_grams)"
        parts.append(short + _pg_statistics(connection))
    if not parts:
        return "none (searches scan): schema before revision 0003, or pg_trgm not installed"
    return "; ".join(parts)


def _pg_statistics(connection: Connection) -> str:
    """What is missing of the statistics the planner needs to tell common short words from
    rare ones (ANALYZE gathers them for an expression index too)."""
    analyzed = raw_execute(
        connection,
        "SELECT count(*) FROM pg_stats WHERE schemaname = current_schema() "
        "AND tablename IN ('ix_blocks_context_grams', 'ix_block_keywords_keyword_grams')",
    ).fetchone()[0]
    if analyzed:
        return ""
    return (
        " (not analyzed yet: common words may be read slowly until autovacuum, ANALYZE or "
        "`app reindex` runs)"
    )
