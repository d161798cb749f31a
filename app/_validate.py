"""Input checks and the block hash. Everything here runs before a write is queued, so a bad
argument is refused with :class:`~app.errors.InvalidInputError` and nothing is written."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from .errors import InvalidInputError

log = logging.getLogger(__name__)

#: Largest accepted text (context, keyword, ...): SQLite's default string limit is 1e9 bytes;
#: far below it, a 64 MiB block is already a mistake rather than a memory.
MAX_TEXT_BYTES = 64 * 1024 * 1024
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class PreparedBlock(NamedTuple):
    """A validated block, ready to be chained and written."""

    context: str
    timestamp: str
    importance: float
    keywords: tuple[str, ...]
    tags: tuple[str, ...]
    metadata_json: str | None
    embedding: bytes | None
    embedding_values: tuple[float, ...] | None
    embedding_dim: int | None
    embedding_model: str | None


def block_hash(index: int, timestamp: str, context: str, importance: float, prev_hash: str) -> str:
    """The legacy block hash: sha256 of ``json.dumps`` of five fields with sorted keys and
    ``ensure_ascii=False``.

    The JSON text is assembled here exactly as ``json.dumps`` writes it (same key order,
    separators, string escapes and number forms) because hashing sits on the append path;
    a test holds the two byte-for-byte equal.
    """
    text = (
        '{"block_index": '
        + int.__repr__(index)
        + ', "context": '
        + _json_string(context)
        + ', "importance": '
        + _json_number(importance)
        + ', "prev_hash": '
        + _json_string(prev_hash)
        + ', "timestamp": '
        + _json_string(timestamp)
        + "}"
    )
    return hashlib.sha256(text.encode()).hexdigest()


_json_string = json.encoder.encode_basestring  # what json.dumps uses with ensure_ascii=False


def _json_number(value: float) -> str:
    if isinstance(value, int):  # legacy callers sometimes hashed an int importance
        return int.__repr__(value)
    return float.__repr__(value)


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


# Made once: json.dumps with any non-default option builds a new encoder on every call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def encode_json(value: Any, what: str) -> str:
    """Strict JSON text (no NaN/Infinity) of a mapping."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        text = _JSON_ENCODER.encode(value if type(value) is dict else dict(value))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidInputError(f"{what} is nested too deeply to be stored as JSON") from None
    return check_text(text, what)


def encode_embedding(value: Any, what: str = "embedding") -> tuple[bytes, int]:
    """float32 bytes (native order, as the legacy class wrote them) and the dimension."""
    raw, values = _embedding(value, what)
    return raw, len(values)


def _embedding(value: Any, what: str) -> tuple[bytes, tuple[float, ...]]:
    """An embedding as float32 bytes and the float values those bytes hold."""
    # The usual case on the append path, a list of numbers, without numpy: packing refuses
    # non-numbers and values beyond float32, and a finite sum of the packed values (which
    # cannot overflow a double) means none is NaN or infinite. A list of bools, which numpy
    # would not take for numbers, and anything refused here take the general path, which
    # explains what is wrong.
    if (type(value) is list or type(value) is tuple) and value and type(value[0]) is not bool:
        layout = _float32_layout(len(value))
        try:
            raw = layout.pack(*value)
        except (struct.error, OverflowError):
            pass
        else:
            values = layout.unpack(raw)
            if math.isfinite(sum(values)):
                return raw, values
    array = _float32_vector(value, what)
    return array.tobytes(), tuple(array.tolist())


@functools.lru_cache(maxsize=64)
def _float32_layout(dimension: int) -> struct.Struct:
    return struct.Struct(f"{dimension}f")  # native order and size, like numpy's float32


def _float32_vector(value: Any, what: str) -> np.ndarray[Any, Any]:
    if isinstance(value, str | bytes | Mapping):
        raise InvalidInputError(f"{what} must be a list, tuple or numpy array of numbers")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = np.empty(0, dtype=object)  # ragged: reported below
    if array.dtype.kind not in "iuf":  # not bool, text, objects or ragged lists
        raise InvalidInputError(
            f"{what} must be a flat list of numbers (ragged or non-numeric values given)"
        )
    if array.ndim != 1:
        raise InvalidInputError(f"{what} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise InvalidInputError(f"{what} must not be empty")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError(f"{what} contains NaN or infinite values")
    if array.dtype.itemsize > 4 and np.abs(array).max() > _FLOAT32_MAX:
        raise InvalidInputError(f"{what} has values too large for float32")
    return array.astype(np.float32)


def prepare_block(
    context: Any,
    *,
    keywords: Any = (),
    tags: Any = (),
    importance: Any = 0.0,
    metadata: Any = None,
    embedding: Any = None,
    embedding_model: Any = "default",
    timestamp: Any = None,
    legacy: bool = False,
) -> PreparedBlock:
    """Check every argument of an append and encode it for storage.

    ``legacy=True`` accepts what the old class's ``add_block`` stored: any finite
    importance (everything else keeps it within 0..1) and any timestamp text.
    """
    raw, values = (None, None) if embedding is None else _embedding(embedding, "embedding")
    model = None
    if values is not None and embedding_model is not None:
        model = check_text(embedding_model, "embedding_model")
    metadata_json = _metadata_json(metadata)
    return PreparedBlock(
        context=check_text(context, "context"),
        timestamp=check_timestamp(
            datetime.now() if timestamp is None else timestamp, legacy=legacy
        ),
        importance=(
            check_number(importance, "importance") if legacy else check_importance(importance)
        ),
        keywords=check_words(keywords, "keywords"),
        tags=check_words(tags, "tags"),
        metadata_json=metadata_json,
        embedding=raw,
        embedding_values=values,
        embedding_dim=None if values is None else len(values),
        embedding_model=model,
    )


def _metadata_json(metadata: Any) -> str | None:
    # The legacy class stored metadata only when it was truthy; {} reads back as {} anyway.
    if metadata is None:
        return None
    text = encode_json(metadata, "metadata")
    return None if text == "{}" else text


def decode_json_object(text: str | None) -> dict[str, Any]:
    """Stored JSON metadata as a dict; missing or unreadable metadata reads as {}."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("unreadable JSON metadata %r read as {}", text[:80])
        return {}
    return value if isinstance(value, dict) else {}
