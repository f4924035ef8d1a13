"""One database with the Node app: the orders and schemas that both programs write.

Shared-write cases on every backend (the ``backend``/``repo`` fixtures), and databases created
from the Node layer's own DDL (tests/fixtures/node-schema-*.sql).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from chatdb._codec import format_ts
from chatdb.repository import ChatRepository

from .backends import Backend

TEXT = [{"type": "text", "text": "hi"}]


def set_chat_updated_at(backend: Backend, repo: ChatRepository, chat_id: str, stamp: datetime) -> None:
    """What the Node app does to a chat it writes to: ``updated_at`` = its own clock."""
    if backend.name == "mongodb":
        backend.admin.chats.update_one({"_id": chat_id}, {"$set": {"updatedAt": format_ts(stamp)}})
        return
    engine: Any = repo.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE chats SET updated_at = :at WHERE id = :id"), {"at": format_ts(stamp), "id": chat_id}
        )


def test_a_message_sorts_after_the_chat_s_last_even_when_another_writer_moved_updated_at_back(
    backend: Backend, repo: ChatRepository
) -> None:
    chat = repo.create_chat("u1")
    now = datetime.now(UTC)
    # A writer whose clock is ahead bumps the chat: chatdb's next messages follow it ...
    set_chat_updated_at(backend, repo, chat.id, now + timedelta(seconds=30))
    ahead = [repo.add_message(chat.id, "user", TEXT) for _ in range(2)]
    assert ahead[0].created_at > now + timedelta(seconds=30)
    # ... then one whose clock is behind sets updated_at back, before chatdb's next write.
    set_chat_updated_at(backend, repo, chat.id, now - timedelta(seconds=5))
    after = repo.add_message(chat.id, "assistant", TEXT)
    assert after.created_at == ahead[-1].created_at + timedelta(milliseconds=1)
    page = repo.get_messages(chat.id)
    assert [m.id for m in page.items] == [ahead[0].id, ahead[1].id, after.id]
    assert repo.get_chat(chat.id, "u1").updated_at == after.created_at  # type: ignore[union-attr]
