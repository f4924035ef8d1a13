"""The SQL side of chatdb.aio: :class:`SqlRepository` itself, on asyncio drivers.

Nothing of the SQL repository is rewritten here. Its methods run inside a greenlet (see
:mod:`chatdb.aio.repository`), and on the servers the DB-API connections under them are
SQLAlchemy's adapters of the asyncio drivers (psycopg's ``AsyncConnection``, aiomysql): each
driver call suspends the greenlet and awaits the driver on the event loop. SQLite runs each
transaction on a thread instead (:class:`SqliteThreadExecutor`). So statements, validation, row
mapping, retries and error translation are the sync repository's own code, run unchanged.

What differs is where a transaction's connection comes from: :class:`PooledExecutor` takes it
from a bounded pool (``DbConfig.pool_size``) for one transaction and puts it back after, where
the sync executor keeps one per thread (greenlets share their thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import AsyncAdaptedLock

from ..config import DbConfig
from ..sql.dialects import SqlDialect, dialect_for
from ..sql.executor import PING_AFTER_IDLE_SECONDS, Executor, Tx, _Held
from ..sql.repository import SqlRepository

T = TypeVar("T")


class _Slots:
    """A counting semaphore taken from a greenlet. A free slot is taken without a greenlet switch,
    where ``await_(asyncio.Semaphore.acquire())`` costs two even then; a released slot goes
    straight to the longest waiter."""

    __slots__ = ("_free", "_waiting")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Slots not taken (tests)."""
        return self._free

    def take(self) -> None:
        if self._free and not self._waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await_only(waiter)
        except BaseException:  # cancelled while waiting
            if waiter.done() and not waiter.cancelled():
                self.give()  # a slot was handed over just before: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            raise

    def give(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class _Pooled(_Held):
    __slots__ = ("driver",)

    def __init__(self, conn: Any, driver: Any) -> None:
        super().__init__(conn)
        self.driver = driver


class PooledExecutor(Executor):
    """:class:`Executor` whose connections come from a bounded pool; called in a greenlet.

    A connection goes back to the pool after each transaction only when it ended in COMMIT or
    ROLLBACK; one that an error or a cancelled task interrupted is closed instead (the server
    then rolls back what was not committed), so the pool never holds an open transaction. One
    idle for a while is pinged before use, as on the sync side.
    """

    threads_own_connections = False  # run() is called in a greenlet, on the event loop

    def __init__(self, dialect: SqlDialect, size: int) -> None:
        super().__init__(dialect)
        self._lock = None  # (greenlets share a thread: no thread lock may be held across awaits)
        self.size = size
        self._slots = _Slots(self.size)
        self._idle: list[_Pooled] = []

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = self.dialect.create_async_engine()
        return self._engine

    def _acquire(self) -> _Held:
        self._slots.take()
        try:
            while self._idle:
                held = self._idle.pop()
                try:
                    fresh = time.monotonic() - held.last_used < PING_AFTER_IDLE_SECONDS or self._alive(held)
                except BaseException:  # cancelled mid-ping
                    self._forget(held)
                    raise
                if fresh:
                    return held
                self._forget(held)
            proxy = self._raw_connection()
            pooled = _Pooled(proxy.dbapi_connection, proxy.driver_connection)
            proxy.detach()  # the pool's (ours) until closed
            with self._held_lock:
                self._held.add(pooled)
            return pooled
        except BaseException:
            self._slots.give()
            raise

    def _release(self, held: _Held) -> None:
        if not held.dead:
            self._idle.append(held)  # type: ignore[arg-type]
        self._slots.give()

    def _forget(self, held: _Held) -> None:
        with self._held_lock:
            self._held.discard(held)
        held.close()

    def dispose(self) -> None:
        """Close every connection (in a greenlet: closing awaits the driver)."""
        self._idle.clear()
        super().dispose()

    def idle_in_transaction(self) -> list[bool]:
        """For each idle pooled connection, whether it is inside a transaction (tests)."""
        return [self.dialect.in_transaction(held.driver) for held in self._idle]

    # The Core paths (DDL, scans) hold a pool slot too, so the pool bounds every connection.

    def run_core(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        self._slots.take()
        try:
            return super().run_core(work, write=write)
        finally:
            self._slots.give()

    def stream(
        self, statement: Any, batch_size: int, *, bulky: int | None = None
    ) -> Iterator[list[tuple[Any, ...]]]:
        self._slots.take()
        try:
            yield from super().stream(statement, batch_size, bulky=bulky)
        finally:
            self._slots.give()


class SqliteThreadExecutor(Executor):
    """SQLite: each transaction runs whole, with the sync driver, on a thread: writes on one
    writer thread, reads on up to ``size`` reader threads (each thread keeps its connection,
    as the sync executor does); the task awaits the thread's result.

    SQLite has no asynchronous I/O, so a thread does its work either way. An asyncio adapter
    (aiosqlite) hops to its thread and back for every statement, cursor and fetch, ten hops for
    one message; here a transaction is one hop. One writer thread means writers queue in
    process instead of polling SQLite's lock from several connections (its busy handler sleeps
    up to 100 ms between tries). A cancelled task stops waiting, but a transaction already on
    its thread runs to COMMIT or ROLLBACK there: it is whole or absent, and the connection is
    left outside a transaction. ``:memory:`` (one connection) runs everything on the writer.
    """

    threads_own_connections = False  # run() is called in a greenlet, on the event loop

    def __init__(self, dialect: SqlDialect, size: int) -> None:
        super().__init__(dialect)
        self.size = size
        self._threads: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """(writer, readers), started on first use and stopped by dispose()."""
        if self._threads is None:
            writer = ThreadPoolExecutor(1, thread_name_prefix="chatdb-sqlite-writer")
            readers = writer
            if not self.dialect.serialize:
                readers = ThreadPoolExecutor(self.size, thread_name_prefix="chatdb-sqlite-reader")
            self._threads = (writer, readers)
        return self._threads

    def _on_thread(
        self, pool: ThreadPoolExecutor, call: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        return await_only(asyncio.wrap_future(pool.submit(call, *args, **kwargs)))

    def run(self, work: Callable[[Tx], T], *, write: bool = False, lone: bool = False) -> T:
        writer, readers = self._pools()
        pool = writer if write else readers
        result: T = self._on_thread(pool, super().run, work, write=write, lone=lone)
        return result

    def run_core(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        result: T = self._on_thread(self._pools()[0], super().run_core, work, write=write)
        return result

    def stream(
        self, statement: Any, batch_size: int, *, bulky: int | None = None
    ) -> Iterator[list[tuple[Any, ...]]]:
        readers = self._pools()[1]
        batches: Any = super().stream(statement, batch_size, bulky=bulky)
        try:
            while (batch := self._on_thread(readers, next, batches, None)) is not None:
                yield batch
        finally:
            self._on_thread(readers, batches.close)

    def dispose(self) -> None:
        threads, self._threads = self._threads, None
        if threads is None:
            super().dispose()
            return
        self._on_thread(threads[0], super().dispose)
        for pool in set(threads):
            pool.shutdown(wait=False)

    def idle_in_transaction(self) -> list[bool]:
        """For each connection, whether it is inside a transaction (tests; call when idle)."""
        with self._held_lock:
            return [bool(held.conn.in_transaction) for held in self._held if not held.dead]


class BridgedSqlRepository(SqlRepository):
    """:class:`SqlRepository` over an asyncio driver; every call runs in a greenlet."""

    def __init__(self, config: DbConfig) -> None:
        super().__init__(config)
        dialect = dialect_for(config)
        executor = SqliteThreadExecutor if dialect.backend == "sqlite" else PooledExecutor
        self._executor = executor(dialect, config.pool_size)
        # Schema creation awaits: tasks wait their turn on an asyncio lock, not a thread lock.
        self._schema_lock = AsyncAdaptedLock()  # type: ignore[assignment]

    @property
    def pool(self) -> PooledExecutor | SqliteThreadExecutor:
        executor = self._executor
        assert isinstance(executor, (PooledExecutor, SqliteThreadExecutor))
        return executor
