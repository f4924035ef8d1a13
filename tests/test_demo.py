"""Demo data: reproducible, realistic in shape, consistent with the storage format and the price table."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import pytest

import chatdb
from chatdb import _codec, demo
from chatdb._base import TABLE_NAMES
from chatdb.analytics import load_prices
from chatdb.errors import ValidationError
from chatdb.repository import ChatRepository

END = datetime(2026, 11, 1, 12, tzinfo=UTC)
SIZES = {"users": 3, "chats": 25, "messages": 900, "days": 14}


def _dump(repo: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {t: [row for batch in repo.scan_rows(t, stored=True) for row in batch] for t in TABLE_NAMES}


def _messages(repo: Any) -> list[dict[str, Any]]:
    names = ("id", "chat_id", "user_id", "role", "content", "created_at", "metadata")
    rows = [dict(zip(names, row, strict=True)) for batch in repo.scan_rows("messages") for row in batch]
    for row in rows:  # SQL stores JSON text, MongoDB decoded values
        for key in ("content", "metadata"):
            if isinstance(row[key], str):
                row[key] = json.loads(row[key])
    return rows


def test_generate_writes_the_requested_rows_on_every_backend(repo: ChatRepository) -> None:
    written: list[int] = []
    summary = demo.generate(repo, seed=1, end=END, progress=written.append, **SIZES)
    counts = repo.count_rows()
    assert (summary.users, summary.chats, summary.messages) == (3, 25, 900)
    assert counts == {"users": 3, "chats": 25, "messages": 900, "api_keys": summary.api_keys}
    assert sum(written) == 900
    assert summary.end == END and summary.start == END - timedelta(days=14)
    # Every chat's messages are strictly ordered and its updated_at is its newest message.
    by_chat: dict[str, list[str]] = defaultdict(list)
    for message in _messages(repo):
        by_chat[message["chat_id"]].append(message["created_at"])
    chats = [row for batch in repo.scan_rows("chats") for row in batch]
    for chat_id, user_id, _title, _session, created_at, updated_at in chats:
        stamps = by_chat[chat_id]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert created_at <= stamps[0] and updated_at == stamps[-1]
        assert _codec.format_ts(summary.start) <= created_at and updated_at <= _codec.format_ts(END)
        assert repo.get_chat(chat_id, user_id) is not None
    # The public API reads the demo data back.
    chat_id = next(iter(by_chat))
    owner = next(row[1] for row in chats if row[0] == chat_id)
    page = repo.get_messages(chat_id, limit=500, user_id=owner)
    assert page.total == len(by_chat[chat_id]) and page.items[0].role == "user"


def test_the_same_seed_gives_the_same_database_and_a_rerun_inserts_nothing() -> None:
    with (
        chatdb.create_repository("sqlite:///:memory:") as first,
        chatdb.create_repository("sqlite:///:memory:") as second,
        chatdb.create_repository("sqlite:///:memory:") as other,
    ):
        demo.generate(first, seed=5, end=END, **SIZES)  # type: ignore[arg-type]
        demo.generate(second, seed=5, end=END, **SIZES)  # type: ignore[arg-type]
        demo.generate(other, seed=6, end=END, **SIZES)  # type: ignore[arg-type]
        assert _dump(first) == _dump(second)
        assert _dump(first)["messages"] != _dump(other)["messages"]
        again = demo.generate(first, seed=5, end=END, **SIZES)  # type: ignore[arg-type]
        assert (again.users, again.chats, again.messages, again.api_keys) == (0, 0, 0, 0)


def test_the_history_ends_at_a_fixed_date_unless_told_otherwise() -> None:
    from chatdb.cli.demo import DEFAULT_END_TEXT

    assert datetime.fromisoformat(DEFAULT_END_TEXT).replace(tzinfo=UTC) == demo.DEFAULT_END
    with chatdb.create_repository("sqlite:///:memory:") as repo:
        summary = demo.generate(repo, **SIZES)  # type: ignore[arg-type]
        assert summary.end == demo.DEFAULT_END and summary.start == demo.DEFAULT_END - timedelta(days=14)
        assert max(row[4] for batch in repo.scan_rows("messages", stored=True) for row in batch) < (
            _codec.format_ts(demo.DEFAULT_END)
        )


class _Recorder:
    """A repository whose bulk paths (import_rows, import_values) record the tables in order and
    can fail after ``fail_after`` message rows, as a run killed midway would stop."""

    def __init__(self, repo: Any, fail_after: int | None = None) -> None:
        self.repo, self.fail_after = repo, fail_after
        self.tables: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.repo, name)

    def import_rows(self, table: str, rows: Any, **options: Any) -> int:
        self.tables.append(table)
        return int(self.repo.import_rows(table, rows, **options))

    def import_values(self, table: str, chunks: Any) -> int:
        self.tables.append(table)
        if table == "messages" and self.fail_after is not None:
            chunks = _chunks_stopping_after(chunks, self.fail_after)
        return int(self.repo.import_values(table, chunks))


def _chunks_stopping_after(chunks: Any, count: int) -> Any:
    """100-row chunks (one transaction each) of ``chunks``' rows, then the "kill" at ``count``."""
    rows = (row for chunk in chunks for row in chunk)
    for _ in range(0, count, 100):
        yield list(islice(rows, 100))
    raise KeyboardInterrupt("killed")


