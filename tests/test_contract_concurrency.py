"""Many threads on one repository object: nothing lost, order kept, conflicts typed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from chatdb import errors
from chatdb.repository import ChatRepository

THREADS = 8
PER_THREAD = 100


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Start ``count`` threads at the same moment; return each result or raised exception."""
    barrier = threading.Barrier(count)

    def call(index: int) -> Any:
        barrier.wait()
        try:
            return work(index)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


def test_parallel_add_message_loses_nothing_and_keeps_each_threads_order(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")

    def writer(thread: int) -> list[str]:
        return [
            repo.add_message(chat.id, "user", [{"type": "text", "text": f"{thread}:{i}"}]).id
            for i in range(PER_THREAD)
        ]

    results = run_together(THREADS, writer)
    assert all(isinstance(r, list) for r in results), [r for r in results if not isinstance(r, list)][:1]
    stored = []
    for offset in range(0, THREADS * PER_THREAD, 1000):
        stored += repo.get_messages(chat.id, limit=1000, offset=offset).items
    assert len(stored) == THREADS * PER_THREAD
    assert len({m.id for m in stored}) == THREADS * PER_THREAD
    for thread in range(THREADS):
        mine = [
            int(m.content[0]["text"].split(":")[1])
            for m in stored
            if m.content[0]["text"].startswith(f"{thread}:")
        ]
        assert mine == list(range(PER_THREAD))
    final = repo.get_chat(chat.id, "u1")
    assert final is not None and final.updated_at == max(m.created_at for m in stored)
    assert [m.created_at for m in stored] == sorted(m.created_at for m in stored)


def test_parallel_create_user_with_one_name_has_exactly_one_winner(repo: ChatRepository) -> None:
    results = run_together(THREADS, lambda i: repo.create_user("same-name", f"hash-{i}"))
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, errors.DuplicateUsernameError) for r in losers), losers
    found = repo.get_user_by_username("same-name")
    assert found is not None and found.id == winners[0].id


def test_parallel_create_api_key_with_one_hash_has_exactly_one_winner(repo: ChatRepository) -> None:
    results = run_together(THREADS, lambda i: repo.create_api_key(f"u{i}", "same-hash", "cck_same", "k"))
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, errors.DuplicateApiKeyError) for r in results if isinstance(r, Exception))


def test_deleting_a_chat_while_messages_arrive_leaves_no_orphans(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")

    def work(index: int) -> int:
        if index == 0:
            for _ in range(20):
                repo.add_message(chat.id, "user", [{"type": "text", "text": "x"}])
            return repo.delete_chat(chat.id, "u1")
        added = 0
        for _ in range(40):
            try:
                repo.add_message(chat.id, "user", [{"type": "text", "text": "y"}])
                added += 1
            except errors.NotFoundError:
                break
        return added

    results = run_together(4, work)
    assert results[0] is True, results
    assert all(isinstance(r, int) for r in results), results
    assert repo.get_chat(chat.id, "u1") is None
    assert repo.get_messages(chat.id).total == 0


@pytest.mark.parametrize("threads", [6])
def test_six_threads_adding_fifty_each_keep_everything(repo: ChatRepository, threads: int) -> None:
    chat = repo.create_chat("u1")
    run_together(
        threads,
        lambda t: [
            repo.add_message(chat.id, "assistant", [{"type": "text", "text": f"{t}-{i}"}]) for i in range(50)
        ],
    )
    page = repo.get_messages(chat.id, limit=1000)
    assert page.total == threads * 50
    for t in range(threads):
        assert [m.content[0]["text"] for m in page.items if m.content[0]["text"].startswith(f"{t}-")] == [
            f"{t}-{i}" for i in range(50)
        ]
