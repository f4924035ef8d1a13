"""Pure document <-> model mappers and query builders for the MongoDB backend.

Documents have the Node application's shapes: collections ``chats``, ``messages``, ``users`` and
``apiKeys``; ``_id`` is the UUID string; fields are camelCase; timestamps are the same ISO
millisecond ``Z`` strings as in SQL (so they sort as strings); a message's ``content`` is a BSON
array and its ``metadata`` a sub-document, ``null`` when there is none (as the Node app writes it;
documents without the field, from older chatdb versions, read the same). Nothing here does I/O, so
all of it is tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import _codec
from .._base import IMPORT_COLUMNS, SCAN_COLUMNS, TABLE_NAMES
from ..config import DEFAULT_MONGODB_NAME, DbConfig
from ..errors import ValidationError
from ..models import ApiKey, Chat, Message, User, UserWithPasswordHash

__all__ = [
    "COLLECTIONS",
    "INDEXES",
    "api_key_document",
    "chat_document",
    "count_pipeline",
    "database_name",
    "import_document",
    "load_api_key",
    "load_chat",
    "load_message",
    "load_user",
    "load_user_with_hash",
    "message_document",
    "scan_filter",
    "scan_projection",
    "scan_row",
    "server_location",
    "stored_ts",
    "user_document",
]

# chatdb table name -> MongoDB collection name (the Node app's)
COLLECTIONS: dict[str, str] = {
    "users": "users",
    "chats": "chats",
    "messages": "messages",
    "api_keys": "apiKeys",
}

# chatdb's stored (snake_case) column -> document field, per table
_FIELDS: dict[str, dict[str, str]] = {
    "chats": {
        "id": "_id",
        "title": "title",
        "session_id": "sessionId",
        "user_id": "userId",
        "created_at": "createdAt",
        "updated_at": "updatedAt",
    },
    "messages": {
        "id": "_id",
        "chat_id": "chatId",
        "role": "role",
        "content": "content",
        "created_at": "createdAt",
        "metadata": "metadata",
    },
    "users": {
        "id": "_id",
        "username": "username",
        "password_hash": "passwordHash",
        "created_at": "createdAt",
        "updated_at": "updatedAt",
    },
    "api_keys": {
        "id": "_id",
        "user_id": "userId",
        "key_hash": "keyHash",
        "key_prefix": "keyPrefix",
        "name": "name",
        "created_at": "createdAt",
        "last_used_at": "lastUsedAt",
        "revoked_at": "revokedAt",
    },
}

ASC, DESC = 1, -1

# (collection, key pattern, unique). The first six are the seed's (default names, so an index
# the Node app already made is recognised); the rest keep pages and scans index-ordered.
INDEXES: tuple[tuple[str, list[tuple[str, int]], bool], ...] = (
    ("messages", [("chatId", ASC)], False),
    ("chats", [("updatedAt", ASC)], False),
    ("chats", [("userId", ASC)], False),
    ("users", [("username", ASC)], True),
    ("apiKeys", [("keyHash", ASC)], True),
    ("apiKeys", [("userId", ASC)], False),
    ("messages", [("chatId", ASC), ("createdAt", ASC), ("_id", ASC)], False),
    ("chats", [("userId", ASC), ("updatedAt", DESC), ("_id", DESC)], False),
    ("messages", [("createdAt", ASC), ("_id", ASC)], False),
)

CHAT_ORDER = [("updatedAt", DESC), ("_id", DESC)]
MESSAGE_ORDER = [("createdAt", ASC), ("_id", ASC)]
USER_ORDER = [("createdAt", ASC), ("_id", ASC)]
KEY_ORDER = [("createdAt", DESC), ("_id", DESC)]
SCAN_ORDER = [("createdAt", ASC), ("_id", ASC)]


def count_pipeline(query: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Aggregation that counts the documents matching ``query`` (one ``{"n": count}`` document,
    none when nothing matches). ``count_documents`` sends ``$group`` with ``$sum`` instead; both
    are standard, this one is also fast on the nx-27017 test server."""
    return [{"$match": dict(query)}, {"$count": "n"}]


