"""One typed settings object for everything the layer builds.

Values come from keyword arguments first, then from ``APP_<NAME>`` environment variables,
then from the defaults below. Bad values raise :class:`~app.errors.ConfigurationError` at
construction, with a message that says what to change.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL, make_url

from app._hints import install_hint
from app._url_checks import parse_url, read_only_query
from app.errors import ConfigurationError

DEFAULT_URL = "sqlite:///data/memory.db"
URL_ENV = "APP_DATABASE_URL"

_JOURNAL_MODES = ("wal", "delete", "truncate", "persist", "memory", "off")
_SYNCHRONOUS = ("off", "normal", "full", "extra")
_TEMP_STORE = ("default", "file", "memory")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Settings of one :class:`~app.Database`.

    Attributes:
        url: SQLAlchemy URL. ``sqlite:///path`` (file), ``sqlite://`` (in memory) or
            ``postgresql+psycopg://user@host/db``.
        pool_size: connections kept open by the pool.
        max_overflow: extra connections opened under load (0 turns overflow off).
        pool_timeout: seconds a caller waits for a free connection before
            :class:`~app.errors.PoolExhaustedError`.
        pool_recycle: seconds after which a server connection is replaced (PostgreSQL).
        pool_pre_ping: test a server connection before handing it out (PostgreSQL): a
            look at its socket, and a ping when the server may have closed it.
        busy_timeout: seconds a write unit waits for another process's write lock before
            reporting busy (SQLite's ``busy_timeout`` pragma; on PostgreSQL the
            ``lock_timeout`` of the advisory write lock).
        retry_deadline: seconds :meth:`~app.Database.run` keeps retrying a busy unit, and
            the longest a unit waits for this process's write lock.
        journal_mode: SQLite journal mode. ``wal`` lets readers and the writer proceed at
            the same time; any other value is applied as asked and not verified.
        synchronous: ``normal`` (the default with WAL: a commit survives a crash of the
            application; a power loss may undo the last commits) or ``full`` (a commit
            survives power loss, at the cost of one fsync per commit).
        cache_size, mmap_size, journal_size_limit, temp_store: optional SQLite pragmas;
            ``None`` leaves SQLite's default. ``journal_size_limit`` (bytes) is what the WAL
            file is truncated to after a checkpoint.
        create: create the SQLite database file (and its directory) when it does not exist,
            logging its absolute path at INFO. ``False`` demands an existing file: a
            missing one raises :class:`~app.errors.DatabaseUnavailableError` and nothing
            is created (a typo in a path then fails instead of starting an empty database).
            No effect on in-memory and server databases.
        file_mode: permission bits of a database file this layer creates (owner only), and
            of its -wal/-shm files and backups; directories made for it get the same
            bits plus search where they grant read (0700 by default).
        auto_upgrade: bring the schema to the current revision when the database is
            opened. ``None`` means yes for SQLite and no for server databases, where
            migrations are a deployment step (``python -m app db upgrade``).
        check_schema: refuse to run on a schema older than the code (on by default).
        slow_wait_threshold: a writer that waits longer than this (seconds) for its turn
            is logged as a warning.
        max_batch: most appends the chain's group commit writes in one transaction.
        max_units_per_commit: most write units that share one commit. A unit that ends
            while other writers of the process wait for their turn leaves its transaction
            open for them (each unit in its own SAVEPOINT) and returns once the last of them
            commits; 1 commits every unit on its own.
        vector_cache_limit: most bytes each process may hold for a database's embeddings in
            memory, so that similarity searches need not read them all per query (1 GiB,
            about 680,000 embeddings of 384 floats); past it, searches stream them from the
            database. 0 turns the cache off.
        failed_write_grace: seconds a write transaction of the legacy ``conn`` in which a
            statement failed may stay unused before the layer commits what it wrote before
            the failure (as the old class's next commit did) and frees the write turn for
            the other writers. Old code often swallows such an error and never commits; a
            thread that goes on, commits or rolls back within this time keeps it as usual.
            A transaction whose failed statement was its first write ends at once.
        timezone: the time zone of timestamps written without a UTC offset (what
            ``datetime.now().isoformat()`` writes, the old class's default), as an IANA name
            such as ``Asia/Seoul``; ``None`` means this process's local zone. Time windows
            (``since``, ``date_range``) compare instants, reading such timestamps, and
            bounds without an offset, in this zone.
        read_only: open a SQLite file for reading only (also ``?mode=ro`` in the URL): for a
            file this process may not write (another account's, a backup, a read-only
            mount). Connections use SQLite's read-only mode; nothing is created or changed
            (no file, directory, journal mode, schema upgrade or index upkeep); reads work on
            any revision of the schema, the old class's included; every write is refused
            with :class:`~app.errors.ReadOnlyDatabaseError`.
        immutable: the file cannot change while it is open (read-only media, a frozen
            snapshot; also ``?immutable=1`` in the URL). Implies ``read_only``; SQLite then
            takes no locks and needs no ``-shm`` file, which a read-only directory cannot
            hold for a WAL-mode file. Wrong, silently, if anyone writes to the file meanwhile.
        single_connection: one connection owned by the thread that opened the database,
            as the legacy class had (the ``GREEUM_THREAD_SAFE=false`` mode).
        echo: log every SQL statement.
        telemetry: record metrics and traces through OpenTelemetry (the ``telemetry``
            extra), on its global MeterProvider and TracerProvider unless
            ``app._telemetry.use`` named others: pool, write-turn and unit instruments, and
            one span per unit. Off, nothing of OpenTelemetry is imported.
        replicas: URLs of PostgreSQL streaming replicas of the primary (``url``); from
            the environment, ``APP_REPLICAS`` with the URLs separated by commas. Read
            units and the block store's reads go to a replica that has replayed this
            process's last commit on the primary, else to the primary; writes and
            migrations always go to the primary.
        max_replica_lag: seconds a replica may be behind the primary and still serve
            reads; one further behind is skipped until it catches up.
    """

    url: str = DEFAULT_URL
    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout: float = 30.0
    pool_recycle: float = 1800.0
    pool_pre_ping: bool = True
    busy_timeout: float = 5.0
    retry_deadline: float = 30.0
    journal_mode: str = "wal"
    synchronous: str = "normal"
    cache_size: int | None = None
    mmap_size: int | None = None
    journal_size_limit: int | None = 64 * 1024 * 1024
    temp_store: str | None = None
    create: bool = True
    file_mode: int = 0o600
    auto_upgrade: bool | None = None
    check_schema: bool = True
    slow_wait_threshold: float = 1.0
    max_batch: int = 512
    max_units_per_commit: int = 64
    vector_cache_limit: int = 1024 * 1024 * 1024
    failed_write_grace: float = 1.0
    timezone: str | None = None
    read_only: bool = False
    immutable: bool = False
    single_connection: bool = False
    echo: bool = False
    telemetry: bool = False
    replicas: tuple[str, ...] = ()
    max_replica_lag: float = 5.0
    parsed_url: URL = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parsed = parse_url(self.url)
        for name in ("read_only", "immutable", "telemetry"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"{name} must be True or False, got {getattr(self, name)!r}"
                )
        if parsed.get_backend_name() == "sqlite":
            parsed, read_only, immutable = read_only_query(parsed)
            if read_only or immutable:
                object.__setattr__(self, "read_only", True)
            if immutable:
                object.__setattr__(self, "immutable", True)
        if self.immutable:
            object.__setattr__(self, "read_only", True)
        if self.read_only and parsed.get_backend_name() != "sqlite":
            raise ConfigurationError(
                "read_only and immutable are for SQLite files; on PostgreSQL grant the role "
                "read access only, or point reads at a replica"
            )
        object.__setattr__(self, "parsed_url", parsed)
        if self.telemetry:
            _check_telemetry()
        _whole_at_least("pool_size", self.pool_size, 1)
        _whole_at_least("max_overflow", self.max_overflow, 0)
        for name in (
            "pool_timeout",
            "pool_recycle",
            "busy_timeout",
            "retry_deadline",
            "slow_wait_threshold",
            "max_replica_lag",
            "failed_write_grace",
        ):
            _at_least(name, getattr(self, name), 0)
        _whole_at_least("max_batch", self.max_batch, 1)
        _whole_at_least("max_units_per_commit", self.max_units_per_commit, 1)
        _whole_at_least("vector_cache_limit", self.vector_cache_limit, 0)
        for name in ("mmap_size", "journal_size_limit"):
            value = getattr(self, name)
            if value is not None:
                _whole_at_least(name, value, 0)
        if self.cache_size is not None and not isinstance(self.cache_size, int):
            raise ConfigurationError(f"cache_size must be an integer, got {self.cache_size!r}")
        _choice("journal_mode", self.journal_mode, _JOURNAL_MODES)
        _choice("synchronous", self.synchronous, _SYNCHRONOUS)
        if self.temp_store is not None:
            _choice("temp_store", self.temp_store, _TEMP_STORE)
            object.__setattr__(self, "temp_store", self.temp_store.lower())
        object.__setattr__(self, "journal_mode", self.journal_mode.lower())
        object.__setattr__(self, "synchronous", self.synchronous.lower())
        object.__setattr__(self, "replicas", self._checked_replicas())
        if self.timezone is not None:
            _check_zone(self.timezone)
        if not isinstance(self.create, bool):
            raise ConfigurationError(f"create must be True or False, got {self.create!r}")
        if not isinstance(self.file_mode, int) or not 0 <= self.file_mode <= 0o777:
            raise ConfigurationError(
                f"file_mode must be permission bits such as 0o600, got {self.file_mode!r}"
            )

    @classmethod
    def resolve(cls, url: str | None = None, /, **overrides: Any) -> Settings:
        """Build settings from arguments, then ``APP_*`` environment variables, then defaults.

        Raises:
            ConfigurationError: an unknown setting or a value that is not valid.
        """
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s) {', '.join(unknown)}; known settings are "
                f"{', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name, spec in known.items():
            if name == "url":
                continue
            if name in overrides:
                values[name] = overrides[name]
                continue
            env_name = f"APP_{name.upper()}"
            raw = os.environ.get(env_name)
            if raw is not None:
                values[name] = _from_env(env_name, raw, spec)
        values["url"] = url or overrides.get("url") or os.environ.get(URL_ENV) or DEFAULT_URL
        return cls(**values)

    def _checked_replicas(self) -> tuple[str, ...]:
        """``replicas`` as a tuple of PostgreSQL URLs (a string is split at commas)."""
        raw: Any = self.replicas
        if isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list | tuple) or not all(isinstance(u, str) for u in raw):
            raise ConfigurationError(
                f"replicas must be a list of PostgreSQL URLs (or one string of them separated "
                f"by commas), got {raw!r}"
            )
        if raw and self.parsed_url.get_backend_name() != "postgresql":
            raise ConfigurationError(
                f"replicas need a PostgreSQL primary; {self.safe_url()} is not one (remove "
                "the replicas setting / APP_REPLICAS)"
            )
        urls: list[str] = []
        for entry in raw:
            parsed = parse_url(entry)
            shown = parsed.render_as_string(hide_password=True)
            if parsed.get_backend_name() != "postgresql":
                raise ConfigurationError(f"replica {shown} is not a PostgreSQL URL")
            url = parsed.render_as_string(hide_password=False)
            if url == self.parsed_url.render_as_string(hide_password=False):
                raise ConfigurationError(
                    f"replica {shown} is the primary's own URL: list the replicas' URLs only"
                )
            if url in urls:
                raise ConfigurationError(f"replica {shown} is listed twice")
            urls.append(url)
        return tuple(urls)

    def replica_urls(self) -> tuple[str, ...]:
        """The replicas' URLs with any password hidden, for messages and logs."""
        return tuple(make_url(u).render_as_string(hide_password=True) for u in self.replicas)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.parsed_url.get_backend_name()

    @property
    def busy_timeout_ms(self) -> int:
        """``busy_timeout`` in whole milliseconds, as ``PRAGMA busy_timeout`` takes it."""
        return int(self.busy_timeout * 1000)

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def is_memory(self) -> bool:
        """True for an in-memory SQLite database."""
        if not self.is_sqlite:
            return False
        return self.parsed_url.database in (None, "", ":memory:", "file::memory:") or (
            self.parsed_url.query.get("mode") == "memory"
        )

    @property
    def sqlite_path(self) -> str | None:
        """The database file of a SQLite file URL, else None."""
        if not self.is_sqlite or self.is_memory:
            return None
        database = self.parsed_url.database or ""
        # A URI filename (``sqlite:///file:path?uri=true``) names its file after "file:".
        return database[5:] if database.startswith("file:") else database

    @property
    def should_auto_upgrade(self) -> bool:
        if self.read_only:
            return False
        return self.is_sqlite if self.auto_upgrade is None else self.auto_upgrade

    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return self.parsed_url.render_as_string(hide_password=True)


