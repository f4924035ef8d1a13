"""How SqlRepository talks to the database: transactions, retries, error translation.

CRUD calls are a few small statements each, so SQLAlchemy's per-statement machinery would cost
more than the database work (measured: 3-8x the raw driver on SQLite). The hot path therefore
compiles each Core statement once per dialect and runs it on the pooled DB-API connection
(:meth:`Executor.run`); schema changes and bulk inserts keep SQLAlchemy's Connection
(:meth:`Executor.run_core`). Both translate driver errors in one place.

Connections: even a pool checkout costs several times a point query on SQLite, so the hot path
keeps one DB-API connection per thread (as Django does), made through the engine so the same
connect hooks run, closed by ``dispose()`` or when its thread ends. A connection idle for a
while is pinged before use, and a transaction that fails because its connection died before
COMMIT was sent is run once more on a fresh connection: a server restart costs a reconnect, not
an exception. ``:memory:`` is one shared connection, so calls on it take turns.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .. import _batches
from ..errors import BackendUnavailableError, ChatDbError
from .dialects import RetryableError, SqlDialect, serialized

T = TypeVar("T")
_DEADLOCK_RETRIES = 5


class Tx:
    """One transaction on a DB-API cursor; statements are Core objects compiled once."""

    __slots__ = ("_compiled", "_dialect", "cursor")

    def __init__(
        self, cursor: Any, compiled: Callable[[Any], tuple[str, tuple[str, ...] | None]], dialect: Any
    ) -> None:
        self.cursor = cursor
        self._compiled = compiled
        self._dialect = dialect

    @property
    def dialect(self) -> Any:
        """SQLAlchemy's dialect of the connection (MySQL's tells MariaDB by ``is_mariadb``)."""
        return self._dialect

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        sql, names = self._compiled(statement)
        if names is None:
            self.cursor.execute(sql, params or {})
        else:
            values = params or {}
            self.cursor.execute(sql, tuple([values[name] for name in names]))
        return self.cursor

    def execute_many(self, statement: Any, rows: list[dict[str, Any]]) -> None:
        sql, names = self._compiled(statement)
        if names is None:
            self.cursor.executemany(sql, rows)
        else:
            self.cursor.executemany(sql, [tuple([row[name] for name in names]) for row in rows])

    def execute_once(self, statement: Any) -> Any:
        """A statement built for one call (values inline as parameters): compiled, not cached."""
        self.cursor.execute(*compile_once(statement, self._dialect))
        return self.cursor

    def first(self, statement: Any, params: dict[str, Any] | None = None) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.execute(statement, params).fetchone()
        return row

    def all(self, statement: Any, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self.execute(statement, params).fetchall())

    def scalar(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        row = self.first(statement, params)
        return None if row is None else row[0]

    def rowcount(self, statement: Any, params: dict[str, Any] | None = None) -> int:
        return int(self.execute(statement, params).rowcount)


def compile_once(statement: Any, dialect: Any) -> tuple[str, Any]:
    """SQL text and parameters (a tuple, or a dict for a named paramstyle) of a statement built
    for one call, for ``dialect``."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    params: Any = compiled.params
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup or ())
    return str(compiled), params


PING_AFTER_IDLE_SECONDS = 5.0


class _Held:
    """A thread's own DB-API connection."""

    __slots__ = ("conn", "dead", "last_used")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.last_used = time.monotonic()
        self.dead = False

    def close(self) -> None:
        self.dead = True
        with contextlib.suppress(Exception):  # a dead connection may fail to close; it is gone
            self.conn.close()


def _release(executor: weakref.ref[Executor], held: _Held) -> None:
    alive = executor()
    if alive is not None:
        alive._forget(held)
    else:
        held.close()


