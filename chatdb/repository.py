"""The contract every backend keeps: ``ChatRepository``.

Every backend (SQLite, PostgreSQL, MySQL/MariaDB, MongoDB) gives the same result for the same
input; the contract test suite in ``tests/`` runs unchanged against each.

Rules that hold everywhere:

* User isolation: a call given ``user_id`` only sees that user's chats (and their messages); another
  user's chat behaves exactly like a missing one (None, False, an empty page, NotFoundError).
* Ordering: chats newest ``updated_at`` first; messages in insertion order (a message's
  ``created_at`` is strictly after the previous one's in its chat, so this holds within one
  millisecond too); API keys newest first. Ties fall back to the id, so pages are stable.
* Pages: ``limit`` 1..1000, ``offset`` >= 0; ``Page.total`` counts all matching rows.
* Usernames and key hashes match exactly (case and trailing spaces count).
* Bad input raises :class:`~chatdb.errors.ValidationError` before anything is written; writes that
  touch two tables (add_message, delete_chat) are atomic. The storage-level methods check their
  arguments' types the same way (``scan_rows(user_id={"$ne": None})`` is a ValidationError).
* Writes create the tables and indexes they need; reads never create or alter anything. On a
  database without chatdb's tables (or a SQLite file that does not exist, which a read does not
  create) reads return what an empty database returns: None, an empty page, no rows, zero
  counts. A database with only some of the tables (another application's, or an older layout)
  makes reads raise :class:`~chatdb.errors.SchemaError`; ``ensure_schema()`` upgrades it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from ._aggregate import AggregateQuery
from .models import ApiKey, Chat, ContentPart, Message, MessageMetadata, Page, User, UserWithPasswordHash

__all__ = ["ChatRepository"]


@runtime_checkable
class ChatRepository(Protocol):
    """Users, chats, messages and API keys of the chat application."""

    backend: str

    # chats
    def create_chat(self, user_id: str, title: str | None = None) -> Chat:
        """A new chat; title "New Chat" when None or ""; ``created_at == updated_at``."""
        ...

    def get_chat(self, chat_id: str, user_id: str) -> Chat | None:
        """The chat, or None when missing or owned by another user."""
        ...

    def list_chats(self, user_id: str, limit: int = 50, offset: int = 0) -> Page[Chat]:
        """The user's chats, most recently updated first."""
        ...

    def update_chat(self, chat_id: str, user_id: str, title: str | None = None) -> Chat | None:
        """Rename (None keeps the title, "" resets it) and move ``updated_at`` forward."""
        ...

    def delete_chat(self, chat_id: str, user_id: str) -> bool:
        """Delete the chat and its messages in one transaction; False when not found."""
        ...

    def set_chat_session(self, chat_id: str, session_id: str | None, user_id: str) -> bool:
        """Attach the agent session id; False (and no change) when the chat is not the user's."""
        ...

    # messages
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
        """Append a message and bump the chat's ``updated_at`` to its ``created_at`` atomically.

        ``message_id`` (optional, 1-36 letters, digits, ``-``, ``_``: a UUID's text) makes the
        call safe to retry: when that id is already stored for the same chat, role, content and
        metadata (an earlier call that committed, though its caller saw an error), nothing is
        written and the stored message is returned. Without it the id is a new UUID.

        Raises NotFoundError when the chat does not exist (or is not ``user_id``'s),
        ValidationError for a bad role, content, metadata or message id, and
        DuplicateMessageIdError when ``message_id`` holds a different message.
        """
        ...

    def get_messages(
        self, chat_id: str, limit: int = 50, offset: int = 0, *, user_id: str | None = None
    ) -> Page[Message]:
        """The chat's messages in insertion order."""
        ...

    def get_message(self, message_id: str, *, user_id: str | None = None) -> Message | None: ...

    # users
    def create_user(self, username: str, password_hash: str) -> User:
        """Raises DuplicateUsernameError when the exact username is taken."""
        ...

    def get_user_by_username(self, username: str) -> UserWithPasswordHash | None: ...

    def get_user_by_id(self, user_id: str) -> User | None: ...

    def list_users(self, limit: int = 50, offset: int = 0) -> Page[User]:
        """All users, oldest first (for administration)."""
        ...

    # API keys
    def create_api_key(self, user_id: str, key_hash: str, key_prefix: str, name: str) -> ApiKey:
        """Raises DuplicateApiKeyError when the hash is already stored."""
        ...

    def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key, or None when unknown or revoked."""
        ...

    def list_api_keys(self, user_id: str) -> list[ApiKey]:
        """The user's keys, newest first, revoked ones included."""
        ...

    def revoke_api_key(self, key_id: str, user_id: str) -> bool:
        """True when the key is (now or already) revoked; the first ``revoked_at`` is kept."""
        ...

    def update_api_key_last_used(self, key_id: str) -> None:
        """Record a use now; a missing key is a no-op."""
        ...

    # storage level: export, copy, demo data (see RepositoryBase for the details)
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
        """Stream stored rows in batches ordered by ``(created_at, id)``, filtered in the database."""
        ...

    def import_rows(self, table: str, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 5_000) -> int:
        """Bulk-insert stored-format rows, skipping existing ids; returns how many were inserted."""
        ...

    def aggregate_messages(self, query: AggregateQuery) -> Iterator[list[tuple[Any, ...]]]:
        """Group sums of the selected messages, computed in the database (for usage reports)."""
        ...

    def count_rows(self) -> dict[str, int]:
        """Row count of every table."""
        ...

    def message_time_range(self) -> tuple[datetime | None, datetime | None]:
        """``created_at`` of the oldest and newest message, ``(None, None)`` when there are none."""
        ...

    # lifecycle
    def ensure_schema(self) -> None:
        """Create missing tables and indexes, upgrading an older layout (idempotent); every
        write does it first. Reads never do."""
        ...

    def has_schema(self) -> bool:
        """Whether chatdb's tables are there (creates nothing); False when none is, SchemaError
        when only some are."""
        ...

    def close(self) -> None:
        """Release every connection."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
