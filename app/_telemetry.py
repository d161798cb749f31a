"""Metrics and traces through OpenTelemetry (optional: the ``telemetry`` extra).

Off by default. ``Database(url, telemetry=True)`` (or ``APP_TELEMETRY=true``) makes that
Database record its instruments on OpenTelemetry's global MeterProvider and TracerProvider
(``opentelemetry.metrics.get_meter("app", version)``, ``opentelemetry.trace.get_tracer``),
or on the providers named by :func:`use`. Each such Database owns one :class:`Telemetry`,
which the layers that record find on its unit core (``core.telemetry``, None when off: the
one check a hot path makes). OpenTelemetry is imported only when the first one is made.

What is recorded, and the names (after OpenTelemetry's database conventions where they
exist): ``docs/guide/observability.md``. The instruments themselves and the callbacks of
the observable ones are ``_telemetry_instruments``.

Spans: one ``app.unit`` span per outermost unit (write units, read units and the layer's
read snapshots), current while the unit runs, so that spans started inside it (the
statements of ``opentelemetry-instrumentation-sqlalchemy``, the application's own) are its
children. A unit opened inside another makes no span of its own: its work is its outer
unit's. Spans are made, and statements counted for them, when a TracerProvider (other than
the API's default) was set when the Database opened: ``Telemetry.tracing``.

Histogram values are buffered (see :class:`Buffered`): the SDK's per-value cost is paid
when a reader collects, not by the unit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from app._version import __version__

if TYPE_CHECKING:
    from app._telemetry_instruments import Instruments, Observed
    from app.settings import Settings

__all__ = ["STATEMENTS", "Buffered", "Telemetry", "UnitRecord", "use"]

log = logging.getLogger("app.telemetry")

T = TypeVar("T")

#: Connection info key (the DB-API connection's record): statements run on it so far,
#: counted once a Database with telemetry is open (see ``engine._driver``).
STATEMENTS = "app_statements"

_lock = threading.Lock()
_providers: tuple[Any, Any] = (None, None)  # (meter, tracer) providers; None: the global
# Instruments are made once per MeterProvider (a second registration of a name would return
# the first instrument, with the first one's callbacks); the provider is kept with them so
# that its id is not reused.
_built: dict[int, tuple[Any, Instruments]] = {}


def use(*, meter_provider: Any = None, tracer_provider: Any = None) -> None:
    """Record on these providers instead of OpenTelemetry's global ones.

    Applies to the Databases opened with ``telemetry=True`` from now on (those open keep
    theirs). For tests, since OpenTelemetry's global providers can be set only once per
    process, and for applications that keep their providers to themselves. ``use()``
    without arguments goes back to the global providers.
    """
    global _providers
    with _lock:
        _providers = (meter_provider, tracer_provider)


def _instruments(meter_provider: Any) -> Instruments:
    from opentelemetry import metrics

    from app._telemetry_instruments import Instruments

    with _lock:
        found = _built.get(id(meter_provider))
        if found is None:
            meter = metrics.get_meter("app", __version__, meter_provider=meter_provider)
            found = _built[id(meter_provider)] = (meter_provider, Instruments(meter))
        return found[1]


class Telemetry:
    """The instruments of one Database, with its attributes computed once.

    Attributes:
        attributes: what identifies the database, never credentials: ``db.system.name``,
            ``db.namespace`` (the SQLite file's path, or the PostgreSQL database), and on
            PostgreSQL ``server.address`` and ``server.port``.
        pool_attributes: those and ``db.client.connection.pool.name``.
        capacity: most connections its pool opens; ``wal_path``: the SQLite WAL, or None.
        tracing: a TracerProvider was set when the Database opened: units make spans and
            count their statements.
    """

    def __init__(self, settings: Settings, key: str) -> None:
        from opentelemetry import context, trace

        meter_provider, tracer_provider = _providers
        self.instruments = instruments = _instruments(meter_provider)
        self.tracer = trace.get_tracer("app", __version__, tracer_provider=tracer_provider)
        # Spans are recorded somewhere (a TracerProvider was set when the Database opened):
        # only then do units make spans and count their statements (on every statement).
        provider = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
        unset = trace.ProxyTracerProvider | trace.NoOpTracerProvider
        self.tracing = not isinstance(provider, unset)
        self._status = (trace.Status, trace.StatusCode.ERROR)
        self._attach, self._detach = context.attach, context.detach
        self._in_context = trace.set_span_in_context
        self.attributes, pool = _identity(settings, key)
        self.pool_attributes = {**self.attributes, "db.client.connection.pool.name": pool}
        self.connection_attributes = {
            state: {**self.pool_attributes, "db.client.connection.state": state}
            for state in ("idle", "used")
        }
        one = settings.is_memory or settings.single_connection
        self.capacity = 1 if one else settings.pool_size + settings.max_overflow
        path = settings.sqlite_path
        wal = path is not None and settings.journal_mode == "wal"
        self.wal_path = os.path.realpath(path) + "-wal" if wal and path is not None else None
        self.unit_attributes = {
            kind: {**self.attributes, "app.unit.kind": kind}
            for kind in ("write", "read", "snapshot")
        }
        self._checkpoints: dict[str, dict[str, Any]] = {}
        self._replicas: dict[str, dict[str, Any]] = {}
        # The histograms recorded per unit, turn, commit or checkout: buffered (see Buffered).
        self.waits = Buffered(instruments.turn_wait, self.attributes)
        self.helds = Buffered(instruments.turn_held, self.attributes)
        self.per_commit = Buffered(instruments.per_commit, self.attributes)
        self.appends = Buffered(instruments.appends, self.attributes)
        self.connection_waits = Buffered(instruments.connection_wait, self.pool_attributes)
        self.connection_uses = Buffered(instruments.connection_use, self.pool_attributes)
        self.connection_creates = Buffered(instruments.connection_create, self.pool_attributes)
        self._buffers = (
            self.waits,
            self.helds,
            self.per_commit,
            self.appends,
            self.connection_waits,
            self.connection_uses,
            self.connection_creates,
        )

    def flush(self) -> None:
        """Hand every buffered value to the SDK (a reader is collecting)."""
        for buffer in self._buffers:
            buffer.flush()

    def watch(self, database: Observed, counters: Any) -> None:
        """Report ``database`` (held weakly) and its ``counters`` in the observable
        instruments until it is disposed."""
        self.instruments.watch(database, counters, self)

    # -- what the layers record ---------------------------------------------------------

    def unit(self, kind: str) -> UnitRecord:
        """Begin recording an outermost unit of ``kind`` (write, read, snapshot): with
        :attr:`tracing`, its span, current from now until :meth:`UnitRecord.end`."""
        return UnitRecord(self, kind)

    def turn(self, waited: float, held: float | None) -> None:
        """A write turn taken outside units (``exclusive_turn``, a Session writing outside
        units): waited for, then held for ``held`` seconds (None: not known)."""
        self.waits.add(waited)
        if held is not None:
            self.helds.add(held)

    def shared_commit(self, units: int) -> None:
        self.per_commit.add(units)

    def appended(self, count: int) -> None:
        """A group commit of the chain wrote ``count`` appends."""
        self.appends.add(count)

    def checkpointed(self, mode: str, seconds: float) -> None:
        attributes = self._checkpoints.get(mode)
        if attributes is None:
            attributes = self._checkpoints[mode] = {**self.attributes, "app.checkpoint.mode": mode}
        self.instruments.checkpoint.record(seconds, attributes)

    def connection_waited(self, seconds: float) -> None:
        self.connection_waits.add(seconds)

    def connection_used(self, seconds: float) -> None:
        self.connection_uses.add(seconds)

    def connection_created(self, seconds: float) -> None:
        self.connection_creates.add(seconds)

    def connection_timed_out(self) -> None:
        self.instruments.timeouts.add(1, self.pool_attributes)

    def replica_attributes(self, url: str) -> dict[str, Any]:
        """The attributes of a replica (its URL with the password hidden): the database's,
        and the replica's host and port."""
        found = self._replicas.get(url)
        if found is None:
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            found = self._replicas[url] = {
                **self.attributes,
                "app.replica.address": _host(parsed),
                "app.replica.port": parsed.port or 5432,
            }
        return found


class Buffered:
    """The values of one histogram and attribute set, kept until a reader collects.

    OpenTelemetry's SDK spends some microseconds on each value recorded (it checks and
    hashes the attributes every time), which a unit's thread would pay while the other
    writers wait for the interpreter. So a unit only appends its values here (a
    ``deque``, safe between threads), and the observable instruments' callbacks, which run
    first in every collection, hand them to the SDK (:meth:`flush`) before the histograms
    are read: each collection holds every value recorded before it, with its exact count
    and sum. Past ``LIMIT`` values (nobody collects, or rarely), each new value hands the
    oldest to the SDK at once, as if recorded directly.
    """

    LIMIT = 32768

    __slots__ = ("attributes", "histogram", "values")

    def __init__(self, histogram: Any, attributes: dict[str, Any]) -> None:
        self.histogram = histogram
        self.attributes = attributes
        self.values: deque[float] = deque()

    def add(self, value: float) -> None:
        values = self.values
        values.append(value)
        if len(values) > self.LIMIT:
            self._hand_on(1)

    def flush(self) -> None:
        self._hand_on(len(self.values))

    def _hand_on(self, count: int) -> None:
        values, record, attributes = self.values, self.histogram.record, self.attributes
        for _ in range(count):
            try:
                value = values.popleft()
            except IndexError:  # another thread handed them on meanwhile
                return
            record(value, attributes)


class UnitRecord:
    """One outermost unit being recorded: its span (current while it runs), its turn and
    its statements. The unit's code calls :meth:`turn_taken`, :meth:`turn_released`,
    :meth:`count_statements` and :meth:`statements_done` as it goes; :meth:`around` ends it."""

    __slots__ = (
        "before",
        "body_failed",
        "held",
        "info",
        "span",
        "statements",
        "taken",
        "telemetry",
        "token",
        "waited",
    )

    def __init__(self, telemetry: Telemetry, kind: str) -> None:
        self.telemetry = telemetry
        self.waited: float | None = None
        self.taken: float | None = None
        self.held: float | None = None
        self.info: dict[Any, Any] | None = None
        self.before = 0
        self.statements: int | None = None
        self.body_failed = False  # the unit's body raised: its work was rolled back
        self.span: Any = None
        self.token: tuple[int, Any] | None = None  # the thread it was made current in
        if telemetry.tracing:
            self.span = span = telemetry.tracer.start_span(
                "app.unit", attributes=telemetry.unit_attributes[kind]
            )
            self.token = (threading.get_ident(), telemetry._attach(telemetry._in_context(span)))

    def turn_taken(self, waited: float) -> None:
        self.waited, self.taken = waited, time.monotonic()

    def turn_released(self) -> None:
        if self.taken is not None and self.held is None:
            self.held = time.monotonic() - self.taken

    def count_statements(self, connection: Any) -> None:
        """Count the statements run on ``connection`` (a SQLAlchemy Connection) from now,
        for the span (when spans are recorded)."""
        if self.span is None:
            return
        try:
            self.info = info = connection.connection.info
        except Exception:  # noqa: BLE001 - an invalidated connection: nothing to count
            return
        self.before = info.get(STATEMENTS, 0)

    def statements_done(self) -> None:
        if self.info is not None and self.statements is None:
            self.statements = self.info.get(STATEMENTS, 0) - self.before

    def around(self, unit: Iterator[T]) -> Iterator[T]:
        """Run the unit's generator (a ``@contextmanager`` body) and end the record with
        its outcome."""
        try:
            yield from unit
        except BaseException as exc:
            self.end(exc)
            raise
        self.end(None)

    def end(self, error: BaseException | None) -> None:
        """Record the turn and end the span: outcome ``committed`` (a read unit: ended
        normally), ``rolled_back`` (its body raised) or ``error`` (it failed otherwise: no
        turn, a failed or aborted commit). Never raises."""
        telemetry = self.telemetry
        try:
            if self.waited is not None:
                telemetry.waits.add(self.waited)
            if self.held is not None:
                telemetry.helds.add(self.held)
            span = self.span
            if span is not None and span.is_recording():
                if error is None:
                    outcome = "committed"
                else:
                    outcome = "rolled_back" if self.body_failed else "error"
                attributes: dict[str, Any] = {"app.unit.outcome": outcome}
                if self.waited is not None:
                    attributes["app.unit.turn_wait"] = self.waited
                if self.held is not None:
                    attributes["app.unit.turn_held"] = self.held
                if self.statements is not None:
                    attributes["app.unit.statements"] = self.statements
                span.set_attributes(attributes)
                if error is not None:
                    span.record_exception(error)
                    status, code = telemetry._status
                    span.set_status(status(code, type(error).__name__))
        except Exception:
            log.debug("recording a unit failed", exc_info=True)
        finally:
            token = self.token
            if token is not None and token[0] == threading.get_ident():  # else not ours
                telemetry._detach(token[1])
            if self.span is not None:
                self.span.end()


def _identity(settings: Settings, key: str) -> tuple[dict[str, Any], str]:
    """The database's attributes and its pool's name, without credentials."""
    if settings.is_sqlite:
        namespace = ":memory:" if settings.is_memory else key.removeprefix("sqlite:")
        return {"db.system.name": "sqlite", "db.namespace": namespace}, namespace
    url = settings.parsed_url
    host, port, name = _host(url), url.port or 5432, url.database or ""
    attributes = {
        "db.system.name": "postgresql",
        "db.namespace": name,
        "server.address": host,
        "server.port": port,
    }
    return attributes, f"{host}:{port}/{name}"


def _host(url: Any) -> str:
    """The server's host name, or its socket directory (``?host=``), or localhost."""
    if url.host:
        return str(url.host)
    query = url.query.get("host")
    if isinstance(query, tuple):
        query = query[0] if query else None
    return str(query) if query else "localhost"
