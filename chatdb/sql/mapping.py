"""Pure row → model mappers for the SQL backends (testable without a database).

Rows are plain tuples in the column order of the SELECTs in repository.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .._codec import load_content, load_metadata, parse_ts, parse_ts_or_none
from ..models import ApiKey, Chat, Message, User, UserWithPasswordHash

_fromisoformat = datetime.fromisoformat


def load_chat(row: tuple[Any, ...]) -> Chat:
    """(id, title, session_id, user_id, created_at, updated_at)"""
    created, updated = row[4], row[5]
    # Inlined fast path of parse_ts: a page of chats is mostly timestamp parsing.
    if len(created) == 24 == len(updated) and created[23] == "Z" == updated[23]:
        return Chat(row[0], row[1], row[2], row[3], _fromisoformat(created), _fromisoformat(updated))
    return Chat(row[0], row[1], row[2], row[3], parse_ts(created), parse_ts(updated))


def load_message(row: tuple[Any, ...]) -> Message:
    """(id, chat_id, role, content, created_at, metadata)"""
    return Message(row[0], row[1], row[2], load_content(row[3]), parse_ts(row[4]), load_metadata(row[5]))


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
