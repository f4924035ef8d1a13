"""Pure row → model mappers for the SQL backends (testable without a database)."""

from __future__ import annotations

from typing import Any

from .._codec import load_content, load_metadata, parse_ts, parse_ts_or_none
from ..models import ApiKey, Chat, Message, User, UserWithPasswordHash


def load_chat(row: Any) -> Chat:
    return Chat(
        row.id, row.title, row.session_id, row.user_id, parse_ts(row.created_at), parse_ts(row.updated_at)
    )


def load_message(row: Any) -> Message:
    return Message(
        row.id,
        row.chat_id,
        row.role,
        load_content(row.content),
        parse_ts(row.created_at),
        load_metadata(row.metadata),
    )


def load_user(row: Any) -> User:
    return User(row.id, row.username, parse_ts(row.created_at), parse_ts(row.updated_at))


def load_user_with_hash(row: Any) -> UserWithPasswordHash:
    return UserWithPasswordHash(
        row.id,
        row.username,
        parse_ts(row.created_at),
        parse_ts(row.updated_at),
        password_hash=row.password_hash,
    )


def load_api_key(row: Any) -> ApiKey:
    return ApiKey(
        row.id,
        row.user_id,
        row.name,
        row.key_prefix,
        parse_ts(row.created_at),
        parse_ts_or_none(row.last_used_at),
        parse_ts_or_none(row.revoked_at),
    )
