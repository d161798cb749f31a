"""The rows and cursors of the legacy ``conn`` (see ``legacy._conn``): results are fetched
at once, so a cursor never holds a pooled connection."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class CursorConnection(Protocol):
    """What a cursor needs of its connection (``legacy._conn.ThreadConnection``, which
    imports this module): running a statement and loading its results into the cursor."""

    def run_for_cursor(
        self, cursor: LegacyCursor, sql: str, parameters: Any, *, many: bool
    ) -> None: ...


class Row:
    """A result row with sqlite3.Row's access: by position, by column name
    (case-insensitive), ``keys()``, so ``dict(row)`` and ``tuple(row)`` work."""

    __slots__ = ("_columns", "_values")

    def __init__(self, columns: Columns, values: Sequence[Any]) -> None:
        self._columns = columns
        self._values = tuple(values)

    def keys(self) -> list[str]:
        return list(self._columns.names)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return self._values[self._columns.position(key)]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._columns.names == other._columns.names and self._values == other._values

    def __hash__(self) -> int:
        return hash((self._columns.names, self._values))

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._columns.names, self._values, strict=True))!r})"


class Columns:
    __slots__ = ("_positions", "names")

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._positions: dict[str, int] = {}
        for position, name in enumerate(self.names):
            self._positions.setdefault(name.lower(), position)

    def position(self, name: str) -> int:
        try:
            return self._positions[name.lower()]
        except KeyError:
            raise IndexError("No item with that key") from None


class LegacyCursor:
    """A DB-API cursor over a ``ThreadConnection`` whose results are fetched at once.

    Rows are buffered when the statement runs, so the cursor holds no connection and may be
    read at leisure, from any thread.
    """

    arraysize = 1

    def __init__(self, connection: CursorConnection) -> None:
        self.connection = connection
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []
        self._position = 0

    def execute(self, sql: str, parameters: Any = ()) -> LegacyCursor:
        self.connection.run_for_cursor(self, sql, parameters, many=False)
        return self

    def executemany(self, sql: str, seq_of_parameters: Any) -> LegacyCursor:
        self.connection.run_for_cursor(self, sql, seq_of_parameters, many=True)
        return self

    def fetchone(self) -> Any:
        if self._position >= len(self._rows):
            return None
        row = self._rows[self._position]
        self._position += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self.arraysize if size is None else size
        rows = self._rows[self._position : self._position + count]
        self._position += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        rows = self._rows[self._position :]
        self._position = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def close(self) -> None:
        self._rows, self._position = [], 0

    def _load(
        self,
        rows: list[Any],
        description: tuple[tuple[Any, ...], ...] | None,
        rowcount: int,
        lastrowid: int | None,
    ) -> None:
        self._rows, self._position = rows, 0
        self.description, self.rowcount, self.lastrowid = description, rowcount, lastrowid
