"""Argument checks. Everything here runs before a write is queued, so a bad argument is
refused with :class:`~app.errors.InvalidInputError` naming it, and nothing is written."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from app.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Largest accepted text (context, keyword, ...): SQLite's default string limit is 1e9 bytes;
#: far below it, a 64 MiB block is already a mistake rather than a memory.
MAX_TEXT_BYTES = 64 * 1024 * 1024
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_text(value: Any, what: str, *, allow_empty: bool = True) -> str:
    """A str that every backend can store and give back exactly."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise InvalidInputError(f"{what} must not be empty")
    if "\x00" in value:
        # SQLite truncates some functions at NUL and PostgreSQL refuses it in text.
        raise InvalidInputError(f"{what} contains a NUL character (\\x00), which cannot be stored")
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidInputError(
                f"{what} is not valid Unicode (lone surrogate at position {exc.start})"
            ) from None
    if size > MAX_TEXT_BYTES:
        raise InvalidInputError(f"{what} is {size} bytes; the limit is {MAX_TEXT_BYTES}")
    return value


def check_timestamp(value: Any, what: str = "timestamp", *, legacy: bool = False) -> str:
    """An ISO-8601 string (a datetime is converted with ``isoformat()``).

    ``legacy=True`` accepts any text, as the old class did: it stored and compared
    timestamps as text without judging them (``'2025-08-05T06:00:60'``, say).
    """
    if isinstance(value, datetime):
        return value.isoformat()
    if legacy:
        return check_text(value, what)
    text = check_text(value, what, allow_empty=False)
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"{what} {text[:40]!r} is not an ISO-8601 date and time") from None
    return text


def check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise InvalidInputError(f"{what} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range (printing it may be refused too)
        raise InvalidInputError(
            f"{what} must be finite, got an integer of {int(value).bit_length()} bits"
        ) from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{what} must be finite, got {number}")
    # -0.0 as 0.0: SQLite stores REAL -0.0 as 0, so a hash over "-0.0" would not verify.
    return number + 0.0


def check_importance(value: Any) -> float:
    """An importance: a number from 0 to 1, both included (the scale the legacy class's
    callers use, which its importance filters and sorts assume)."""
    number = check_number(value, "importance")
    if not 0.0 <= number <= 1.0:
        raise InvalidInputError(
            f"importance must be between 0 and 1 (inclusive), got {_shown(value)}"
        )
    return number


def check_limit(value: Any, what: str = "limit") -> int:
    # Capped at SQL's 64-bit integers: a larger Python int would fail in the driver instead.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise InvalidInputError(f"{what} must be an integer >= 0, got {_shown(value)}")
    if value >= 2**63:
        raise InvalidInputError(f"{what} must be below 2**63, got {_shown(value, str)}")
    return int(value)


def check_index(value: Any, what: str = "block_index") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInputError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= int(value) < 2**63:
        raise InvalidInputError(f"{what} must be between 0 and 2**63-1, got {_shown(value, str)}")
    return int(value)


def _shown(value: Any, show: Callable[[Any], str] = repr) -> str:
    # Python refuses to print an int of more than 4300 digits (ValueError).
    if isinstance(value, int) and not -(10**40) < value < 10**40:
        return f"an integer of {value.bit_length()} bits"
    return show(value)


def check_words(values: Any, what: str) -> tuple[str, ...]:
    """Keywords or tags: an iterable of strings, duplicates dropped, order kept."""
    if values is None:
        return ()
    if not isinstance(values, list | tuple) and (
        isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable)
    ):
        raise InvalidInputError(f"{what} must be a list of strings, got {type(values).__name__}")
    words = tuple(values)
    for position, word in enumerate(words):
        if type(word) is not str or "\x00" in word or not word.isascii():
            check_text(word, f"{what}[{position}]")
    return tuple(dict.fromkeys(words)) if len(set(words)) != len(words) else words
