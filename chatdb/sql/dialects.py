"""Everything that differs between SQLite, PostgreSQL and MySQL/MariaDB, in one place.

The repository asks for an operation (make the engine, begin a write, classify a driver error);
it never branches on a dialect name itself.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib
import itertools
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, bindparam, create_engine, event, insert, pool
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..config import DbConfig, redact_text
from ..errors import BackendError, BackendUnavailableError, ChatDbError, ConfigError

__all__ = ["SqlDialect", "dialect_for"]

_SQLITE_UNIQUE = {2067, 1555}  # SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
_MYSQL_DUP_ENTRY = 1062
_MYSQL_RETRY = {1213, 1205}  # deadlock, lock wait timeout
_MYSQL_DUP_KEYNAME = 1061
_PG_UNIQUE = "23505"
_PG_RETRY = {"40001", "40P01"}  # serialization failure, deadlock
_MYSQL_GONE = {2002, 2003, 2006, 2013, 2055}
# Access denied to a database, to a table command, to an operation; a storage engine unknown or
# disabled (a MySQL server without MyISAM, which the aggregation's temporary table asks for).
_MYSQL_DENIED = {1044, 1142, 1227, 1286, 3161}
_ROWID_END = 2**63 - 1  # the last part of an aggregation runs to the end (rows added since)


def _in_column_order(cursor: Any, bounds: list[str]) -> list[str]:
    """MySQL: ``bounds`` ordered, without equals, as ``messages.id`` compares them: parts are
    disjoint only between bounds in the column's order, which a case-insensitive collation (a
    Node-created table's ``utf8mb4_general_ci``) makes other than Python's ('_' < 'a', yet 'A'
    < '_'). Empty where the column's collation cannot be named safely (then one statement)."""
    if len(bounds) < 2:
        return bounds
    cursor.execute(
        "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = 'messages' AND column_name = 'id'"
    )
    row = cursor.fetchone()
    if not row or row[1] is None:
        return sorted(set(bounds))  # a binary column: bytes, as Python compares ASCII
    charset, collation = str(row[0]), str(row[1])
    if not all(re.fullmatch(r"[A-Za-z0-9_]+", name) for name in (charset, collation)):
        return []
    union = " UNION ALL ".join(["SELECT %s AS b"] * len(bounds))
    cursor.execute(
        f"SELECT b FROM (SELECT CONVERT(b USING {charset}) COLLATE {collation} AS b FROM ({union}) x) y "
        "GROUP BY b ORDER BY b",
        bounds,
    )
    return [str(found[0]) for found in cursor.fetchall()]