def test_parents_are_written_first_and_a_rerun_after_a_crash_gives_the_uninterrupted_data() -> None:
    with (
        chatdb.create_repository("sqlite:///:memory:") as whole,
        chatdb.create_repository("sqlite:///:memory:") as crashed,
    ):
        demo.generate(whole, seed=3, **SIZES)  # type: ignore[arg-type]
        recorder = _Recorder(crashed, fail_after=400)
        with pytest.raises(KeyboardInterrupt):
            demo.generate(recorder, seed=3, **SIZES)  # type: ignore[arg-type]
        assert recorder.tables == ["users", "chats", "messages"]
        partial = crashed.count_rows()
        assert partial["chats"] == 25 and 0 < partial["messages"] < 900, partial
        again = _Recorder(crashed)
        summary = demo.generate(again, seed=3, **SIZES)  # type: ignore[arg-type]
        assert again.tables == ["users", "chats", "messages", "api_keys"]
        assert summary.messages == 900 - partial["messages"]
        assert _dump(crashed) == _dump(whole)


def test_a_large_demo_made_by_the_child_process_has_the_rows_made_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = {"users": 3, "chats": 30, "messages": demo._CHILD_FROM, "days": 5}
    with (
        chatdb.create_repository("sqlite:///:memory:") as by_child,
        chatdb.create_repository("sqlite:///:memory:") as in_process,
    ):
        made = demo.generate(by_child, seed=4, end=END, **sizes)  # type: ignore[arg-type]
        monkeypatch.setattr(demo, "_CHILD_FROM", sizes["messages"] + 1)
        demo.generate(in_process, seed=4, end=END, **sizes)  # type: ignore[arg-type]
        assert made.messages == sizes["messages"] and made.chats == sizes["chats"]
        assert _dump(by_child) == _dump(in_process)


@pytest.fixture(scope="module")
def sample() -> Any:
    with chatdb.create_repository("sqlite:///:memory:") as repo:
        demo.generate(repo, users=4, chats=60, messages=4_000, days=30, seed=11, end=END)
        yield repo


def test_messages_look_like_a_claude_chat_application(sample: Any) -> None:
    messages = _messages(sample)
    assistant = [m for m in messages if m["role"] == "assistant"]
    metas = [m["metadata"] for m in assistant if m["metadata"] is not None]
    assert {m["role"] for m in messages} == {"user", "assistant"}
    assert all(m["metadata"] is None for m in messages if m["role"] == "user")
    share = {
        "no metadata": 1 - len(metas) / len(assistant),
        "no cost": sum("totalCostUsd" not in m for m in metas) / len(metas),
        "cache tokens": sum("cacheReadInputTokens" in m for m in metas) / len(metas),
    }
    assert 0.02 < share["no metadata"] < 0.15, share
    assert 0.04 < share["no cost"] < 0.2, share
    assert 0.1 < share["cache tokens"] < 0.7, share
    models = {m["model"] for m in metas}
    assert len([m for m in models if m.startswith("claude-")]) >= 4
    assert any(load_prices().family(m) is None for m in models), "a model without a price"
    images = [p for m in messages for p in m["content"] if p["type"] == "image"]
    assert images and all(p["mimeType"] == "image/png" and p["imageData"] for p in images)
    outputs = sorted(m["outputTokens"] for m in metas)
    assert 50 < outputs[len(outputs) // 2] < 2_000  # a plausible median reply
    assert all(m.get("durationMs", 1) > 0 for m in metas)


def test_reported_costs_are_the_price_tables_and_metadata_is_in_the_stored_format(sample: Any) -> None:
    table = load_prices()
    checked = 0
    for batch in sample.scan_rows("messages"):
        for _id, _chat, _user, _role, _content, created_at, text in batch:
            if text is None:
                continue
            metadata = _codec.load_metadata(text)
            assert metadata is not None
            assert text == _codec.dump_json(_codec.metadata_to_dict(metadata), "metadata")
            meta = json.loads(text)
            if "totalCostUsd" in meta:
                expected = table.cost(
                    meta["model"],
                    _codec.parse_ts(created_at),
                    meta["inputTokens"],
                    meta["outputTokens"],
                    meta.get("cacheCreationInputTokens", 0),
                    meta.get("cacheReadInputTokens", 0),
                )
                assert meta["totalCostUsd"] == pytest.approx(expected, abs=1e-8)
                checked += 1
    assert checked > 500


def test_users_get_scrypt_hashes_and_some_keys_are_revoked(sample: Any) -> None:
    users = [row for batch in sample.scan_rows("users", stored=True) for row in batch]
    assert len({u[1] for u in users}) == 4
    assert all(u[2].startswith("scrypt$n=16384,r=8,p=1$") for u in users)
    keys = [row for batch in sample.scan_rows("api_keys", stored=True) for row in batch]
    assert any(k[7] is not None for k in keys) and any(k[7] is None for k in keys)
    assert all(k[3].startswith("cck_") and len(k[2]) == 64 for k in keys)
    for key in keys:  # the public API sees revoked keys as revoked
        listed = {k.id: k for k in sample.list_api_keys(key[1])}
        assert listed[key[0]].revoked_at == _codec.parse_ts_or_none(key[7])
        assert (sample.get_api_key_by_hash(key[2]) is None) == (key[7] is not None)


def test_the_uuid_and_timestamp_fast_paths_equal_the_standard_ones() -> None:
    import uuid

    gen = demo._Generator(3, END, 10, load_prices())
    for ms in (0, 1, 999, 86_399_999, 1_764_547_199_999, 1_800_000_000_123):
        assert gen.ts(ms) == _codec.format_ts(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))
    for _ in range(200):
        text = gen.uid()
        assert str(uuid.UUID(text)) == text and uuid.UUID(text).version == 4


@pytest.mark.parametrize("sizes", [{"users": -1}, {"messages": -5}, {"days": 0}, {"users": 0, "chats": 3}])
def test_impossible_sizes_are_validation_errors(sizes: dict[str, int]) -> None:
    with chatdb.create_repository("sqlite:///:memory:") as repo, pytest.raises(ValidationError):
        demo.generate(repo, **sizes)  # type: ignore[arg-type]
