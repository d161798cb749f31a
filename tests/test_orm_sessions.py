"""ORM sessions used the way SQLAlchemy users write them: inside units, directly through
``db.session``, with objects kept after their unit, across threads, generators and asyncio
tasks. No update is lost silently, no connection stays with an idle Session, and unit state
belongs to the code that opened the unit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import ForeignKey, Integer, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from app import Database, errors

from .helpers import Background, in_thread, run_threads, wait_for_queue

pytestmark = pytest.mark.timeout(120)


class Base(DeclarativeBase):
    pass


class Counter(Base):
    __tablename__ = "orm_counter"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer, nullable=False)


class Parent(Base):
    __tablename__ = "orm_parent"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[list[Child]] = relationship(back_populates="parent", order_by="Child.id")


class Child(Base):
    __tablename__ = "orm_child"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("orm_parent.id"))
    parent: Mapped[Parent] = relationship(back_populates="children")


def with_models(db: Database) -> Database:
    with db.unit_of_work() as session:
        Base.metadata.create_all(session.connection())
        session.add(Counter(id=1, value=0))
        session.add_all([Parent(id=p, name=f"p{p}") for p in range(1, 9)])
        session.add_all([Child(id=c, parent_id=1 + c % 8) for c in range(32)])
    return db


@pytest.fixture
def orm_db(make_db: Any) -> Iterator[Database]:
    db = with_models(make_db())
    yield db
    db.session.remove()


@pytest.fixture
def small_pool_db(make_db: Any) -> Iterator[Database]:
    """Three connections and no overflow: a connection pinned by an idle Session shows."""
    db = with_models(make_db(pool_size=3, max_overflow=0, pool_timeout=2))
    yield db
    db.session.remove()


def set_counter(value: int) -> Any:
    def unit(session: Session) -> None:
        row = session.get(Counter, 1)
        assert row is not None
        row.value = value

    return unit


def counter(db: Database) -> int:
    with db.read() as session:
        return int(session.execute(select(Counter.value).where(Counter.id == 1)).scalar_one())


# -- read-modify-write inside units ---------------------------------------------------------


@pytest.mark.parametrize("load", ["get", "select"])
def test_orm_read_modify_write_in_units_loses_no_update(orm_db: Database, load: str) -> None:
    """4 threads x 50 units of ``row.value += 1`` on an ORM object: exactly 200."""

    def bump(_: int) -> None:
        for _ in range(50):
            with orm_db.unit_of_work() as session:
                if load == "get":
                    row = session.get(Counter, 1)
                else:
                    row = session.execute(select(Counter).where(Counter.id == 1)).scalar_one()
                assert row is not None
                row.value += 1

    assert run_threads(4, bump) == []
    assert counter(orm_db) == 200


def test_a_unit_reads_the_row_not_what_this_thread_cached(orm_db: Database) -> None:
    """The same function on the main thread, another thread, then the main thread again."""

    def bump() -> int:
        with orm_db.unit_of_work() as session:
            row = session.get(Counter, 1)
            assert row is not None
            row.value += 1
            return row.value

    assert bump() == 1
    assert in_thread(bump, timeout=30) == 2
    assert bump() == 3
    assert counter(orm_db) == 3


# -- the Session used directly, outside units -----------------------------------------------


def test_a_plain_session_never_loses_an_update_silently(orm_db: Database) -> None:
    """``db.session.get(...)``, ``+= 1``, ``db.session.commit()`` from 8 threads: every
    commit that returned counted; the others failed with ConflictError and wrote nothing."""
    committed = [0] * 8
    conflicts = [0] * 8

    def bump(number: int) -> None:
        session = orm_db.session()
        for _ in range(40):
            try:
                row = session.get(Counter, 1)
                assert row is not None
                row.value += 1
                session.commit()
                committed[number] += 1
            except errors.ConflictError:
                session.rollback()
                conflicts[number] += 1
        orm_db.session.remove()

    assert run_threads(8, bump) == []
    assert counter(orm_db) == sum(committed)
    assert sum(committed) + sum(conflicts) == 320
    assert sum(committed) >= 40  # and it is not all conflicts


def test_a_plain_session_write_based_on_a_stale_object_is_refused(orm_db: Database) -> None:
    """An object loaded in a unit, changed outside units after another writer changed its
    row: ConflictError, and the row keeps the other writer's value."""
    with orm_db.unit_of_work() as session:
        row = session.get(Counter, 1)
        assert row is not None and row.value == 0
    assert in_thread(lambda: orm_db.run(set_counter(7)), timeout=30) is None
    row.value += 1  # based on 0, read before the other writer's 7
    with pytest.raises(errors.ConflictError, match="changed by another writer"):
        orm_db.session.commit()
    orm_db.session.rollback()
    assert counter(orm_db) == 7