def id_bounds(low: str, high: str, count: int, seen: Sequence[str] = ()) -> list[str]:
    """``count - 1`` ids that cut ``[low, high]`` into ``count`` stretches, evenly where ids
    are spread evenly over their alphabet (random UUIDs, nanoids): interpolated over the first
    characters after the common prefix, each counted by its rank among the characters after
    it in ``low``, ``high`` and the ids ``seen`` (without any, among printable ASCII);
    increasing (in Python's order: see :func:`_in_column_order`), and valid strings in any
    character set. Bounds in the column's order split the rows exactly (each row is below a
    bound or not): an uneven spread of ids only makes the parts uneven. Empty where there is
    nothing to cut."""
    digits = 4
    prefix = next(
        (i for i, (a, b) in enumerate(zip(low, high, strict=False)) if a != b), min(len(low), len(high))
    )
    # (every character after the prefix: those right after it are a probe's, in a seek's id)
    found = {c for text in (low, high, *seen) for c in text[prefix:] if " " < c <= "~"}
    alphabet = sorted(found) if seen and len(found) > 1 else [chr(c) for c in range(33, 127)]
    base = len(alphabet)

    def number(text: str) -> int:
        value = 0
        for i in range(digits):
            c = text[prefix + i] if prefix + i < len(text) else ""
            # a character outside the alphabet counts as the next one up (or 0: none)
            rank = bisect.bisect_left(alphabet, c) if c else 0
            value = value * base + min(rank, base - 1)
        return value

    first, last = number(low), number(high)
    bounds: list[str] = []
    for k in range(1, count):
        value = first + (last - first) * k // count
        chars = [alphabet[value // base ** (digits - 1 - i) % base] for i in range(digits)]
        bound = low[:prefix] + "".join(chars)
        if low < bound <= high and (not bounds or bound > bounds[-1]):
            bounds.append(bound)
    return bounds


# The asyncio driver per server (chatdb.aio): aiomysql rather than asyncmy because its errors
# are PyMySQL's own classes, so one errno table (and is_disconnect) serves both sides. (SQLite
# has no asyncio driver here: chatdb.aio runs its transactions on threads, see aio/_sql.py.)
_ASYNC_DRIVERS = {"postgres": "psycopg_async", "mysql": "aiomysql"}


class UniqueViolation(ChatDbError):
    """A unique constraint failed; the repository turns it into the precise ConflictError."""


class RetryableError(ChatDbError):
    """A deadlock or serialization failure: the whole transaction may simply be run again."""


def _require(module: str, extra: str, what: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs the {module} driver: pip install 'chatdb[{extra}]'") from None


@dataclass(frozen=True)
class SqlDialect:
    """One SQL backend: how to connect to it and how to read its errors."""

    backend: str  # "sqlite" | "postgres" | "mysql"
    config: DbConfig

    # -- engine ---------------------------------------------------------------------------------

    @property
    def serialize(self) -> bool:
        """``:memory:`` is one shared connection, so calls on it must take turns."""
        return self.config.is_memory

    @property
    def location(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite file {self.config.sqlite_path}" if not self.serialize else "sqlite :memory:"
        url = make_url(self._url())
        return f"{self.backend} server {url.host or 'localhost'}:{url.port or self._default_port()}"

    def _default_port(self) -> int:
        return 5432 if self.backend == "postgres" else 3306

    def _url(self) -> URL:
        if self.backend == "postgres":
            url = make_url(self.config.postgres_url or "")
            return url.set(drivername="postgresql+psycopg")
        url = make_url(self.config.mysql_url or "")
        driver = url.drivername.partition("+")[2] or "pymysql"
        return url.set(drivername=f"mysql+{driver}", query={**url.query, "charset": "utf8mb4"})

    def create_engine(self) -> Engine:
        timeout = self.config.connect_timeout
        if self.backend == "sqlite":
            return self._sqlite_engine()
        if self.backend == "postgres":
            _require("psycopg", "postgres", "PostgreSQL")
            engine = create_engine(
                self._url(),
                pool_size=8,
                max_overflow=16,
                # Pool checkouts are rare (schema, streams, each thread's first connection: see
                # executor.py, which pings its per-thread connections itself), so always ping.
                pool_pre_ping=True,
                pool_reset_on_return=None,  # every transaction ends in COMMIT or ROLLBACK
                connect_args={"connect_timeout": max(1, round(timeout))},
            )
        else:
            driver = self._url().drivername.partition("+")[2]
            _require({"mysqldb": "MySQLdb"}.get(driver, driver), "mysql", "MySQL/MariaDB")
            engine = create_engine(
                self._url(),
                pool_size=8,
                max_overflow=16,
                pool_recycle=3600,
                pool_pre_ping=True,
                pool_reset_on_return=None,
                connect_args={"connect_timeout": max(1, round(timeout))},
            )
            event.listen(engine, "connect", _mysql_session)
        return engine

    def require_async_driver(self) -> None:
        """Raise ConfigError naming the extra when this backend's asyncio driver is missing."""
        _require("greenlet", "async", "chatdb.aio")
        if self.backend != "sqlite":
            module = {"postgres": "psycopg", "mysql": "aiomysql"}[self.backend]
            _require(module, "async", f"chatdb.aio on {self.backend}")

    def create_async_engine(self) -> Engine:
        """The engine of chatdb.aio on a server, over its asyncio driver: the sync face (run in a
        greenlet; see chatdb.aio._sql). Pooling is the caller's (NullPool), so no pool checkout
        nor pre-ping runs per call."""
        from sqlalchemy.ext.asyncio import create_async_engine

        self.require_async_driver()
        driver = _ASYNC_DRIVERS[self.backend]
        timeout = max(1, round(self.config.connect_timeout))
        url = self._url().set(drivername=f"{self._url().drivername.partition('+')[0]}+{driver}")
        options = {"poolclass": pool.NullPool, "connect_args": {"connect_timeout": timeout}}
        engine = create_async_engine(url, **options).sync_engine
        if self.backend == "mysql":
            event.listen(engine, "connect", _mysql_session)
        return engine

    def in_transaction(self, driver_connection: Any) -> bool:
        """Whether a driver's connection is inside a transaction (pool checks)."""
        if self.backend == "postgres":
            from psycopg.pq import TransactionStatus

            return bool(driver_connection.info.transaction_status != TransactionStatus.IDLE)
        if self.backend == "mysql":
            return bool(driver_connection.get_transaction_status())
        return bool(driver_connection.in_transaction)  # sqlite3

    def _sqlite_engine(self) -> Engine:
        path = self.config.sqlite_path
        if self.serialize:
            engine = create_engine(
                "sqlite+pysqlite:///:memory:",
                poolclass=pool.StaticPool,
                connect_args={"check_same_thread": False},
            )
        else:
            folder = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"sqlite_path folder {folder} cannot be created: {exc.strerror}") from None
            engine = create_engine(
                URL.create("sqlite+pysqlite", database=path),
                poolclass=pool.QueuePool,
                pool_size=8,
                max_overflow=24,
                pool_reset_on_return=None,
                connect_args={"check_same_thread": False, "timeout": 30.0},
            )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine

    # -- transactions ---------------------------------------------------------------------------

    def begin_statement(self, write: bool) -> str | None:
        """What opens a transaction on a raw connection: SQLite's driver runs in autocommit mode
        here and takes its write lock up front; the servers' drivers begin implicitly."""
        if self.backend != "sqlite":
            return None
        return "BEGIN IMMEDIATE" if write else "BEGIN"

    def index_build_sql(self, ddl: str) -> list[str]:
        """The statements that build an index with ``ddl``, in one transaction. PostgreSQL gets
        more memory to sort in (the server's, not this process's). SQLite sorts a new index in
        memory up to the connection's cache size, in a connection other than the bulk writer's
        (whose page cache stays full): a quarter of that cache builds chatdb's indexes as fast
        (0.8 s each on 1,000,000 messages) and keeps the peak RSS of a large import ~100 MB
        lower."""
        if self.backend == "postgres":
            # The server's memory, for this transaction only: the sort of a million messages'
            # keys then stays in memory instead of spilling to disk at the default 64 MB.
            return ["SET LOCAL maintenance_work_mem = '256MB'", ddl]
        if self.backend != "sqlite":
            return [ddl]
        return [f"PRAGMA cache_size={_SQLITE_CACHE // 4}", ddl, f"PRAGMA cache_size={_SQLITE_CACHE}"]

    def mark_write(self, conn: Connection) -> None:
        """Before ``begin()``: SQLite takes its write lock up front (BEGIN IMMEDIATE), so a
        read-then-write transaction cannot fail half-way with "database is locked"."""
        if self.backend == "sqlite":
            conn.execution_options(chatdb_write=True)

    @property
    def catalog_sql(self) -> str:
        """One read of the catalog: the names of this database's tables and indexes, and of the
        columns of ``chats`` as ``chats.<column>`` (what ``ensure_schema`` would create)."""
        if self.backend == "sqlite":
            return (
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') "
                "UNION ALL SELECT 'chats.' || name FROM pragma_table_info('chats')"
            )
        if self.backend == "postgres":
            return (
                "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
                "UNION ALL SELECT indexname FROM pg_catalog.pg_indexes WHERE schemaname = current_schema() "
                "UNION ALL SELECT 'chats.' || column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'chats'"
            )
        return (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
            "UNION ALL SELECT index_name FROM information_schema.statistics WHERE table_schema = DATABASE() "
            "UNION ALL SELECT CONCAT('chats.', column_name) FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = 'chats'"
        )

    @property
    def column_facts_sql(self) -> str | None:
        """MySQL/MariaDB: (table, column, data type, collation, max characters) of chatdb's
        tables, to see where a Node-created schema differs (see schema.mysql_limits); None
        elsewhere, where the Node app's types are chatdb's."""
        if self.backend != "mysql":
            return None
        return (
            "SELECT table_name, column_name, LOWER(data_type), collation_name, character_maximum_length "
            "FROM information_schema.columns WHERE table_schema = DATABASE() "
            "AND table_name IN ('chats', 'messages', 'users', 'api_keys')"
        )

    @property
    def index_facts_sql(self) -> str | None:
        """MySQL/MariaDB: (table, index, column, prefix length or NULL), columns in order; None
        elsewhere (SQLAlchemy's inspector tells the rest, with no prefixes to see)."""
        if self.backend != "mysql":
            return None
        return (
            "SELECT table_name, index_name, column_name, sub_part FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() ORDER BY table_name, index_name, seq_in_index"
        )

    def ignore_duplicate_index(self, exc: BaseException | None) -> bool:
        """MySQL has no CREATE INDEX IF NOT EXISTS: a concurrent creator wins, we go on."""
        orig = getattr(exc, "orig", None)
        return self.backend == "mysql" and _errno(orig) == _MYSQL_DUP_KEYNAME

    def server_cursor(self, dbapi_conn: Any) -> Any:
        """A cursor that fetches from the server in batches instead of buffering the result."""
        if self.backend == "postgres":
            return dbapi_conn.cursor(f"chatdb_scan_{id(dbapi_conn):x}")  # (positional: the asyncio adapter)
        if self.backend == "mysql":
            if hasattr(dbapi_conn, "driver_connection"):  # chatdb.aio's aiomysql, adapted
                return dbapi_conn.cursor(server_side=True)
            import pymysql.cursors

            if dbapi_conn.__class__.__module__.startswith("pymysql"):
                return dbapi_conn.cursor(pymysql.cursors.SSCursor)
            import MySQLdb.cursors

            return dbapi_conn.cursor(MySQLdb.cursors.SSCursor)
        return dbapi_conn.cursor()

    # -- aggregations in parts (chatdb.sql.aggregate) -------------------------------------------

    @property
    def aggregates_in_parts(self) -> bool:
        """Whether a large aggregation is worth running as parts at once, each on its own
        connection: not on PostgreSQL, which runs one statement in its parallel workers."""
        return self.backend != "postgres"

    @property
    def aggregate_parts_limits(self) -> tuple[int, int]:
        """(How many parts of an aggregation to run at once for each core, at most how many in
        all) (see ``SqlRepository.aggregate_parts``). MySQL/MariaDB: three, up to six. A part's
        server thread waits on its reads (InnoDB's pages from disk, where the buffer pool is
        smaller than the table: 128 MB here, for a 500 MB table at 1M messages) and its
        temporary tables' writes: with one part a core the server kept 1.55 of 2 cores busy,
        with two 1.76-1.78 (1M messages, best of 3 alternating: month 5.85 -> 5.25 s, day 6.19
        -> 5.77 s, model 5.72 -> 4.96 s, user 7.83 -> 7.00 s); with three, best of 4
        alternating in three runs, month 6.27-6.33 -> 5.78-5.85 s, day 6.36 -> 6.08 s, model
        5.73 -> 5.61 s, user 7.23-7.54 -> 7.02-7.22 s (four a core: slower again, month 5.99 s
        and user 7.42 s). The server's cores are not known here: the client's stand in.
        SQLite: one, up to four; its child processes keep their cores busy, and more were no
        faster."""
        return (3, 6) if self.backend == "mysql" else (1, 4)

    @property
    def aggregates_in_processes(self) -> bool:
        """Whether the parts run in child processes (``chatdb._sqlite_aggregate`` says why): on
        a SQLite file (``:memory:`` is one connection and runs no parts)."""
        return self.backend == "sqlite" and not self.serialize

    def row_estimate(self, cursor: Any, table: str) -> int:
        """The server's estimate of ``table``'s row count, for ``aggregate.build`` (PostgreSQL:
        ``reltuples``, kept by autovacuum and index builds; MySQL/MariaDB: ``table_rows``,
        InnoDB's sampled statistics); 0 where unknown, and on SQLite."""
        if self.backend == "postgres":
            cursor.execute("SELECT reltuples FROM pg_catalog.pg_class WHERE oid = to_regclass(%s)", (table,))
        elif self.backend == "mysql":
            cursor.execute(
                "SELECT table_rows FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                (table,),
            )
        else:
            return 0
        row = cursor.fetchone()
        return max(0, int(row[0])) if row and row[0] is not None else 0

    def aggregate_parts(self, cursor: Any, count: int, min_rows: int) -> list[tuple[Any, Any]]:
        """The ``count`` parts (``aggregate.build``'s ``part``) of an aggregation over the
        messages, none under ``min_rows`` messages. SQLite: rowid ranges, from the B-tree's two
        ends (two subqueries: a query with both min() and max() scans the whole table). MySQL:
        ranges of the primary key, in which InnoDB stores the rows, so that each part reads
        only its own stretch of the table (``None``: no bound), from the server's row estimate
        and the smallest and largest ids (no scan); see :func:`id_bounds`."""
        if self.backend == "sqlite":
            cursor.execute("SELECT (SELECT min(rowid) FROM messages), (SELECT max(rowid) FROM messages)")
            low, high = cursor.fetchone()
            if low is None or high is None or high - low + 1 < min_rows:
                return []
            step = (high - low + 1) / count
            bounds = [low + round(i * step) for i in range(count)] + [_ROWID_END]
            return list(itertools.pairwise(bounds))
        cursor.execute(
            "SELECT table_rows, (SELECT min(id) FROM messages), (SELECT max(id) FROM messages) "
            "FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'messages'"
        )
        row = cursor.fetchone()
        if not row or int(row[0] or 0) < min_rows or row[1] is None:
            return []
        low, high = str(row[1]), str(row[2])
        # The ids at 16 probes between the two: index seeks, which show the ids' alphabet.
        probes, seen = id_bounds(low, high, 17), []
        if probes:
            seek = "(SELECT min(id) FROM messages WHERE id >= %s)"
            cursor.execute("SELECT " + ", ".join([seek] * len(probes)), probes)
            seen = [str(found) for found in cursor.fetchone() if found is not None]
        inner = _in_column_order(cursor, id_bounds(low, high, count, seen))
        return list(itertools.pairwise([None, *inner, None])) if inner else []

    def stop_statements(self, connections: list[Any]) -> list[str]:
        """Stop the statements other threads are running on ``connections`` (their DB-API
        connections, or on SQLite files the parts' child processes). SQLite's are interrupted
        here (the one call sqlite3 allows from another thread; a child process is killed); for
        MySQL the ``KILL QUERY`` statements are returned, to run on a connection of the
        caller's own. Errors are ignored: a statement may have just ended."""
        if self.backend == "mysql":
            return [f"KILL QUERY {int(conn.thread_id())}" for conn in connections]
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.interrupt()
        return []

    def is_denied(self, exc: BaseException) -> bool:
        """A MySQL driver error refusing a privilege the user lacks (CREATE TEMPORARY TABLES), or
        the storage engine a temporary table asks for."""
        return self.backend == "mysql" and _errno(exc) in _MYSQL_DENIED

    # -- errors ---------------------------------------------------------------------------------

    def translate(self, exc: SQLAlchemyError, *, connecting: bool = False) -> ChatDbError:
        """The chatdb error for a driver error; its message never holds the password."""
        orig = getattr(exc, "orig", None)
        if self._is_unique(orig):
            return UniqueViolation(str(orig))
        if self._is_retryable(orig):
            return RetryableError(str(orig))
        reason = _first_line(orig if orig is not None else exc)
        if connecting or self._is_gone(exc, orig):
            return BackendUnavailableError(f"cannot reach {self.location}: {self._clean(reason)}")
        return BackendError(f"{self.backend} error: {self._clean(reason)}")

    def _clean(self, text: str) -> str:
        return redact_text(text, self.config.postgres_url, self.config.mysql_url)

    def _is_unique(self, orig: Any) -> bool:
        if self.backend == "sqlite":
            return (
                isinstance(orig, sqlite3.IntegrityError)
                and getattr(orig, "sqlite_errorcode", 0) in _SQLITE_UNIQUE
            )
        if self.backend == "postgres":
            return getattr(orig, "sqlstate", None) == _PG_UNIQUE
        return _errno(orig) == _MYSQL_DUP_ENTRY

    def _is_retryable(self, orig: Any) -> bool:
        if self.backend == "postgres":
            return getattr(orig, "sqlstate", None) in _PG_RETRY
        if self.backend == "mysql":
            return _errno(orig) in _MYSQL_RETRY
        return False

    def _is_gone(self, exc: SQLAlchemyError, orig: Any) -> bool:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        if self.backend == "mysql":
            return _errno(orig) in _MYSQL_GONE
        if self.backend == "sqlite":
            return isinstance(orig, sqlite3.OperationalError) and "unable to open" in str(orig)
        return False


def _errno(orig: Any) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_SQLITE_CACHE = -65536  # KiB when negative: 64 MB


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver's own transaction handling is off; _sqlite_begin emits BEGIN itself.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives a crash of the process; a power loss may lose the last
    # few commits but never corrupts the database (docs/durability in the README).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # 64 MB of page cache (allocated only as used): bulk imports and scans of large databases
    # otherwise re-read the random-UUID primary key index from the OS for every batch.
    cursor.execute(f"PRAGMA cache_size={_SQLITE_CACHE}")
    # A checkpoint (copying the WAL into the database, with an fsync) every 64 MB of WAL rather
    # than SQLite's 4 MB: a bulk import's fsyncs took half its write time (25.5 s -> 12.5 s for
    # 1,000,000 demo messages), with the same durability (synchronous=NORMAL is unchanged).
    cursor.execute("PRAGMA wal_autocheckpoint=16384")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("chatdb_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _mysql_session(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # Strict mode: an over-long value is an error, never silently truncated.
    cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES')")
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    cursor.close()


def insert_skipping_existing(backend: str, table: Table) -> Any:
    """INSERT that skips rows whose key already exists and still fails on any other error
    (MySQL's INSERT IGNORE would also truncate over-long values, so it is not used)."""
    values: dict[str, Any] = {column.name: bindparam(column.name) for column in table.c}
    if backend == "sqlite":
        return insert(table).values(values).prefix_with("OR IGNORE")
    if backend == "postgres":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(values).on_conflict_do_nothing()
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    stmt = mysql_insert(table).values(values)
    return stmt.on_duplicate_key_update({"id": stmt.inserted.id})


# -- the bulk path (import_rows) -------------------------------------------------------------------

# MySQL/MariaDB: the largest multi-row INSERT statement import_rows sends (but a row larger than
# this goes alone), kept under the server's default max_allowed_packet (16 MB).
MYSQL_STATEMENT_BYTES = 8 << 20


def import_chunk(backend: str, cursor: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]],
                 *, fresh: bool) -> int:  # fmt: skip
    """Write ``rows`` (tuples in ``columns`` order) into ``table`` through the backend's bulk
    path in the open transaction, skipping rows whose id (or another unique key) exists;
    returns the rows inserted. ``fresh``: the table was empty when the import began and only
    this import writes to it, so nothing can conflict (MySQL then needs no count of existing ids).

    * SQLite: one prepared ``INSERT OR IGNORE`` run for every row (``executemany``); its
      rowcount is the rows inserted.
    * PostgreSQL: ``COPY`` into a session's temporary staging table (emptied at each commit),
      then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, whose rowcount is the rows inserted
      (chatdb.aio's cursors have no COPY: they fill the staging table with ``executemany``).
      When ``fresh``, ``COPY`` goes straight into the table, behind a savepoint: should a row
      conflict after all (another writer), the chunk takes the staging path instead.
    * MySQL/MariaDB: multi-row ``INSERT ... ON DUPLICATE KEY UPDATE id = id`` statements of up
      to MYSQL_STATEMENT_BYTES, built here (strict mode stays in force, unlike INSERT IGNORE or
      LOAD DATA LOCAL, which turn over-long values into truncations; LOCAL INFILE would also
      let the server read any file of the client, so it stays off); the rows inserted are
      counted from the ids already present, since the affected-row count cannot tell an insert
      from a match.
    """
    names = ", ".join(columns)
    if backend == "sqlite":
        marks = ", ".join("?" * len(columns))
        cursor.executemany(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})", rows)
        return int(cursor.rowcount)
    if backend == "postgres":
        if fresh and hasattr(cursor, "copy") and _copy_into(cursor, table, names, rows):
            return len(rows)
        stage = f"chatdb_stage_{table}"
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        if hasattr(cursor, "copy"):
            with cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:  # chatdb.aio's adapted asyncio cursor, which has no COPY: a prepared INSERT
            marks = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {stage} ({names}) VALUES ({marks})", rows)
        cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} ON CONFLICT DO NOTHING")
        return int(cursor.rowcount)
    existing = 0
    if not fresh:
        ids = [row[0] for row in rows]  # (id is the first import column of every table)
        for start in range(0, len(ids), 10_000):
            piece = ids[start : start + 10_000]
            cursor.execute(
                f"SELECT COUNT(*) FROM {table} WHERE id IN ({', '.join(['%s'] * len(piece))})", piece
            )
            existing += int(cursor.fetchone()[0])
    head, tail = f"INSERT INTO {table} ({names}) VALUES ", " ON DUPLICATE KEY UPDATE id = id"
    server_status = getattr(getattr(cursor, "connection", None), "server_status", None)
    if isinstance(server_status, int) and not server_status & _MYSQL_NO_BACKSLASH_ESCAPES:
        for values in _mysql_values(rows):
            cursor.execute(head + values + tail)
    else:  # chatdb.aio's adapted cursor, or a server without backslash escapes: the driver's own
        marks = ", ".join(["%s"] * len(columns))
        cursor.executemany(f"{head}({marks}){tail}", rows)
    return len(rows) - existing


