"""Where the compact copy (``_quantized``) lives: a file beside a SQLite database that every
process maps read-only, or an anonymous map (PostgreSQL, in-memory SQLite, or a directory
the process cannot write).

The file ``<database>-vectors`` (owner-only, like the ``-turn`` record) is a header of
:data:`HEADER` bytes, then one column per field, each room for ``capacity`` rows (the file
is sparse: only rows written take disk)::

    magic, version, dimension, capacity, count, change log name, base note,
    CRC-32 of each column's first ``count`` rows, the models (JSON), CRC-32 of the header

Rows are only appended: rows are written past ``count``, then the header with the new
count and CRCs (a CRC-32 continues from the old one over the new bytes only). A process
that maps the file checks every CRC once, then only the rows other processes appended:
a torn header, a short file or any changed byte makes it unusable, and it is built again,
never trusted. Appends and rebuilds happen under an exclusive ``flock`` of the file; a
rebuild (or growth past ``capacity``) writes a new file beside it and renames it over, so
processes that mapped the old one keep reading it until they next need rows past theirs.

Rows of the base note: they were read when the change log's newest note was ``base`` or
later, so a process that maps the file applies the notes after ``base``
(``_vector_changes``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import struct
import time
import weakref
import zlib
from typing import Any

import numpy as np

from app.search._quantized import QuantRows
from app.search._vector_scores import Array

HEADER = 4096
MAGIC = b"APPVECQ1"
VERSION = 1
_HEAD = struct.Struct("<8sIIQQqq7II")
_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("index", np.int64),
    ("digest", np.uint64),
    ("sizes", np.int32),
    ("model", np.int32),
    ("scale", np.float32),
    ("residual", np.float32),
    ("codes", np.int8),  # ``dimension`` values a row
)
_ALIGN = 4096


class Corrupt(Exception):
    """The file is not a whole, current compact copy: it is built again."""


def sidecar_path(database_path: str) -> str:
    return database_path + "-vectors"


def _layout(capacity: int, dimension: int) -> tuple[list[tuple[int, int]], int]:
    """Each column's (offset, bytes a row), and the file's size."""
    places = []
    offset = HEADER
    for name, dtype in _COLUMNS:
        width = np.dtype(dtype).itemsize * (dimension if name == "codes" else 1)
        places.append((offset, width))
        offset += -(-width * capacity // _ALIGN) * _ALIGN
    return places, max(offset, HEADER)


class QuantStore:
    """The compact copy's rows, in a map (see the module notes). Written under the vector
    cache's lock (and, for a file, its ``flock``); :meth:`rows` gives readers a view."""

    def __init__(
        self,
        buffer: mmap.mmap,
        fd: int | None,
        dimension: int,
        capacity: int,
        log_name: int,
        base_seq: int,
    ) -> None:
        self.buffer, self.fd = buffer, fd
        self.dimension, self.capacity = dimension, capacity
        self.log_name, self.base_seq = log_name, base_seq
        self.count = 0
        self.crcs = [0] * len(_COLUMNS)
        self.models: list[str | None] = []
        self.model_codes: dict[str | None, int] = {}
        self.dims: set[int] = set()
        self.widest = 0.0  # the largest finite residual
        self.always: list[int] = []  # rows with a non-finite value
        self.places, self.size = _layout(capacity, dimension)
        self.columns = [
            np.frombuffer(buffer, dtype, capacity * (dimension if name == "codes" else 1), offset)
            for (name, dtype), (offset, _) in zip(_COLUMNS, self.places, strict=True)
        ]
        self.columns[-1] = self.columns[-1].reshape(capacity, dimension)
        if fd is not None:
            weakref.finalize(self, os.close, fd)
        self.inode = os.fstat(fd).st_ino if fd is not None else 0

    # -- made, opened --------------------------------------------------------------------

    @classmethod
    def in_memory(cls, dimension: int, capacity: int, log_name: int, base_seq: int) -> QuantStore:
        _, size = _layout(capacity, dimension)
        return cls(mmap.mmap(-1, size), None, dimension, capacity, log_name, base_seq)

    @classmethod
    def new_file(
        cls, path: str, dimension: int, capacity: int, log_name: int, base_seq: int
    ) -> QuantStore:
        """An empty store in ``<path>.<pid>.tmp``, renamed over ``path`` by :meth:`publish`."""
        _, size = _layout(capacity, dimension)
        temporary = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            buffer = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(fd)
            os.unlink(temporary)
            raise
        store = cls(buffer, fd, dimension, capacity, log_name, base_seq)
        store.temporary = temporary
        return store

    temporary: str | None = None

    def publish(self, path: str) -> None:
        """Write the header and put the file in place of ``path``."""
        self.write_header()
        if self.temporary is not None:
            os.replace(self.temporary, path)
            self.temporary = None

    def discard(self) -> None:
        if self.temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temporary)
            self.temporary = None

    @classmethod
    def load(cls, fd: int) -> QuantStore:
        """The store in the file open at ``fd`` (which it keeps), every CRC checked.

        Raises:
            Corrupt: the file is short, torn or changed.
        """
        status = os.fstat(fd)
        if status.st_mode & 0o022:
            raise Corrupt("writable by others")  # made again, the owner's alone
        size = status.st_size
        if size < HEADER:
            raise Corrupt("short header")
        head = os.pread(fd, HEADER, 0)
        fields, models = parse_header(head)
        dimension, capacity = fields[2], fields[3]
        _, needed = _layout(capacity, dimension)
        if size < needed:
            raise Corrupt("short file")
        buffer = mmap.mmap(fd, needed, access=mmap.ACCESS_READ)
        store = cls(buffer, os.dup(fd), dimension, capacity, fields[5], fields[6])
        store._take(fields, models, check_from=0)
        return store

    def reload(self) -> None:
        """Take the rows other processes appended (their CRCs checked).

        Raises:
            Corrupt: the header or the new rows do not check out.
        """
        assert self.fd is not None
        fields, models = parse_header(os.pread(self.fd, HEADER, 0))
        if fields[2:4] != (self.dimension, self.capacity) or fields[5:7] != (
            self.log_name,
            self.base_seq,
        ):
            raise Corrupt("another copy")
        self._take(fields, models, check_from=self.count)

    def _take(self, fields: tuple[Any, ...], models: list[str | None], check_from: int) -> None:
        count = fields[4]
        if count < check_from or count > self.capacity or len(models) < len(self.models):
            raise Corrupt("count")
        crcs = list(self.crcs) if check_from else [0] * len(_COLUMNS)
        for column, (offset, width) in enumerate(self.places):
            piece = memoryview(self.buffer)[offset + check_from * width : offset + count * width]
            crcs[column] = zlib.crc32(piece, crcs[column])
            piece.release()
        if crcs != list(fields[7:14]):
            raise Corrupt("column checksum")
        if models[: len(self.models)] != self.models:
            raise Corrupt("models")
        codes = self.columns[3][check_from:count]
        if codes.size and ((codes < 0) | (codes >= len(models))).any():
            raise Corrupt("model code")
        self.count, self.crcs, self.models = count, crcs, models
        self.model_codes = {name: code for code, name in enumerate(models)}
        self._note(check_from, count)

    # -- appended ------------------------------------------------------------------------

    def code_of(self, model: str | None) -> int:
        code = self.model_codes.get(model)
        if code is None:
            code = self.model_codes[model] = len(self.models)
            self.models.append(model)
        return code

    def append(self, values: list[Array]) -> None:
        """Write rows (one array per column, in order) past ``count``; the header follows
        in :meth:`write_header`."""
        rows = len(values[0])
        assert self.count + rows <= self.capacity
        for column, (array, (offset, width)) in enumerate(zip(values, self.places, strict=True)):
            data = np.ascontiguousarray(array, dtype=self.columns[column].dtype).tobytes()
            at = offset + self.count * width
            if self.fd is None:
                self.buffer[at : at + len(data)] = data
            else:
                _write_all(self.fd, data, at)
            self.crcs[column] = zlib.crc32(data, self.crcs[column])
        self.count += rows
        self._note(self.count - rows, self.count)

    def _note(self, start: int, end: int) -> None:
        """Take note of rows ``start`` to ``end``: their sizes, residuals, non-finite rows."""
        if end <= start:
            return
        self.dims.update(int(size) for size in np.unique(self.columns[2][start:end]))
        residual = self.columns[5][start:end]
        finite = np.isfinite(residual)
        if finite.any():
            self.widest = max(self.widest, float(residual[finite].max()))
        if not finite.all():
            self.always.extend(int(p) + start for p in np.flatnonzero(~finite))

    def write_header(self) -> None:
        if self.fd is None:
            return
        models = json.dumps(self.models).encode()
        if _HEAD.size + len(models) + 4 > HEADER:
            raise Corrupt("too many models for the header")  # the caller streams instead
        head = _HEAD.pack(
            MAGIC,
            VERSION,
            self.dimension,
            self.capacity,
            self.count,
            self.log_name,
            self.base_seq,
            *self.crcs,
            len(models),
        )
        body = (head + models).ljust(HEADER - 4, b"\0")
        _write_all(self.fd, body + struct.pack("<I", zlib.crc32(body)), 0)

    def copy_to(self, other: QuantStore) -> None:
        """Append this store's rows to the (empty, larger) ``other``."""
        for model in self.models:
            other.code_of(model)
        count = self.count
        for start in range(0, count, 65_536):
            end = min(count, start + 65_536)
            other.append([column[start:end] for column in self.columns])

    # -- read ----------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return self.count * sum(width for _, width in self.places)

    def rows(self) -> QuantRows:
        index, digest, sizes, model, scale, residual, codes = self.columns
        return QuantRows(
            self.count,
            self.dimension,
            index,
            digest,
            sizes,
            model,
            scale,
            residual,
            codes,
            tuple(self.models),
            frozenset(self.dims),
            self.widest,
            np.array(self.always, dtype=np.int64),
        )


def parse_header(head: bytes) -> tuple[tuple[Any, ...], list[str | None]]:
    if (
        len(head) < HEADER
        or zlib.crc32(head[: HEADER - 4]) != struct.unpack("<I", head[HEADER - 4 :])[0]
    ):
        raise Corrupt("header checksum")
    fields = _HEAD.unpack_from(head, 0)
    if fields[0] != MAGIC or fields[1] != VERSION:
        raise Corrupt("another format")
    size = fields[14]
    try:
        models = json.loads(head[_HEAD.size : _HEAD.size + size])
    except ValueError as exc:
        raise Corrupt("models") from exc
    if not isinstance(models, list) or not all(m is None or isinstance(m, str) for m in models):
        raise Corrupt("models")
    return fields, models


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# -- the file's lock ----------------------------------------------------------------------------


def open_locked(path: str, wait: float) -> int | None:
    """A descriptor of ``path`` (created empty if absent) holding its exclusive ``flock``,
    or None when another process held it for ``wait`` seconds. The descriptor is the one
    at ``path`` when the lock is taken (a rename may replace the file meanwhile)."""
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        return None
                    time.sleep(0.005)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False  # removed meanwhile: make it again
            if same:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # renamed over or removed meanwhile: lock the file now at ``path``


def unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
