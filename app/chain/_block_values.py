"""A block's values: checked (see ``_validate``), encoded for storage, hashed as the legacy
class hashed them, and read back."""

from __future__ import annotations

import array
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

from app.chain._validate import (
    check_importance,
    check_number,
    check_text,
    check_timestamp,
    check_words,
)
from app.errors import InvalidInputError

log = logging.getLogger(__name__)

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class PreparedBlock(NamedTuple):
    """A validated block, ready to be chained and written."""

    context: str
    timestamp: str
    importance: float
    keywords: tuple[str, ...]
    tags: tuple[str, ...]
    metadata_json: str | None
    embedding: bytes | None  # float32, native order: float32_values() reads it
    embedding_dim: int | None
    embedding_model: str | None
    # The hashed JSON text around the two values only the chain's head decides (the index
    # and prev_hash), encoded when the block is checked, by its caller: the writer, which
    # holds the write lock, then only fills those in (see chained_hash).
    hash_middle: bytes
    hash_tail: bytes


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
_HASH_START = b'{"block_index": '


def _hash_parts(context: str, importance: float, timestamp: str) -> tuple[bytes, bytes]:
    """The parts of :func:`block_hash`'s text before and after ``prev_hash``'s value."""
    middle = (
        ', "context": '
        + _json_string(context)
        + ', "importance": '
        + _json_number(importance)
        + ', "prev_hash": '
    )
    return middle.encode(), (', "timestamp": ' + _json_string(timestamp) + "}").encode()


def chained_hash(index: int, prev_hash: str, block: PreparedBlock) -> str:
    """:func:`block_hash` of ``block`` at ``index`` after ``prev_hash``, from the parts of
    its text encoded when it was checked."""
    text = b"".join(
        (
            _HASH_START,
            int.__repr__(index).encode(),
            block.hash_middle,
            _json_string(prev_hash).encode(),
            block.hash_tail,
        )
    )
    return hashlib.sha256(text).hexdigest()


def _json_number(value: float) -> str:
    if isinstance(value, int):  # legacy callers sometimes hashed an int importance
        return int.__repr__(value)
    return float.__repr__(value)


def _json_encoder() -> Callable[[Any], str]:
    """Strict JSON text of a value, as ``json.dumps(value, ensure_ascii=False,
    allow_nan=False)`` writes it. Built once: ``json.dumps`` and ``JSONEncoder.encode`` build
    a new C encoder on every call, which costs as much as encoding a small mapping. Without
    the circular-reference check (a shared encoder must keep no state between calls), a
    cycle ends in RecursionError, which ``encode_json`` reports."""
    encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, check_circular=False)
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:  # an interpreter without the C accelerator
        return encoder.encode
    encode = make(
        None,
        encoder.default,
        json.encoder.encode_basestring,
        None,
        encoder.key_separator,
        encoder.item_separator,
        False,
        False,
        False,
    )
    return lambda value: "".join(encode(value, 0))


_encode_json_text = _json_encoder()


def encode_json(value: Any, what: str) -> str:
    """Strict JSON text (no NaN/Infinity) of a mapping."""
    if type(value) is not dict:
        if not isinstance(value, Mapping):
            raise InvalidInputError(f"{what} must be a dict, got {type(value).__name__}")
        value = dict(value)
    try:
        text = _encode_json_text(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidInputError(
            f"{what} is nested too deeply, or contains itself, to be stored as JSON"
        ) from None
    return check_text(text, what)


def encode_embedding(value: Any, what: str = "embedding") -> tuple[bytes, int]:
    """float32 bytes (native order, as the legacy class wrote them) and the dimension."""
    # The usual case on the append path, a list of numbers, without numpy: packing refuses
    # non-numbers (and turns values beyond float32 into infinities), and a finite sum of
    # the packed values (which cannot overflow a double) means none is NaN or infinite. A
    # list of bools, which numpy would not take for numbers, and anything refused here take
    # the general path, which explains what is wrong.
    if (type(value) is list or type(value) is tuple) and value and type(value[0]) is not bool:
        try:
            raw = _float32_layout(len(value)).pack(*value)
        except (struct.error, OverflowError):
            pass
        else:
            if math.isfinite(sum(array.array("f", raw))):
                return raw, len(value)
    vector = _float32_vector(value, what)
    return vector.tobytes(), vector.size


def float32_values(raw: bytes) -> tuple[float, ...]:
    """The values float32 bytes hold, as the database gives them back."""
    return _float32_layout(len(raw) // 4).unpack(raw)


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
    raw, dimension = (None, None) if embedding is None else encode_embedding(embedding)
    model = None
    if raw is not None and embedding_model is not None:
        model = check_text(embedding_model, "embedding_model")
    metadata_json = _metadata_json(metadata)
    context = check_text(context, "context")
    timestamp = check_timestamp(datetime.now() if timestamp is None else timestamp, legacy=legacy)
    importance = check_number(importance, "importance") if legacy else check_importance(importance)
    hash_middle, hash_tail = _hash_parts(context, importance, timestamp)
    return PreparedBlock(
        context=context,
        timestamp=timestamp,
        importance=importance,
        keywords=check_words(keywords, "keywords"),
        tags=check_words(tags, "tags"),
        metadata_json=metadata_json,
        embedding=raw,
        embedding_dim=dimension,
        embedding_model=model,
        hash_middle=hash_middle,
        hash_tail=hash_tail,
    )


def prepare_blocks(blocks: Iterable[Mapping[str, Any]]) -> list[PreparedBlock]:
    """:func:`prepare_block` for each mapping of an append's arguments (``context`` and the
    keywords), all checked before any is returned.

    Raises:
        InvalidInputError: naming the first bad block by its position.
    """
    prepared = []
    for position, block in enumerate(blocks):
        if not isinstance(block, Mapping):
            raise InvalidInputError(
                f"blocks[{position}] must be a mapping, got {type(block).__name__}"
            )
        arguments = dict(block)
        try:
            context = arguments.pop("context")
        except KeyError:
            raise InvalidInputError(f"blocks[{position}] has no 'context'") from None
        try:
            prepared.append(prepare_block(context, **arguments))
        except TypeError as exc:
            raise InvalidInputError(f"blocks[{position}]: {exc}") from None
        except InvalidInputError as exc:
            raise InvalidInputError(f"blocks[{position}]: {exc}") from None
    return prepared


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
