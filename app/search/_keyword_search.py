"""Keyword search's lookups: each word's candidate blocks through the keyword index (or by
a scan where it cannot serve), tested exactly in the same statement, on either backend.
Words of three or more characters go through the trigram index, shorter ones through the
1-/2-gram index of revision 0006.

What a match is, and how the index is kept, is told in ``_keyword_index`` (and, for the
grams, ``_short_grams``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from app.engine._driver import UNIT_OPTION, UnitKind, raw_execute
from app.schema import _short_grams
from app.schema._keyword_index import DRAIN_AT, pending_count, sqlite_indexes

#: Trigrams asked of the index per word: enough to make a long word selective, few enough
#: that a 60,000-character word costs no more than a short one.
_MAX_TRIGRAMS = 16


def _fts_query(word: str) -> str:
    """An FTS5 query for the trigrams of ``word`` (which has at least three characters).

    Each trigram is a quoted string (``"`` doubled inside), so no character of the word is
    FTS5 syntax. For a long word an evenly spread subset of its trigrams is enough: every
    trigram of the word is in any text that contains it.
    """
    grams = list(dict.fromkeys(word[i : i + 3] for i in range(len(word) - 2)))
    if len(grams) > _MAX_TRIGRAMS:
        step = (len(grams) - 1) / (_MAX_TRIGRAMS - 1)
        grams = [grams[round(i * step)] for i in range(_MAX_TRIGRAMS)]
    return " AND ".join('"' + gram.replace('"', '""') + '"' for gram in grams)


# One word's statements, lowest index first; the newest-first forms are made by replacing
# ASC with DESC. Table and column names are written out: no SQL here is assembled.
_SQLITE_INDEXED = """
    SELECT block_index FROM (
        SELECT DISTINCT f.rowid AS block_index FROM search_context_fts f
        JOIN blocks b ON b.block_index = f.rowid
        WHERE search_context_fts MATCH ? AND instr(lower(b.context), lower(?)) > 0
        ORDER BY f.rowid ASC LIMIT ?)
    UNION
    SELECT block_index FROM (
        SELECT DISTINCT f.rowid AS block_index FROM search_keyword_fts f
        WHERE search_keyword_fts MATCH ? AND EXISTS (
            SELECT 1 FROM block_keywords k
            WHERE k.block_index = f.rowid AND instr(lower(k.keyword), lower(?)) > 0)
        ORDER BY f.rowid ASC LIMIT ?)
    UNION
    SELECT block_index FROM (
        SELECT p.block_index FROM search_pending p
        WHERE EXISTS (
            SELECT 1 FROM blocks b
            WHERE b.block_index = p.block_index AND instr(lower(b.context), lower(?)) > 0)
        OR EXISTS (
            SELECT 1 FROM block_keywords k
            WHERE k.block_index = p.block_index AND instr(lower(k.keyword), lower(?)) > 0)
        ORDER BY p.block_index ASC LIMIT ?)
    ORDER BY 1 ASC LIMIT ?"""
_SQLITE_SCANNED = """
    SELECT block_index FROM (
        SELECT block_index FROM blocks WHERE instr(lower(context), lower(?)) > 0
        ORDER BY block_index ASC LIMIT ?)
    UNION
    SELECT block_index FROM (
        SELECT DISTINCT block_index FROM block_keywords
        WHERE instr(lower(keyword), lower(?)) > 0
        ORDER BY block_index ASC LIMIT ?)
    ORDER BY 1 ASC LIMIT ?"""
# The pattern is built from the server's lower() of the word, as the exact test is; with
# \, % and _ escaped, LIKE '%...%' is a plain substring test that the trigram index serves.
# (%% is a literal % for the driver.)
_POSTGRES = """
    SELECT block_index FROM (
        SELECT block_index FROM blocks
        WHERE lower(context) LIKE '%%' || replace(replace(replace(
                  lower(%s), '\\', '\\\\'), '%%', '\\%%'), '_', '\\_') || '%%'
          AND strpos(lower(context), lower(%s)) > 0
        ORDER BY block_index ASC LIMIT %s) c
    UNION
    SELECT block_index FROM (
        SELECT DISTINCT block_index FROM block_keywords
        WHERE lower(keyword) LIKE '%%' || replace(replace(replace(
                  lower(%s), '\\', '\\\\'), '%%', '\\%%'), '_', '\\_') || '%%'
          AND strpos(lower(keyword), lower(%s)) > 0
        ORDER BY block_index ASC LIMIT %s) k
    ORDER BY 1 ASC LIMIT %s"""
# Words of one or two characters (revision 0006): the same lookups in the 1-/2-gram tables,
# queried for the word's own gram (see _short_grams; the index holds it wherever the word
# is, so its candidates are the matches, bar blocks updated since they were indexed).
_SQLITE_GRAMS = _SQLITE_INDEXED.replace("_fts", "_grams")
# On PostgreSQL, through the GIN indexes on app_short_grams(lower(text)). Where the
# server's lower() keeps the word at one or two characters, the index is asked for that
# gram alone, which the planner's statistics know as well as the word (asking for its
# characters too, it would multiply their frequencies and take a common word for a rare
# one); should lower() make it longer, for all its grams, which every match also holds.
_POSTGRES_GRAMS = """
    SELECT block_index FROM (
        SELECT block_index FROM blocks
        WHERE app_short_grams(lower(context)) @> CASE WHEN char_length(lower(%s)) <= 2
                  THEN ARRAY[lower(%s)] ELSE app_short_grams(lower(%s)) END
          AND strpos(lower(context), lower(%s)) > 0
        ORDER BY block_index ASC LIMIT %s) c
    UNION
    SELECT block_index FROM (
        SELECT DISTINCT block_index FROM block_keywords
        WHERE app_short_grams(lower(keyword)) @> CASE WHEN char_length(lower(%s)) <= 2
                  THEN ARRAY[lower(%s)] ELSE app_short_grams(lower(%s)) END
          AND strpos(lower(keyword), lower(%s)) > 0
        ORDER BY block_index ASC LIMIT %s) k
    ORDER BY 1 ASC LIMIT %s"""
_STATEMENTS = {
    (kind, newest): text if not newest else text.replace(" ASC", " DESC")
    for kind, text in (
        ("indexed", _SQLITE_INDEXED),
        ("grams", _SQLITE_GRAMS),
        ("scanned", _SQLITE_SCANNED),
        ("postgres", _POSTGRES),
        ("postgres grams", _POSTGRES_GRAMS),
    )
    for newest in (False, True)
}
# Which plan a word gets must depend on the word: a rare one reads the index, a common one
# reads the blocks in order until the limit. psycopg prepares a statement run five times,
# and after five more runs the server may keep one generic plan for any word (measured: a
# scan of the primary key for every rare word, 60 ms at 20,000 blocks). So the searches
# plan each statement for its word, for this transaction only, and learn in the same round
# trip whether revision 0006's function is there. In a caller's unit the setting it had is
# put back afterwards; the layer's own snapshot ends with the search.
_POSTGRES_PLAN = (
    "SELECT current_setting('plan_cache_mode'), "
    "set_config('plan_cache_mode', 'force_custom_plan', true), "
    "to_regprocedure('app_short_grams(text)') IS NOT NULL"
)
_POSTGRES_RESTORE = "SELECT set_config('plan_cache_mode', %s, true)"


class _Plan:
    """How the words of one search are looked up on one connection."""

    __slots__ = ("dialect", "grams", "indexed", "pending", "plan_cache_mode")

    def __init__(self, connection: Connection) -> None:
        self.dialect = connection.dialect.name
        self.pending = 0
        self.plan_cache_mode = ""
        if self.dialect == "sqlite":
            self.indexed, self.grams = sqlite_indexes(connection)
        else:
            mode, _, function = raw_execute(connection, _POSTGRES_PLAN).fetchone()
            self.indexed, self.grams = False, bool(function)
            if connection.get_execution_options().get(UNIT_OPTION) != UnitKind.SNAPSHOT.value:
                self.plan_cache_mode = mode

    def word(self, connection: Connection, word: str, limit: int, newest_first: bool) -> list[int]:
        short = len(word) <= _short_grams.LONGEST
        if self.dialect != "sqlite":
            if short and self.grams:
                parameters: tuple[Any, ...] = (word,) * 4 + (limit,) + (word,) * 4 + (limit,) * 2
                kind = "postgres grams"
            else:
                parameters = (word, word, limit, word, word, limit, limit)
                kind = "postgres"
        elif (self.indexed and not short) or (self.grams and short):
            query = _short_grams.query(word) if short else _fts_query(word)
            parameters = (query, word, limit, query, word, limit, word, word, limit, limit)
            kind = "grams" if short else "indexed"
        else:
            parameters = (word, limit, word, limit, limit)
            kind = "scanned"
        cursor = raw_execute(connection, _STATEMENTS[kind, newest_first], parameters)
        return [row[0] for row in cursor]

    def finish(self, connection: Connection) -> None:
        """Put back the plan cache mode a caller's transaction had (PostgreSQL)."""
        if self.plan_cache_mode not in ("", "force_custom_plan"):
            raw_execute(connection, _POSTGRES_RESTORE, (self.plan_cache_mode,))


def plan(connection: Connection) -> _Plan:
    """Look at the connection's database once per search: which indexes are there, and how
    many blocks wait to be indexed (call :meth:`_Plan.finish` after the words)."""
    found = _Plan(connection)
    if found.indexed:
        found.pending = pending_count(connection, DRAIN_AT)
    return found


def matching(
    connection: Connection, words: Sequence[str], limit: int, *, newest_first: bool = False
) -> tuple[list[int], _Plan]:
    """The first ``limit`` block indices (ascending, or descending with ``newest_first``)
    that any of ``words`` matches, and the plan used (it knows the pending count)."""
    how = plan(connection)
    found: set[int] = set()
    for word in words:
        found.update(how.word(connection, word, limit, newest_first))
    how.finish(connection)
    return sorted(found, reverse=newest_first)[:limit], how


def per_word(
    connection: Connection, words: Sequence[str], limit: int
) -> tuple[list[list[int]], _Plan]:
    """For each word, its newest ``limit`` matching block indices (newest first)."""
    how = plan(connection)
    lists = [how.word(connection, word, limit, True) for word in words]
    how.finish(connection)
    return lists, how


_CONTAINED = {
    "sqlite": """
        SELECT block_index FROM blocks
        WHERE block_index IN (SELECT value FROM json_each(?))
          AND instr(lower(context), lower(?)) > 0
        UNION
        SELECT block_index FROM block_keywords
        WHERE block_index IN (SELECT value FROM json_each(?))
          AND instr(lower(keyword), lower(?)) > 0""",
    "postgresql": """
        SELECT block_index FROM blocks
        WHERE block_index = ANY(%s) AND strpos(lower(context), lower(%s)) > 0
        UNION
        SELECT block_index FROM block_keywords
        WHERE block_index = ANY(%s) AND strpos(lower(keyword), lower(%s)) > 0""",
}


def words_contained(
    connection: Connection, words: Sequence[str], blocks: Sequence[int]
) -> dict[int, int]:
    """How many of ``words`` each of ``blocks`` contains (by the exact test)."""
    found: dict[int, int] = dict.fromkeys(blocks, 0)
    sqlite = connection.dialect.name == "sqlite"
    among: Any = json.dumps(list(blocks)) if sqlite else list(blocks)
    statement = _CONTAINED["sqlite" if sqlite else "postgresql"]
    for word in words:
        for row in raw_execute(connection, statement, (among, word, among, word)):
            found[row[0]] += 1
    return found
