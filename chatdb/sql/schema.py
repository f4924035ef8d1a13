"""The Node application's tables, as one SQLAlchemy Core schema for every SQL dialect.

Column names and meanings are exactly the seed's (timestamps and JSON are TEXT). Dialect
differences live in :class:`ExactText`: plain TEXT on SQLite and PostgreSQL; on MySQL/MariaDB a
VARCHAR of the seed's length (LONGTEXT for content and metadata, which must hold 10 MB images) in a
binary, no-pad utf8mb4 collation so that "alice", "Alice" and "alice " stay three users.

chatdb adds the indexes the seed lacks; they are named so that an existing database can be
checked for them and upgraded in place.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Index, MetaData, Table, Text
from sqlalchemy.dialects.mysql import LONGTEXT, VARCHAR
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["ExactText", "TABLES", "api_keys", "chats", "messages", "metadata", "users"]


class ExactText(TypeDecorator[str]):
    """TEXT compared byte for byte on every dialect; ``length`` bounds it on MySQL only."""

    impl = Text
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            # MariaDB's utf8mb4_bin pads spaces ("alice" = "alice "); the nopad collations do not.
            collation = "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"
            if self.length is None:
                return dialect.type_descriptor(LONGTEXT(charset="utf8mb4", collation=collation))
            return dialect.type_descriptor(VARCHAR(self.length, charset="utf8mb4", collation=collation))
        return dialect.type_descriptor(Text())


ID = 36
TS = 32  # "2026-11-26T10:57:38.123Z" is 24; room for other writers' offsets

metadata = MetaData()

chats = Table(
    "chats",
    metadata,
    Column("id", ExactText(ID), primary_key=True),
    Column("title", ExactText(), nullable=False),
    Column("session_id", ExactText(255)),
    Column("user_id", ExactText(255), nullable=False, server_default="system"),
    Column("created_at", ExactText(TS), nullable=False),
    Column("updated_at", ExactText(TS), nullable=False),
    Index("idx_chats_user_updated", "user_id", "updated_at", "id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

messages = Table(
    "messages",
    metadata,
    Column("id", ExactText(ID), primary_key=True),
    Column("chat_id", ExactText(ID), nullable=False),
    Column("role", ExactText(32), nullable=False),
    Column("content", ExactText(), nullable=False),
    Column("created_at", ExactText(TS), nullable=False),
    Column("metadata", ExactText()),
    Index("idx_messages_chat_created", "chat_id", "created_at", "id"),
    Index("idx_messages_created", "created_at", "id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

users = Table(
    "users",
    metadata,
    Column("id", ExactText(ID), primary_key=True),
    Column("username", ExactText(255), nullable=False, unique=True),
    Column("password_hash", ExactText(), nullable=False),
    Column("created_at", ExactText(TS), nullable=False),
    Column("updated_at", ExactText(TS), nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", ExactText(ID), primary_key=True),
    Column("user_id", ExactText(255), nullable=False),
    Column("key_hash", ExactText(128), nullable=False, unique=True),
    Column("key_prefix", ExactText(20), nullable=False),
    Column("name", ExactText(255), nullable=False),
    Column("created_at", ExactText(TS), nullable=False),
    Column("last_used_at", ExactText(TS)),
    Column("revoked_at", ExactText(TS)),
    Index("idx_api_keys_user", "user_id", "created_at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

TABLES = {"chats": chats, "messages": messages, "users": users, "api_keys": api_keys}
