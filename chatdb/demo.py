"""Realistic synthetic data for trying chatdb out (skeleton; implementation follows).

``generate(repo, users=20, chats=500, messages=20_000, days=90, seed=42, end=None,
progress=None) -> DemoSummary``; ``progress`` is called with the number of messages just written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["DemoSummary", "generate"]


@dataclass(frozen=True)
class DemoSummary:
    users: int
    chats: int
    messages: int
    api_keys: int
    start: datetime
    end: datetime
    seed: int
    seconds: float


def generate(repo: Any, *, users: int = 20, chats: int = 500, messages: int = 20_000, days: int = 90,
             seed: int = 42, end: datetime | None = None,
             progress: Callable[[int], None] | None = None) -> DemoSummary:
    raise NotImplementedError
