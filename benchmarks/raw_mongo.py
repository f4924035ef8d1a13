"""The CRUD benchmark's operations in raw pymongo: the baseline chatdb's MongoDB backend is held to.

``RawMongo`` does the same server work as :class:`chatdb.mongo.MongoRepository`, so the ratio
measures what chatdb adds (validation, models, error translation), not a different algorithm:

* the same documents (Node shapes, ISO ``Z`` strings, content as an array) and the same indexes;
* ``add_message``: read the chat, move its ``updatedAt`` forward by compare-and-set, insert the
  message, check the chat still exists (chatdb's guard against a concurrent delete_chat);
* ``list_chats`` / ``get_messages`` count the total as chatdb's ``Page.total`` does, with the
  same ``$match`` + ``$count`` aggregation.

Figures on the nx-27017 test server say little about real MongoDB: there, every command is a
SQLite query behind a Python wire-protocol server.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo

INDEXES = (
    ("messages", [("chatId", 1)], False),
    ("chats", [("updatedAt", 1)], False),
    ("chats", [("userId", 1)], False),
    ("users", [("username", 1)], True),
    ("apiKeys", [("keyHash", 1)], True),
    ("apiKeys", [("userId", 1)], False),
    ("messages", [("chatId", 1), ("createdAt", 1), ("_id", 1)], False),
    ("chats", [("userId", 1), ("updatedAt", -1), ("_id", -1)], False),
    ("messages", [("createdAt", 1), ("_id", 1)], False),
)
_MS = timedelta(milliseconds=1)


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _next_iso(previous: str, latest: str | None = None) -> str:
    """After the chat's ``updatedAt`` and its latest message (what chatdb reads since issue 15)."""
    floor = max(datetime.fromisoformat(t) for t in (previous, latest) if t) + _MS
    now = _now()
    return _iso(floor if floor > now else now)


def _count(collection: Any, query: dict[str, Any]) -> int:
    found = next(collection.aggregate([{"$match": query}, {"$count": "n"}]), None)
    return 0 if found is None else int(found["n"])


class RawMongo:
    """Users, chats and messages with nothing but pymongo calls."""

    def __init__(self, url: str, db_name: str) -> None:
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
        self.db = self.client[db_name]
        for collection, keys, unique in INDEXES:
            self.db[collection].create_index(keys, unique=unique)

    def create_user(self, username: str, password_hash: str) -> str:
        now = _iso(_now())
        user_id = str(uuid.uuid4())
        self.db.users.insert_one(
            {
                "_id": user_id,
                "username": username,
                "passwordHash": password_hash,
                "createdAt": now,
                "updatedAt": now,
            }
        )
        return user_id

    def create_chat(self, user_id: str, title: str) -> str:
        now = _iso(_now())
        chat_id = str(uuid.uuid4())
        self.db.chats.insert_one(
            {
                "_id": chat_id,
                "title": title,
                "sessionId": None,
                "userId": user_id,
                "createdAt": now,
                "updatedAt": now,
            }
        )
        return chat_id

    def add_message(
        self, chat_id: str, role: str, content: list[Any], metadata: dict[str, Any] | None
    ) -> str:
        chats = self.db.chats
        while True:
            chat = chats.find_one({"_id": chat_id})
            if chat is None:
                raise LookupError(chat_id)
            last = self.db.messages.find_one(
                {"chatId": chat_id}, {"createdAt": 1}, sort=[("createdAt", -1), ("_id", -1)]
            )
            stamp = _next_iso(chat["updatedAt"], None if last is None else last["createdAt"])
            if chats.update_one(
                {"_id": chat_id, "updatedAt": chat["updatedAt"]}, {"$set": {"updatedAt": stamp}}
            ).matched_count:
                break
        message_id = str(uuid.uuid4())
        document: dict[str, Any] = {
            "_id": message_id,
            "chatId": chat_id,
            "role": role,
            "content": content,
            "createdAt": stamp,
        }
        if metadata is not None:
            document["metadata"] = metadata
        self.db.messages.insert_one(document)
        if chats.find_one({"_id": chat_id}, {"_id": 1}) is None:
            self.db.messages.delete_one({"_id": message_id})
            raise LookupError(chat_id)
        return message_id

    def get_chat(self, chat_id: str, user_id: str) -> dict[str, Any] | None:
        return self.db.chats.find_one({"_id": chat_id, "userId": user_id})

    def list_chats(self, user_id: str, limit: int) -> list[dict[str, Any]]:
        _count(self.db.chats, {"userId": user_id})
        return list(
            self.db.chats.find({"userId": user_id}, sort=[("updatedAt", -1), ("_id", -1)], limit=limit)
        )

    def get_messages(self, chat_id: str, limit: int) -> list[dict[str, Any]]:
        _count(self.db.messages, {"chatId": chat_id})
        return list(
            self.db.messages.find({"chatId": chat_id}, sort=[("createdAt", 1), ("_id", 1)], limit=limit)
        )

    def close(self) -> None:
        self.client.close()
