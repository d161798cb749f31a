"""Korean notes for the short-word search benchmark: blocks as the layer's users write them
(mostly Korean, with names, numbers, a few Latin abbreviations and now and then Hanja), and
the words it looks for, by kind.

Everything comes from a seeded generator, so a run on either backend, and a run of the
code before a change, searches the same blocks for the same words. Rare words are made up
from syllables that no common word uses and are each put in a few blocks; absent words
(``김치``, ``밥솥`` and made-up ones) are in none. Which words are rare or absent is checked
against the full scan when the benchmark runs, not assumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

_NOUNS = [
    "회의",
    "예산",
    "계획",
    "보고서",
    "프로젝트",
    "일정",
    "고객",
    "회사",
    "팀장",
    "부장",
    "사원",
    "점심",
    "저녁",
    "아침",
    "커피",
    "날씨",
    "여행",
    "가족",
    "친구",
    "병원",
    "학교",
    "공부",
    "시험",
    "숙제",
    "운동",
    "산책",
    "공원",
    "음악",
    "영화",
    "도서관",
    "시장",
    "마트",
    "주말",
    "월요일",
    "화요일",
    "수요일",
    "목요일",
    "금요일",
    "토요일",
    "일요일",
    "오늘",
    "내일",
    "어제",
    "오전",
    "오후",
    "시간",
    "문제",
    "해결",
    "결과",
    "자료",
    "분석",
    "개발",
    "서버",
    "데이터",
    "설계",
    "테스트",
    "배포",
    "버그",
    "기능",
    "사용자",
    "화면",
    "디자인",
    "문서",
    "이메일",
    "전화",
    "메시지",
    "약속",
    "생일",
    "선물",
    "요리",
    "반찬",
    "된장찌개",
    "불고기",
    "비빔밥",
    "라면",
    "과일",
    "사과",
    "우유",
    "버스",
    "지하철",
    "택시",
    "기차",
    "비행기",
    "공항",
    "호텔",
    "바다",
    "하늘",
    "바람",
    "여름",
    "가을",
    "겨울",
    "청소",
    "빨래",
    "설거지",
    "강아지",
    "고양이",
    "아이",
    "부모님",
    "동생",
    "할머니",
    "할아버지",
    "건강",
    "감기",
    "의사",
    "은행",
    "카드",
    "계좌",
    "월급",
    "세금",
    "보험",
    "계약",
    "회계",
    "마감",
    "발표",
    "준비",
    "연습",
    "목표",
    "성과",
    "평가",
    "교육",
    "세미나",
    "출장",
    "휴가",
    "기록",
    "메모",
    "아이디어",
    "질문",
    "답변",
    "의견",
    "결정",
    "변경",
    "요청",
    "승인",
    "검토",
    "수정",
    "완료",
    "진행",
    "상황",
    "공유",
]
_VERBS = [
    "했다",
    "했습니다",
    "해야",
    "한다",
    "하기로",
    "했다",
    "갔다",
    "왔다",
    "만났다",
    "먹었다",
    "샀다",
    "봤다",
    "정리했다",
    "확인했다",
    "이야기했다",
    "보냈다",
    "받았다",
    "끝냈다",
    "시작했다",
    "기다렸다",
    "좋았다",
    "힘들었다",
    "재미있었다",
    "바빴다",
    "늦었다",
    "잊지",
    "말자",
    "다시",
    "보자",
    "필요하다",
    "괜찮았다",
]
_PARTICLES = [
    "은",
    "는",
    "이",
    "가",
    "을",
    "를",
    "에",
    "에서",
    "와",
    "과",
    "도",
    "로",
    "으로",
    "의",
    "까지",
    "부터",
    "하고",
]
_NAMES = [
    "김민준",
    "이서연",
    "박지훈",
    "최수아",
    "정예준",
    "강하은",
    "조도윤",
    "윤지우",
    "장서준",
    "임하윤",
]
_LATIN = ["AI", "PC", "API", "OK", "CEO", "QA", "v2", "iOS", "PDF", "Zoom", "Slack", "KPI"]
_HANJA = ["會議", "計劃", "重要", "注意", "確認", "報告", "豫算", "日程"]
_ENDS = (". ", "! ", "? ", ", ", "~ ", ". ")

#: Made-up words the notes never hold (checked when the benchmark runs).
ABSENT_TWO = ("김치", "밥솥", "뷁꿻", "쮸퓽", "똠얌", "꺅뜌", "횽냥", "뭏쀼")
ABSENT_ONE = ("뷁", "꿻", "쮸", "퓽", "똠", "꺅", "뜌", "횽")
ABSENT_CJK = ("龍", "鳳", "龍鳳", "麒麟")
ABSENT_LATIN = ("q", "zx", "j7", "xq")
ABSENT_PUNCT = ("^", "|", "#!", "{}")


def _syllables(rng: random.Random, count: int, banned: set[str]) -> list[str]:
    """Hangul syllables that no common word, name or absent word uses."""
    found: list[str] = []
    while len(found) < count:
        syllable = chr(0xAC00 + rng.randrange(11172))
        if syllable not in banned and syllable not in found:
            found.append(syllable)
    return found


class Corpus:
    """The notes of one seed, and the words to look for in them."""

    def __init__(self, seed: int = 20261208) -> None:
        rng = random.Random(seed)
        common = "".join(_NOUNS + _VERBS + _PARTICLES + _NAMES)
        banned = set(common) | set("".join(ABSENT_TWO + ABSENT_ONE))
        pool = _syllables(rng, 120, banned)
        #: Two- and three-syllable words that each of about 1 in 100 notes holds one of.
        self.rare_two = [pool[i] + pool[i + 1] for i in range(0, 80, 2)]
        self.rare_three = [pool[i] + pool[i + 1] + pool[i + 2] for i in range(80, 119, 3)]
        self.seed = seed

    def block(self, index: int) -> dict[str, Any]:
        """The ``index``-th note (the same for a seed, whatever was generated before)."""
        rng = random.Random(self.seed * 1_000_003 + index)
        parts: list[str] = []
        for _ in range(rng.randint(2, 4)):
            parts.append(self._sentence(rng))
        if rng.random() < 0.02:
            parts.append(rng.choice(self.rare_two + self.rare_three) + "도 적어 두었다. ")
        if rng.random() < 0.01:
            parts.append(f"({rng.choice(_HANJA)}) ")
        if rng.random() < 0.05:
            parts.append(f"PRJ-{rng.randrange(100_000)} ")
        keywords = rng.sample(_NOUNS, rng.randint(1, 3))
        if rng.random() < 0.005:
            keywords.append(rng.choice(self.rare_two))
        return {"context": "".join(parts).strip(), "keywords": keywords, "tags": ("ko",)}

    def _sentence(self, rng: random.Random) -> str:
        words = []
        if rng.random() < 0.3:
            words.append(rng.choice(_NAMES) + rng.choice(("와", "과", "하고", "님과", "씨와")))
        for _ in range(rng.randint(2, 5)):
            words.append(rng.choice(_NOUNS) + rng.choice(_PARTICLES))
        if rng.random() < 0.2:
            words.append(rng.choice(_LATIN))
        if rng.random() < 0.25:
            words.append(f"{rng.randint(1, 12)}시 {rng.randint(0, 59)}분에")
        words.append(rng.choice(_VERBS))
        return " ".join(words) + rng.choice(_ENDS)

    def blocks(self, start: int, count: int) -> Iterator[dict[str, Any]]:
        return (self.block(index) for index in range(start, start + count))

    def words(self) -> dict[str, list[str]]:
        """The words timed, by kind (the kinds' names are the report's rows)."""
        return {
            "ko2-absent": list(ABSENT_TWO),
            "ko2-rare": self.rare_two[:8],
            "ko2-common": ["회의", "오늘", "했다", "에서", "고객", "예산", "출장", "메모"],
            "ko1-absent": list(ABSENT_ONE),
            "ko1-rare": [word[0] for word in self.rare_two[8:16]],
            "ko1-common": ["이", "다", "에", "회", "의", "오", "고", "했"],
            "cjk-1-2": [*ABSENT_CJK, "會議", "確", "豫", "程"],
            "latin-1-2": [*ABSENT_LATIN, "ai", "k", "7", "42"],
            "punct-1-2": [*ABSENT_PUNCT, "!", "? ", "(", "~ "],
            "ko3-rare": self.rare_three[:8],
            "ascii-rare": [f"prj-{n}" for n in (4242, 17, 99_001, 123, 55_555, 8, 31_337, 700)],
        }
