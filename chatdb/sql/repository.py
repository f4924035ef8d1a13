"""``SqlRepository``: the one repository class for SQLite, PostgreSQL and MySQL/MariaDB.

Each storage hook reads as build → execute → map: the statements are module-level Core objects
(pure, compiled once per dialect by the executor), :class:`~chatdb.sql.executor.Executor` runs
them in one transaction, and :mod:`chatdb.sql.mapping` turns rows into models. Dialect
differences are asked of :mod:`chatdb.sql.dialects`; nothing here branches on a dialect name.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Index,
    Select,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateTable, DropIndex

from .. import _batches, _codec
from .._aggregate import AggregateQuery, PartSums
from .._base import (
    IMPORT_COLUMNS,
    SCAN_COLUMNS,
    TABLE_NAMES,
    MessageIdTaken,
    RepositoryBase,
    _DraftMessage,
    check_import,
    check_scan,
    check_values,
)
from ..config import DbConfig
from ..errors import (
    BackendError,
    DuplicateApiKeyError,
    DuplicateUsernameError,
    SchemaUpgradeError,
    SchemaWarning,
    ValidationError,
)
from ..models import ApiKey, Chat, Message, User, UserWithPasswordHash
from . import aggregate, arrow_scan, mapping
from .dialects import SqlDialect, UniqueViolation, dialect_for, import_chunk
from .executor import Executor, Tx, compile_once
from .schema import (
    TABLES,
    ColumnFact,
    IndexFact,
    api_keys,
    chats,
    exact_collation,
    index_sql,
    messages,
    mysql_limits,
    upgrade_plan,
    users,
)

__all__ = ["SqlRepository", "build_scan"]

T = TypeVar("T")

_C, _M, _U, _K = chats.c, messages.c, users.c, api_keys.c
_CHAT_COLUMNS = (_C.id, _C.title, _C.session_id, _C.user_id, _C.created_at, _C.updated_at)
_MESSAGE_COLUMNS = (_M.id, _M.chat_id, _M.role, _M.content, _M.created_at, _M.metadata)
_KEY_COLUMNS = (_K.id, _K.user_id, _K.name, _K.key_prefix, _K.created_at, _K.last_used_at, _K.revoked_at)
_USER_COLUMNS = (_U.id, _U.username, _U.created_at, _U.updated_at)


def _p(name: str) -> Any:
    return bindparam(name)


def _insert_all(table: Any) -> Any:
    return insert(table).values({column.name: bindparam(column.name) for column in table.c})


# -- statements (pure; compiled once per dialect) ---------------------------------------------------

_INSERT_CHAT = _insert_all(chats)
_SELECT_CHAT = select(*_CHAT_COLUMNS).where(_C.id == _p("chat_id"), _C.user_id == _p("user_id"))
_LOCK_CHAT = _SELECT_CHAT.with_for_update()
_LOCK_ANY_CHAT = select(*_CHAT_COLUMNS).where(_C.id == _p("chat_id")).with_for_update()
_COUNT_CHATS = select(func.count()).select_from(chats).where(_C.user_id == _p("user_id"))
_PAGE_CHATS = (
    select(*_CHAT_COLUMNS)
    .where(_C.user_id == _p("user_id"))
    .order_by(_C.updated_at.desc(), _C.id.desc())
    .limit(_p("limit"))
    .offset(_p("offset"))
)
_DELETE_CHAT = delete(chats).where(_C.id == _p("chat_id"), _C.user_id == _p("user_id"))
_DELETE_CHAT_MESSAGES = delete(messages).where(_M.chat_id == _p("chat_id"))
_BUMP_CHAT = update(chats).where(_C.id == _p("chat_id")).values(updated_at=_p("updated_at"))
_TOUCH_CHAT = {
    (): _BUMP_CHAT,
    ("title",): update(chats)
    .where(_C.id == _p("chat_id"))
    .values(title=_p("title"), updated_at=_p("updated_at")),
    ("session_id",): update(chats)
    .where(_C.id == _p("chat_id"))
    .values(session_id=_p("session_id"), updated_at=_p("updated_at")),
}

_INSERT_MESSAGE = _insert_all(messages)
# The chat's last message, from the (chat_id, created_at) index: another writer may have set
# chats.updated_at earlier than it (the Node app writes its own clock there).
_LAST_MESSAGE_AT = select(func.max(_M.created_at)).where(_M.chat_id == _p("chat_id"))
_COUNT_MESSAGES = select(func.count()).select_from(messages).where(_M.chat_id == _p("chat_id"))
_PAGE_MESSAGES = (
    select(*_MESSAGE_COLUMNS)
    .where(_M.chat_id == _p("chat_id"))
    .order_by(_M.created_at, _M.id)
    .limit(_p("limit"))
    .offset(_p("offset"))
)
_OWNS_CHAT = select(_C.id).where(_C.id == _p("chat_id"), _C.user_id == _p("user_id"))
_SELECT_MESSAGE = select(*_MESSAGE_COLUMNS).where(_M.id == _p("message_id"))
_SELECT_OWNED_MESSAGE = (
    select(*_MESSAGE_COLUMNS)
    .join(chats, _C.id == _M.chat_id)
    .where(_M.id == _p("message_id"), _C.user_id == _p("user_id"))
)

_INSERT_USER = _insert_all(users)
_SELECT_USER_BY = {
    "username": select(*_USER_COLUMNS, _U.password_hash).where(_U.username == _p("value")),
    "id": select(*_USER_COLUMNS, _U.password_hash).where(_U.id == _p("value")),
}
_USER_KEY_INDEX = {"id": 0, "username": 1}
_COUNT_USERS = select(func.count()).select_from(users)
_PAGE_USERS = select(*_USER_COLUMNS).order_by(_U.created_at, _U.id).limit(_p("limit")).offset(_p("offset"))

_INSERT_KEY = _insert_all(api_keys)
_SELECT_ACTIVE_KEY = select(*_KEY_COLUMNS, _K.key_hash).where(
    _K.key_hash == _p("key_hash"), _K.revoked_at.is_(None)
)
_LIST_KEYS = (
    select(*_KEY_COLUMNS).where(_K.user_id == _p("user_id")).order_by(_K.created_at.desc(), _K.id.desc())
)
_OWNED_KEY = select(_K.revoked_at).where(_K.id == _p("key_id"), _K.user_id == _p("user_id"))
_REVOKE_KEY = (
    update(api_keys)
    .where(_K.id == _p("key_id"), _K.user_id == _p("owner"), _K.revoked_at.is_(None))
    .values(revoked_at=_p("now"))
)
_TOUCH_KEY = update(api_keys).where(_K.id == _p("key_id")).values(last_used_at=_p("now"))


# What ensure_schema creates, as the catalog names it (see SqlDialect.catalog_sql).
_SCHEMA_NAMES = {
    *TABLES,
    *(index.name for table in TABLES.values() for index in table.indexes if index.name),
    "chats.user_id",
}
# The index MySQL is told to read messages by (see build_scan): schema.py's on (created_at, id).
_BY_CREATED = next(
    str(index.name) for index in messages.indexes if [c.name for c in index.columns] == ["created_at", "id"]
)

# A long message content as its parts' type and text only (SQLite 3.44+: the native scan's own
# library, see build_scan): every other field of a part, an image's base64 payload above all,
# stays in the database. Content that is not a JSON array is passed on as it is.
SLIM_CONTENT_BYTES = 65_536
_SLIM_CONTENT = (
    f"CASE WHEN octet_length(messages.content) > {SLIM_CONTENT_BYTES} AND json_valid(messages.content) "
    "AND json_type(messages.content) = 'array' THEN (SELECT json_group_array(CASE WHEN type = 'object' "
    "THEN json_object('type', value -> '$.type', 'text', value -> '$.text') ELSE value END ORDER BY key) "
    "FROM json_each(messages.content)) ELSE messages.content END"
)


def build_scan(
    table: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    after: tuple[str, str] | None = None,
    stored: bool = False,
    null_as: str | None = None,
    owner: bool = True,
    slim_content: bool = False,
    force_index: bool = True,
) -> Select[Any]:
    """The ordered, filtered SELECT behind ``scan_rows`` (pure; filters become WHERE clauses).
    ``null_as`` selects every column that can be NULL as ``ifnull(column, null_as)`` (for
    Arrow drivers that infer a column's type from its first values; the others are not
    wrapped, as SQLite copies every value a function returns). ``owner=False`` leaves out the
    messages' ``user_id`` (and the join with chats that finds it) for a caller that adds it
    itself. ``slim_content`` (SQLite 3.44+ only) selects a message content over
    SLIM_CONTENT_BYTES as its parts' ``type`` and ``text`` only, which is all an export reads:
    25,000 rows holding images overflowed an Arrow string column (2 GiB) in the native scan,
    and carried megabytes per image that the export then skipped. ``force_index=False`` leaves
    out MySQL's index hint, for a database that lacks the index (reads do not create it)."""
    source = TABLES[_table_name(table)]
    names = IMPORT_COLUMNS[source.name] if stored else SCAN_COLUMNS[source.name]
    joined = source is messages and not stored
    if joined and not owner:
        names, joined = tuple(name for name in names if name != "user_id"), user_id is not None
    columns: list[Any] = [_C.user_id if joined and name == "user_id" else source.c[name] for name in names]
    if null_as is not None:
        columns = [
            func.ifnull(column, null_as).label(name)
            if column.nullable or (joined and name == "user_id")  # (an outer join's column)
            else column
            for column, name in zip(columns, names, strict=True)
        ]
    if slim_content and source is messages and not stored:  # (content is NOT NULL: never wrapped)
        columns[names.index("content")] = literal_column(_SLIM_CONTENT).label("content")
    statement = select(*columns)
    if joined:
        statement = statement.select_from(messages.outerjoin(chats, _C.id == _M.chat_id))
    if source is messages and user_id is None and force_index:
        # Without a range on created_at, MySQL/MariaDB sort the whole table (rows, content and
        # all) instead of reading the (created_at, id) index in order: 1.1 s vs 0.7 s for
        # 200,000 messages, and 0.5 s before the first row. (With a user, its chats lead.)
        # (Every MySQL/MariaDB engine here is SQLAlchemy's "mysql" dialect: see dialects.py.)
        statement = statement.with_hint(messages, f"FORCE INDEX ({_BY_CREATED})", "mysql")
    created, key = source.c.created_at, source.c.id
    if since is not None:
        statement = statement.where(created >= _codec.format_ts(since))
    if until is not None:
        statement = statement.where(created < _codec.format_ts(until))
    if user_id is not None:
        owned_by = _C.user_id if source is messages else source.c.get("user_id", source.c.id)
        statement = statement.where(owned_by == user_id)
    if after is not None:
        stamp, last_id = after
        statement = statement.where(or_(created > stamp, and_(created == stamp, key > last_id)))
    return statement.order_by(created, key)