def test_a_plain_session_holds_the_write_turn_until_its_transaction_ends(
    orm_db: Database,
) -> None:
    """Writers of the process queue behind it (no "database is locked"), and get the turn
    back when it commits."""
    session = orm_db.session()
    session.add(Counter(id=2, value=5))
    session.flush()
    assert orm_db.stats().writers_queued == 0
    done = threading.Event()

    def unit() -> None:
        orm_db.run(set_counter(1))
        done.set()

    with Background(unit, name="unit", timeout=30):
        wait_for_queue(orm_db, 1)
        assert not done.is_set()  # it waits for the plain Session's transaction
        session.commit()
    assert done.is_set()
    assert counter(orm_db) == 1


# -- connections after a unit ---------------------------------------------------------------


def test_lazy_loads_after_a_unit_never_pin_a_connection(small_pool_db: Database) -> None:
    """Parents loaded in a unit, children lazy-loaded after it, in a pool of 6 long-lived
    worker threads sharing 3 connections: every load works and nothing stays checked out."""

    def load(number: int) -> int:
        with small_pool_db.read() as session:
            parent = session.get(Parent, 1 + number % 8)
        assert parent is not None
        return len(parent.children)  # lazy load, after the unit

    with ThreadPoolExecutor(max_workers=6) as pool:
        sizes = list(pool.map(load, range(60)))
        # The workers are still alive here, as in a server's thread pool.
        assert small_pool_db.stats().connections_checked_out == 0
        with small_pool_db.read() as session:  # and others still get connections
            assert session.execute(select(func.count()).select_from(Child)).scalar() == 32
    assert sizes == [4] * 60


def test_an_empty_pool_is_a_named_error_for_a_lazy_load(small_pool_db: Database) -> None:
    with small_pool_db.read() as session:
        parent = session.get(Parent, 1)
    assert parent is not None
    held = [small_pool_db.engine.connect() for _ in range(3)]  # the whole pool (no overflow)
    try:
        with pytest.raises(errors.PoolExhaustedError):
            parent.children  # noqa: B018 - the lazy load is the point
    finally:
        for connection in held:
            connection.close()
    assert [child.id for child in parent.children] == [0, 8, 16, 24]


# -- unit state that must follow the unit ---------------------------------------------------


def test_a_read_unit_ended_on_another_thread_frees_the_thread_it_began_on(
    orm_db: Database,
) -> None:
    """A generator holding ``db.read()`` (a streaming response) is resumed and closed by
    another thread: the thread it began on can write afterwards."""

    def stream() -> Iterator[int]:
        with orm_db.read() as session:
            yield from session.execute(select(Child.id).order_by(Child.id)).scalars()

    rows = stream()
    assert next(rows) == 0
    assert in_thread(lambda: list(rows), timeout=30) == list(range(1, 32))
    orm_db.run(set_counter(9))
    assert counter(orm_db) == 9


def test_units_in_two_asyncio_tasks_on_one_thread_are_refused_up_front(
    orm_db: Database,
) -> None:
    """Task B opens a unit while task A's is open on the same thread: refused before it does
    anything; A commits exactly its own work."""
    a_inside = asyncio.Event()

    async def task_a() -> None:
        with orm_db.unit_of_work() as session:
            session.add(Child(id=100, parent_id=1))
            a_inside.set()
            await asyncio.sleep(0.05)  # another task runs meanwhile

    async def task_b() -> None:
        await asyncio.wait_for(a_inside.wait(), 30)
        with orm_db.unit_of_work() as session:
            session.add(Child(id=200, parent_id=1))

    async def main() -> list[Any]:
        return await asyncio.gather(task_a(), task_b(), return_exceptions=True)

    outcome = asyncio.run(main())
    assert outcome[0] is None
    assert type(outcome[1]) is errors.TransactionStateError
    assert "asyncio" in str(outcome[1])
    with orm_db.read() as session:
        ids = session.execute(select(Child.id).where(Child.id >= 100)).scalars().all()
    assert ids == [100]


def test_plain_writes_of_another_asyncio_task_inside_a_unit_are_refused(
    orm_db: Database,
) -> None:
    async def main() -> BaseException | None:
        inside = asyncio.Event()
        leave = asyncio.Event()

        async def holder() -> None:
            with orm_db.unit_of_work() as session:
                session.execute(text("SELECT 1"))
                inside.set()
                await asyncio.wait_for(leave.wait(), 30)

        task = asyncio.create_task(holder())
        await asyncio.wait_for(inside.wait(), 30)
        try:
            orm_db.run(lambda session: session.execute(text("SELECT 1")))
        except errors.TransactionStateError as exc:
            return exc
        finally:
            leave.set()
            await asyncio.wait_for(task, 30)
        return None

    assert type(asyncio.run(main())) is errors.TransactionStateError
