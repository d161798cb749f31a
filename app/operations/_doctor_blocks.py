"""What ``app doctor`` checks of the block store on the opened database: its tables, the
search indexes (and the blocks waiting for the keyword index) and the chain."""

from __future__ import annotations

from app._hints import command_hint
from app.blocks import BlockStore
from app.database import Database
from app.operations._doctor_report import FAIL, OK, WARN, Progress, Report
from app.operations._doctor_search import search_report
from app.schema import _keyword_index, _search_schema, applied_revisions, legacy_schema_differences

#: Blocks waiting for the keyword index beyond which searches scan enough to notice.
_BACKLOG = 10 * _keyword_index.DRAIN_AT


def report_tables(report: Report, db: Database) -> bool:
    """The block store's tables, as the legacy layout has them; False when they differ (a
    database of something else, or one a migration broke): the checks of blocks stop."""
    with db.reading() as connection:
        # Columns a user's own migration added are theirs: only what is missing or wrong
        # counts.
        differences = [
            d for d in legacy_schema_differences(connection) if not d.startswith("unexpected")
        ]
    if not differences:
        report.add("tables", "the block store's six tables, as expected", OK)
        return True
    report.add(
        "tables",
        "; ".join(differences),
        FAIL,
        "this is not a block store as this layer and the old class write it: check the URL "
        "(`db upgrade` refuses such a file and changes nothing)",
    )
    return False


def inspect_blocks(
    report: Report, db: Database, verify_chain: bool, progress: Progress | None
) -> None:
    store = BlockStore(db)
    total = store.count()
    if db.settings.sqlite_path is None:
        report.add("blocks", f"{total:,}")
    for name, value in search_report(db):
        report.add(name, value)
    _report_search_machinery(report, db)
    if verify_chain:
        check = store.verify_chain(
            progress=None if progress is None else (lambda done: progress(done, total))
        )
        if check:
            report.add("chain", str(check), OK)
        else:
            report.add(
                "chain",
                str(check),
                FAIL,
                "restore from a backup, or find the writer that bypassed the layer",
            )


def _report_search_machinery(report: Report, db: Database) -> None:
    """The keyword index's triggers, tables and indexes: a migration that rebuilt the
    blocks table may have dropped them, after which the index misses new blocks."""
    with db.reading() as connection:
        missing = _search_schema.problems(connection, applied_revisions(connection))
        waiting = (
            _keyword_index.pending_count(connection)
            if connection.dialect.name == "sqlite" and _keyword_index.sqlite_index_ready(connection)
            else 0
        )
    if not missing:
        if waiting > _BACKLOG:
            report.add(
                "search indexes",
                f"complete, but {waiting:,} blocks wait to be indexed (searches scan them)",
                WARN,
                "nothing indexed them yet (a read-only process cannot, and searches index them "
                f"in batches as they run): run `{command_hint(db.url, 'reindex')}`",
            )
        else:
            report.add("search indexes", "complete", OK)
        return
    report.add(
        "search indexes",
        "; ".join(missing),
        FAIL,
        "a migration rebuilt a table and dropped them: searches and time windows read the "
        f"whole table (slowly, still exact); run `{command_hint(db.url, 'reindex')}`",
    )