_PG_INVALID_TEXT = "22P02"  # invalid_text_representation: text that is not JSON cast to jsonb


def _aggregate(
    tx: Tx,
    dialect: SqlDialect,
    query: AggregateQuery,
    lenient: bool,
    part: tuple[Any, Any] | None = None,
    parts: int = 1,
    started: Callable[[Any], None] | None = None,
) -> list[tuple[Any, ...]]:
    if started is not None:
        started(tx.cursor.connection)  # (so that the caller can stop this statement)
    backend = dialect.backend
    collation = exact_collation(tx.dialect)
    before, after = aggregate.settings(backend, parts)
    for statement in before:
        tx.cursor.execute(statement)
    try:
        if lenient:
            tx.cursor.execute(aggregate.PG_TRY_JSONB)
        try:
            sizes = {
                table: dialect.row_estimate(tx.cursor, table) for table in aggregate.estimated(backend, query)
            }
            statements = aggregate.build(
                backend, query, lenient=lenient, part=part, collation=collation,
                messages=sizes.get("messages", 0), chats=sizes.get("chats", 0),
            )  # fmt: skip
            rows = _aggregate_rows(tx, *statements)
        except Exception as exc:
            if not dialect.is_denied(exc):
                raise
            # A user without the CREATE TEMPORARY TABLES privilege (a read-only reporting
            # account), or a MySQL server without MyISAM: the one statement, which MariaDB runs
            # slower.
            rows = _aggregate_rows(
                tx, *aggregate.build(backend, query, part=part, temporary=False, collation=collation)
            )
        return aggregate.split_rows(query, rows)
    finally:
        for statement in after:
            tx.cursor.execute(statement)