# -- configuration ------------------------------------------------------------------------------


def database_name(config: DbConfig) -> str:
    """``mongodb_name`` when given, else the database in the URL's path, else ``ccluster``."""
    if config.mongodb_name:
        return config.mongodb_name
    path = urlsplit(config.mongodb_url or "").path
    name = unquote(path.lstrip("/"))
    return name or DEFAULT_MONGODB_NAME


def server_location(url: str) -> str:
    """``host:port`` (comma-separated for a seed list) of a MongoDB URL, without credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    hosts = parts.netloc.rpartition("@")[2]
    if parts.scheme.lower() == "mongodb+srv":
        return hosts
    return ",".join(h if ":" in h.rsplit("]", 1)[-1] else f"{h}:27017" for h in hosts.split(",") if h)


# -- timestamps -------------------------------------------------------------------------------


def stored_ts(value: Any) -> Any:
    """A timestamp as stored: ISO ``Z`` text. A BSON date (another writer's) becomes that text."""
    if isinstance(value, datetime):
        return _codec.format_ts(value)
    return value


def _ts(value: Any) -> datetime:
    return value if isinstance(value, datetime) and value.tzinfo else _codec.parse_ts(stored_ts(value))


def _ts_or_none(value: Any) -> datetime | None:
    return None if value is None else _ts(value)


# -- model -> document --------------------------------------------------------------------------


def chat_document(chat: Chat) -> dict[str, Any]:
    return {
        "_id": chat.id,
        "title": chat.title,
        "sessionId": chat.session_id,
        "userId": chat.user_id,
        "createdAt": _codec.format_ts(chat.created_at),
        "updatedAt": _codec.format_ts(chat.updated_at),
    }


def message_document(
    message_id: str,
    chat_id: str,
    role: str,
    content: list[dict[str, Any]],
    created_at: str,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "_id": message_id,
        "chatId": chat_id,
        "role": role,
        "content": content,
        "createdAt": created_at,
        "metadata": metadata,
    }


def user_document(user: UserWithPasswordHash) -> dict[str, Any]:
    return {
        "_id": user.id,
        "username": user.username,
        "passwordHash": user.password_hash,
        "createdAt": _codec.format_ts(user.created_at),
        "updatedAt": _codec.format_ts(user.updated_at),
    }


def api_key_document(key: ApiKey, key_hash: str) -> dict[str, Any]:
    return {
        "_id": key.id,
        "userId": key.user_id,
        "keyHash": key_hash,
        "keyPrefix": key.key_prefix,
        "name": key.name,
        "createdAt": _codec.format_ts(key.created_at),
        "lastUsedAt": None,
        "revokedAt": None,
    }


def chat_changes(changes: Mapping[str, Any], updated_at: str) -> dict[str, Any]:
    """``$set`` of a chat update: ``title``/``session_id`` changes plus the new ``updatedAt``."""
    fields = _FIELDS["chats"]
    return {fields[name]: value for name, value in changes.items()} | {"updatedAt": updated_at}


# -- document -> model --------------------------------------------------------------------------


def load_chat(doc: Mapping[str, Any]) -> Chat:
    return Chat(
        doc["_id"],
        doc.get("title") or "",
        doc.get("sessionId"),
        doc.get("userId", "system"),
        _ts(doc["createdAt"]),
        _ts(doc.get("updatedAt", doc["createdAt"])),
    )


def load_message(doc: Mapping[str, Any]) -> Message:
    return Message(
        doc["_id"],
        doc["chatId"],
        doc["role"],
        _codec.load_content(doc.get("content")),
        _ts(doc["createdAt"]),
        _codec.load_metadata(doc.get("metadata")),
    )


def load_user(doc: Mapping[str, Any]) -> User:
    return User(
        doc["_id"], doc["username"], _ts(doc["createdAt"]), _ts(doc.get("updatedAt", doc["createdAt"]))
    )


def load_user_with_hash(doc: Mapping[str, Any]) -> UserWithPasswordHash:
    user = load_user(doc)
    return UserWithPasswordHash(
        user.id, user.username, user.created_at, user.updated_at, password_hash=doc.get("passwordHash", "")
    )


def load_api_key(doc: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        doc["_id"],
        doc["userId"],
        doc.get("name", ""),
        doc.get("keyPrefix", ""),
        _ts(doc["createdAt"]),
        _ts_or_none(doc.get("lastUsedAt")),
        _ts_or_none(doc.get("revokedAt")),
    )


# -- scans and imports --------------------------------------------------------------------------


def collection_for(table: str) -> str:
    if table not in COLLECTIONS:
        raise ValidationError(f"table must be one of {', '.join(TABLE_NAMES)}, not {table!r}")
    return COLLECTIONS[table]


def scan_columns(table: str, stored: bool) -> tuple[str, ...]:
    return IMPORT_COLUMNS[table] if stored else SCAN_COLUMNS[table]


def scan_filter(
    table: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    owner_filter: Any = None,
    after: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The query behind ``scan_rows``: ``createdAt`` range, owner and resume point.

    ``owner_filter`` is the value matched against the owner field (``userId``, or ``_id`` for
    users); for messages the caller passes ``{"$in": [chat ids]}`` matched against ``chatId``.
    """
    clauses: list[dict[str, Any]] = []
    created: dict[str, Any] = {}
    if since is not None:
        created["$gte"] = _codec.format_ts(since)
    if until is not None:
        created["$lt"] = _codec.format_ts(until)
    if created:
        clauses.append({"createdAt": created})
    if owner_filter is not None:
        owner_field = {"messages": "chatId", "users": "_id"}.get(table, "userId")
        clauses.append({owner_field: owner_filter})
    if after is not None:
        stamp, last_id = after
        clauses.append(
            {"$or": [{"createdAt": {"$gt": stamp}}, {"createdAt": stamp, "_id": {"$gt": last_id}}]}
        )
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def scan_projection(table: str, stored: bool) -> dict[str, int] | None:
    """The fields a scan asks for; None (the whole document) for messages, whose documents
    hold nothing but the fields read: a projection saves nothing there, and it cost the
    nx-27017 test server 37% of a scan. Other tables name their fields, so that no secret
    (password and key hashes) leaves the server unless asked for."""
    if table == "messages":
        return None
    fields = _FIELDS[table]
    return {fields[name]: 1 for name in scan_columns(table, stored) if name in fields}


def scan_row(table: str, doc: Mapping[str, Any], stored: bool, owner: str | None = None) -> tuple[Any, ...]:
    """One document as a row of ``scan_columns``: timestamps as ISO text, content and
    metadata decoded (a list and a dict or None); ``owner`` fills a message's ``user_id``."""
    fields = _FIELDS[table]
    row: list[Any] = []
    for name in scan_columns(table, stored):
        if table == "messages" and name == "user_id":
            row.append(owner)
            continue
        value = doc.get(fields[name])
        row.append(stored_ts(value) if name.endswith("_at") else value)
    return tuple(row)


def _decoded(value: Any) -> Any:
    """Content/metadata given as JSON text (as SQL stores it) becomes the BSON value. Text that
    is not JSON (another program's) is kept as the string it was, so a copy changes nothing and
    exports still count it as unreadable."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def import_document(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored-format row (keys ``IMPORT_COLUMNS[table]``) as a Node-shape document."""
    fields = _FIELDS[table]
    document: dict[str, Any] = {}
    for name in IMPORT_COLUMNS[table]:
        value = row.get(name)
        if name.endswith("_at"):
            value = stored_ts(value)
        elif table == "messages" and name in ("content", "metadata"):
            value = _decoded(value)
        elif table == "chats" and name == "user_id" and value is None:
            value = "system"
        document[fields[name]] = value
    return document
