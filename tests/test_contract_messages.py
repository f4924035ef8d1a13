"""Messages: content parts, metadata, ordering, isolation; the same on every backend."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from chatdb import Message, MessageMetadata, errors
from chatdb.repository import ChatRepository

from .backends import Backend, refuses_content_too_large

TEXT = [{"type": "text", "text": "hello"}]


def test_add_message_returns_the_stored_message(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    message = repo.add_message(chat.id, "user", TEXT)
    assert isinstance(message, Message)
    assert (message.chat_id, message.role, message.content, message.metadata) == (chat.id, "user", TEXT, None)
    assert repo.get_message(message.id) == message
    assert repo.get_messages(chat.id).items == [message]


def test_add_message_bumps_the_chat_to_the_message_time(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    message = repo.add_message(chat.id, "assistant", TEXT)
    fetched = repo.get_chat(chat.id, "u1")
    assert fetched is not None
    assert fetched.updated_at == message.created_at
    assert message.created_at > chat.created_at


def test_add_message_to_a_missing_chat_is_not_found_and_stores_nothing(repo: ChatRepository) -> None:
    with pytest.raises(errors.NotFoundError):
        repo.add_message("no-such-chat", "user", TEXT)
    assert repo.get_messages("no-such-chat").total == 0


def test_add_message_with_user_id_requires_the_owner(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.NotFoundError):
        repo.add_message(chat.id, "user", TEXT, user_id="u2")
    assert repo.get_messages(chat.id).total == 0
    message = repo.add_message(chat.id, "user", TEXT, user_id="u1")
    assert repo.get_message(message.id, user_id="u1") == message
    assert repo.get_message(message.id, user_id="u2") is None
    assert repo.get_messages(chat.id, user_id="u2").items == []
    assert repo.get_messages(chat.id, user_id="u2").total == 0
    assert repo.get_messages(chat.id, user_id="u1").total == 1


@pytest.mark.parametrize("role", ["system", "User", "", None, "tool"])
def test_only_user_and_assistant_roles_are_accepted(repo: ChatRepository, role: Any) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.ValidationError):
        repo.add_message(chat.id, role, TEXT)
    assert repo.get_messages(chat.id).total == 0


@pytest.mark.parametrize(
    "content",
    [
        "just a string",
        [],
        {"type": "text", "text": "not a list"},
        [{"text": "no type"}],
        [{"type": 3}],
        [{"type": "text"}],
        [{"type": "text", "text": 5}],
        [{"type": "image", "mimeType": "image/png"}],
        [{"type": "image", "imageData": "AAAA"}],
        ["not an object"],
        [{"type": "text", "text": float("nan")}],
        [{"type": "other", "value": object()}],
    ],
)
def test_malformed_content_is_rejected_before_anything_is_written(repo: ChatRepository, content: Any) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.ValidationError):
        repo.add_message(chat.id, "user", content)
    assert repo.get_messages(chat.id).total == 0
    assert repo.get_chat(chat.id, "u1") == chat


def test_other_part_types_round_trip_unchanged(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    parts = [
        {"type": "tool_use", "id": "t1", "input": {"path": "/tmp", "n": [1, 2.5, None, True]}},
        {"type": "text", "text": "ok", "cache_control": {"type": "ephemeral"}},
    ]
    message = repo.add_message(chat.id, "assistant", parts)
    assert repo.get_message(message.id) == message
    assert message.content == parts


def test_metadata_from_camel_case_mapping_round_trips_with_extra_keys(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    metadata = {
        "model": "claude-sonnet-4-5",
        "inputTokens": 1200,
        "outputTokens": 345,
        "totalCostUsd": 0.012345,
        "durationMs": 4321,
        "cacheReadInputTokens": 900,
        "stopReason": "end_turn",
    }
    message = repo.add_message(chat.id, "assistant", TEXT, metadata)
    assert message.metadata == MessageMetadata(
        model="claude-sonnet-4-5",
        input_tokens=1200,
        output_tokens=345,
        total_cost_usd=0.012345,
        duration_ms=4321,
        extra={"cacheReadInputTokens": 900, "stopReason": "end_turn"},
    )
    assert repo.get_message(message.id) == message


def test_metadata_accepts_snake_case_and_dataclass(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    snake = repo.add_message(chat.id, "assistant", TEXT, {"model": "m", "input_tokens": 1, "duration_ms": 2})
    assert snake.metadata == MessageMetadata(model="m", input_tokens=1, duration_ms=2)
    given = MessageMetadata(model="m", output_tokens=7, total_cost_usd=1.0, extra={"x": [1, {"y": None}]})
    stored = repo.add_message(chat.id, "assistant", TEXT, given)
    assert stored.metadata == given
    assert repo.get_message(stored.id) == stored


@pytest.mark.parametrize(
    "metadata",
    [
        {"inputTokens": -1},
        {"inputTokens": "12"},
        {"inputTokens": True},
        {"outputTokens": 1.5},
        {"totalCostUsd": float("inf")},
        {"totalCostUsd": "0.1"},
        {"model": 3},
        {"inputTokens": 1, "input_tokens": 2},
        "not a mapping",
        {"extra": float("nan")},
    ],
)
def test_malformed_metadata_is_rejected(repo: ChatRepository, metadata: Any) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.ValidationError):
        repo.add_message(chat.id, "assistant", TEXT, metadata)
    assert repo.get_messages(chat.id).total == 0


def test_empty_metadata_is_stored_as_none(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    assert repo.add_message(chat.id, "assistant", TEXT, {}).metadata is None


def test_messages_keep_insertion_order_within_one_millisecond(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    sent = [repo.add_message(chat.id, "user", [{"type": "text", "text": str(i)}]) for i in range(60)]
    page = repo.get_messages(chat.id, limit=100)
    assert [m.id for m in page.items] == [m.id for m in sent]
    stamps = [m.created_at for m in page.items]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_get_messages_paginates_with_total(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    sent = [repo.add_message(chat.id, "user", [{"type": "text", "text": str(i)}]) for i in range(7)]
    page = repo.get_messages(chat.id, limit=3, offset=2)
    assert (page.total, page.limit, page.offset) == (7, 3, 2)
    assert [m.id for m in page.items] == [m.id for m in sent[2:5]]
    assert repo.get_messages(chat.id, limit=3, offset=7).items == []
    with pytest.raises(errors.ValidationError):
        repo.get_messages(chat.id, limit=0)
    with pytest.raises(errors.ValidationError):
        repo.get_messages(chat.id, offset=-1)


def test_messages_of_one_chat_do_not_leak_into_another(repo: ChatRepository) -> None:
    first, second = repo.create_chat("u1"), repo.create_chat("u2")
    repo.add_message(first.id, "user", TEXT)
    repo.add_message(second.id, "user", TEXT)
    assert repo.get_messages(first.id).total == 1
    assert repo.get_messages(second.id).total == 1


def test_unicode_and_emoji_round_trip(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    text = 'Héllo wörld — 日本語, Привет, مرحبا, 🚀👍🏽👨\u200d👩\u200d👧 ∑∞; "quoted" back\\slash\ttab\nnewline \u2028'
    message = repo.add_message(chat.id, "user", [{"type": "text", "text": text}])
    fetched = repo.get_message(message.id)
    assert fetched is not None and fetched.content[0]["text"] == text


def test_a_one_megabyte_text_part_round_trips(backend: Backend, repo: ChatRepository) -> None:
    text = ("lorem ipsum dolor sit amet 🚀 " * 40_000)[:1_000_000]
    if refuses_content_too_large(backend, repo, [{"type": "text", "text": text}]):
        return
    chat = repo.create_chat("u1")
    message = repo.add_message(chat.id, "user", [{"type": "text", "text": text}])
    fetched = repo.get_message(message.id)
    assert fetched is not None and fetched.content[0]["text"] == text


def test_an_image_part_round_trips(backend: Backend, repo: ChatRepository) -> None:
    data = base64.b64encode(bytes(range(256)) * 400).decode()
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "imageData": data, "mimeType": "image/png"},
    ]
    if refuses_content_too_large(backend, repo, parts):
        return
    chat = repo.create_chat("u1")
    message = repo.add_message(chat.id, "user", parts)
    assert repo.get_messages(chat.id).items[0].content == parts
    assert repo.get_message(message.id) == message


def test_a_five_megabyte_image_round_trips(backend: Backend, repo: ChatRepository) -> None:
    data = base64.b64encode(bytes(range(256)) * 14_700).decode()  # ~5 MB of base64
    assert len(data) > 5_000_000
    if refuses_content_too_large(
        backend, repo, [{"type": "image", "imageData": data, "mimeType": "image/png"}]
    ):
        return
    chat = repo.create_chat("u1")
    message = repo.add_message(
        chat.id, "user", [{"type": "image", "imageData": data, "mimeType": "image/png"}]
    )
    fetched = repo.get_message(message.id)
    assert fetched is not None and fetched.content[0]["imageData"] == data


def test_get_message_of_unknown_id_is_none(repo: ChatRepository) -> None:
    assert repo.get_message("missing") is None
    assert repo.get_message("missing\x00") is None


# -- caller-chosen message ids: a retried add_message stores the message once ---------------------

MESSAGE_ID = "3f2b8c1e-9d4a-4e7b-8a61-0c5d2e9f7a13"
META = {"model": "m", "inputTokens": 3, "totalCostUsd": 1.0, "stopReason": "end_turn"}


def test_add_message_keeps_a_caller_chosen_id(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    message = repo.add_message(chat.id, "user", TEXT, message_id=MESSAGE_ID)
    assert message.id == MESSAGE_ID
    assert repo.get_message(MESSAGE_ID) == message
    assert repo.get_messages(chat.id).items == [message]


@pytest.mark.parametrize("owner", [None, "u1"])
def test_a_retry_with_the_same_id_returns_the_stored_message_and_writes_nothing(
    repo: ChatRepository, owner: str | None
) -> None:
    chat = repo.create_chat("u1")
    first = repo.add_message(chat.id, "assistant", TEXT, META, user_id=owner, message_id=MESSAGE_ID)
    bumped = repo.get_chat(chat.id, "u1")
    # The caller saw an error (say the connection died at COMMIT) and sends it all again.
    again = repo.add_message(chat.id, "assistant", TEXT, META, user_id=owner, message_id=MESSAGE_ID)
    assert again == first
    assert repo.get_messages(chat.id).items == [first]
    assert repo.get_chat(chat.id, "u1") == bumped  # not bumped a second time
    later = repo.add_message(chat.id, "user", TEXT)
    assert [m.id for m in repo.get_messages(chat.id).items] == [MESSAGE_ID, later.id]


def test_a_taken_id_for_another_message_is_a_duplicate_message_id_error(repo: ChatRepository) -> None:
    chat, other = repo.create_chat("u1"), repo.create_chat("u2")
    first = repo.add_message(chat.id, "user", TEXT, META, message_id=MESSAGE_ID)
    other_before = repo.get_chat(other.id, "u2")
    chat_before = repo.get_chat(chat.id, "u1")
    attempts: list[dict[str, Any]] = [
        {"chat_id": other.id},  # another chat (another user's, too)
        {"role": "assistant"},
        {"content": [{"type": "text", "text": "hello?"}]},
        {"metadata": {**META, "inputTokens": 4}},
        {"metadata": None},
    ]
    for change in attempts:
        call = {"chat_id": chat.id, "role": "user", "content": TEXT, "metadata": META, **change}
        with pytest.raises(errors.DuplicateMessageIdError):
            repo.add_message(**call, message_id=MESSAGE_ID)
    assert issubclass(errors.DuplicateMessageIdError, errors.ConflictError)
    assert repo.get_messages(chat.id).items == [first]
    assert repo.get_messages(other.id).total == 0
    assert repo.get_chat(other.id, "u2") == other_before
    assert repo.get_chat(chat.id, "u1") == chat_before


def test_a_chosen_id_on_a_chat_that_is_not_found_is_not_found(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    repo.add_message(chat.id, "user", TEXT, message_id=MESSAGE_ID)
    with pytest.raises(errors.NotFoundError):
        repo.add_message("no-such-chat", "user", TEXT, message_id=MESSAGE_ID)
    with pytest.raises(errors.NotFoundError):  # the same message, but the caller is not the owner
        repo.add_message(chat.id, "user", TEXT, user_id="u2", message_id=MESSAGE_ID)
    with pytest.raises(errors.NotFoundError):
        repo.add_message("no-such-chat", "user", TEXT, message_id="fresh-id")
    assert repo.get_message("fresh-id") is None


def test_an_id_is_free_again_once_its_chat_is_deleted(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    repo.add_message(chat.id, "user", TEXT, message_id=MESSAGE_ID)
    assert repo.delete_chat(chat.id, "u1")
    other = repo.create_chat("u1")
    moved = repo.add_message(other.id, "user", TEXT, message_id=MESSAGE_ID)
    assert moved.chat_id == other.id and repo.get_message(MESSAGE_ID) == moved


@pytest.mark.parametrize(
    "message_id",
    ["", "x" * 37, "has space", "semi;colon", "a\x00b", "ünïcode", "line\n", "{'$ne': None}", 42, 1.5, b"id"],
)
def test_a_malformed_message_id_is_rejected_before_anything_is_written(
    repo: ChatRepository, message_id: Any
) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.ValidationError):
        repo.add_message(chat.id, "user", TEXT, message_id=message_id)
    assert repo.get_messages(chat.id).total == 0
    assert repo.get_chat(chat.id, "u1") == chat


def test_the_longest_id_and_every_allowed_character_are_accepted(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    for message_id in ("x" * 36, "A-z_0-9", "7"):
        assert repo.add_message(chat.id, "user", TEXT, message_id=message_id).id == message_id
    assert repo.get_messages(chat.id).total == 3


def test_concurrent_retries_of_one_id_store_one_message(repo: ChatRepository) -> None:
    # Many rounds: the losers of one round race each other to give their chat bumps back,
    # which went wrong in about one round in thirty on MongoDB.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def send(chat_id: str, message_id: str, barrier: threading.Barrier) -> Message:
        barrier.wait()
        return repo.add_message(chat_id, "user", TEXT, META, message_id=message_id)

    for round_ in range(30):
        chat = repo.create_chat("u1")
        message_id, barrier = f"{MESSAGE_ID[:-2]}{round_:02d}", threading.Barrier(4)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: send(chat.id, message_id, barrier), range(4)))  # noqa: B023
        stored = repo.get_messages(chat.id)
        assert stored.total == 1 and all(result == stored.items[0] for result in results)
        fetched = repo.get_chat(chat.id, "u1")
        assert fetched is not None and fetched.updated_at == stored.items[0].created_at, round_
