"""Full-scan references for the search tests: the semantics the indexed searches must keep,
computed the slow and obvious way (no index, no cache)."""

from __future__ import annotations

import math
import os
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import Database
from app.errors import InvalidInputError

ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def need_backend(backend: str) -> None:
    """Skip a PostgreSQL case without a server, or fail it when CI requires one."""
    if backend == "postgres" and not os.environ.get("APP_TEST_POSTGRES_URL"):
        reason = "PostgreSQL tests need APP_TEST_POSTGRES_URL"
        if os.environ.get("APP_REQUIRE_POSTGRES"):
            pytest.fail(f"APP_REQUIRE_POSTGRES is set, but {reason}")
        pytest.skip(reason)


def scan_keywords(db: Database, words: Sequence[str], limit: int) -> list[int]:
    """The keyword search as it was before the index: one substring test per row and word,
    in SQL, then the first ``limit`` indices of blocks that exist."""
    words = [w for w in words if w]
    if not words or not limit:
        return []
    with db.read() as session:
        position = "instr" if session.bind.dialect.name == "sqlite" else "strpos"  # type: ignore[union-attr]
        found: set[int] = set()
        for word in words:
            rows = session.execute(
                text(
                    "SELECT block_index FROM blocks "
                    f"WHERE {position}(lower(context), lower(:w)) > 0 "
                    "UNION SELECT block_index FROM block_keywords "
                    f"WHERE {position}(lower(keyword), lower(:w)) > 0"
                ),
                {"w": word},
            )
            found.update(row[0] for row in rows)
        existing = {row[0] for row in session.execute(text("SELECT block_index FROM blocks"))}
    return [i for i in sorted(found)[:limit] if i in existing]


def python_keywords(db: Database, words: Sequence[str], limit: int) -> list[int]:
    """The same for SQLite, in Python: SQLite's lower() folds ASCII letters only."""
    words = [w.translate(ASCII_LOWER) for w in words if w]
    if not words or not limit:
        return []
    with db.read() as session:
        contexts = dict(session.execute(text("SELECT block_index, context FROM blocks")).all())
        keywords = session.execute(text("SELECT block_index, keyword FROM block_keywords")).all()
    texts: dict[int, list[str]] = {i: [c.translate(ASCII_LOWER)] for i, c in contexts.items()}
    for index, keyword in keywords:
        texts.setdefault(index, []).append(keyword.translate(ASCII_LOWER))
    found = sorted(i for i, held in texts.items() if any(w in t for w in words for t in held))
    return [i for i in found[:limit] if i in contexts]


def embeddings(db: Database) -> list[tuple[int, bytes, int | None, str | None]]:
    with db.read() as session:
        rows = session.execute(
            text(
                "SELECT block_index, embedding, embedding_dim, embedding_model "
                "FROM block_embeddings ORDER BY block_index"
            )
        ).all()
    return [(r[0], bytes(r[1]), r[2], r[3]) for r in rows]


def fsum_scores(
    rows: Sequence[tuple[int, bytes, int | None, str | None]],
    query: Any,
    model: str | None = None,
) -> list[tuple[int, float]]:
    """Cosine similarity of every stored embedding (of ``model``) with the query, with
    correctly rounded sums (``math.fsum``); zero vectors are left out. Raises as the search
    does when a dimension differs (naming the lowest such block)."""
    q = [float(x) for x in np.asarray(query, dtype=np.float32)]
    q_norm = math.sqrt(math.fsum(x * x for x in q))
    scored = []
    for index, blob, dim, stored_model in rows:
        if model is not None and stored_model != model:
            continue
        if len(blob) % 4:
            raise InvalidInputError(f"block {index}'s embedding is not float32 data")
        vector = np.frombuffer(blob, dtype=np.float32)
        values = [float(x) for x in (vector[:dim] if dim else vector)]
        if len(values) != len(q):
            raise InvalidInputError(f"query embedding has dimension {len(q)} but block {index}")
        norm = math.sqrt(math.fsum(x * x for x in values))
        if norm == 0:
            continue
        scored.append(
            (index, math.fsum(a * b for a, b in zip(values, q, strict=True)) / (norm * q_norm))
        )
    scored.sort(key=lambda item: (-item[1], item[0]))
    return scored


def assert_top_k(
    got: Sequence[tuple[int, float]],
    reference: Sequence[tuple[int, float]],
    k: int,
    floor: float | None,
    tolerance: float = 1e-12,
) -> None:
    """``got`` is a correct top-k of the full ranking ``reference``: the same scores (to
    ``tolerance``, where a correctly rounded sum and a pairwise one may differ in the last
    bits), nothing better left out, sorted by score then index, the right length."""
    exact = dict(reference)
    for index, score in got:
        assert index in exact, f"block {index} is not a candidate"
        assert abs(score - exact[index]) <= tolerance, (index, score, exact[index])
    assert list(got) == sorted(got, key=lambda item: (-item[1], item[0]))
    eligible_low = [s for _, s in reference if floor is None or s >= floor + tolerance]
    eligible_high = [s for _, s in reference if floor is None or s >= floor - tolerance]
    assert min(k, len(eligible_low)) <= len(got) <= min(k, len(eligible_high))
    if got:
        chosen = {i for i, _ in got}
        weakest = min(s for _, s in got)
        for index, score in reference:
            if index not in chosen and (floor is None or score >= floor - tolerance):
                assert score <= weakest + tolerance, f"block {index} ({score}) was left out"
