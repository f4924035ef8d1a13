"""The values the repository returns: frozen dataclasses, UTC datetimes with millisecond precision."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "ApiKey",
    "Chat",
    "ContentPart",
    "Message",
    "MessageMetadata",
    "Page",
    "Role",
    "User",
    "UserWithPasswordHash",
]

T = TypeVar("T")
Role = Literal["user", "assistant"]
ContentPart = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Chat:
    id: str
    title: str
    session_id: str | None
    user_id: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MessageMetadata:
    """What the agent run cost. ``extra`` keeps any other stored key under its own name."""

    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_cost_usd: float | None = None
    duration_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    chat_id: str
    role: str
    content: list[ContentPart]
    created_at: datetime
    metadata: MessageMetadata | None = None


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class UserWithPasswordHash(User):
    """A user as needed to check a login; the hash never shows in ``repr``."""

    password_hash: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as listed to its owner: never the hash."""

    id: str
    user_id: str
    name: str
    key_prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: ``total`` counts every item, not just this page."""

    items: list[T]
    total: int
    limit: int
    offset: int
