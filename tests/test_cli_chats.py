"""``chatdb chats list|show|delete``, checked against straight SQL."""

from __future__ import annotations

import json

import pytest

from chatdb.repository import ChatRepository

from .backends import Backend
from .cli_support import CLI_BACKENDS, invoke, ok, ok_json, one_error_line, sql_rows

pytestmark = pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)

PNG = "iVBORw0KGgo="


def seed(repo: ChatRepository) -> tuple[str, str, list[str]]:
    """alice with three chats (one with messages), bob with one; returns ids."""
    alice = repo.create_user("alice", "x").id
    bob = repo.create_user("bob", "x").id
    chats = [repo.create_chat(alice, f"chat {i}").id for i in range(3)]
    repo.create_chat(bob, "bob's")
    repo.add_message(chats[0], "user", [{"type": "text", "text": "hello " * 30}])
    repo.add_message(
        chats[0],
        "assistant",
        [{"type": "text", "text": "hi"}, {"type": "image", "imageData": PNG, "mimeType": "image/png"}],
        {
            "model": "claude-sonnet-4",
            "inputTokens": 12,
            "outputTokens": 34,
            "totalCostUsd": 0.0123,
            "durationMs": 456,
        },
    )
    repo.add_message(chats[0], "user", [{"type": "text", "text": "thanks ✓"}])
    return alice, bob, chats


def test_chats_list_matches_sql_and_pages(backend: Backend, repo: ChatRepository) -> None:
    alice, _, _ = seed(repo)
    listed = ok_json(backend.url, "chats", "list", "--user", "alice")
    expected = sql_rows(
        backend,
        "SELECT id, title, session_id, created_at, updated_at FROM chats WHERE user_id = :u "
        "ORDER BY updated_at DESC, id DESC",
        u=alice,
    )
    assert listed == expected and len(listed) == 3
    page = ("--limit", "1", "--offset", "1", "--format=nl")
    result = invoke(backend.url, "chats", "list", "--user", "alice", *page)
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [expected[1]["id"]]
    assert "chats 2-2 of 3" in result.stderr


def test_chats_show_lists_messages_in_order_with_metadata(backend: Backend, repo: ChatRepository) -> None:
    _, _, chats = seed(repo)
    shown = ok_json(backend.url, "chats", "show", chats[0], "--user", "alice")
    stored = sql_rows(
        backend,
        "SELECT id, role, content, created_at, metadata FROM messages WHERE chat_id = :c "
        "ORDER BY created_at, id",
        c=chats[0],
    )
    assert [m["id"] for m in shown] == [r["id"] for r in stored]
    assert [m["created_at"] for m in shown] == [r["created_at"] for r in stored]
    assert shown[0]["text"] == json.loads(stored[0]["content"])[0]["text"]  # full text in JSON
    meta = json.loads(stored[1]["metadata"])
    assert shown[1] | {"id": None, "created_at": None} == {
        "id": None,
        "created_at": None,
        "role": "assistant",
        "text": "hi",
        "images": 1,
        "model": meta["model"],
        "input_tokens": meta["inputTokens"],
        "output_tokens": meta["outputTokens"],
        "total_cost_usd": meta["totalCostUsd"],
        "duration_ms": meta["durationMs"],
    }
    page = ok_json(backend.url, "chats", "show", chats[0], "--user", "alice", "--limit", "1", "--offset", "2")
    assert [m["text"] for m in page] == ["thanks ✓"]
    table = ok(backend.url, "chats", "show", chats[0], "--user", "alice")
    assert "chat 0" in table.stderr and "claude-sonnet-4" in table.stdout and "…" in table.stdout
    assert "…" not in ok(backend.url, "chats", "show", chats[0], "--user", "alice", "--full").stdout


def test_chats_of_another_user_are_not_found(backend: Backend, repo: ChatRepository) -> None:
    _, _, chats = seed(repo)
    line = one_error_line(invoke(backend.url, "chats", "show", chats[0], "--user", "bob"))
    assert chats[0] in line and "not found" in line
    one_error_line(invoke(backend.url, "chats", "delete", chats[0], "--user", "bob", "--yes"))
    one_error_line(invoke(backend.url, "chats", "list", "--user", "nobody"))
    assert sql_rows(backend, "SELECT count(*) AS n FROM messages")[0]["n"] == 3


def test_chats_delete_asks_then_removes_chat_and_messages(backend: Backend, repo: ChatRepository) -> None:
    _, _, chats = seed(repo)
    declined = invoke(backend.url, "chats", "delete", chats[0], "--user", "alice", input="n\n")
    assert declined.exit_code == 1
    assert sql_rows(backend, "SELECT count(*) AS n FROM messages")[0]["n"] == 3
    ok(backend.url, "chats", "delete", chats[0], "--user", "alice", input="y\n")
    assert sql_rows(backend, "SELECT count(*) AS n FROM messages")[0]["n"] == 0
    assert sql_rows(backend, "SELECT count(*) AS n FROM chats WHERE id = :c", c=chats[0])[0]["n"] == 0
    ok(backend.url, "chats", "delete", chats[1], "--user", "alice", "--yes")
    assert sql_rows(backend, "SELECT count(*) AS n FROM chats")[0]["n"] == 2