def _check_telemetry() -> None:
    """ConfigurationError when OpenTelemetry's API is not installed (found, not imported)."""
    try:
        found = importlib.util.find_spec("opentelemetry.metrics") is not None
    except ImportError:  # no ``opentelemetry`` package at all
        found = False
    if not found:
        raise ConfigurationError(
            "telemetry=True (APP_TELEMETRY) needs OpenTelemetry's API, which is not "
            f"installed: {install_hint('telemetry')}, or turn telemetry off"
        )


def _check_zone(name: Any) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(
            f"timezone must be an IANA time zone name such as 'Asia/Seoul' or 'UTC' (or "
            f"unset for this process's local zone), got {name!r}"
        ) from None


def _at_least(name: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
        raise ConfigurationError(f"{name} must be a number >= {minimum}, got {value!r}")


def _whole_at_least(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def parse_flag(raw: str) -> bool | None:
    """``1/true/yes/on`` is True, ``0/false/no/off`` False (any case, spaces ignored);
    anything else None."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    return None


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigurationError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _from_env(env_name: str, raw: str, spec: dataclasses.Field[Any]) -> Any:
    kind = str(spec.type)
    try:
        if kind.startswith("bool"):
            flag = parse_flag(raw)
            if flag is None:
                raise ValueError(raw)
            return flag
        if kind.startswith("int"):
            if raw.strip().lower() == "none" and "None" in kind:
                return None
            return int(raw, 0)
        if kind.startswith("float"):
            return float(raw)
        if "None" in kind and raw.strip().lower() == "none":
            return None
        return raw
    except ValueError as exc:
        raise ConfigurationError(
            f"environment variable {env_name}={raw!r} is not a valid {kind}"
        ) from exc
