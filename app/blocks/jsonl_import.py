"""Reading a JSONL file of blocks into the chain (``app import-jsonl`` and the legacy
``migrate_from_jsonl``), safe to run again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from app import errors
from app.blocks import BlockStore
from app.chain._block_sql import insert_blocks
from app.chain._block_values import PreparedBlock, prepare_block
from app.database import Database
from app.models import blocks_table

_IMPORT_BATCH = 500


@dataclass
class ImportResult:
    """What an import did.

    Attributes:
        lines: lines that were not blank.
        imported: blocks written (``kept`` + ``appended``).
        kept: lines that carried ``block_index`` and ``hash``, written as given.
        appended: lines without them, appended to the chain (index and hashes computed).
        duplicates: lines whose block was already present (same timestamp and context,
            stored before or earlier in the file), not written again.
        skipped: lines not imported for another reason, counted by reason in ``reasons``.
        examples: the first few skipped lines, as ``"line N: reason"``.
    """

    lines: int = 0
    kept: int = 0
    appended: int = 0
    duplicates: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.kept + self.appended

    def skip(self, number: int, reason: str, detail: str = "") -> None:
        self.skipped += 1
        self.reasons[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"line {number}: {reason}" + (f" ({detail})" if detail else ""))


#: The fields a JSONL line may carry, besides ``context`` (required) and the chain fields.
_BLOCK_FIELDS = (
    "keywords",
    "tags",
    "importance",
    "metadata",
    "embedding",
    "embedding_model",
    "timestamp",
)

#: What the JSONL format is, for ``--help`` (docs/guide/cli.md says the same).
JSONL_FIELDS = """\
One JSON object per line; blank lines are ignored. Fields:
  context          string, required
  timestamp        ISO-8601 string, required
  importance       number from 0 to 1 (default 0)
  keywords, tags   lists of strings
  metadata         object
  embedding        list of numbers
  embedding_model  string (default "default")
  block_index, hash, prev_hash
                   a line with block_index and hash is written as given (its
                   index must be free); any other line is appended to the
                   chain, which computes its index and hashes