_MYSQL_NO_BACKSLASH_ESCAPES = 512  # SERVER_STATUS_NO_BACKSLASH_ESCAPES
_MYSQL_SPECIAL = re.compile("[" + re.escape("\\\0\n\r\x1a'\"") + "]")


def _mysql_literal(value: Any) -> str:
    """A value as a MySQL string literal (backslash escapes, as PyMySQL writes them): found
    special characters are replaced in C, where PyMySQL's per-value ``str.translate`` took
    most of a bulk insert's time on text that is not ASCII."""
    if value is None:
        return "NULL"
    text = value if value.__class__ is str else str(value)
    if _MYSQL_SPECIAL.search(text) is not None:
        text = (
            text.replace("\\", "\\\\")
            .replace("\0", "\\0")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\x1a", "\\Z")
            .replace("'", "\\'")
            .replace('"', '\\"')
        )
    return "'" + text + "'"


def _mysql_values(rows: list[tuple[Any, ...]]) -> Iterator[str]:
    """The VALUES lists of multi-row INSERTs of about MYSQL_STATEMENT_BYTES at most each (a
    longer row goes alone; a character counts 1 here, up to 4 bytes in utf8mb4, so the budget
    is a quarter of the statement's)."""
    budget = MYSQL_STATEMENT_BYTES // 4
    piece: list[str] = []
    size = 0
    for row in rows:
        item = "(" + ", ".join([_mysql_literal(value) for value in row]) + ")"
        if piece and size + len(item) > budget:
            yield ", ".join(piece)
            piece, size = [], 0
        piece.append(item)
        size += len(item) + 2
    if piece:
        yield ", ".join(piece)


def _copy_into(cursor: Any, table: str, names: str, rows: list[tuple[Any, ...]]) -> bool:
    """PostgreSQL: COPY ``rows`` into ``table`` itself; False (and nothing written) when one of
    them violates a unique constraint."""
    cursor.execute("SAVEPOINT chatdb_bulk")
    try:
        with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) != _PG_UNIQUE:
            raise
        cursor.execute("ROLLBACK TO SAVEPOINT chatdb_bulk")
        return False
    cursor.execute("RELEASE SAVEPOINT chatdb_bulk")
    return True


def dialect_for(config: DbConfig) -> SqlDialect:
    if config.driver not in ("sqlite", "postgres", "mysql"):
        raise ConfigError(f"driver {config.driver!r} is not a SQL backend")
    return SqlDialect(config.driver, config)


@contextmanager
def serialized(lock: threading.RLock | None) -> Iterator[None]:
    if lock is None:
        yield
    else:
        with lock:
            yield