class Executor:
    """Owns the engine (made on first use) and runs transactions on it."""

    def __init__(self, dialect: SqlDialect) -> None:
        self.dialect = dialect
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        # :memory: is a single shared connection: calls take turns on it.
        self._lock = threading.RLock() if dialect.serialize else None
        self._sql: dict[int, tuple[str, tuple[str, ...] | None]] = {}
        self._begin_write = dialect.begin_statement(True)
        self._begin_read = dialect.begin_statement(False)
        self._local = threading.local()
        self._held: set[_Held] = set()
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._held_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = self.dialect.create_engine()
        return self._engine

    @property
    def threads_own_connections(self) -> bool:
        """Whether each thread that calls run() gets a connection of its own, so that several
        may run at once: not on :memory: (one shared connection); chatdb.aio's executors say
        False too (their run() is called in a greenlet, on the event loop)."""
        return not self.dialect.serialize

    def dispose(self) -> None:
        with self._held_lock:
            held, self._held = self._held, set()
            finalizers, self._finalizers = self._finalizers, []
        for finalizer in finalizers:
            finalizer.detach()
        for each in held:
            each.close()
        self._local = threading.local()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def compiled(self, statement: Any) -> tuple[str, tuple[str, ...] | None]:
        """SQL text and positional parameter order (None: named) for this dialect, cached by
        identity: only for the module-level statements, which live as long as the process."""
        key = id(statement)
        found = self._sql.get(key)
        if found is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            names = tuple(compiled.positiontup or ()) if compiled.positional else None
            found = self._sql[key] = (str(compiled), names)
        return found

    def render(self, statement: Any) -> tuple[str, Any]:
        """SQL text and parameters (tuple or dict, as the driver's paramstyle wants)."""
        compiled = statement.compile(dialect=self.engine.dialect)
        params: Any = compiled.params
        if compiled.positional:
            params = tuple(params[name] for name in compiled.positiontup or ())
        return str(compiled), params

    # -- the hot path ---------------------------------------------------------------------------

    def run(self, work: Callable[[Tx], T], *, write: bool = False, lone: bool = False) -> T:
        """``work`` in one transaction on this thread's connection; retried on deadlocks and,
        once, on a connection that died before anything was committed. ``lone``: a read of
        one statement, which SQLite runs as its own read transaction without BEGIN/COMMIT (a
        third of a point read's time there; the servers' drivers begin implicitly anyway)."""
        if self._lock is not None:
            with self._lock:
                return self._run(work, write, lone)
        return self._run(work, write, lone)

    def _run(self, work: Callable[[Tx], T], write: bool, lone: bool = False) -> T:
        begin = self._begin_write if write else None if lone else self._begin_read
        reconnected = False
        for attempt in range(_DEADLOCK_RETRIES):
            held = self._acquire()
            conn = held.conn
            committing = False
            try:
                cursor = conn.cursor()
                try:
                    if begin:
                        cursor.execute(begin)
                    result = work(Tx(cursor, self.compiled, self.engine.dialect))
                    committing = True
                    if begin:
                        cursor.execute("COMMIT")
                    else:
                        conn.commit()
                finally:
                    cursor.close()
                held.last_used = time.monotonic()
                return result
            except ChatDbError:
                self._rollback(held, begin)
                raise
            except Exception as exc:
                error = self._translate(exc, conn)
                if isinstance(error, BackendUnavailableError):
                    self._forget(held)
                else:
                    self._rollback(held, begin)
                if isinstance(error, RetryableError) and attempt < _DEADLOCK_RETRIES - 1:
                    continue
                if isinstance(error, BackendUnavailableError) and not committing and not reconnected:
                    reconnected = True
                    continue
                raise error from exc
            except BaseException:
                # Interrupted mid-transaction (KeyboardInterrupt; in chatdb.aio, a cancelled
                # task): the connection may be inside a transaction or mid-statement, so it is
                # not used again; closing it makes the server roll back whatever was not
                # committed. (:memory: cannot be closed without losing the database: rolled back.)
                if self.dialect.serialize:
                    self._rollback(held, begin)
                else:
                    self._forget(held)
                raise
            finally:
                self._release(held)
        raise AssertionError("unreachable")

    def _release(self, held: _Held) -> None:
        """After each transaction: a thread keeps its connection (chatdb.aio's pool takes it back)."""

    def _acquire(self) -> _Held:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and not held.dead:
            if time.monotonic() - held.last_used < PING_AFTER_IDLE_SECONDS or self._alive(held):
                return held
            self._forget(held)
        proxy = self._raw_connection()
        if self._lock is None:
            proxy.detach()  # ours for this thread's lifetime, not the pool's
        held = _Held(proxy.dbapi_connection)
        self._local.held = held
        with self._held_lock:
            self._held.add(held)
        if self._lock is None:
            # When the thread ends its connection closes; the finalizer holds the executor weakly,
            # so it never keeps a repository alive, and dispose() detaches it.
            finalizer = weakref.finalize(threading.current_thread(), _release, weakref.ref(self), held)
            with self._held_lock:
                self._finalizers.append(finalizer)
        return held

    def _raw_connection(self) -> Any:
        """A new pooled DB-API connection (SQLAlchemy's proxy), connect errors translated."""
        try:
            return self.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise self.dialect.translate(exc, connecting=True) from exc
        except self.engine.dialect.loaded_dbapi.Error as exc:
            # raw_connection() lets the driver's own error through (connect refused, bad login).
            raise self.dialect.translate(DBAPIError(None, None, exc), connecting=True) from exc

    def _alive(self, held: _Held) -> bool:
        if self.dialect.backend == "sqlite":
            return True
        try:
            return bool(self.engine.dialect.do_ping(held.conn))
        except Exception:  # any failure means: reconnect
            return False

    def _forget(self, held: _Held) -> None:
        with self._held_lock:
            self._held.discard(held)
        if getattr(self._local, "held", None) is held:
            self._local.held = None
        if self._lock is None:
            held.close()
        else:
            held.dead = True

    def _rollback(self, held: _Held, begin: str | None) -> None:
        try:
            if begin:
                held.conn.cursor().execute("ROLLBACK")
            else:
                held.conn.rollback()
        except Exception:  # the original error is what the caller needs
            self._forget(held)

    def _translate(self, exc: Exception, conn: Any) -> ChatDbError:
        if isinstance(exc, SQLAlchemyError):
            return self.dialect.translate(exc)
        dbapi = self.engine.dialect.loaded_dbapi
        if not isinstance(exc, dbapi.Error):
            raise exc
        gone = self.engine.dialect.is_disconnect(exc, conn, None)
        wrapped = DBAPIError(None, None, exc, connection_invalidated=gone)
        return self.dialect.translate(wrapped)

    # -- SQLAlchemy Connection path: DDL, bulk inserts ------------------------------------------

    def run_core(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                with serialized(self._lock), self._connect() as conn:
                    if write:
                        self.dialect.mark_write(conn)
                    try:
                        with conn.begin():
                            return work(conn)
                    except SQLAlchemyError as exc:
                        raise self.dialect.translate(exc) from exc
            except RetryableError:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise self.dialect.translate(exc, connecting=True) from exc

    def stream(
        self, statement: Any, batch_size: int, *, bulky: int | None = None
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Rows of a SELECT as lists of plain tuples from a server-side cursor, in one read
        transaction; the driver's ``fetchmany`` keeps bulk reads near a raw driver scan.
        ``bulky``: the index of a column whose values may be MBs each (message content with
        images): rows are then fetched and handed over in lists of about BATCH_BYTES of it at
        most (:mod:`chatdb._batches`), a first fetch of FIRST_ROWS sizing the next."""
        sql, params = self.render(statement)
        with serialized(self._lock), self._connect() as conn:
            try:
                with conn.begin():
                    cursor = self.dialect.server_cursor(conn.connection.dbapi_connection)
                    try:
                        cursor.execute(sql, params)
                        if bulky is None:
                            while rows := cursor.fetchmany(batch_size):
                                yield rows
                        else:
                            yield from _by_size(cursor, batch_size, bulky)
                    finally:
                        cursor.close()
            except SQLAlchemyError as exc:
                raise self.dialect.translate(exc) from exc
            except Exception as exc:
                if isinstance(exc, self.engine.dialect.loaded_dbapi.Error):
                    raise self.dialect.translate(DBAPIError(sql, None, exc)) from exc
                raise


def _by_size(cursor: Any, batch_size: int, column: int) -> Iterator[list[tuple[Any, ...]]]:
    """``cursor``'s rows in lists of at most ``batch_size`` rows and about BATCH_BYTES of
    ``column`` (text or bytes; its length is the measure), fetched in pieces sized by the
    bytes per row of the piece before."""
    budget = _batches.BATCH_BYTES
    pending: list[tuple[Any, ...]] = []
    size = 0
    piece = min(batch_size, _batches.FIRST_ROWS)
    while rows := cursor.fetchmany(piece):
        got = sum(len(value) for row in rows if (value := row[column]) is not None)
        pending += rows
        size += got
        if len(pending) >= batch_size or size >= budget:
            yield pending
            pending, size = [], 0
        piece = _batches.rows_within(budget - size, len(rows), got, batch_size - len(pending))
    if pending:
        yield pending
