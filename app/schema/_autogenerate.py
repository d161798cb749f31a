"""``alembic revision --autogenerate`` on a database the old class made and the layer adopted.

The old class wrote its tables with DDL that differs from the models in two ways that mean
nothing: primary keys without NOT NULL (SQLite reflects them as nullable; an ``INTEGER
PRIMARY KEY`` can hold no NULL anyway), and ``UNIQUE`` constraints without a name. Compared
with the models, every such difference would become an operation, and on SQLite each one a
rebuild of its table in a user's first migration. The migration environment drops them from
what autogenerate writes (``process_revision_directives``), so a new column is one
``add_column``, as on a database the layer created itself.
"""

from __future__ import annotations

from typing import Any

from alembic.operations import ops
from sqlalchemy import MetaData, UniqueConstraint, inspect
from sqlalchemy.engine import Connection


def drop_legacy_noise(connection: Connection, metadata: MetaData, directives: list[Any]) -> None:
    """Remove, from the generated script, nullability changes of primary-key columns and
    unique constraints that exist unnamed in the database with the same columns."""
    if not directives:
        return
    script = directives[0]
    unnamed = _unnamed_unique(connection)

    def noise(op: Any) -> bool:
        if isinstance(op, ops.AlterColumnOp):
            table = metadata.tables.get(op.table_name)
            column = None if table is None else table.columns.get(op.column_name)
            only_nullable = (
                op.modify_nullable is not None
                and op.modify_type is None
                and op.modify_name is None
                and op.modify_server_default is False
                and op.modify_comment is False
            )
            return bool(only_nullable and column is not None and column.primary_key)
        if isinstance(op, ops.CreateUniqueConstraintOp):
            return (op.table_name, tuple(op.columns)) in unnamed
        if isinstance(op, ops.DropConstraintOp) and op.constraint_type == "unique":
            try:
                dropped = op.to_constraint()  # what the downgrade undoes
            except ValueError:  # made without the constraint it reverses: keep it
                return False
            if isinstance(dropped, UniqueConstraint):
                columns = tuple(column.name for column in dropped.columns)
                return (op.table_name, columns) in unnamed
        return False

    for container in (script.upgrade_ops, script.downgrade_ops):
        _prune(container, noise)


def _prune(container: Any, noise: Any) -> None:
    kept = []
    for op in container.ops:
        if isinstance(op, ops.ModifyTableOps):
            _prune(op, noise)
            if op.ops:
                kept.append(op)
        elif not noise(op):
            kept.append(op)
    container.ops = kept


def _unnamed_unique(connection: Connection) -> set[tuple[str, tuple[str, ...]]]:
    inspector = inspect(connection)
    found: set[tuple[str, tuple[str, ...]]] = set()
    for table in inspector.get_table_names():
        for constraint in inspector.get_unique_constraints(table):
            if not constraint.get("name"):
                found.add((table, tuple(constraint["column_names"])))
    return found
