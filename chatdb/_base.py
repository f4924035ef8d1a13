"""What every backend shares: the public methods, input checks and model building.

A backend subclasses :class:`RepositoryBase` and implements the ``_`` storage hooks, which receive
checked values and only do I/O. That keeps the contract in one place: the same input is rejected
(or stored) identically whatever the database.

Schema: writes (and ``ensure_schema``) create chatdb's tables and indexes; reads never create or
alter anything. A read on a database without chatdb's tables (or a SQLite file that does not
exist) returns what an empty chatdb database returns: None, an empty page, no rows. A database
with only some of the tables, or an older layout, is refused with SchemaError by reads (writes
upgrade it, as ``ensure_schema`` does).
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from itertools import product
from operator import itemgetter
from types import TracebackType
from typing import Any, Self

from . import _codec, _validate
from ._aggregate import AggregateQuery
from .config import DbConfig
from .errors import ConflictError, DuplicateMessageIdError, NotFoundError, SchemaError, ValidationError
from .models import ApiKey, Chat, ContentPart, Message, MessageMetadata, Page, User, UserWithPasswordHash

TABLE_NAMES = ("users", "chats", "messages", "api_keys")

# What scan_rows yields, per table, in this order (stored column names; see the docstring there).
SCAN_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("id", "chat_id", "user_id", "role", "content", "created_at", "metadata"),
    "chats": ("id", "user_id", "title", "session_id", "created_at", "updated_at"),
    "users": ("id", "username", "created_at", "updated_at"),
    "api_keys": ("id", "user_id", "name", "key_prefix", "created_at", "last_used_at", "revoked_at"),
}
# What import_rows takes, per table (the stored columns; users need their hash, keys theirs).
IMPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("id", "chat_id", "role", "content", "created_at", "metadata"),
    "chats": ("id", "title", "session_id", "user_id", "created_at", "updated_at"),
    "users": ("id", "username", "password_hash", "created_at", "updated_at"),
    "api_keys": (
        "id",
        "user_id",
        "key_hash",
        "key_prefix",
        "name",
        "created_at",
        "last_used_at",
        "revoked_at",
    ),
}


# What import_rows accepts per stored column: "text" a string, "ts" an ISO string or a
# datetime, "json" JSON text or its decoded list/dict (as MongoDB holds it); "?" allows None.
_IMPORT_KINDS: dict[str, dict[str, str]] = {
    "messages": {"content": "json", "created_at": "ts", "metadata": "json?"},
    "chats": {"session_id": "text?", "user_id": "text?", "created_at": "ts", "updated_at": "ts"},
    "users": {"created_at": "ts", "updated_at": "ts"},
    "api_keys": {"created_at": "ts", "last_used_at": "ts?", "revoked_at": "ts?"},
}
_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "text": (str,),
    "text?": (str, type(None)),
    "ts": (str, datetime),
    "ts?": (str, datetime, type(None)),
    "json": (str, list, dict),
    "json?": (str, list, dict, type(None)),
}
# Per table: the accepted types of each column, and every accepted combination of exact types
# (a row is checked with one set lookup, about 20 times faster than a loop over its columns).
_IMPORT_TYPES: dict[str, tuple[tuple[type, ...], ...]] = {
    table: tuple(_KIND_TYPES[_IMPORT_KINDS[table].get(name, "text")] for name in columns)
    for table, columns in IMPORT_COLUMNS.items()
}
_IMPORT_TYPE_ROWS: dict[str, frozenset[tuple[type, ...]]] = {
    table: frozenset(product(*types)) for table, types in _IMPORT_TYPES.items()
}


def new_id() -> str:
    return str(uuid.uuid4())


def check_scan(
    table: Any,
    *,
    since: Any = None,
    until: Any = None,
    user_id: Any = None,
    after: Any = None,
    batch_size: Any = 10_000,
    stored: Any = False,
) -> bool:
    """Check ``scan_rows``' arguments as the CRUD methods check theirs (ValidationError for a
    wrong type, such as ``user_id={"$ne": None}``); False when ``user_id`` can match no stored
    row (the scan is then empty), True otherwise."""
    _validate.table(table, TABLE_NAMES)
    for name, value in (("since", since), ("until", until)):
        if value is not None and not isinstance(value, datetime):
            raise ValidationError(f"{name} must be a datetime or None, not {type(value).__name__}")
    if after is not None:
        if not isinstance(after, (tuple, list)) or len(after) != 2:
            raise ValidationError("after must be a (created_at, id) pair of strings or None")
        for name, value in zip(("after created_at", "after id"), after, strict=True):
            _validate.text(name, value, allow_empty=True)
    _validate.batch_size(batch_size)
    _validate.flag("stored", stored)
    return user_id is None or _validate.lookup_id("user_id", user_id) is not None


def check_import(table: Any, rows: Any, batch_size: Any) -> Iterator[Mapping[str, Any]]:
    """Check ``import_rows``' arguments now and its rows as they stream (each a mapping whose
    values have their column's stored type: ValidationError names the row and column; rows of
    earlier batches are already written then). Returns the rows to import."""
    _validate.table(table, TABLE_NAMES)
    _validate.batch_size(batch_size)
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise ValidationError(f"rows must be an iterable of mappings, not {type(rows).__name__}")
    return _checked_rows(table, rows)


def _checked_rows(table: str, rows: Iterable[Any]) -> Iterator[Mapping[str, Any]]:
    values, allowed = itemgetter(*IMPORT_COLUMNS[table]), _IMPORT_TYPE_ROWS[table]
    for number, row in enumerate(rows):
        if type(row) is not dict and not isinstance(row, Mapping):
            raise ValidationError(f"{table} row {number} must be a mapping, not {type(row).__name__}")
        try:
            types = tuple(map(type, values(row)))
        except KeyError:  # a column left out (None) or a missing required one
            types = ()
        if types not in allowed:
            _check_row(table, number, row)  # subclasses pass; anything else raises
        yield row


# The combinations of types above in which every value is text or None (no conversion to store).
_PLAIN_TYPE_ROWS: dict[str, frozenset[tuple[type, ...]]] = {
    table: frozenset(t for t in rows if all(kind in (str, type(None)) for kind in t))
    for table, rows in _IMPORT_TYPE_ROWS.items()
}


def check_values(
    table: Any, chunks: Iterable[list[tuple[Any, ...]]]
) -> Iterator[tuple[list[tuple[Any, ...]], bool]]:
    """``import_values``' chunks (lists of value tuples in ``IMPORT_COLUMNS[table]`` order),
    checked as they stream like ``import_rows``' rows (ValidationError names the row and
    column), each with whether all its values are text or None (nothing to convert)."""
    _validate.table(table, TABLE_NAMES)
    return _checked_chunks(table, chunks)


def _checked_chunks(
    table: str, chunks: Iterable[list[tuple[Any, ...]]]
) -> Iterator[tuple[list[tuple[Any, ...]], bool]]:
    allowed, plain, columns = _IMPORT_TYPE_ROWS[table], _PLAIN_TYPE_ROWS[table], IMPORT_COLUMNS[table]
    number = 0
    for chunk in chunks:
        simple = True
        for row in chunk:
            types = tuple(map(type, row))
            if types not in plain:
                simple = False
                if types not in allowed:
                    if type(row) is not tuple or len(row) != len(columns):
                        raise ValidationError(
                            f"{table} row {number} must be a tuple of {len(columns)} values"
                        )
                    _check_row(table, number, dict(zip(columns, row, strict=True)))
            number += 1
        yield chunk, simple


def _check_row(table: str, number: int, row: Mapping[str, Any]) -> None:
    for name, types in zip(IMPORT_COLUMNS[table], _IMPORT_TYPES[table], strict=True):
        value = row.get(name)
        if not isinstance(value, types):
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ValidationError(
                f"{table} row {number}: {name} must be {wanted}, not {type(value).__name__}"
            )


class RepositoryBase(ABC):
    """Template for a ``ChatRepository`` backend (see :mod:`chatdb.repository` for the contract)."""

    backend: str = ""
    # Whether aggregate_messages computes asked-for quantiles exactly (else: histograms).
    exact_quantiles: bool = False
    # Whether aggregate_messages answers ``query.histograms`` (groups and histogram in one pass).
    aggregates_histograms: bool = False

    def __init__(self, config: DbConfig) -> None:
        self.config = config
        self._schema_ready = False  # ensure_schema found or made everything
        self._tables_found = False  # every table reads need is there
        self._schema_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} {self.config.redacted_url}>"

    # -- lifecycle ------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create missing tables and indexes; safe to call repeatedly and concurrently."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self._create_schema()
                self._schema_ready = True

    def has_schema(self) -> bool:
        """Whether chatdb's tables are in the database, from one read of its catalog (remembered
        once true); creates nothing, not even a missing SQLite file. False when none of the
        tables is there; raises SchemaError when only some are, or a column reads need is
        missing (an older layout: ``ensure_schema`` upgrades it)."""
        if self._schema_ready or self._tables_found:
            return True
        missing = self._missing_schema()
        if not missing:
            self._tables_found = True
            return True
        if set(TABLE_NAMES) <= set(missing):
            return False
        present = [t for t in TABLE_NAMES if t not in missing]
        raise SchemaError(
            f"{self.config.redacted_url} holds {', '.join(present)} but not chatdb's "
            f"{', '.join(missing)}: another application's database, or chatdb's from an older "
            "version (ensure_schema(), or `chatdb init`, upgrades it)"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None: ...

    # -- chats ----------------------------------------------------------------------------------

    def create_chat(self, user_id: str, title: str | None = None) -> Chat:
        owner = _validate.user_id(user_id)
        name = _validate.title(title) or _validate.DEFAULT_TITLE
        now = _codec.utcnow()
        chat = Chat(new_id(), name, None, owner, now, now)
        self.ensure_schema()
        self._insert_chat(chat)
        return chat

    def get_chat(self, chat_id: str, user_id: str) -> Chat | None:
        cid, owner = _validate.lookup_id("chat_id", chat_id), _validate.lookup_id("user_id", user_id)
        if cid is None or owner is None:
            return None
        if not self.has_schema():
            return None
        return self._fetch_chat(cid, owner)

    def list_chats(self, user_id: str, limit: int = 50, offset: int = 0) -> Page[Chat]:
        limit, offset = _validate.page(limit, offset)
        owner = _validate.lookup_id("user_id", user_id)
        if owner is None:
            return Page([], 0, limit, offset)
        if not self.has_schema():
            return Page([], 0, limit, offset)
        items, total = self._fetch_chats(owner, limit, offset)
        return Page(items, total, limit, offset)

    def update_chat(self, chat_id: str, user_id: str, title: str | None = None) -> Chat | None:
        name = _validate.title(title)
        cid, owner = _validate.lookup_id("chat_id", chat_id), _validate.lookup_id("user_id", user_id)
        if cid is None or owner is None:
            return None
        self.ensure_schema()
        return self._touch_chat(cid, owner, {} if name is None else {"title": name})

    def delete_chat(self, chat_id: str, user_id: str) -> bool:
        cid, owner = _validate.lookup_id("chat_id", chat_id), _validate.lookup_id("user_id", user_id)
        if cid is None or owner is None:
            return False
        self.ensure_schema()
        return self._delete_chat(cid, owner)

    def set_chat_session(self, chat_id: str, session_id: str | None, user_id: str) -> bool:
        if session_id is not None:
            _validate.text("session_id", session_id, max_len=_validate.MAX_SESSION_ID)
        cid, owner = _validate.lookup_id("chat_id", chat_id), _validate.lookup_id("user_id", user_id)
        if cid is None or owner is None:
            return False
        self.ensure_schema()
        return self._touch_chat(cid, owner, {"session_id": session_id}) is not None

    # -- messages -------------------------------------------------------------------------------

    def add_message(
        self,
        chat_id: str,
        role: str,
        content: list[ContentPart],
        metadata: MessageMetadata | Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        message_id: str | None = None,
    ) -> Message:
        draft = draft_message(chat_id, role, content, metadata, user_id=user_id, message_id=message_id)
        self.ensure_schema()
        for _attempt in range(3):
            try:
                created_at = self._append_message(draft, draft.owner)
            except MessageIdTaken:
                stored = stored_retry(self._fetch_message(draft.id, None), draft)
                if stored is not None:
                    return stored
                continue  # the message holding the id was deleted meanwhile: try again
            if created_at is None:
                raise NotFoundError(f"chat {chat_id!r} not found")
            return draft.message(created_at)
        raise DuplicateMessageIdError(f"message id {draft.id!r} is taken")

    def get_messages(
        self, chat_id: str, limit: int = 50, offset: int = 0, *, user_id: str | None = None
    ) -> Page[Message]:
        limit, offset = _validate.page(limit, offset)
        cid = _validate.lookup_id("chat_id", chat_id)
        owner = None if user_id is None else _validate.lookup_id("user_id", user_id)
        if cid is None or (user_id is not None and owner is None):
            return Page([], 0, limit, offset)
        if not self.has_schema():
            return Page([], 0, limit, offset)
        items, total = self._fetch_messages(cid, owner, limit, offset)
        return Page(items, total, limit, offset)

    def get_message(self, message_id: str, *, user_id: str | None = None) -> Message | None:
        mid = _validate.lookup_id("message_id", message_id)
        owner = None if user_id is None else _validate.lookup_id("user_id", user_id)
        if mid is None or (user_id is not None and owner is None):
            return None
        if not self.has_schema():
            return None
        return self._fetch_message(mid, owner)

    # -- users ----------------------------------------------------------------------------------

    def create_user(self, username: str, password_hash: str) -> User:
        name = _validate.text("username", username, max_len=_validate.MAX_USERNAME)
        secret = _validate.text("password_hash", password_hash)
        now = _codec.utcnow()
        user = UserWithPasswordHash(new_id(), name, now, now, password_hash=secret)
        self.ensure_schema()
        self._insert_user(user)
        return User(user.id, user.username, user.created_at, user.updated_at)

    def get_user_by_username(self, username: str) -> UserWithPasswordHash | None:
        name = _validate.lookup_id("username", username)
        if name is None:
            return None
        if not self.has_schema():
            return None
        return self._fetch_user("username", name)

    def get_user_by_id(self, user_id: str) -> User | None:
        uid = _validate.lookup_id("user_id", user_id)
        if uid is None:
            return None
        if not self.has_schema():
            return None
        found = self._fetch_user("id", uid)
        return None if found is None else User(found.id, found.username, found.created_at, found.updated_at)

    def list_users(self, limit: int = 50, offset: int = 0) -> Page[User]:
        limit, offset = _validate.page(limit, offset)
        if not self.has_schema():
            return Page([], 0, limit, offset)
        items, total = self._fetch_users(limit, offset)
        return Page(items, total, limit, offset)

    # -- API keys -------------------------------------------------------------------------------

    def create_api_key(self, user_id: str, key_hash: str, key_prefix: str, name: str) -> ApiKey:
        owner = _validate.user_id(user_id)
        digest = _validate.text("key_hash", key_hash, max_len=_validate.MAX_KEY_HASH)
        prefix = _validate.text("key_prefix", key_prefix, max_len=_validate.MAX_KEY_PREFIX)
        label = _validate.text("name", name, max_len=_validate.MAX_KEY_NAME, allow_empty=True)
        key = ApiKey(new_id(), owner, label, prefix, _codec.utcnow())
        self.ensure_schema()
        self._insert_api_key(key, digest)
        return key

    def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        digest = _validate.lookup_id("key_hash", key_hash)
        if digest is None:
            return None
        if not self.has_schema():
            return None
        return self._fetch_api_key_by_hash(digest)

    def list_api_keys(self, user_id: str) -> list[ApiKey]:
        owner = _validate.lookup_id("user_id", user_id)
        if owner is None:
            return []
        if not self.has_schema():
            return []
        return self._fetch_api_keys(owner)

    def revoke_api_key(self, key_id: str, user_id: str) -> bool:
        kid, owner = _validate.lookup_id("key_id", key_id), _validate.lookup_id("user_id", user_id)
        if kid is None or owner is None:
            return False
        self.ensure_schema()
        return self._revoke_api_key(kid, owner, _codec.format_ts(_codec.utcnow()))

    def update_api_key_last_used(self, key_id: str) -> None:
        kid = _validate.lookup_id("key_id", key_id)
        if kid is None:
            return
        self.ensure_schema()
        self._touch_api_key(kid, _codec.format_ts(_codec.utcnow()))

    # -- storage-level access: export, copy, demo data ------------------------------------------------

    @abstractmethod
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
        """Stream a table's stored rows in batches, ordered by ``(created_at, id)``.

        Columns per table are ``SCAN_COLUMNS[table]``; with ``stored=True``, every stored column
        (``IMPORT_COLUMNS[table]``, hashes included: for copying to another backend only).
        Values are as stored: timestamps as ISO strings; a message's ``content``/``metadata`` as
        JSON text on SQL, as decoded values on MongoDB; a message's ``user_id`` is its chat's
        owner, None when the chat is gone. ``since`` (inclusive) and ``until`` (exclusive) filter
        ``created_at``; ``user_id`` filters the owner; ``after=(created_at, id)`` resumes strictly
        after that row. Filters run in the database; the result is never in memory at once.
        """

    @abstractmethod
    def import_rows(self, table: str, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 5_000) -> int:
        """Bulk-insert stored-format rows (keys ``IMPORT_COLUMNS[table]``, ids and timestamps
        kept), skipping rows whose id already exists; returns how many were inserted. For demo
        data, copies between backends and imports: rows are not checked beyond the storage
        format, so callers pass valid rows."""

    def import_values(self, table: str, chunks: Iterable[list[tuple[Any, ...]]]) -> int:
        """:meth:`import_rows` for rows already as value tuples in ``IMPORT_COLUMNS[table]``
        order, in lists (as ``scan_rows(..., stored=True)`` yields them): the bulk path of
        ``copy`` and ``demo``, without a mapping per row. Each list is written as it comes (a
        SQL backend: one transaction each); checked, skipped and counted as in import_rows."""
        checked = check_values(table, chunks)  # (checks the table name first)
        columns = IMPORT_COLUMNS[table]
        rows = (dict(zip(columns, row, strict=True)) for chunk, _ in checked for row in chunk)
        return self.import_rows(table, rows)

    @abstractmethod
    def aggregate_messages(self, query: AggregateQuery) -> Iterator[list[tuple[Any, ...]]]:
        """Group sums of the messages ``query`` selects, computed where they are stored, in
        batches of rows of :data:`chatdb._aggregate.GROUP_COLUMNS` (or, with
        ``query.durations``, ``HISTOGRAM_COLUMNS``; with ``query.quantiles`` too, on a backend
        whose ``exact_quantiles`` is true, ``EXACT_COLUMNS``); see :mod:`chatdb._aggregate` for what the
        groups are and how stored values are read. Memory and the rows returned grow with the
        number of groups, never with the number of messages. This is how ``chatdb.analytics``
        reads a repository; it is not a report (prices come after)."""

    @abstractmethod
    def count_rows(self) -> dict[str, int]:
        """Row count of every table, keyed by table name."""

    def message_time_range(self) -> tuple[datetime | None, datetime | None]:
        """``created_at`` of the oldest and the newest message; ``(None, None)`` when empty."""
        if not self.has_schema():
            return None, None
        first, last = self._message_time_range()
        return _codec.parse_ts_or_none(first), _codec.parse_ts_or_none(last)

    def _message_time_range(self) -> tuple[str | None, str | None]:
        raise NotImplementedError

    # -- storage hooks (checked input; I/O only) ---------------------------------------------------

    @abstractmethod
    def _create_schema(self) -> None: ...

    @abstractmethod
    def _missing_schema(self) -> list[str]:
        """What reads need and the database lacks: table names from TABLE_NAMES (every one of
        them when there are none, or no database at all) and ``table.column`` names; creates
        nothing."""

    @abstractmethod
    def _insert_chat(self, chat: Chat) -> None: ...

    @abstractmethod
    def _fetch_chat(self, chat_id: str, user_id: str) -> Chat | None: ...

    @abstractmethod
    def _fetch_chats(self, user_id: str, limit: int, offset: int) -> tuple[list[Chat], int]: ...

    @abstractmethod
    def _touch_chat(self, chat_id: str, user_id: str, changes: dict[str, Any]) -> Chat | None:
        """Apply ``changes`` (``title``/``session_id``) and move ``updated_at`` to
        ``next_ts(updated_at)`` atomically; None when the chat is not the user's."""

    @abstractmethod
    def _delete_chat(self, chat_id: str, user_id: str) -> bool: ...

    @abstractmethod
    def _append_message(self, draft: _DraftMessage, user_id: str | None) -> Any:
        """Insert the message at ``next_ts(chat.updated_at)`` and set the chat's ``updated_at`` to
        it, atomically; return that datetime, or None when the chat is missing (or not the user's).
        Raise MessageIdTaken, having written nothing, when a message with ``draft.id`` exists."""

    @abstractmethod
    def _fetch_messages(
        self, chat_id: str, user_id: str | None, limit: int, offset: int
    ) -> tuple[list[Message], int]: ...

    @abstractmethod
    def _fetch_message(self, message_id: str, user_id: str | None) -> Message | None: ...

    @abstractmethod
    def _insert_user(self, user: UserWithPasswordHash) -> None:
        """Raise DuplicateUsernameError when taken."""

    @abstractmethod
    def _fetch_user(self, by: str, value: str) -> UserWithPasswordHash | None: ...

    @abstractmethod
    def _fetch_users(self, limit: int, offset: int) -> tuple[list[User], int]: ...

    @abstractmethod
    def _insert_api_key(self, key: ApiKey, key_hash: str) -> None:
        """Raise DuplicateApiKeyError when the hash is taken."""

    @abstractmethod
    def _fetch_api_key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    @abstractmethod
    def _fetch_api_keys(self, user_id: str) -> list[ApiKey]: ...

    @abstractmethod
    def _revoke_api_key(self, key_id: str, user_id: str, now: str) -> bool: ...

    @abstractmethod
    def _touch_api_key(self, key_id: str, now: str) -> None: ...