def _aggregate_rows(tx: Tx, statements: list[str], params: dict[str, Any]) -> list[Any]:
    rows: list[Any] = []
    for statement in _bound(statements, params):
        cursor = tx.execute_once(statement)
        if cursor.description is not None:
            rows.extend(_whole_numbers(cursor.fetchall()))
    return rows


def _whole_numbers(rows: list[Any]) -> list[Any]:
    """``rows`` with each whole Decimal (a server's SUM of integers: MySQL's and PostgreSQL's
    are DECIMAL and numeric) as an int, as soon as they are fetched: a Decimal takes 104 bytes,
    an int 28-32, and a month report's four MariaDB parts hold about 5,000 group rows each at
    once, most of their bytes in Decimals (the report's peak of Python allocations at 1M
    messages: 25.3 MB, 17.3 MB without them)."""
    return [
        tuple(v if v.__class__ is not Decimal or v != v.to_integral_value() else int(v) for v in row)
        if any(v.__class__ is Decimal for v in row)
        else row
        for row in rows
    ]


def _bound(statements: list[str], params: dict[str, Any]) -> list[Any]:
    """Each statement with the parameters it names (a statement may not name them all)."""
    return [
        text(sql).bindparams(
            **{name: value for name, value in params.items() if re.search(rf":{name}\b", sql)}
        )
        for sql in statements
    ]


def _added_to(sums: PartSums, part: Callable[[], list[tuple[Any, ...]]]) -> None:
    sums.add(part())


class _ChildPart:
    """A part running in a child process, stopped as a part on a thread is (``interrupt()``)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def interrupt(self) -> None:
        self.process.kill()


# The child's module, run as a script without site-packages: it needs the standard library only,
# and ``-m chatdb._sqlite_aggregate`` first imported the chatdb package (asyncio, the aio
# repository, its config) and the site's path hooks: 0.08-0.09 s before its first statement instead of 0.02 s,
# paid by every part of every SQLite report (a 1M-message report takes 1.1-1.6 s).
_AGGREGATE_CHILD = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_sqlite_aggregate.py"
)


def _aggregate_in_child(
    path: str,
    engine_dialect: Any,
    query: AggregateQuery,
    part: tuple[int, int],
    parts: int,
    started: Callable[[Any], None],
) -> list[tuple[Any, ...]]:
    """One part of a SQLite aggregation, run by a child process (:mod:`chatdb._sqlite_aggregate`
    says why); the same statements and rows as :func:`_aggregate` on a thread."""
    before, _ = aggregate.settings("sqlite", parts)
    statements, params = aggregate.build("sqlite", query, part=part)
    request = {
        "path": path,
        "before": list(before),
        "statements": [list(compile_once(each, engine_dialect)) for each in _bound(statements, params)],
    }
    child = subprocess.Popen(
        [sys.executable, "-S", "-P", _AGGREGATE_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_batches.child_env(),
    )
    try:
        started(_ChildPart(child))
        out, err = child.communicate(json.dumps(request).encode())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise BackendError(
            f"sqlite error during aggregation: {_batches.child_failure(err, child.returncode)}"
        )
    return aggregate.split_rows(query, marshal.loads(out))


def _table_name(table: str) -> str:
    if table not in TABLES:
        raise ValidationError(f"table must be one of {', '.join(TABLE_NAMES)}, not {table!r}")
    return table


def _stored_value(value: Any) -> Any:
    """Content and metadata given as decoded JSON (as MongoDB holds them) become JSON text."""
    if value is None or value.__class__ is str:
        return value
    if isinstance(value, (list, dict)):
        return _codec.dump_json(value, "value")
    if isinstance(value, datetime):
        return _codec.format_ts(value)
    return value


def _execute_all(conn: Connection, statements: list[str]) -> None:
    for statement in statements:
        conn.execute(text(statement))


def _is_empty(tx: Tx, table: str) -> bool:
    tx.cursor.execute(f"SELECT 1 FROM {table} LIMIT 1")
    return tx.cursor.fetchone() is None


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(where: str, notes: list[str]) -> None:
    """Each schema limit once per database and process, however many repositories open it."""
    for note in notes:
        with _warned_lock:
            if (where, note) in _warned:
                continue
            _warned.add((where, note))
        warnings.warn(f"chatdb ({where}): {note}", SchemaWarning, stacklevel=5)


def _text_columns(conn: Connection) -> dict[str, set[str]]:
    """Per table, the columns that are TEXT/LONGTEXT-like (on MySQL, an index takes a prefix)."""
    inspector = inspect(conn)
    found = set(inspector.get_table_names())
    return {
        name: {c["name"] for c in inspector.get_columns(name) if isinstance(c["type"], Text)}
        for name in TABLES
        if name in found
    }


def _fetch_all(conn: Connection, sql: str, rows: bool = True) -> list[Any]:
    result = conn.exec_driver_sql(sql)
    return list(result) if rows else []


def _write_chunk(tx: Tx, write: Callable[..., int], rows: list[tuple[Any, ...]]) -> int:
    return write(tx.cursor, rows=rows)


def _row_chunks(
    rows: Iterable[Mapping[str, Any]], columns: tuple[str, ...], most: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows as value tuples in ``columns`` order, in lists of at most ``most`` rows and about
    BATCH_BYTES of text (messages with images are MBs each)."""
    budget = _batches.BATCH_BYTES
    chunk: list[tuple[Any, ...]] = []
    size = 0
    for row in rows:
        values = tuple([_stored_value(row.get(name)) for name in columns])
        chunk.append(values)
        size += sum(len(value) for value in values if value.__class__ is str)
        if len(chunk) >= most or size >= budget:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def chat_row(chat: Chat) -> dict[str, Any]:
    return {
        "id": chat.id,
        "title": chat.title,
        "session_id": chat.session_id,
        "user_id": chat.user_id,
        "created_at": _codec.format_ts(chat.created_at),
        "updated_at": _codec.format_ts(chat.updated_at),
    }


