"""Hybrid search: keyword and similarity rankings fused by reciprocal rank, checked against
the same fusion of full-scan rankings, on every backend; and the facade's form of it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import BlockStore, Database, DatabaseManager, errors

from .helpers import postgres_schema
from .search_reference import embeddings, fsum_scores, need_backend

TOPICS = ["garden", "budget", "travel", "music", "Garden party", "recipe"]


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def filled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    backend = str(request.param)
    need_backend(backend)
    if backend == "sqlite":
        db = Database(f"sqlite:///{tmp_path_factory.mktemp('hy') / 'memory.db'}")
        yield from _filled(db)
        return
    with postgres_schema("hy_") as url:
        yield from _filled(Database(url, auto_upgrade=True))


def _filled(db: Database) -> Iterator[Database]:
    rng = np.random.default_rng(21)
    BlockStore(db).append_many(
        {
            "context": f"{TOPICS[i % 6]} note {i} with Ana" + (" and Bo" if i % 4 == 0 else ""),
            "keywords": [f"w{i % 13}"],
            "embedding": rng.standard_normal(10),
        }
        for i in range(400)
    )
    try:
        yield db
    finally:
        db.dispose()


def _matches(db: Database, word: str) -> list[int]:
    position = "instr" if db.settings.is_sqlite else "strpos"
    with db.read() as session:
        rows = session.execute(
            text(
                f"SELECT block_index FROM blocks WHERE {position}(lower(context), lower(:w)) > 0 "
                f"UNION SELECT block_index FROM block_keywords "
                f"WHERE {position}(lower(keyword), lower(:w)) > 0"
            ),
            {"w": word},
        )
        return sorted({row[0] for row in rows}, reverse=True)


def reference(
    db: Database,
    query_text: str | None,
    query: Any,
    top_k: int,
    weights: tuple[float, float],
    depth: int | None = None,
) -> list[tuple[int, float, int | None, int | None]]:
    depth = max(20, top_k) if depth is None else depth
    words: dict[str, str] = {}
    for word in re.findall(r"\w+", query_text or ""):
        if len(word) >= 2:
            words.setdefault(word.lower(), word)
    keyword_list: list[int] = []
    if words and weights[0] > 0:
        every = {w: set(_matches(db, w)) for w in words.values()}
        found = {i for w in words.values() for i in sorted(every[w], reverse=True)[:depth]}
        contained = {i: sum(i in every[w] for w in words.values()) for i in found}
        keyword_list = sorted(found, key=lambda i: (-contained[i], -i))[:depth]
    vector_list: list[int] = []
    if query is not None and weights[1] > 0:
        vector_list = [i for i, _ in fsum_scores(embeddings(db), query)[:depth]]
    scores: dict[int, float] = {}
    ranks: dict[int, list[int | None]] = {}
    for position, (ranked, weight) in enumerate(
        ((keyword_list, weights[0]), (vector_list, weights[1]))
    ):
        for rank, index in enumerate(ranked, start=1):
            scores[index] = scores.get(index, 0.0) + weight / (60 + rank)
            ranks.setdefault(index, [None, None])[position] = rank
    fused = sorted(scores, key=lambda i: (-scores[i], -i))[:top_k]
    return [(i, scores[i], ranks[i][0], ranks[i][1]) for i in fused]


CASES = [
    ("garden Ana", True, 10, (1.0, 1.0)),
    ("garden Ana Bo", True, 3, (1.0, 1.0)),
    ("garden party", False, 5, (1.0, 1.0)),
    ("Bo", True, 20, (1.0, 1.0)),
    ("budget w7 note", True, 10, (2.0, 0.5)),
    ("nothing-matches-this", True, 10, (1.0, 1.0)),
    (None, True, 10, (1.0, 1.0)),
    ("travel", True, 10, (1.0, 0.0)),
    ("travel", True, 10, (0.0, 1.0)),
    ("a b c music", True, 60, (1.0, 1.0)),
]


@pytest.mark.parametrize(("query_text", "with_vector", "top_k", "weights"), CASES)
def test_fusion_matches_the_reference(
    filled: Database,
    query_text: str | None,
    with_vector: bool,
    top_k: int,
    weights: tuple[float, float],
) -> None:
    query = np.random.default_rng(len(query_text or "")).standard_normal(10)
    vector = query if with_vector else None
    hits = BlockStore(filled).search(query_text, vector, top_k=top_k, weights=weights)
    got = [(h.block.block_index, h.score, h.keyword_rank, h.vector_rank) for h in hits]
    want = reference(filled, query_text, vector, top_k, weights)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[2:] for g in got] == [w[2:] for w in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-15)
    deep = BlockStore(filled).search(query_text, vector, top_k=top_k, weights=weights, depth=80)
    want_deep = reference(filled, query_text, vector, top_k, weights, depth=80)
    assert [(h.block.block_index, h.keyword_rank, h.vector_rank) for h in deep] == [
        (w[0], w[2], w[3]) for w in want_deep
    ]
    exact = dict(fsum_scores(embeddings(filled), query))
    for hit in hits:
        if hit.vector_rank is None:
            assert hit.similarity is None
        else:
            assert hit.similarity == pytest.approx(exact[hit.block.block_index], abs=1e-12)


def test_a_block_with_more_of_the_words_ranks_higher(filled: Database) -> None:
    hits = BlockStore(filled).search("Bo garden", top_k=3)
    assert [h.keyword_rank for h in hits] == [1, 2, 3]
    for hit in hits:
        assert "Bo" in hit.block.context and "garden" in hit.block.context.lower()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "needs text, an embedding, or both"),
        ({"text": "x", "weights": (1.0, -1.0)}, "weights must be >= 0"),
        ({"text": "x", "weights": (0, 0)}, "not both 0"),
        ({"text": "x", "weights": (1.0,)}, "weights must be a pair"),
        ({"text": "x", "weights": "ab"}, "weights must be a pair"),
        ({"text": "x", "weights": (1.0, float("nan"))}, "weights must be finite"),
        ({"text": "x\x00"}, "text contains a NUL"),
        ({"text": 5}, "text must be a string"),
        ({"embedding": [0.0] * 10}, "length zero"),
        ({"embedding": [1.0, 2.0]}, "dimension 2"),
        ({"text": "x", "top_k": -1}, "top_k must be an integer"),
        ({"text": "x", "depth": -5}, "depth must be an integer"),
    ],
)
def test_bad_arguments_are_refused(
    filled: Database, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(errors.InvalidInputError, match=message):
        BlockStore(filled).search(**arguments)


def test_the_facade_form(filled: Database) -> None:
    manager = DatabaseManager(filled.settings.url)
    try:
        query = np.random.default_rng(4).standard_normal(10)
        found = manager.search_blocks_hybrid("garden Ana", query.tolist(), top_k=4)
        hits = BlockStore(filled).search("garden Ana", query, top_k=4)
        assert [f["block_index"] for f in found] == [h.block.block_index for h in hits]
        first = found[0]
        assert {"score", "keyword_rank", "vector_rank", "similarity", "context", "hash"} <= set(
            first
        )
        assert first["score"] == hits[0].score
        assert manager.search_blocks_hybrid("", [0.0] * 10) == []
        assert manager.search_blocks_hybrid(None, None) == []
        only_text = manager.search_blocks_hybrid("travel", None, top_k=3)
        assert [f["vector_rank"] for f in only_text] == [None] * 3
        assert (
            manager.search_blocks_hybrid(None, query, top_k=2, keyword_weight=0.0)[0]["block_index"]
            == BlockStore(filled).similar(query, 1)[0].block.block_index
        )
    finally:
        manager.close()