class MessageIdTaken(ConflictError):
    """Raised by ``_append_message`` when the draft's id is already stored (and nothing was
    written); ``add_message`` then decides with :func:`stored_retry`."""


class _DraftMessage:
    """A checked message waiting for its timestamp, with its stored JSON already encoded.
    ``chosen_id``: the caller gave the id (a retry may find it stored); ``owner``: the checked
    ``user_id`` the chat must belong to, or None."""

    __slots__ = (
        "chat_id",
        "chosen_id",
        "content",
        "content_json",
        "id",
        "metadata",
        "metadata_json",
        "owner",
        "role",
    )

    def __init__(
        self,
        id: str,
        chat_id: str,
        role: str,
        content: list[ContentPart],
        content_json: str,
        metadata: MessageMetadata | None,
        metadata_json: str | None,
        *,
        chosen_id: bool = False,
        owner: str | None = None,
    ) -> None:
        self.id = id
        self.chat_id = chat_id
        self.role = role
        self.content = content
        self.content_json = content_json
        self.metadata = metadata
        self.metadata_json = metadata_json
        self.chosen_id = chosen_id
        self.owner = owner

    def message(self, created_at: datetime) -> Message:
        return Message(self.id, self.chat_id, self.role, self.content, created_at, self.metadata)


def draft_message(
    chat_id: Any,
    role: Any,
    content: Any,
    metadata: Any,
    *,
    user_id: Any = None,
    message_id: Any = None,
) -> _DraftMessage:
    """``add_message``'s input checked (before any I/O) as a draft; raises ValidationError, or
    NotFoundError for a chat or user id that no stored chat can have."""
    checked_role = _validate.role(role)
    parts = _codec.normalize_content(content)
    meta = _codec.normalize_metadata(metadata)
    mid = new_id() if message_id is None else _validate.message_id(message_id)
    cid = _validate.lookup_id("chat_id", chat_id)
    owner = None if user_id is None else _validate.lookup_id("user_id", user_id)
    if cid is None or (user_id is not None and owner is None):
        raise NotFoundError(f"chat {chat_id!r} not found")
    return _DraftMessage(
        mid,
        cid,
        checked_role,
        parts,
        _codec.dump_content(parts),
        meta,
        _codec.dump_metadata(meta),
        chosen_id=message_id is not None,
        owner=owner,
    )


def stored_retry(stored: Message | None, draft: _DraftMessage) -> Message | None:
    """What ``add_message`` returns when the draft's id is taken: the stored message when it is
    this one (a retry: same chat, role, content and metadata), None when it is gone (try the
    insert again); raises DuplicateMessageIdError when the id holds another message."""
    if stored is None:
        return None
    if (stored.chat_id, stored.role, stored.content, stored.metadata) == (
        draft.chat_id,
        draft.role,
        draft.content,
        draft.metadata,
    ):
        return stored
    raise DuplicateMessageIdError(
        f"message id {draft.id!r} is taken by another message"
        + (
            " in another chat"
            if stored.chat_id != draft.chat_id
            else " (different role, content or metadata)"
        )
    )