A block is identified by its timestamp and context: a line whose block is
already stored, or came earlier in the file, is skipped as a duplicate, so
importing the same file again writes nothing new."""

#: Identity of a block for the import: its timestamp and context.
_Key = tuple[str, str]


def _arguments(data: Mapping[str, Any]) -> dict[str, Any]:
    """The append arguments a JSONL line carries (``None`` means absent)."""
    arguments = {k: data[k] for k in _BLOCK_FIELDS if data.get(k) is not None}
    if "metadata" in arguments and not arguments["metadata"]:
        del arguments["metadata"]  # the legacy class stored metadata only when truthy
    arguments["context"] = data.get("context")
    return arguments


def _present(connection: Connection, keys: Iterable[_Key]) -> set[_Key]:
    """Which of ``keys`` (timestamp, context) are stored already (timestamps are indexed)."""
    wanted = set(keys)
    stamps = sorted({stamp for stamp, _ in wanted})
    found: set[_Key] = set()
    for start in range(0, len(stamps), _IMPORT_BATCH):
        rows = connection.execute(
            select(blocks_table.c.timestamp, blocks_table.c.context).where(
                blocks_table.c.timestamp.in_(stamps[start : start + _IMPORT_BATCH])
            )
        )
        found.update(key for key in map(tuple, rows) if key in wanted)
    return found


class _Importer:
    """Collects valid lines in batches of one kind (as given, or to append), in file order,
    and writes each batch without the blocks that are present already."""

    def __init__(self, db: Database, result: ImportResult, as_given: AsGiven | None) -> None:
        self.db = db
        self.store = BlockStore(db)
        self.result = result
        self.as_given = as_given
        self.complete: list[tuple[int, int, str, str, PreparedBlock]] = []
        self.loose: list[tuple[int, dict[str, Any], PreparedBlock]] = []
        self.batch_keys: set[_Key] = set()

    def add(self, number: int, data: Mapping[str, Any]) -> None:
        if self.as_given is not None:
            try:
                index, digest, previous, block = self.as_given(data)
            except errors.InvalidInputError as exc:
                self.result.skip(number, "invalid block", str(exc))
                return
            self._queue(number, data, block, (index, digest, previous))
            return
        try:
            if data.get("timestamp") is None:
                raise errors.InvalidInputError(
                    "no timestamp (it is part of what identifies a block on a re-run)"
                )
            arguments = _arguments(data)
            block = prepare_block(arguments.pop("context"), **arguments)
            complete = "block_index" in data and "hash" in data
            if complete:
                index = data["block_index"]
                if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                    raise errors.InvalidInputError(
                        f"block_index must be an integer >= 0: {index!r}"
                    )
                digest, previous = data["hash"], data.get("prev_hash", "") or ""
                if not isinstance(digest, str) or not isinstance(previous, str):
                    raise errors.InvalidInputError("hash and prev_hash must be strings")
        except errors.InvalidInputError as exc:
            self.result.skip(number, "invalid block", str(exc))
            return
        self._queue(number, data, block, (index, digest, previous) if complete else None)

    def _queue(
        self,
        number: int,
        data: Mapping[str, Any],
        block: PreparedBlock,
        chain: tuple[int, str, str] | None,
    ) -> None:
        """Add a checked line to the batch of its kind: written as given (``chain``: its
        index, hash and previous hash) or appended."""
        key = (block.timestamp, block.context)
        if key in self.batch_keys:
            self.result.duplicates += 1  # the same block earlier in this batch
            return
        if (self.loose and chain) or (self.complete and not chain):
            self.flush()
        self.batch_keys.add(key)
        if chain:
            self.complete.append((number, *chain, block))
        else:
            self.loose.append((number, _arguments(data), block))
        if len(self.complete) + len(self.loose) >= _IMPORT_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.complete:
            self._write_complete(self.complete)
        if self.loose:
            self._append(self.loose)
        self.complete, self.loose = [], []
        self.batch_keys = set()

    def _write_complete(self, batch: list[tuple[int, int, str, str, PreparedBlock]]) -> None:
        try:
            written, duplicates = self.db.run_on_connection(lambda c: _insert_new(c, batch))
        except errors.IntegrityViolationError:
            pass  # some index is taken: write them one by one to skip just those
        else:
            self.result.kept += written
            self.result.duplicates += duplicates
            return
        for item in batch:

            def write_one(connection: Connection, item: Any = item) -> tuple[int, int]:
                return _insert_new(connection, [item])

            try:
                written, duplicates = self.db.run_on_connection(write_one)
            except errors.IntegrityViolationError:
                self.result.skip(item[0], "block index already present", str(item[1]))
            else:
                self.result.kept += written
                self.result.duplicates += duplicates

    def _append(self, batch: list[tuple[int, dict[str, Any], PreparedBlock]]) -> None:
        with self.db.reading() as connection:
            fresh = _new_only(connection, batch)
        self.result.duplicates += len(batch) - len(fresh)
        # Already checked line by line, so append_many cannot refuse the batch.
        self.result.appended += len(self.store.append_many([args for _, args, _ in fresh]))


def _new_only(connection: Connection, batch: list[Any]) -> list[Any]:
    """The items of ``batch`` (each ending with its PreparedBlock) not stored yet."""
    present = _present(connection, ((item[-1].timestamp, item[-1].context) for item in batch))
    return [item for item in batch if (item[-1].timestamp, item[-1].context) not in present]


def _insert_new(
    connection: Connection, batch: list[tuple[int, int, str, str, PreparedBlock]]
) -> tuple[int, int]:
    """Insert the blocks of ``batch`` that are not stored yet; return (written, duplicates).

    Checked inside the caller's write unit, so no other writer can store the same block
    between the check and the insert.
    """
    fresh = _new_only(connection, batch)
    if fresh:
        insert_blocks(connection, [(index, digest, prev, b) for _, index, digest, prev, b in fresh])
    return len(fresh), len(batch) - len(fresh)


#: Prepares a line as the legacy ``add_block`` took it: (index, hash, prev_hash, block).
AsGiven = Callable[[Mapping[str, Any]], tuple[int, str, str, PreparedBlock]]


def import_jsonl(
    db: Database,
    path: str,
    *,
    progress: Callable[[int], None] | None = None,
    as_given: AsGiven | None = None,
) -> ImportResult:
    """Import blocks from a JSONL file (one block dict per line), as the legacy
    ``migrate_from_jsonl`` did, and safe to run again.

    A line with ``block_index`` and ``hash`` is written as given (a taken index is skipped);
    a line without them is appended to the chain, which computes its index and hashes.
    A block is identified by its timestamp and context: one already stored (or met earlier
    in the file) is counted in ``duplicates`` and not written again, so a second import of
    the same file adds nothing. Blank lines are ignored; lines that are not JSON objects or
    not valid blocks (no timestamp, importance outside 0..1, ...) are skipped and counted.
    Lines are written in batches, in file order. See :data:`JSONL_FIELDS` for the format.

    Args:
        progress: called with the number of bytes read so far.
        as_given: the legacy ``migrate_from_jsonl``'s rules: every line is a complete block,
            checked and prepared by this function (as ``add_block`` does), and written as
            given; a line it refuses is skipped.

    Raises:
        InvalidInputError: the file cannot be read.
    """
    result = ImportResult()
    importer = _Importer(db, result, as_given)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; bytes give exact progress
    except OSError as exc:
        raise errors.InvalidInputError(f"cannot read {path} ({exc.strerror})") from exc
    done = 0
    with handle:
        for number, raw in enumerate(handle, start=1):
            done += len(raw)
            if progress is not None and number % 200 == 0:
                progress(done)
            if not raw.strip():
                continue
            result.lines += 1
            try:
                data = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                result.skip(number, "not UTF-8")
                continue
            except ValueError:
                result.skip(number, "not JSON")
                continue
            if not isinstance(data, dict):
                result.skip(number, "not a JSON object")
                continue
            importer.add(number, data)
    importer.flush()
    if progress is not None:
        progress(done)
    return result
