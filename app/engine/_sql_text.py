"""SQL text as the layer needs to read it: what a statement does, and placeholders.

Only what the lexer below can tell from the text: quoted literals, quoted identifiers and
comments are skipped, so a keyword inside them never counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: One lexical piece of SQL: a quoted literal or identifier, a comment, or plain code.
_PIECES = re.compile(
    r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|--[^\n]*|/\*.*?(?:\*/|\Z)|[^'\"/-]+|.", re.S
)
_TOKENS = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*|[()=]")
_QMARK = re.compile(r"\?")
_NAMED = re.compile(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)")
_READ_VERBS = {"SELECT", "VALUES", "EXPLAIN", "SHOW"}
_MAIN_VERBS = {"SELECT", "VALUES", "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"}


def statement_kind(sql: str) -> str:
    """What a statement does to the connection's transaction.

    Returns:
        ``"read"``, ``"write"`` (anything that may change the database, and anything not
        recognised), ``"begin"``, ``"commit"`` or ``"rollback"`` (of the whole transaction).
    """
    tokens = [t.upper() for p in _PIECES.findall(sql) if _is_code(p) for t in _TOKENS.findall(p)]
    if not tokens:
        return "read"
    first = tokens[0]
    if first in _READ_VERBS:
        return "read"
    if first == "PRAGMA":
        # ``PRAGMA name`` and ``PRAGMA name(arg)`` read; ``PRAGMA name = value`` may write.
        return "write" if "=" in tokens else "read"
    if first == "WITH":
        depth = 0
        for token in tokens[1:]:
            if token == "(":
                depth += 1
            elif token == ")":
                depth -= 1
            elif depth == 0 and token in _MAIN_VERBS:
                return "read" if token in ("SELECT", "VALUES") else "write"
        return "write"
    if first in ("BEGIN", "START"):
        return "begin"
    if first in ("COMMIT", "END"):
        return "commit"
    if first == "ROLLBACK" and "TO" not in tokens:
        return "rollback"
    return "write"


def _is_code(piece: str) -> bool:
    return piece[:1] not in ("'", '"') and not piece.startswith(("--", "/*"))


def to_pyformat(sql: str, parameters: Any) -> str:
    """Rewrite sqlite3's ``?`` / ``:name`` placeholders for psycopg (``%s`` / ``%(name)s``).

    Placeholders are replaced only outside quoted literals, identifiers and comments; every
    ``%`` is doubled because psycopg reads ``%`` as a placeholder everywhere.
    """
    named = isinstance(parameters, Mapping)
    out = []
    for piece in _PIECES.findall(sql):
        code = _is_code(piece)
        piece = piece.replace("%", "%%")
        if code:
            piece = _NAMED.sub(r"%(\1)s", piece) if named else _QMARK.sub("%s", piece)
        out.append(piece)
    return "".join(out)
