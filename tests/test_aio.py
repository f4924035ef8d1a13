"""chatdb.aio beyond the contract suite (which runs it through tests/async_face.py)."""

from __future__ import annotations

import asyncio
import inspect
import sys

import pytest

import chatdb
from chatdb import AsyncChatRepository, ChatRepository, create_async_repository
from chatdb._aggregate import AggregateQuery
from chatdb.errors import ConfigError

from .backends import Backend
from .conftest import SERVER_BACKENDS

# What a sync ChatRepository has that an async one spells differently.
_LIFECYCLE = {"close", "__enter__", "__exit__"}


def _contract_methods() -> list[str]:
    return [
        name
        for name, member in vars(ChatRepository).items()
        if inspect.isfunction(member) and (not name.startswith("_") or name in _LIFECYCLE)
    ]


def test_every_contract_method_is_a_coroutine_with_the_same_signature() -> None:
    for name in _contract_methods():
        if name in _LIFECYCLE:
            continue
        method = getattr(AsyncChatRepository, name, None)
        assert method is not None, f"AsyncChatRepository has no {name}"
        assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name
        sync, coro = inspect.signature(getattr(ChatRepository, name)), inspect.signature(method)
        assert list(sync.parameters.values()) == list(coro.parameters.values()), name


def test_lifecycle_is_async_with_and_aclose() -> None:
    for name in ("aclose", "__aenter__", "__aexit__"):
        assert inspect.iscoroutinefunction(getattr(AsyncChatRepository, name)), name
    assert "AsyncChatRepository" in chatdb.__all__ and "create_async_repository" in chatdb.__all__


@pytest.mark.parametrize(
    ("url", "module"),
    [
        ("postgresql://u@127.0.0.1:1/db", "psycopg"),
        ("mysql://u@127.0.0.1:1/db", "aiomysql"),
        ("mongodb://127.0.0.1:1/", "pymongo"),
        ("sqlite:///:memory:", "greenlet"),
    ],
)
def test_a_missing_asyncio_driver_names_the_extra_to_install(
    url: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as when not installed
    with pytest.raises(ConfigError, match=r"pip install 'chatdb\[async\]'"):
        create_async_repository(url)


def test_pool_size_is_checked() -> None:
    with pytest.raises(ConfigError, match="pool_size"):
        chatdb.DbConfig(pool_size=0)
    assert "pool_size" not in repr(chatdb.DbConfig())
    assert "pool_size=3" in repr(chatdb.DbConfig(pool_size=3))


@pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)
def test_usage_groups_come_out_of_the_async_repository_as_from_the_sync_one(backend: Backend) -> None:
    with backend.new_repo() as repo:
        chat = repo.create_chat("u1")
        for n in range(5):
            meta = {
                "model": "claude-sonnet-4-5",
                "inputTokens": n,
                "outputTokens": 2 * n,
                "durationMs": 100 * n,
            }
            repo.add_message(chat.id, "assistant", [{"type": "text", "text": str(n)}], meta)
        query = AggregateQuery(key="user")
        expected = [row for batch in repo.aggregate_messages(query) for row in batch]

    async def main() -> list[tuple[object, ...]]:
        async with create_async_repository(backend.config) as arepo:
            return [row for batch in [b async for b in arepo.aggregate_messages(query)] for row in batch]

    got = asyncio.run(main())
    assert expected and got == expected
