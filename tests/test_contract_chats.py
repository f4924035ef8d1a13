"""The chat half of the ChatRepository contract, run unchanged on every backend."""

from __future__ import annotations

import time
from datetime import UTC

import pytest

from chatdb import Chat, Page, errors
from chatdb.repository import ChatRepository


def test_create_chat_returns_a_chat_with_equal_timestamps(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1", "Plan the launch")
    assert isinstance(chat, Chat)
    assert chat.title == "Plan the launch"
    assert chat.user_id == "u1"
    assert chat.session_id is None
    assert chat.created_at == chat.updated_at
    assert chat.created_at.tzinfo is not None and chat.created_at.utcoffset() == UTC.utcoffset(None)
    assert chat.created_at.microsecond % 1000 == 0


@pytest.mark.parametrize("title", [None, ""])
def test_create_chat_without_title_is_called_new_chat(repo: ChatRepository, title: str | None) -> None:
    assert repo.create_chat("u1", title).title == "New Chat"


def test_get_chat_returns_what_create_returned(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1", "Ünïcödé 🚀 title")
    assert repo.get_chat(chat.id, "u1") == chat


def test_get_chat_of_another_user_is_none(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1", "mine")
    assert repo.get_chat(chat.id, "u2") is None
    assert repo.get_chat("no-such-chat", "u1") is None


def test_list_chats_is_most_recently_updated_first_and_paginated(repo: ChatRepository) -> None:
    chats = [repo.create_chat("u1", f"chat {i}") for i in range(5)]
    repo.create_chat("u2", "other user's")
    time.sleep(0.002)  # the bumped chat is then strictly the newest
    repo.add_message(chats[1].id, "user", [{"type": "text", "text": "bump"}])
    current = [repo.get_chat(c.id, "u1") for c in chats]
    # Newest update first; chats updated in the same millisecond fall back to the id, descending.
    expected = [c.id for c in sorted(current, key=lambda c: (c.updated_at, c.id), reverse=True)]  # type: ignore[union-attr]
    assert expected[0] == chats[1].id
    page = repo.list_chats("u1", limit=2, offset=0)
    assert isinstance(page, Page)
    assert (page.total, page.limit, page.offset) == (5, 2, 0)
    assert [c.id for c in page.items] == expected[:2]
    rest = repo.list_chats("u1", limit=10, offset=2)
    assert [c.id for c in rest.items] == expected[2:]
    assert repo.list_chats("u1", limit=10, offset=5).items == []
    assert repo.list_chats("nobody").total == 0


def test_list_chats_orders_by_update_time_not_creation(repo: ChatRepository) -> None:
    first = repo.create_chat("u1", "first")
    second = repo.create_chat("u1", "second")
    time.sleep(0.002)  # chats updated in the same millisecond are ordered by id instead
    repo.update_chat(first.id, "u1", "renamed")
    assert repo.list_chats("u1").items[0].id == first.id
    time.sleep(0.002)
    repo.add_message(second.id, "user", [{"type": "text", "text": "now me"}])
    assert [c.id for c in repo.list_chats("u1").items] == [second.id, first.id]


def test_list_chats_defaults_to_fifty(repo: ChatRepository) -> None:
    page = repo.list_chats("u1")
    assert (page.limit, page.offset, page.total, page.items) == (50, 0, 0, [])


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (1001, 0), (-1, 0), (10, -1), (True, 0), (1.5, 0)])
def test_list_chats_rejects_bad_pages(repo: ChatRepository, limit: object, offset: object) -> None:
    with pytest.raises(errors.ValidationError):
        repo.list_chats("u1", limit=limit, offset=offset)  # type: ignore[arg-type]


def test_page_limits_at_the_edges_are_accepted(repo: ChatRepository) -> None:
    assert repo.list_chats("u1", limit=1).limit == 1
    assert repo.list_chats("u1", limit=1000).limit == 1000


def test_update_chat_renames_and_moves_updated_at_forward(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1", "old")
    renamed = repo.update_chat(chat.id, "u1", "new")
    assert renamed is not None
    assert renamed.title == "new"
    assert renamed.updated_at > chat.updated_at
    assert renamed.created_at == chat.created_at
    assert repo.get_chat(chat.id, "u1") == renamed


def test_update_chat_with_none_keeps_the_title_and_empty_resets_it(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1", "keep me")
    kept = repo.update_chat(chat.id, "u1", None)
    assert kept is not None and kept.title == "keep me" and kept.updated_at > chat.updated_at
    reset = repo.update_chat(chat.id, "u1", "")
    assert reset is not None and reset.title == "New Chat"


def test_update_chat_of_another_user_changes_nothing(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1", "mine")
    assert repo.update_chat(chat.id, "u2", "stolen") is None
    assert repo.update_chat("missing", "u1", "x") is None
    assert repo.get_chat(chat.id, "u1") == chat


def test_delete_chat_removes_it_with_its_messages(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    other = repo.create_chat("u1")
    message = repo.add_message(chat.id, "user", [{"type": "text", "text": "bye"}])
    kept = repo.add_message(other.id, "user", [{"type": "text", "text": "stay"}])
    assert repo.delete_chat(chat.id, "u2") is False
    assert repo.get_chat(chat.id, "u1") is not None
    assert repo.delete_chat(chat.id, "u1") is True
    assert repo.get_chat(chat.id, "u1") is None
    assert repo.get_message(message.id) is None
    assert repo.get_messages(chat.id).total == 0
    assert repo.get_message(kept.id) == kept
    assert repo.delete_chat(chat.id, "u1") is False


def test_set_chat_session_attaches_the_session_for_the_owner_only(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    assert repo.set_chat_session(chat.id, "sess-1", "u2") is False
    assert repo.get_chat(chat.id, "u1") == chat
    assert repo.set_chat_session(chat.id, "sess-1", "u1") is True
    stored = repo.get_chat(chat.id, "u1")
    assert stored is not None and stored.session_id == "sess-1"
    assert repo.set_chat_session(chat.id, None, "u1") is True
    cleared = repo.get_chat(chat.id, "u1")
    assert cleared is not None and cleared.session_id is None
    assert repo.set_chat_session("missing", "s", "u1") is False


@pytest.mark.parametrize("bad", ["", "x" * 256, "a\x00b", 42])
def test_create_chat_rejects_bad_user_ids(repo: ChatRepository, bad: object) -> None:
    with pytest.raises(errors.ValidationError):
        repo.create_chat(bad)  # type: ignore[arg-type]
    assert repo.list_chats("x").total == 0


def test_titles_round_trip_unicode_and_long_text(repo: ChatRepository) -> None:
    title = "Ideas 💡 für später — 日本語 " + "x" * 5000
    chat = repo.create_chat("u1", title)
    fetched = repo.get_chat(chat.id, "u1")
    assert fetched is not None and fetched.title == title


def test_title_with_nul_is_rejected_everywhere(repo: ChatRepository) -> None:
    with pytest.raises(errors.ValidationError):
        repo.create_chat("u1", "a\x00b")
    chat = repo.create_chat("u1", "ok")
    with pytest.raises(errors.ValidationError):
        repo.update_chat(chat.id, "u1", "a\x00b")
    assert repo.get_chat(chat.id, "u1") == chat


def test_lookups_with_non_string_ids_are_validation_errors(repo: ChatRepository) -> None:
    with pytest.raises(errors.ValidationError):
        repo.get_chat(123, "u1")  # type: ignore[arg-type]
