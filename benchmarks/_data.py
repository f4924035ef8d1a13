"""Synthetic chat data for the export benchmark, written through ``repo.import_rows``.

Deterministic (seeded) and shaped like the application's data: users own chats, chats hold
alternating user/assistant messages, assistant messages mostly carry metadata (some without,
some with cache token counts or extra keys), a few user messages carry an image part.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from chatdb._codec import format_ts

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "at",
    "from",
    "have",
    "not",
    "an",
    "which",
    "but",
    "can",
    "data",
    "query",
    "index",
    "table",
    "export",
    "arrow",
    "parquet",
    "polars",
    "duckdb",
    "message",
    "token",
    "cost",
    "model",
    "chat",
    "user",
    "naïve",
    "café",
    "über",
    "straße",
    '"quoted"',
    "back\\slash",
    "line\nbreak",
    "tab\tstop",
]
# Most messages are Latin-1 text; a few carry emoji or CJK (4-byte code points), as real chats do.
INTERNATIONAL = " 数据分析 🙂 👍🏽"
MODELS = ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5", "gpt-4.1-mini")
START = datetime(2025, 1, 1, tzinfo=UTC)
_IMAGE = base64.b64encode(random.Random(7).randbytes(24_000)).decode()


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text(rng: random.Random, low: int, high: int) -> str:
    text = " ".join(rng.choices(WORDS, k=rng.randint(low, high)))
    return text + INTERNATIONAL if rng.random() < 0.03 else text


def users(count: int) -> Iterator[dict[str, Any]]:
    for n in range(count):
        stamp = format_ts(START + timedelta(seconds=n))
        yield {
            "id": f"user-{n:05d}",
            "username": f"user{n}",
            "password_hash": "bench-not-a-hash",
            "created_at": stamp,
            "updated_at": stamp,
        }


def chats(count: int, user_count: int) -> Iterator[dict[str, Any]]:
    for n in range(count):
        stamp = format_ts(START + timedelta(minutes=n))
        yield {
            "id": f"chat-{n:07d}",
            "title": f"Chat {n}",
            "session_id": None if n % 3 else f"session-{n}",
            "user_id": f"user-{n % user_count:05d}",
            "created_at": stamp,
            "updated_at": stamp,
        }


def metadata(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.1:
        return None  # assistant messages written before metadata existed
    meta: dict[str, Any] = {
        "model": rng.choice(MODELS),
        "inputTokens": rng.randint(10, 20_000),
        "outputTokens": rng.randint(1, 4_000),
        "totalCostUsd": round(rng.random() / 20, 6),
        "durationMs": rng.randint(200, 120_000),
    }
    if roll > 0.6:
        meta["cacheCreationInputTokens"] = rng.randint(0, 5_000)
        meta["cacheReadInputTokens"] = rng.randint(0, 50_000)
    if roll > 0.9:
        meta["stopReason"] = "end_turn"
        meta["toolCalls"] = rng.randint(0, 5)
    return _dump(meta)


def messages(count: int, chat_count: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """``count`` messages spread over ``chat_count`` chats, in time order (1 ms apart at most,
    so many messages share a millisecond as on a busy server)."""
    rng = random.Random(seed)
    ms = 0
    for n in range(count):
        ms += rng.randint(0, 2)
        chat = n % chat_count
        role = "user" if (n // chat_count) % 2 == 0 else "assistant"
        if role == "user":
            parts: list[dict[str, Any]] = [{"type": "text", "text": _text(rng, 3, 60)}]
            if rng.random() < 0.002:
                parts.append({"type": "image", "imageData": _IMAGE, "mimeType": "image/png"})
            meta = None
        else:
            parts = [{"type": "text", "text": _text(rng, 20, 250)}]
            meta = metadata(rng)
        yield {
            "id": f"msg-{n:09d}",
            "chat_id": f"chat-{chat:07d}",
            "role": role,
            "content": _dump(parts),
            "created_at": format_ts(START + timedelta(days=1, milliseconds=ms)),
            "metadata": meta,
        }


def populate(repo: Any, message_count: int, chat_count: int, user_count: int = 500) -> None:
    repo.import_rows("users", users(user_count))
    repo.import_rows("chats", chats(chat_count, user_count))
    repo.import_rows("messages", messages(message_count, chat_count), batch_size=20_000)
