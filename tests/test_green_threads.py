"""gevent: with threads monkey-patched (its default) every greenlet counts as a thread and
the layer works as it does for threads; without (``patch_all(thread=False)``) greenlets
would share their thread's units and block the hub in the layer's waits, so every call from
a spawned greenlet is refused up front, and the thread stays usable.

Each case runs in a child interpreter: monkey-patching the test process would change it for
every test after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gevent")

pytestmark = pytest.mark.timeout(120)

UNPATCHED = """
from gevent import monkey; monkey.patch_all(thread=False)
import json, sys, gevent
from sqlalchemy import text
from app import BlockStore, Database, errors
db = Database(sys.argv[1])
outcomes = {}
def holder():
    try:
        with db.unit_of_work() as session:
            session.execute(text("SELECT 1"))
            gevent.sleep(0.05)  # yields inside the unit
        outcomes["holder"] = "ran"
    except errors.AppError as exc:
        outcomes["holder"] = type(exc).__name__
def joiner():
    gevent.sleep(0.01)
    for name, call in (
        ("run", lambda: db.run(lambda s: s.execute(text("SELECT 2")))),
        ("append", lambda: BlockStore(db).append("from a greenlet")),
        ("read", lambda: BlockStore(db).count()),
    ):
        try:
            call()
            outcomes[name] = "ran"
        except errors.ConfigurationError as exc:
            outcomes[name] = "refused" if "thread=False" in str(exc) else str(exc)
gevent.joinall([gevent.spawn(holder), gevent.spawn(joiner)], timeout=30)
# The thread itself (the main greenlet) is untouched and usable.
store = BlockStore(db)
for number in range(3):
    store.append(f"after {number}")
outcomes["after"] = [store.count(), store.verify_chain().ok]
db.dispose()
print(json.dumps(outcomes))
"""

PATCHED = """
from gevent import monkey; monkey.patch_all()
import json, sys, gevent
from sqlalchemy import text
from app import BlockStore, Database, DatabaseManager
db = Database(sys.argv[1], auto_upgrade=True)
failures = []
def worker(number):
    try:
        store = BlockStore(db)
        manager = DatabaseManager(sys.argv[1])
        for round_ in range(10):
            store.append(f"greenlet {number} round {round_}")
            with db.unit_of_work() as session:
                session.execute(text("SELECT count(*) FROM blocks")).scalar()
                gevent.sleep(0)  # another greenlet runs while this one holds the unit
            with manager.transaction():
                last = manager.get_last_block_info()
            manager.append_block(f"facade {number} {round_}")
        manager.close()
    except Exception as exc:
        failures.append(repr(exc))
gevent.joinall([gevent.spawn(worker, n) for n in range(20)], timeout=60)
store = BlockStore(db)
print(json.dumps({"failures": failures, "count": store.count(), "chain": store.verify_chain().ok}))
db.dispose()
"""


def run(script: str, url: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", script, url], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_greenlets_without_thread_patching_are_refused_up_front(tmp_path: Path) -> None:
    outcome = run(UNPATCHED, f"sqlite:///{tmp_path / 'memory.db'}")
    assert outcome == {
        "holder": "ConfigurationError",
        "run": "refused",
        "append": "refused",
        "read": "refused",
        "after": [3, True],
    }


def test_greenlets_with_patched_threads_work_as_threads(db_url: str) -> None:
    outcome = run(PATCHED, db_url)
    assert outcome == {"failures": [], "count": 400, "chain": True}
