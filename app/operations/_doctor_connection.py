"""What ``app doctor`` reads on the opened database: the pragmas in force (SQLite), the
server and its settings (PostgreSQL), the replicas, the pool, and ``db.stats()`` on one line."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.database import Database, ReplicaStats, Stats
from app.operations._doctor_report import FAIL, OK, WARN, Report, mib

_SYNCHRONOUS = {0: "off", 1: "normal", 2: "full", 3: "extra"}
_TEMP_STORE = {0: "default", 1: "file", 2: "memory"}


def report_pragmas(report: Report, db: Database) -> None:
    settings = db.settings
    with db.engine.connect() as conn:
        values = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in (
                "journal_mode",
                "synchronous",
                "foreign_keys",
                "busy_timeout",
                "journal_size_limit",
                "cache_size",
                "mmap_size",
                "temp_store",
            )
        }
        conn.rollback()
    shown: dict[str, Any] = dict(values)
    for name, names in (("synchronous", _SYNCHRONOUS), ("temp_store", _TEMP_STORE)):
        shown[name] = names.get(int(values[name] or 0), values[name])
    report.add("pragmas (pooled connection)", ", ".join(f"{k}={v}" for k, v in shown.items()))
    expected: dict[str, Any] = {
        "foreign_keys": 1,
        "busy_timeout": settings.busy_timeout_ms,
        "synchronous": settings.synchronous,
    }
    if not settings.is_memory and not settings.single_connection:
        expected["journal_mode"] = settings.journal_mode
    wrong = [f"{k} is {shown[k]}, expected {v}" for k, v in expected.items() if shown[k] != v]
    if wrong:
        report.add(
            "pragmas in force",
            "; ".join(wrong),
            FAIL,
            "another tool changed the connection settings, or the file system cannot honour "
            "them (WAL needs a local disk)",
        )
    else:
        report.add("pragmas in force", "as configured", OK)


def report_server(report: Report, db: Database) -> None:
    with db.engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
        settings = {
            name: conn.execute(text(f"SHOW {name}")).scalar()
            for name in (
                "default_transaction_isolation",
                "lock_timeout",
                "statement_timeout",
                "idle_in_transaction_session_timeout",
            )
        }
        conn.rollback()
    report.add("server", f"PostgreSQL {version}, database {mib(int(size or 0))}")
    report.add("server settings", ", ".join(f"{k}={v}" for k, v in settings.items()))


def report_replicas(report: Report, db: Database) -> None:
    """Each replica checked now: reachable, a replica, and how far behind the primary."""
    limit = db.settings.max_replica_lag
    for number, replica in enumerate(db.check_replicas(), 1):
        status, advice = OK, ""
        if replica.state == "lagging":
            status = WARN
            advice = (
                f"it is further behind than max_replica_lag ({limit}s): reads skip it until "
                "it catches up; check its load and its connection to the primary"
            )
        elif replica.state == "down":
            status = WARN
            advice = "it cannot be reached: reads go to the other replicas or the primary"
        elif replica.state != "up":
            status = WARN
            advice = "it is not in recovery (a primary, or a promoted replica): no reads go to it"
        report.add(f"replica {number}", format_replica(replica), status, advice)


def format_replica(replica: ReplicaStats) -> str:
    """One replica's stats on one line."""
    lag = "unknown" if replica.lag is None else f"{replica.lag:.2f}s"
    return (
        f"{replica.url}: {replica.state}, lag {lag}, replayed {replica.replayed or '-'}, "
        f"reads served {replica.reads}, failures {replica.failures}"
    )


def format_stats(stats: Stats) -> str:
    """``db.stats()`` on one line."""
    line = (
        f"units committed {stats.units_committed}, rolled back {stats.units_rolled_back}, "
        f"busy retries {stats.busy_retries}, write waits {stats.write_waits} "
        f"(total {stats.write_wait_total:.3f}s, max {stats.write_wait_max * 1000:.1f}ms), "
        f"writers queued {stats.writers_queued}, connections "
        f"{stats.connections_checked_out} checked out / {stats.connections_open} open, "
        f"vector cache {stats.vector_cache_bytes:,} bytes"
    )
    if stats.replicas:
        served = ", ".join(f"{r.url} {r.reads}" for r in stats.replicas)
        line += f"; reads on the primary {stats.primary_reads}, on replicas: {served}"
    return line


def pool_status(db: Database) -> str:
    stats = db.stats()
    pool: Any = db.engine.pool
    return (
        f"{type(pool).__name__}: {stats.connections_open} open, "
        f"{stats.connections_checked_out} checked out (pool_size={db.settings.pool_size}, "
        f"max_overflow={db.settings.max_overflow})"
    )
