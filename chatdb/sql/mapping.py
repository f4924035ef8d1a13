"""Pure row → model mappers for the SQL backends (testable without a database).

Rows are plain tuples in the column order of the SELECTs in repository.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .._codec import load_content, load_metadata, parse_ts, parse_ts_or_none
from ..models import ApiKey, Chat, Message, User, UserWithPasswordHash

_fromisoformat = datetime.fromisoformat


class _ChatSlots:
    """Chat's slot layout without the frozen ``__init__``: see load_chat."""

    __slots__ = Chat.__slots__


def load_chat(row: tuple[Any, ...]) -> Chat:
    """(id, title, session_id, user_id, created_at, updated_at)

    A page of chats is mostly model building: a frozen dataclass sets each field through
    ``object.__setattr__`` (a call per field), 3x the cost of plain slot stores. So the fields
    go into an object of the same slot layout, which then becomes a Chat (``__class__``
    assignment between layout-identical slot classes): the same frozen, equal, hashable,
    picklable Chat as ``Chat(...)`` builds (tests/test_codec.py compares the two)."""
    created, updated = row[4], row[5]
    chat: Any = _ChatSlots.__new__(_ChatSlots)
    chat.id, chat.title, chat.session_id, chat.user_id = row[0], row[1], row[2], row[3]
    # Inlined fast path of parse_ts: the stored form is already UTC, whole milliseconds.
    if len(created) == 24 == len(updated) and created[23] == "Z" == updated[23]:
        chat.created_at, chat.updated_at = _fromisoformat(created), _fromisoformat(updated)
    else:
        chat.created_at, chat.updated_at = parse_ts(created), parse_ts(updated)
    chat.__class__ = Chat
    result: Chat = chat
    return result


class _MessageSlots:
    """Message's slot layout without the frozen ``__init__``: see load_chat."""

    __slots__ = Message.__slots__


def load_message(row: tuple[Any, ...]) -> Message:
    """(id, chat_id, role, content, created_at, metadata); built as load_chat builds a Chat."""
    created = row[4]
    message: Any = _MessageSlots.__new__(_MessageSlots)
    message.id, message.chat_id, message.role = row[0], row[1], row[2]
    message.content = load_content(row[3])
    message.created_at = (
        _fromisoformat(created) if len(created) == 24 and created[23] == "Z" else parse_ts(created)
    )
    message.metadata = load_metadata(row[5])
    message.__class__ = Message
    result: Message = message
    return result


def load_user(row: tuple[Any, ...]) -> User:
    """(id, username, created_at, updated_at)"""
    return User(row[0], row[1], parse_ts(row[2]), parse_ts(row[3]))


def load_user_with_hash(row: tuple[Any, ...]) -> UserWithPasswordHash:
    """(id, username, created_at, updated_at, password_hash)"""
    return UserWithPasswordHash(row[0], row[1], parse_ts(row[2]), parse_ts(row[3]), password_hash=row[4])


def load_api_key(row: tuple[Any, ...]) -> ApiKey:
    """(id, user_id, name, key_prefix, created_at, last_used_at, revoked_at)"""
    return ApiKey(
        row[0], row[1], row[2], row[3], parse_ts(row[4]), parse_ts_or_none(row[5]), parse_ts_or_none(row[6])
    )
