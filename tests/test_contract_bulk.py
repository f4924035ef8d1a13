"""The storage-level API behind export, copy and demo data: the same on every backend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from chatdb._base import IMPORT_COLUMNS, SCAN_COLUMNS
from chatdb._codec import format_ts, parse_ts
from chatdb.repository import ChatRepository


def message_row(i: int, chat_id: str, stamp: str) -> dict[str, object]:
    return {
        "id": f"m{i:04d}",
        "chat_id": chat_id,
        "role": "user",
        "content": '[{"type":"text","text":"x"}]',
        "created_at": stamp,
        "metadata": None,
    }


def all_rows(repo: ChatRepository, table: str, **filters: Any) -> list[tuple[object, ...]]:
    return [row for batch in repo.scan_rows(table, batch_size=3, **filters) for row in batch]


def test_import_rows_counts_inserts_and_skips_existing_ids(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    stamp = "2026-01-01T00:00:00.000Z"
    rows = [message_row(i, chat.id, stamp) for i in range(5)]
    assert repo.import_rows("messages", rows) == 5
    assert repo.import_rows("messages", [*rows, message_row(9, chat.id, stamp)]) == 1
    assert repo.count_rows()["messages"] == 6
    assert repo.get_messages(chat.id).total == 6


def test_scan_rows_orders_by_time_then_id_and_filters_in_the_database(repo: ChatRepository) -> None:
    mine, theirs = repo.create_chat("u1"), repo.create_chat("u2")
    base = parse_ts("2026-01-01T00:00:00.000Z")
    rows = []
    for i in range(10):
        stamp = format_ts(base + timedelta(milliseconds=i // 2))  # two messages per millisecond
        rows.append(message_row(9 - i, mine.id if i % 3 else theirs.id, stamp))
    repo.import_rows("messages", rows)
    scanned = all_rows(repo, "messages")
    assert [r[0] for r in scanned] == [
        r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))
    ]
    assert all(len(r) == len(SCAN_COLUMNS["messages"]) for r in scanned)
    assert {r[2] for r in scanned} == {"u1", "u2"}
    since, until = base + timedelta(milliseconds=1), base + timedelta(milliseconds=3)
    window = all_rows(repo, "messages", since=since, until=until)
    assert [r[0] for r in window] == [r[0] for r in scanned if since <= parse_ts(str(r[5])) < until]
    assert [r[0] for r in all_rows(repo, "messages", user_id="u2")] == [r[0] for r in scanned if r[2] == "u2"]
    middle = scanned[4]
    after = all_rows(repo, "messages", after=(middle[5], middle[0]))
    assert [r[0] for r in after] == [r[0] for r in scanned[5:]]


def test_scan_rows_of_an_orphan_message_has_no_user(repo: ChatRepository) -> None:
    repo.import_rows("messages", [message_row(1, "gone-chat", "2026-01-01T00:00:00.000Z")])
    assert all_rows(repo, "messages")[0][2] is None


def test_stored_scan_gives_every_column_for_copies(repo: ChatRepository) -> None:
    repo.create_user("alice", "secret-hash")
    key = repo.create_api_key("u1", "k" * 64, "cck_k", "laptop")
    users = all_rows(repo, "users", stored=True)
    assert len(users[0]) == len(IMPORT_COLUMNS["users"]) and users[0][2] == "secret-hash"
    assert "secret-hash" not in str(all_rows(repo, "users"))
    keys = all_rows(repo, "api_keys", stored=True)
    assert keys[0][0] == key.id and keys[0][2] == "k" * 64
    assert "k" * 64 not in str(all_rows(repo, "api_keys"))
