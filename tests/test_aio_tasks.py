"""chatdb.aio under many tasks: concurrent writers, and writes cancelled at random moments.

These drive ``AsyncChatRepository`` directly (the contract suite runs it through
tests/async_face.py). Each test is one ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from typing import Any

import pytest

from chatdb import AsyncChatRepository, create_async_repository
from chatdb.aio._sql import BridgedSqlRepository, PooledExecutor

from .backends import Backend
from .conftest import SERVER_BACKENDS

pytestmark = pytest.mark.parametrize("backend", SERVER_BACKENDS, indirect=True)

TASKS, PER_TASK, CHATS, POOL = 200, 50, 20, 10
CANCELLATIONS, WAVE = 1_000, 50


def _text(content: list[Any]) -> str:
    return str(content[0]["text"])


def _check_pool(repo: AsyncChatRepository) -> None:
    """No pooled connection inside a transaction, and every slot given back."""
    inner = repo._repo
    if isinstance(inner, BridgedSqlRepository):
        pool = inner.pool
        assert not any(pool.idle_in_transaction())
        if isinstance(pool, PooledExecutor):
            assert pool._slots.free == pool.size  # nothing still checked out
            assert len(pool._idle) <= pool.size


@pytest.mark.slow
def test_200_tasks_adding_50_messages_each_lose_nothing_and_keep_each_tasks_order(backend: Backend) -> None:
    async def main() -> None:
        async with create_async_repository(backend.config.replace(pool_size=POOL)) as repo:
            chats = [await repo.create_chat("u1", f"chat {n}") for n in range(CHATS)]

            async def writer(task: int) -> None:
                chat = chats[task % CHATS]
                for i in range(PER_TASK):
                    await repo.add_message(chat.id, "user", [{"type": "text", "text": f"{task}:{i}"}])

            await asyncio.gather(*(writer(task) for task in range(TASKS)))
            for n, chat in enumerate(chats):
                stored = []
                for offset in range(0, TASKS // CHATS * PER_TASK, 1000):
                    stored += (await repo.get_messages(chat.id, limit=1000, offset=offset)).items
                assert len(stored) == TASKS // CHATS * PER_TASK
                by_task: dict[int, list[int]] = defaultdict(list)
                for message in stored:
                    task, i = map(int, _text(message.content).split(":"))
                    by_task[task].append(i)
                assert sorted(by_task) == list(range(n, TASKS, CHATS))
                assert all(order == list(range(PER_TASK)) for order in by_task.values())
                stamps = [m.created_at for m in stored]
                assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
                final = await repo.get_chat(chat.id, "u1")
                assert final is not None and final.updated_at == stamps[-1]
            _check_pool(repo)

    asyncio.run(main())


@pytest.mark.slow
def test_randomly_cancelled_writes_leave_each_call_whole_or_absent(backend: Backend) -> None:
    rng = random.Random(19)
    texts = [{"type": "text", "text": "x" * 200}]

    async def main() -> dict[str, int]:
        outcomes: dict[str, int] = defaultdict(int)
        async with create_async_repository(backend.config.replace(pool_size=POOL)) as repo:
            await repo.ensure_schema()
            owner = "u-cancel"
            # How long a call takes here, so that the timeouts land before, inside and after it.
            probe = await repo.create_chat(owner)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(5):
                await repo.add_message(probe.id, "user", texts)
            # Waves of WAVE calls share POOL connections: a call also waits for its turn.
            span = max((loop.time() - started) / 5 * 3 * WAVE / POOL, 0.002)

            added: dict[str, str] = {}  # marker text -> chat id
            doomed: dict[str, int] = {}  # chat id -> messages it had when its delete was tried
            imported: dict[str, list[str]] = {}  # chat id -> message ids of one import_rows call
            chats = [await repo.create_chat(owner) for _ in range(10)]

            async def attempt(kind: str, n: int) -> None:
                if kind == "add":
                    chat = chats[n % len(chats)]
                    marker = f"add-{n}"
                    added[marker] = chat.id
                    call: Any = repo.add_message(chat.id, "user", [{"type": "text", "text": marker}])
                elif kind == "delete":
                    chat = await repo.create_chat(owner)
                    for _ in range(3):
                        await repo.add_message(chat.id, "user", texts)
                    doomed[chat.id] = 3
                    call = repo.delete_chat(chat.id, owner)
                else:
                    chat = await repo.create_chat(owner)
                    stamp = "2026-01-01T00:00:00.000Z"
                    rows = [
                        {
                            "id": str(uuid.uuid4()),
                            "chat_id": chat.id,
                            "role": "user",
                            "content": '[{"type":"text","text":"imported"}]',
                            "created_at": stamp,
                            "metadata": None,
                        }
                        for _ in range(20)
                    ]
                    imported[chat.id] = [str(row["id"]) for row in rows]
                    call = repo.import_rows("messages", rows)
                # One call in ten gets time to finish even on a loaded machine, so both outcomes occur.
                timeout = rng.uniform(0, span) if n % 10 else max(span * 50, 30.0)
                try:
                    await asyncio.wait_for(call, timeout)
                    outcomes[f"{kind} done"] += 1
                except TimeoutError:
                    outcomes[f"{kind} cancelled"] += 1

            kinds = ["add", "delete", "import"]
            plan = [(kinds[n % 3], n) for n in range(CANCELLATIONS)]
            for wave in range(0, len(plan), WAVE):
                await asyncio.gather(*(attempt(kind, n) for kind, n in plan[wave : wave + WAVE]))

            # add_message: each marker stored once or not at all; the chats still take messages
            # and their updated_at is their last message's.
            for chat in chats:
                await repo.add_message(chat.id, "user", [{"type": "text", "text": "after"}])
                page = await repo.get_messages(chat.id, limit=1000)
                markers = [_text(m.content) for m in page.items]
                assert len(markers) == len(set(markers))
                assert all(added[m] == chat.id for m in markers if m.startswith("add-"))
                final = await repo.get_chat(chat.id, owner)
                assert final is not None and final.updated_at == page.items[-1].created_at
            # delete_chat: the chat and its three messages, or neither.
            for chat_id, count in doomed.items():
                present = await repo.get_chat(chat_id, owner) is not None
                total = (await repo.get_messages(chat_id)).total
                assert total == (count if present else 0), (chat_id, present, total)
            # import_rows: all twenty rows of a call, or none.
            for chat_id, ids in imported.items():
                found = [await repo.get_message(mid) for mid in ids]
                assert sum(m is not None for m in found) in (0, len(ids)), chat_id
            _check_pool(repo)
        return outcomes

    outcomes = asyncio.run(main())
    for kind in ("add", "delete", "import"):  # the timeouts hit some calls and missed others
        assert outcomes[f"{kind} cancelled"] > 0 and outcomes[f"{kind} done"] > 0, dict(outcomes)
