"""Reciprocal-rank fusion of a keyword ranking and a similarity ranking (``BlockStore.search``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: The constant of reciprocal-rank fusion: a block ranked r adds ``weight / (RRF_K + r)``.
RRF_K = 60
#: Shortest length of each ranked list (``depth`` of ``BlockStore.search``).
DEPTH = 20
_WORD = re.compile(r"\w+")

#: (block index, fused score, keyword rank, vector rank)
Fused = tuple[int, float, int | None, int | None]


def words(text: str) -> list[str]:
    """The distinct words of ``text`` (split at non-word characters), first spelling kept;
    words under two characters match nearly every block and are dropped."""
    seen: dict[str, str] = {}
    for word in _WORD.findall(text):
        if len(word) >= 2:
            seen.setdefault(word.lower(), word)
    return list(seen.values())


def by_words_contained(contained: Mapping[int, int], depth: int) -> list[int]:
    """Blocks containing more of the words first, then the newest."""
    ranked = sorted(contained, key=lambda index: (-contained[index], -index))
    return ranked[:depth]


def fuse(
    keyword_ranked: Sequence[int],
    vector_ranked: Sequence[int],
    keyword_weight: float,
    vector_weight: float,
) -> list[Fused]:
    """Every block of either list with its fused score, best first (ties: newest first)."""
    keyword_rank = {index: rank for rank, index in enumerate(keyword_ranked, start=1)}
    vector_rank = {index: rank for rank, index in enumerate(vector_ranked, start=1)}
    fused: list[Fused] = []
    for index in keyword_rank.keys() | vector_rank.keys():
        k_rank, v_rank = keyword_rank.get(index), vector_rank.get(index)
        score = 0.0
        if k_rank is not None:
            score += keyword_weight / (RRF_K + k_rank)
        if v_rank is not None:
            score += vector_weight / (RRF_K + v_rank)
        fused.append((index, score, k_rank, v_rank))
    fused.sort(key=lambda hit: (-hit[1], -hit[0]))
    return fused
