"""``SqlRepository``: the one repository class for SQLite, PostgreSQL and MySQL/MariaDB.

Each storage hook builds Core statements (module-level, compiled once and cached by SQLAlchemy),
runs them in one transaction through :meth:`SqlRepository._run`, and maps rows with the pure
functions in :mod:`chatdb.sql.mapping`. Dialect differences are asked of :mod:`chatdb.sql.dialects`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from functools import partial
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Index,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable

from .. import _codec
from .._base import IMPORT_COLUMNS, SCAN_COLUMNS, TABLE_NAMES, RepositoryBase, _DraftMessage
from ..config import DbConfig
from ..errors import BackendError, DuplicateApiKeyError, DuplicateUsernameError, ValidationError
from ..models import ApiKey, Chat, Message, User, UserWithPasswordHash
from . import mapping
from .dialects import RetryableError, UniqueViolation, dialect_for, serialized
from .schema import TABLES, api_keys, chats, messages, users

__all__ = ["SqlRepository"]

T = TypeVar("T")
_RETRIES = 5

_C, _M, _U, _K = chats.c, messages.c, users.c, api_keys.c
_MESSAGE_COLUMNS = (_M.id, _M.chat_id, _M.role, _M.content, _M.created_at, _M.metadata)
_KEY_COLUMNS = (_K.id, _K.user_id, _K.name, _K.key_prefix, _K.created_at, _K.last_used_at, _K.revoked_at)
_USER_COLUMNS = (_U.id, _U.username, _U.created_at, _U.updated_at)


def _p(name: str) -> Any:
    return bindparam(name)


# -- statements (built once; pure) -------------------------------------------------------------

_INSERT_CHAT = insert(chats)
_SELECT_CHAT = select(chats).where(_C.id == _p("chat_id"), _C.user_id == _p("user_id"))
_LOCK_CHAT = _SELECT_CHAT.with_for_update()
_LOCK_ANY_CHAT = select(chats).where(_C.id == _p("chat_id")).with_for_update()
_COUNT_CHATS = select(func.count()).select_from(chats).where(_C.user_id == _p("user_id"))
_PAGE_CHATS = (
    select(chats)
    .where(_C.user_id == _p("user_id"))
    .order_by(_C.updated_at.desc(), _C.id.desc())
    .limit(_p("limit"))
    .offset(_p("offset"))
)
_DELETE_CHAT = delete(chats).where(_C.id == _p("chat_id"), _C.user_id == _p("user_id"))
_DELETE_CHAT_MESSAGES = delete(messages).where(_M.chat_id == _p("chat_id"))
_BUMP_CHAT = update(chats).where(_C.id == _p("chat_id")).values(updated_at=_p("updated_at"))

_INSERT_MESSAGE = insert(messages)
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

_INSERT_USER = insert(users)
_SELECT_USER_BY = {
    "username": select(*_USER_COLUMNS, _U.password_hash).where(_U.username == _p("value")),
    "id": select(*_USER_COLUMNS, _U.password_hash).where(_U.id == _p("value")),
}
_COUNT_USERS = select(func.count()).select_from(users)
_PAGE_USERS = select(*_USER_COLUMNS).order_by(_U.created_at, _U.id).limit(_p("limit")).offset(_p("offset"))

_INSERT_KEY = insert(api_keys)
_SELECT_ACTIVE_KEY = select(*_KEY_COLUMNS).where(_K.key_hash == _p("key_hash"), _K.revoked_at.is_(None))
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


def build_scan(
    table: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    after: tuple[str, str] | None = None,
    stored: bool = False,
) -> Select[Any]:
    """The ordered, filtered SELECT behind ``scan_rows`` (pure; filters become WHERE clauses)."""
    source = TABLES[_table_name(table)]
    names = IMPORT_COLUMNS[source.name] if stored else SCAN_COLUMNS[source.name]
    if source is messages and not stored:
        columns = [_C.user_id if name == "user_id" else _M[name] for name in names]
        statement = select(*columns).select_from(messages.outerjoin(chats, _C.id == _M.chat_id))
    else:
        statement = select(*(source.c[name] for name in names))
    created, key = source.c.created_at, source.c.id
    if since is not None:
        statement = statement.where(created >= _codec.format_ts(since))
    if until is not None:
        statement = statement.where(created < _codec.format_ts(until))
    if user_id is not None:
        owner = _C.user_id if source is messages else source.c.get("user_id", source.c.id)
        statement = statement.where(owner == user_id)
    if after is not None:
        stamp, last_id = after
        statement = statement.where(or_(created > stamp, and_(created == stamp, key > last_id)))
    return statement.order_by(created, key)


def _table_name(table: str) -> str:
    if table not in TABLES:
        raise ValidationError(f"table must be one of {', '.join(TABLE_NAMES)}, not {table!r}")
    return table


def _stored_value(value: Any) -> Any:
    """Content and metadata given as decoded JSON (as MongoDB holds them) become JSON text."""
    if isinstance(value, (list, dict)):
        return _codec.dump_json(value, "value")
    if isinstance(value, datetime):
        return _codec.format_ts(value)
    return value


def _execute_many(conn: Connection, statement: Any, params: list[dict[str, Any]]) -> int:
    return max(conn.execute(statement, params).rowcount, 0)


def _chunks(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
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
    """A ``ChatRepository`` over SQLAlchemy Core; the engine is made on first use."""

    def __init__(self, config: DbConfig) -> None:
        super().__init__(config)
        self._dialect = dialect_for(config)
        self.backend = config.driver
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._lock = threading.RLock() if self._dialect.serialize else None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for advanced use: exports, administration)."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = self._dialect.create_engine()
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._schema_ready = self._schema_ready and not self._dialect.serialize

    # -- execution --------------------------------------------------------------------------------

    def _run(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        """Run ``work`` in one transaction; deadlocks are retried, driver errors translated."""
        for attempt in range(_RETRIES):
            try:
                with serialized(self._lock), self._connect() as conn:
                    if write:
                        self._dialect.mark_write(conn)
                    try:
                        with conn.begin():
                            return work(conn)
                    except SQLAlchemyError as exc:
                        raise self._dialect.translate(exc) from exc
            except RetryableError:
                if attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise self._dialect.translate(exc, connecting=True) from exc

    def stream(self, statement: Any, batch_size: int = 10_000) -> Iterator[list[tuple[Any, ...]]]:
        """Yield the rows of a SELECT as lists of plain tuples from a server-side cursor, in one
        read transaction. Bulk reads bypass SQLAlchemy's result objects: the statement is
        compiled once and fetched with the driver's ``fetchmany``, which is what keeps exports
        within reach of a raw driver scan."""
        compiled = statement.compile(dialect=self.engine.dialect)
        params: Any = compiled.params
        if compiled.positional:
            params = tuple(params[name] for name in compiled.positiontup or ())
        with serialized(self._lock), self._connect() as conn:
            try:
                with conn.begin():
                    cursor = self._dialect.server_cursor(conn.connection.dbapi_connection)
                    try:
                        cursor.execute(str(compiled), params)
                        while rows := cursor.fetchmany(batch_size):
                            yield rows
                    finally:
                        cursor.close()
            except SQLAlchemyError as exc:
                raise self._dialect.translate(exc) from exc
            except Exception as exc:
                if type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg", "pymysql", "MySQLdb"):
                    raise self._dialect.translate(DBAPIError(str(compiled), None, exc)) from exc
                raise

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
        statement = build_scan(table, since=since, until=until, user_id=user_id, after=after, stored=stored)
        self.ensure_schema()
        return self.stream(statement, batch_size)

    def import_rows(self, table: str, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 5_000) -> int:
        target = TABLES[_table_name(table)]
        columns = IMPORT_COLUMNS[target.name]
        statement = self._dialect.insert_skipping_existing(target)
        self.ensure_schema()
        inserted = 0
        for chunk in _chunks(rows, batch_size):
            params = [{name: _stored_value(row.get(name)) for name in columns} for row in chunk]
            inserted += self._run(partial(_execute_many, statement=statement, params=params), write=True)
        return inserted

    def count_rows(self) -> dict[str, int]:
        def work(conn: Connection) -> dict[str, int]:
            return {
                name: conn.execute(select(func.count()).select_from(TABLES[name])).scalar_one()
                for name in TABLE_NAMES
            }

        self.ensure_schema()
        return self._run(work)

    # -- schema ---------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        def create_tables(conn: Connection) -> list[Index]:
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
            return missing

        # One index per transaction: MySQL commits DDL implicitly, so no savepoints around them.
        for index in self._run(create_tables, write=True):
            ddl = CreateIndex(index, if_not_exists=self._dialect.has_index_if_not_exists)
            try:
                self._run(partial(Connection.execute, statement=ddl), write=True)
            except BackendError as exc:
                if not self._dialect.ignore_duplicate_index(exc.__cause__):
                    raise

    # -- chats ----------------------------------------------------------------------------------

    def _insert_chat(self, chat: Chat) -> None:
        self._run(lambda conn: conn.execute(_INSERT_CHAT, chat_row(chat)), write=True)

    def _fetch_chat(self, chat_id: str, user_id: str) -> Chat | None:
        row = self._run(
            lambda conn: conn.execute(_SELECT_CHAT, {"chat_id": chat_id, "user_id": user_id}).first()
        )
        return None if row is None else mapping.load_chat(row)

    def _fetch_chats(self, user_id: str, limit: int, offset: int) -> tuple[list[Chat], int]:
        def work(conn: Connection) -> tuple[list[Chat], int]:
            total = conn.execute(_COUNT_CHATS, {"user_id": user_id}).scalar_one()
            rows = conn.execute(_PAGE_CHATS, {"user_id": user_id, "limit": limit, "offset": offset})
            return [mapping.load_chat(row) for row in rows], total

        return self._run(work)

    def _touch_chat(self, chat_id: str, user_id: str, changes: dict[str, Any]) -> Chat | None:
        def work(conn: Connection) -> Chat | None:
            row = conn.execute(_LOCK_CHAT, {"chat_id": chat_id, "user_id": user_id}).first()
            if row is None:
                return None
            stamp = _codec.next_ts(row.updated_at)
            values = {**changes, "updated_at": _codec.format_ts(stamp)}
            conn.execute(update(chats).where(_C.id == chat_id).values(**values))
            return replace(mapping.load_chat(row), **changes, updated_at=stamp)

        return self._run(work, write=True)

    def _delete_chat(self, chat_id: str, user_id: str) -> bool:
        def work(conn: Connection) -> bool:
            # The chat row first: the same lock order as add_message, so the two cannot deadlock.
            if conn.execute(_DELETE_CHAT, {"chat_id": chat_id, "user_id": user_id}).rowcount == 0:
                return False
            conn.execute(_DELETE_CHAT_MESSAGES, {"chat_id": chat_id})
            return True

        return self._run(work, write=True)

    # -- messages -------------------------------------------------------------------------------

    def _append_message(self, draft: _DraftMessage, user_id: str | None) -> Any:
        def work(conn: Connection) -> Any:
            if user_id is None:
                row = conn.execute(_LOCK_ANY_CHAT, {"chat_id": draft.chat_id}).first()
            else:
                row = conn.execute(_LOCK_CHAT, {"chat_id": draft.chat_id, "user_id": user_id}).first()
            if row is None:
                return None
            stamp = _codec.next_ts(row.updated_at)
            created_at = _codec.format_ts(stamp)
            conn.execute(
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
            conn.execute(_BUMP_CHAT, {"chat_id": draft.chat_id, "updated_at": created_at})
            return stamp

        return self._run(work, write=True)

    def _fetch_messages(
        self, chat_id: str, user_id: str | None, limit: int, offset: int
    ) -> tuple[list[Message], int]:
        def work(conn: Connection) -> tuple[list[Message], int]:
            owner = {"chat_id": chat_id, "user_id": user_id}
            if user_id is not None and conn.execute(_OWNS_CHAT, owner).first() is None:
                return [], 0
            total = conn.execute(_COUNT_MESSAGES, {"chat_id": chat_id}).scalar_one()
            if total <= offset:
                return [], total
            rows = conn.execute(_PAGE_MESSAGES, {"chat_id": chat_id, "limit": limit, "offset": offset})
            return [mapping.load_message(row) for row in rows], total

        return self._run(work)

    def _fetch_message(self, message_id: str, user_id: str | None) -> Message | None:
        def work(conn: Connection) -> Any:
            if user_id is None:
                return conn.execute(_SELECT_MESSAGE, {"message_id": message_id}).first()
            return conn.execute(_SELECT_OWNED_MESSAGE, {"message_id": message_id, "user_id": user_id}).first()

        row = self._run(work)
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
            self._run(lambda conn: conn.execute(_INSERT_USER, row), write=True)
        except UniqueViolation:
            raise DuplicateUsernameError(f"username {user.username!r} is taken") from None

    def _fetch_user(self, by: str, value: str) -> UserWithPasswordHash | None:
        row = self._run(lambda conn: conn.execute(_SELECT_USER_BY[by], {"value": value}).first())
        if row is None or getattr(row, by) != value:  # exact, even under a case-folding collation
            return None
        return mapping.load_user_with_hash(row)

    def _fetch_users(self, limit: int, offset: int) -> tuple[list[User], int]:
        def work(conn: Connection) -> tuple[list[User], int]:
            total = conn.execute(_COUNT_USERS).scalar_one()
            rows = conn.execute(_PAGE_USERS, {"limit": limit, "offset": offset})
            return [mapping.load_user(row) for row in rows], total

        return self._run(work)

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
            self._run(lambda conn: conn.execute(_INSERT_KEY, row), write=True)
        except UniqueViolation:
            raise DuplicateApiKeyError("an API key with this hash already exists") from None

    def _fetch_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = self._run(lambda conn: conn.execute(_SELECT_ACTIVE_KEY, {"key_hash": key_hash}).first())
        return None if row is None else mapping.load_api_key(row)

    def _fetch_api_keys(self, user_id: str) -> list[ApiKey]:
        rows = self._run(lambda conn: conn.execute(_LIST_KEYS, {"user_id": user_id}).all())
        return [mapping.load_api_key(row) for row in rows]

    def _revoke_api_key(self, key_id: str, user_id: str, now: str) -> bool:
        def work(conn: Connection) -> bool:
            params = {"key_id": key_id, "user_id": user_id, "owner": user_id, "now": now}
            if conn.execute(_REVOKE_KEY, params).rowcount:
                return True
            return conn.execute(_OWNED_KEY, params).first() is not None

        return self._run(work, write=True)

    def _touch_api_key(self, key_id: str, now: str) -> None:
        self._run(lambda conn: conn.execute(_TOUCH_KEY, {"key_id": key_id, "now": now}), write=True)
