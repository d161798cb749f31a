"""The public API: ``app.__all__`` lists exactly the public names, each of them is what it
should be, and every error of ``app.errors`` derives from one base."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import sqlite3
import sys
import types
from typing import Any

import app
from app import errors

#: The public classes and their kind: a class with behaviour, an immutable record made
#: with ``NamedTuple`` (unpacks like the tuples old callers used), or a frozen dataclass.
CLASSES = {
    "BlockRecord": "named tuple",
    "BlockStore": "class",
    "ChainCheck": "frozen dataclass",
    "ChainHead": "named tuple",
    "Database": "class",
    "DatabaseManager": "class",
    "MemoryRecord": "frozen dataclass",
    "ReplicaStats": "frozen dataclass",
    "ScoredBlock": "named tuple",
    "SearchHit": "named tuple",
    "Settings": "frozen dataclass",
    "ShortTermMemories": "class",
    "Stats": "frozen dataclass",
    "ThreadSafeDatabaseManager": "class",
}

#: Every exception of ``app.errors`` and its direct bases: AppError, plus ``ValueError``
#: for bad values and ``sqlite3.IntegrityError`` as old callers catch it, or the more
#: general error of the layer that it narrows.
ERRORS: dict[str, tuple[type[BaseException], ...]] = {
    "AppError": (Exception,),
    "ConfigurationError": (errors.AppError, ValueError),
    "InvalidInputError": (errors.AppError, ValueError),
    "DatabaseBusyError": (errors.AppError,),
    "ConflictError": (errors.DatabaseBusyError,),
    "CommitTimeoutError": (errors.AppError,),
    "PoolExhaustedError": (errors.AppError,),
    "ReadOnlyUnitError": (errors.AppError,),
    "ReadOnlyDatabaseError": (errors.AppError,),
    "StorageFullError": (errors.AppError,),
    "DatabaseUnavailableError": (errors.AppError,),
    "ReplicaUnavailableError": (errors.DatabaseUnavailableError,),
    "CorruptDatabaseError": (errors.AppError,),
    "NotADatabaseError": (errors.CorruptDatabaseError,),
    "SchemaOutOfDateError": (errors.AppError,),
    "SchemaMismatchError": (errors.AppError,),
    "IntegrityViolationError": (errors.AppError, sqlite3.IntegrityError),
    "ClosedError": (errors.AppError,),
    "TransactionStateError": (errors.AppError,),
    "UnitAbortedError": (errors.TransactionStateError,),
}


def _kind(value: Any) -> str:
    if isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields"):
        return "named tuple"
    if dataclasses.is_dataclass(value):
        return "frozen dataclass" if value.__dataclass_params__.frozen else "dataclass"
    return "class"


def test_all_lists_exactly_the_public_names() -> None:
    assert len(app.__all__) == len(set(app.__all__))  # no name twice
    assert set(app.__all__) == {*CLASSES, "errors", "__version__"}
    # Nothing public is left out: every name of the package without a leading underscore
    # is in __all__, except the submodules that importing the package loads (they are
    # reached by their own path, and are not the API).
    public = {
        name
        for name, value in vars(app).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(CLASSES)
    # And everything listed can be imported: ``from app import *`` gives exactly it.
    namespace: dict[str, Any] = {}
    exec("from app import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(app.__all__)


def test_each_public_name_is_what_it_should_be() -> None:
    for name, kind in CLASSES.items():
        value = getattr(app, name)
        assert inspect.isclass(value), name
        assert value.__name__ == name, name  # the class itself, not an alias of another
        assert value.__module__.split(".")[0] == "app", (name, value.__module__)
        assert _kind(value) == kind, name
    assert isinstance(app.errors, types.ModuleType)
    assert app.errors is sys.modules["app.errors"]
    assert app.__version__ == importlib.metadata.version("hashchain-memory-db")


def test_errors_share_one_base() -> None:
    defined = {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }
    assert sorted(defined) == sorted(ERRORS)  # each one has its line in the table
    for name, bases in ERRORS.items():
        assert defined[name].__bases__ == bases, name
        assert issubclass(defined[name], errors.AppError), name