class SqlRepository(RepositoryBase):
    """A ``ChatRepository`` on SQLite, PostgreSQL or MySQL/MariaDB; connects on first use."""

    def __init__(self, config: DbConfig) -> None:
        super().__init__(config)
        self._executor = Executor(dialect_for(config))
        self.backend = config.driver
        # Bytes a column can hold where the schema (a Node-created MySQL one) holds less than
        # chatdb promises, "table.column" -> bytes; learned by ensure_schema.
        self._capacity: dict[str, int] = {}
        self._indexes_found = False  # every index is there (a read's catalog look: has_schema)
        # Every backend reports percentiles from the same histogram, so one database gives the
        # same report bytes whatever holds it; PostgreSQL's exact percentile_cont path
        # (aggregate.py) stays for a caller that sets this to True.
        self.exact_quantiles = False
        self.aggregates_histograms = True
        # SQLite, MySQL/MariaDB: an aggregation over at least ``aggregate_parts_min_rows``
        # messages runs as this many parts at once (SqlDialect.aggregate_parts_limits: so many
        # for each core this process may use, up to its limit; 1: never).
        per_core, most = self._executor.dialect.aggregate_parts_limits
        self.aggregate_parts = max(1, min(most, len(os.sched_getaffinity(0)) * per_core))

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for administration and ad-hoc SQL)."""
        return self._executor.engine

    def close(self) -> None:
        self._executor.dispose()
        if self.config.is_memory:
            # The next use opens a new, empty database.
            self._schema_ready = self._tables_found = False

    # -- schema ---------------------------------------------------------------------------------

    def _missing_schema(self) -> list[str]:
        if (
            self.backend == "sqlite"
            and not self.config.is_memory
            and not os.path.exists(self.config.sqlite_path)
        ):
            return list(TABLE_NAMES)  # (connecting would create the file)
        catalog = self._executor.dialect.catalog_sql

        def names(tx: Tx) -> set[str]:
            tx.cursor.execute(catalog)
            return {str(row[0]) for row in tx.cursor.fetchall()}

        found = self._executor.run(names)
        self._indexes_found = found >= _SCHEMA_NAMES
        missing = [table for table in TABLE_NAMES if table not in found]
        if "chats" in found and "chats.user_id" not in found:
            missing.append("chats.user_id")
        return missing

    def _create_schema(self) -> None:
        # Nearly always everything exists: one catalog read instead of SQLAlchemy's inspection
        # and CREATE ... IF NOT EXISTS statements (5-10x the time on the servers).
        dialect = self._executor.dialect
        catalog, facts = dialect.catalog_sql, dialect.column_facts_sql

        def names(tx: Tx) -> tuple[set[str], list[ColumnFact]]:
            tx.cursor.execute(catalog)
            found = {str(row[0]) for row in tx.cursor.fetchall()}
            columns = []
            if facts is not None:
                tx.cursor.execute(facts)
                columns = [ColumnFact(*row) for row in tx.cursor.fetchall()]
            return found, columns

        found, columns = self._executor.run(names)
        self._capacity, notes = mysql_limits(columns)
        _warn_once(self.config.redacted_url, notes)
        if found >= _SCHEMA_NAMES:
            return

        def create_tables(conn: Connection) -> tuple[list[Index], dict[str, set[str]]]:
            for table in TABLES.values():
                conn.execute(CreateTable(table, if_not_exists=True))
            inspector = inspect(conn)
            if "user_id" not in {c["name"] for c in inspector.get_columns("chats")}:
                # A database from before the Node app had users, upgraded as the Node app does.
                ddl = chats.c.user_id.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE chats ADD COLUMN user_id {ddl} NOT NULL DEFAULT 'system'"))
            missing = []
            for table in TABLES.values():
                existing = {ix["name"] for ix in inspector.get_indexes(table.name)}
                missing += [ix for ix in table.indexes if ix.name not in existing]
            return missing, _text_columns(conn)

        # One index per transaction: MySQL commits DDL implicitly, so no savepoints around them.
        self._create_indexes(*self._executor.run_core(create_tables, write=True))

    def upgrade_schema(self, *, dry_run: bool = False) -> list[str]:
        """Bring the schema to chatdb's (see :func:`chatdb.sql.schema.upgrade_plan`): on a
        Node-created MySQL/MariaDB database, LONGTEXT content, binary collations and whole
        indexes; elsewhere, chatdb's indexes in their current shape. Returns the statements
        (run unless ``dry_run``; none when there is nothing to do). Raises SchemaUpgradeError,
        naming the rows, when a change would fail or merge data (nothing is changed then)."""
        self.ensure_schema()
        dialect = self._executor.dialect
        columns_sql, indexes_sql = dialect.column_facts_sql, dialect.index_facts_sql

        def facts(conn: Connection) -> tuple[list[ColumnFact], list[IndexFact], dict[str, set[str]]]:
            text_columns = _text_columns(conn)
            if columns_sql is None or indexes_sql is None:
                inspector = inspect(conn)
                found = [
                    IndexFact(name, str(ix["name"]), tuple(str(c) for c in ix["column_names"]))
                    for name in TABLES
                    for ix in inspector.get_indexes(name)
                ]
                return [], found, text_columns
            columns = [ColumnFact(*row) for row in conn.exec_driver_sql(columns_sql)]
            parts: dict[tuple[str, str], list[tuple[str, Any]]] = {}
            for table, name, column, sub_part in conn.exec_driver_sql(indexes_sql):
                parts.setdefault((table, name), []).append((column, sub_part))
            indexes = [
                IndexFact(table, name, tuple(c for c, _ in cols), any(p is not None for _, p in cols))
                for (table, name), cols in parts.items()
            ]
            return columns, indexes, text_columns

        columns, indexes, text_columns = self._executor.run_core(facts)
        checks, statements = upgrade_plan(self.backend, self.engine.dialect, columns, indexes, text_columns)
        problems = []
        for check in checks:
            rows = self._executor.run_core(partial(_fetch_all, sql=check.sql))
            if rows:
                shown = "; ".join(", ".join(str(value) for value in row) for row in rows)
                problems.append(f"{check.problem}: {shown}")
        if problems:
            raise SchemaUpgradeError(
                "the upgrade would fail or merge rows, nothing changed: " + " | ".join(problems)
            )
        if dry_run or not statements:
            return statements
        for statement in statements:
            self._executor.run_core(partial(_fetch_all, sql=statement, rows=False), write=True)
        with self._schema_lock:
            self._schema_ready = False  # the limits are read again on the next call
            self._capacity = {}
        return statements

    def _check_capacity(self, column: str, value: str | None) -> None:
        limit = self._capacity.get(column)
        if limit is not None and value is not None and len(value) * 4 > limit:
            size = len(value.encode("utf-8"))
            if size > limit:
                raise ValidationError(
                    f"{column.partition('.')[2]} of {size:,} bytes does not fit {column} here (at most "
                    f"{limit:,} bytes, a Node-created MySQL schema); `chatdb upgrade` makes it LONGTEXT"
                )

    # -- storage-level access ----------------------------------------------------------------------

    def scan_rows(
        self,
        table: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: str | None = None,
        after: tuple[str, str] | None = None,
        batch_size: int = 10_000,
        stored: bool = False,
    ) -> Iterator[list[tuple[Any, ...]]]:
        if not check_scan(
            table,
            since=since,
            until=until,
            user_id=user_id,
            after=after,
            batch_size=batch_size,
            stored=stored,
        ):
            return iter(())
        if not self.has_schema():
            return iter(())
        statement = build_scan(
            table,
            since=since,
            until=until,
            user_id=user_id,
            after=after,
            stored=stored,
            force_index=self._schema_ready or self._indexes_found,
        )
        # Message contents with images are MBs each: batches end at a size too.
        names = IMPORT_COLUMNS["messages"] if stored else SCAN_COLUMNS["messages"]
        bulky = names.index("content") if table == "messages" else None
        return self._executor.stream(statement, batch_size, bulky=bulky)

    def aggregate_messages(self, query: AggregateQuery) -> Iterator[list[tuple[Any, ...]]]:
        """See :meth:`RepositoryBase.aggregate_messages`: one GROUP BY over the stored JSON
        (:mod:`chatdb.sql.aggregate`); only groups leave the database. A read: no groups, and
        nothing created, where chatdb's tables are not there.

        On SQLite and MySQL/MariaDB a large table is read as :attr:`aggregate_parts` parts at
        once, each one statement on its own connection (the database does the work; Python
        waits): MySQL's on threads, a SQLite file's in child processes (see
        :mod:`chatdb._sqlite_aggregate`); the parts' groups are returned together. PostgreSQL
        runs the one statement in parallel workers itself. Each part reads in its own transaction, so on a
        database being written to, the parts' snapshots are taken moments apart (as any two
        reports' are)."""
        if not self.has_schema():
            return iter([])
        parts = self._aggregate_parts(query)
        if parts:
            rows = self._aggregate_in_parts(query, parts)
            return iter([rows] if rows else [])
        try:
            rows = self._executor.run(
                partial(_aggregate, dialect=self._executor.dialect, query=query, lenient=False)
            )
        except BackendError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != _PG_INVALID_TEXT:
                raise
            # A stored metadata value is not JSON: PostgreSQL reads the rows again, leniently.
            rows = self._executor.run(
                partial(_aggregate, dialect=self._executor.dialect, query=query, lenient=True)
            )
        return iter([rows] if rows else [])

    def _aggregate_in_parts(
        self, query: AggregateQuery, parts: list[tuple[Any, Any]]
    ) -> list[tuple[Any, ...]]:
        """The rows of every part, each run on (or waited for by) a thread of its own, added up
        per group as each part ends (:class:`PartSums`). When one
        fails, or the caller is interrupted (Ctrl-C), the parts still running are stopped rather
        than waited for: SQLite's processes killed, MySQL's statements killed (``KILL QUERY``)."""
        running: list[Any] = []  # each part's DB-API connection (or process), once it starts
        dialect = self._executor.dialect
        pool = ThreadPoolExecutor(len(parts), thread_name_prefix="chatdb-aggregate")
        if self._parts_in_processes:
            # A SQLite file: each part in a process of its own (see chatdb._sqlite_aggregate).
            child = partial(
                _aggregate_in_child, self.config.sqlite_path, self._executor.engine.dialect, query,
                parts=len(parts), started=running.append,
            )  # fmt: skip
            calls = [partial(child, part) for part in parts]
        else:
            work = partial(_aggregate, dialect=dialect, query=query, lenient=False, parts=len(parts))
            calls = [
                partial(self._executor.run, partial(work, part=part, started=running.append))
                for part in parts
            ]
        sums = PartSums()  # (each part's groups added up as it ends, on its thread)
        try:
            futures = [pool.submit(_added_to, sums, call) for call in calls]
            waiting = set(futures)
            while waiting:
                # (a timed wait: the main thread sees a Ctrl-C between two waits)
                done, waiting = wait(waiting, timeout=0.25, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()  # the first part to fail stops the others (below)
            return sums.rows()
        except BaseException:
            self._stop_statements(list(running))
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _stop_statements(self, connections: list[Any]) -> None:
        """Stop what ``connections`` (other threads' own) are running (see
        :meth:`SqlDialect.stop_statements`); errors are ignored: a statement may have just ended."""
        kills = self._executor.dialect.stop_statements(connections)

        def kill(tx: Tx) -> None:
            for statement in kills:
                with contextlib.suppress(Exception):
                    tx.cursor.execute(statement)

        if kills:
            with contextlib.suppress(Exception):
                self._executor.run(kill, lone=True)

    @property
    def _parts_in_processes(self) -> bool:
        """Whether aggregation parts run in child processes (see
        :attr:`SqlDialect.aggregates_in_processes`), where a Python is there to start them and
        the child's script is a file (not in a zip); else on threads."""
        return (
            self._executor.dialect.aggregates_in_processes
            and _batches.can_start_child()
            and os.path.isfile(_AGGREGATE_CHILD)
        )

    # (see aggregate_parts, set in __init__)
    aggregate_parts_min_rows = 100_000

    def _aggregate_parts(self, query: AggregateQuery) -> list[tuple[Any, Any]]:
        """The parts to read ``query`` as (:func:`aggregate.build`'s ``part``), none for one
        statement: on PostgreSQL, for exact percentiles (not additive), on one shared
        connection (``:memory:``) or one that is not this thread's own (chatdb.aio)."""
        count, dialect = self.aggregate_parts, self._executor.dialect
        if (
            count < 2
            or not dialect.aggregates_in_parts
            or query.quantiles
            or not self._executor.threads_own_connections
        ):
            return []
        min_rows = self.aggregate_parts_min_rows
        parts: list[tuple[Any, Any]] = self._executor.run(
            lambda tx: dialect.aggregate_parts(tx.cursor, count, min_rows), lone=True
        )
        return parts

    # Whether exports may use a native driver at all (False: always scan_rows).
    native_scans = True
    # SQLite: below this many rows the native scan's child process costs more than it saves.
    arrow_scan_min_rows = 50_000
    # SQLite and PostgreSQL: up to this many chats, message owners come from a lookup instead
    # of a join.
    owner_lookup_max_chats = 200_000

    def scan_arrow(
        self,
        table: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: str | None = None,
        after: tuple[str, str] | None = None,
        batch_size: int = 10_000,
        stage: Mapping[str, Any] | None = None,
    ) -> Iterator[Any] | None:
        """``scan_rows`` as Arrow tables straight from a native driver, or None where there is
        none, the scan is small or the driver cannot take it (then use ``scan_rows``). See
        :mod:`chatdb.sql.arrow_scan`: PostgreSQL (ADBC) and MySQL (connectorx) in process;
        large scans of SQLite files (ADBC) in a child process. ``stage``: DuckDB queries that a
        scan in a child process applies to each batch there (see :mod:`chatdb._sqlite_arrow`;
        the caller handles batches with and without it)."""
        if not check_scan(
            table, since=since, until=until, user_id=user_id, after=after, batch_size=batch_size
        ):
            return None  # (scan_rows returns no rows)
        native = arrow_scan.for_backend(self.backend)
        if not self.native_scans or self.config.is_memory or native is None:
            return None
        if not self.has_schema():
            return None  # (scan_rows: no rows)
        scan = partial(
            build_scan,
            table,
            since=since,
            until=until,
            user_id=user_id,
            after=after,
            force_index=self._schema_ready or self._indexes_found,
        )
        if native.start_up_cost and self._has_fewer_rows(scan(), self.arrow_scan_min_rows):
            return None
        location = self._executor.dialect.location
        # The chat owner of every message from a hash lookup in the scan, not a join in the
        # database (unless there are so many chats that reading them all costs more).
        lookup = None
        if (
            table == "messages"
            and user_id is None
            and self._has_fewer_rows(select(_C.id), self.owner_lookup_max_chats + 1)
        ):
            lookup = arrow_scan.Lookup(
                select(_C.id, _C.user_id),
                key="chat_id",
                name="user_id",
                position=2,
                missing=self._chat_owners,
            )
        scan = partial(scan, null_as=native.null_as, owner=lookup is None, slim_content=native.slim_content)
        # Pages only where an index returns them in order (MySQL reads the others at once).
        paged = table == "messages"
        return native.batches(
            self.engine.url, self.config, scan, batch_size, location, lookup, stage, paged=paged
        )

    def _chat_owners(self, chat_ids: list[str]) -> list[tuple[Any, Any]]:
        """(chat id, owner) of those of ``chat_ids`` that exist."""
        statement = select(_C.id, _C.user_id).where(_C.id.in_(chat_ids))
        return self._executor.run(lambda tx: list(tx.execute_once(statement).fetchall()))

    def _has_fewer_rows(self, statement: Select[Any], rows: int) -> bool:
        """Whether ``statement`` returns fewer than ``rows`` rows (reading at most that many;
        none of its columns: SQLite would read each message's content for the count)."""
        if rows <= 0:
            return False
        counted = statement.with_only_columns(literal(1), maintain_column_froms=True)
        bounded = counted.order_by(None).limit(rows).subquery()
        count = select(func.count()).select_from(bounded)
        return int(self._executor.run(lambda tx: tx.execute_once(count).fetchone()[0])) < rows

    def import_rows(self, table: str, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 10_000) -> int:
        """See :meth:`RepositoryBase.import_rows`; the backend's bulk path is described in
        :func:`chatdb.sql.dialects.import_chunk`. Chunks of ``batch_size`` rows (or about 32 MB)
        are built in a producer thread while the one before is written, each in one
        transaction. When the table is empty at the start, its secondary indexes are dropped and
        built once at the end (as pgloader does); otherwise they are kept. An import that fails
        midway leaves them to the next ``ensure_schema`` (which this repository then runs again)."""
        rows = check_import(table, rows, batch_size)
        columns = IMPORT_COLUMNS[table]
        return self._write_chunks(table, lambda: _row_chunks(rows, columns, max(1, batch_size)))

    def import_values(self, table: str, chunks: Iterable[list[tuple[Any, ...]]]) -> int:
        """See :meth:`RepositoryBase.import_values`; written as :meth:`import_rows` writes."""
        checked = check_values(table, chunks)

        def stored() -> Iterator[list[tuple[Any, ...]]]:
            for chunk, plain in checked:
                yield chunk if plain else [tuple(map(_stored_value, row)) for row in chunk]

        return self._write_chunks(table, stored)

    def _write_chunks(self, table: str, open_chunks: Callable[[], Iterator[list[tuple[Any, ...]]]]) -> int:
        """Write the chunks ``open_chunks()`` makes (in a producer thread, one ahead), each in one
        transaction, with the secondary indexes deferred when the table is empty."""
        target = TABLES[table]
        columns = IMPORT_COLUMNS[target.name]
        self.ensure_schema()
        fresh = self._executor.run(partial(_is_empty, table=target.name))
        deferred = self._drop_secondary_indexes(target) if fresh else []
        write = partial(import_chunk, self.backend, table=target.name, columns=columns, fresh=fresh)
        inserted = 0
        try:
            for chunk in _batches.prefetch(open_chunks):
                inserted += self._executor.run(partial(_write_chunk, write=write, rows=chunk), write=True)
                del chunk
        except BaseException:
            if deferred:
                self._schema_ready = False  # the next call re-checks the catalog and builds them
            raise
        self._create_indexes(deferred)
        return inserted

    def _drop_secondary_indexes(self, target: Any) -> list[Index]:
        indexes = [index for index in target.indexes if not index.unique]
        for index in indexes:
            self._executor.run_core(partial(Connection.execute, statement=DropIndex(index)), write=True)
        return indexes

    def _create_indexes(
        self, indexes: list[Index], text_columns: Mapping[str, set[str]] | None = None
    ) -> None:
        """Build ``indexes`` in the shape this database's columns allow (see schema.index_sql);
        ``text_columns``: per table, its TEXT columns, read from the catalog when not given."""
        if not indexes:
            return
        dialect = self._executor.dialect
        if text_columns is None:
            text_columns = self._executor.run_core(_text_columns)
        for index in indexes:
            assert index.table is not None
            ddl = index_sql(index, self.backend, text_columns.get(index.table.name, ()))
            try:
                self._executor.run_core(
                    partial(_execute_all, statements=dialect.index_build_sql(ddl)), write=True
                )
            except BackendError as exc:
                if not dialect.ignore_duplicate_index(exc.__cause__):
                    raise

    def count_rows(self) -> dict[str, int]:
        def work(tx: Tx) -> dict[str, int]:
            return {name: int(tx.scalar(_COUNTS[name])) for name in TABLE_NAMES}

        if not self.has_schema():
            return dict.fromkeys(TABLE_NAMES, 0)
        return self._executor.run(work)

    def _message_time_range(self) -> tuple[str | None, str | None]:
        row = self._executor.run(lambda tx: tx.first(_MESSAGE_TIME_RANGE))
        return (None, None) if row is None else (row[0], row[1])

    # -- chats ----------------------------------------------------------------------------------

    def _insert_chat(self, chat: Chat) -> None:
        self._executor.run(lambda tx: tx.execute(_INSERT_CHAT, chat_row(chat)), write=True)

    def _fetch_chat(self, chat_id: str, user_id: str) -> Chat | None:
        params = {"chat_id": chat_id, "user_id": user_id}
        row = self._executor.run(lambda tx: tx.first(_SELECT_CHAT, params), lone=True)
        return None if row is None else mapping.load_chat(row)

    def _fetch_chats(self, user_id: str, limit: int, offset: int) -> tuple[list[Chat], int]:
        def work(tx: Tx) -> tuple[list[Chat], int]:
            total = int(tx.scalar(_COUNT_CHATS, {"user_id": user_id}))
            if total <= offset:
                return [], total
            rows = tx.all(_PAGE_CHATS, {"user_id": user_id, "limit": limit, "offset": offset})
            return [mapping.load_chat(row) for row in rows], total

        return self._executor.run(work)

    def _touch_chat(self, chat_id: str, user_id: str, changes: dict[str, Any]) -> Chat | None:
        statement = _TOUCH_CHAT[tuple(changes)]

        def work(tx: Tx) -> Chat | None:
            row = tx.first(_LOCK_CHAT, {"chat_id": chat_id, "user_id": user_id})
            if row is None:
                return None
            chat = mapping.load_chat(row)
            stamp = _codec.next_ts(row[5])
            tx.execute(statement, {**changes, "chat_id": chat_id, "updated_at": _codec.format_ts(stamp)})
            return replace(chat, **changes, updated_at=stamp)

        return self._executor.run(work, write=True)

    def _delete_chat(self, chat_id: str, user_id: str) -> bool:
        def work(tx: Tx) -> bool:
            # The chat row first: the same lock order as add_message, so the two cannot deadlock.
            if tx.rowcount(_DELETE_CHAT, {"chat_id": chat_id, "user_id": user_id}) == 0:
                return False
            tx.execute(_DELETE_CHAT_MESSAGES, {"chat_id": chat_id})
            return True

        return self._executor.run(work, write=True)

    # -- messages -------------------------------------------------------------------------------

    def _append_message(self, draft: _DraftMessage, user_id: str | None) -> Any:
        lock = _LOCK_ANY_CHAT if user_id is None else _LOCK_CHAT
        if self._capacity:
            self._check_capacity("messages.content", draft.content_json)
            self._check_capacity("messages.metadata", draft.metadata_json)

        def work(tx: Tx) -> Any:
            row = tx.first(lock, {"chat_id": draft.chat_id, "user_id": user_id})
            if row is None:
                return None
            last = tx.scalar(_LAST_MESSAGE_AT, {"chat_id": draft.chat_id})
            stamp = _codec.next_ts_after((row[5], last))
            created_at = _codec.format_ts(stamp)
            tx.execute(
                _INSERT_MESSAGE,
                {
                    "id": draft.id,
                    "chat_id": draft.chat_id,
                    "role": draft.role,
                    "content": draft.content_json,
                    "created_at": created_at,
                    "metadata": draft.metadata_json,
                },
            )
            tx.execute(_BUMP_CHAT, {"chat_id": draft.chat_id, "updated_at": created_at})
            return stamp

        try:
            return self._executor.run(work, write=True)
        except UniqueViolation:  # the id is stored: the transaction (bump included) rolled back
            raise MessageIdTaken(draft.id) from None

    def _fetch_messages(
        self, chat_id: str, user_id: str | None, limit: int, offset: int
    ) -> tuple[list[Message], int]:
        def work(tx: Tx) -> tuple[list[Message], int]:
            if user_id is not None and tx.first(_OWNS_CHAT, {"chat_id": chat_id, "user_id": user_id}) is None:
                return [], 0
            total = int(tx.scalar(_COUNT_MESSAGES, {"chat_id": chat_id}))
            if total <= offset:
                return [], total
            rows = tx.all(_PAGE_MESSAGES, {"chat_id": chat_id, "limit": limit, "offset": offset})
            return [mapping.load_message(row) for row in rows], total

        return self._executor.run(work)

    def _fetch_message(self, message_id: str, user_id: str | None) -> Message | None:
        params = {"message_id": message_id, "user_id": user_id}
        statement = _SELECT_MESSAGE if user_id is None else _SELECT_OWNED_MESSAGE
        row = self._executor.run(lambda tx: tx.first(statement, params), lone=True)
        return None if row is None else mapping.load_message(row)

    # -- users ----------------------------------------------------------------------------------

    def _insert_user(self, user: UserWithPasswordHash) -> None:
        row = {
            "id": user.id,
            "username": user.username,
            "password_hash": user.password_hash,
            "created_at": _codec.format_ts(user.created_at),
            "updated_at": _codec.format_ts(user.updated_at),
        }
        try:
            self._executor.run(lambda tx: tx.execute(_INSERT_USER, row), write=True)
        except UniqueViolation:
            raise DuplicateUsernameError(f"username {user.username!r} is taken") from None

    def _fetch_user(self, by: str, value: str) -> UserWithPasswordHash | None:
        row = self._executor.run(lambda tx: tx.first(_SELECT_USER_BY[by], {"value": value}), lone=True)
        # Exact even on a Node-created MySQL table whose collation ignores case.
        if row is None or row[_USER_KEY_INDEX[by]] != value:
            return None
        return mapping.load_user_with_hash(row)

    def _fetch_users(self, limit: int, offset: int) -> tuple[list[User], int]:
        def work(tx: Tx) -> tuple[list[User], int]:
            total = int(tx.scalar(_COUNT_USERS))
            rows = tx.all(_PAGE_USERS, {"limit": limit, "offset": offset}) if total > offset else []
            return [mapping.load_user(row) for row in rows], total

        return self._executor.run(work)

    # -- API keys -------------------------------------------------------------------------------

    def _insert_api_key(self, key: ApiKey, key_hash: str) -> None:
        row = {
            "id": key.id,
            "user_id": key.user_id,
            "key_hash": key_hash,
            "key_prefix": key.key_prefix,
            "name": key.name,
            "created_at": _codec.format_ts(key.created_at),
            "last_used_at": None,
            "revoked_at": None,
        }
        try:
            self._executor.run(lambda tx: tx.execute(_INSERT_KEY, row), write=True)
        except UniqueViolation:
            raise DuplicateApiKeyError("an API key with this hash already exists") from None

    def _fetch_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = self._executor.run(lambda tx: tx.first(_SELECT_ACTIVE_KEY, {"key_hash": key_hash}), lone=True)
        # Exact even on a Node-created MySQL table whose collation ignores case.
        return None if row is None or row[-1] != key_hash else mapping.load_api_key(row[:-1])

    def _fetch_api_keys(self, user_id: str) -> list[ApiKey]:
        rows = self._executor.run(lambda tx: tx.all(_LIST_KEYS, {"user_id": user_id}))
        return [mapping.load_api_key(row) for row in rows]

    def _revoke_api_key(self, key_id: str, user_id: str, now: str) -> bool:
        def work(tx: Tx) -> bool:
            params = {"key_id": key_id, "user_id": user_id, "owner": user_id, "now": now}
            if tx.rowcount(_REVOKE_KEY, params):
                return True
            return tx.first(_OWNED_KEY, params) is not None

        return self._executor.run(work, write=True)

    def _touch_api_key(self, key_id: str, now: str) -> None:
        self._executor.run(lambda tx: tx.execute(_TOUCH_KEY, {"key_id": key_id, "now": now}), write=True)


# Two subqueries, each one index probe: min() and max() in one SELECT make SQLite read the
# whole created_at index (1M messages: 65 MB of page cache, the most of a report's peak RSS).
_MESSAGE_TIME_RANGE = select(
    select(func.min(_M.created_at)).scalar_subquery(), select(func.max(_M.created_at)).scalar_subquery()
)
_COUNTS = {name: select(func.count()).select_from(TABLES[name]) for name in TABLE_NAMES}
