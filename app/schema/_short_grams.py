"""The short-word index on SQLite (revision 0006): every 1-gram and 2-gram of each block's
texts, so that words of one or two characters are looked up instead of scanned.

Trigrams cannot serve a word under three characters, and most Korean words are two
syllables. Two contentless FTS5 tables (``search_context_grams``: the context;
``search_keyword_grams``: the keywords) hold, per block (``rowid = block_index``), one token
per distinct 1- and 2-gram of ``lower(text)``. A word of one or two characters is in a text
exactly when its own gram is among the text's grams, so the index finds every match (the
exact substring test still decides, as for trigrams: an updated block keeps the grams of
its old text too, since a contentless table cannot forget them one by one).

Grams are made here, in Python, as the layer's drain moves pending blocks into the index
(see ``_keyword_index``); FTS5 cannot be written from a trigger with ``trusted_schema=OFF``.
They must fold case as SQLite's ``lower()`` does, which is ASCII letters only (the index is
only trusted where that holds: ``_keyword_index.sqlite_index_ready``): ``Ü`` and ``ü`` stay
apart in the grams exactly as in the exact test.

Tokens: the tables use FTS5's ``ascii`` tokenizer, for which every non-ASCII character and
every ASCII letter and digit is part of a token (ASCII letters are folded, as ``lower()``
folds them), and any other ASCII character separates tokens. So a gram is its own token
when it holds no other ASCII character; each ASCII character that is not a letter or a
digit (a space, punctuation, a control character, NUL) is written as ``x`` and its two hex
digits instead (``"a "`` becomes ``ax20``). Two grams never share a token: a gram has at
most two characters, so a token of one or two characters is a plain gram, and a longer one
reads back in one way only (an escape is ``x`` and two hex digits, never a plain
character's continuation). Every character a word can hold is thus findable.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from itertools import groupby

from sqlalchemy.engine import Connection

from app.engine._driver import raw_execute, raw_execute_all

CONTEXT_TABLE = "search_context_grams"
KEYWORD_TABLE = "search_keyword_grams"
TABLES = (CONTEXT_TABLE, KEYWORD_TABLE)
#: Words this long or shorter are looked up in these tables.
LONGEST = 2

#: Each ASCII character as it appears in a token: letters folded to lower case (as
#: SQLite's lower() folds them), digits as they are, anything else escaped. Characters
#: beyond ASCII are tokens' characters as they are.
_CODES = {
    chr(code): chr(code).lower() if chr(code).isalnum() else f"x{code:02x}" for code in range(128)
}


def tokens(texts: Iterable[str]) -> str:
    """The index entry of one block's texts (its context, or each of its keywords): one
    token per distinct 1- and 2-gram of each text, separated by spaces. Grams never span
    two texts."""
    grams: set[str] = set()
    for text in texts:
        chars = list(map(_CODES.get, text, text))
        grams.update(chars)
        grams.update(map(operator.add, chars, chars[1:]))
    return " ".join(grams)


def query(word: str) -> str:
    """The FTS5 query that finds ``word`` (one or two characters) in these tables: its
    gram's token, quoted (it holds no ``"``: that is an escaped ASCII character)."""
    return '"' + "".join(map(_CODES.get, word, word)) + '"'


# The texts of the pending blocks up to the last one of a batch (the parameter), and of
# every block that is not pending (the revision's fill: pending blocks come with the drain).
# Keywords in block order, so that each block's are read together.
_PENDING_CONTEXTS = """
    SELECT block_index, context FROM blocks
    WHERE block_index IN (SELECT block_index FROM search_pending WHERE block_index <= ?)"""
_PENDING_KEYWORDS = """
    SELECT block_index, keyword FROM block_keywords
    WHERE block_index IN (SELECT block_index FROM search_pending WHERE block_index <= ?)
    ORDER BY block_index"""
_INDEXED_CONTEXTS = """
    SELECT block_index, context FROM blocks
    WHERE block_index NOT IN (SELECT block_index FROM search_pending)"""
_INDEXED_KEYWORDS = """
    SELECT block_index, keyword FROM block_keywords
    WHERE block_index NOT IN (SELECT block_index FROM search_pending)
    ORDER BY block_index"""
_INSERT_CONTEXT = "INSERT INTO search_context_grams (rowid, context) VALUES (?, ?)"
_INSERT_KEYWORDS = "INSERT INTO search_keyword_grams (rowid, keywords) VALUES (?, ?)"
#: Rows read and written at a time while filling (bounds the memory of a large fill).
_CHUNK = 2000


def index_pending(connection: Connection, last: int) -> None:
    """Index the pending blocks up to ``last`` (the drain's batch), inside its write unit."""
    _index(connection, _PENDING_CONTEXTS, _PENDING_KEYWORDS, (last,))


def index_all_but_pending(connection: Connection) -> None:
    """Index every block that is not pending (the revision that makes the tables fills
    them so; the drain indexes the pending ones as it indexes their trigrams)."""
    _index(connection, _INDEXED_CONTEXTS, _INDEXED_KEYWORDS, ())


def _index(
    connection: Connection, contexts: str, keywords: str, parameters: tuple[int, ...]
) -> None:
    # A chunk at a time: a fill of every block keeps a chunk of texts in memory, not all.
    for rows in _chunks(raw_execute(connection, contexts, parameters)):
        raw_execute_all(
            connection, ((_INSERT_CONTEXT, (index, tokens((text,)))) for index, text in rows)
        )
    for rows in _chunks(_per_block(raw_execute(connection, keywords, parameters))):
        raw_execute_all(connection, ((_INSERT_KEYWORDS, row) for row in rows))


def _per_block(cursor: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    for index, rows in groupby(cursor, key=operator.itemgetter(0)):
        yield index, tokens(row[1] for row in rows)


def _chunks(rows: Iterable[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    chunk: list[tuple[int, str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
