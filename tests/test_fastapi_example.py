"""examples/fastapi_app.py through httpx's ASGI transport, its lifespan run as a server would."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
import httpx

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_example_app_serves_chats_and_messages(tmp_path: Path) -> None:
    app = load_example().create_app(f"sqlite:///{tmp_path / 'chat.db'}")
    alice, bob = {"X-User-Id": "alice"}, {"X-User-Id": "bob"}

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                made = await client.post("/chats", json={"title": "Hello"}, headers=alice)
                assert made.status_code == 201 and made.json()["title"] == "Hello"
                chat_id = made.json()["id"]
                # Concurrent requests share the lifespan's repository and its pool.
                sent = await asyncio.gather(
                    *(
                        client.post(
                            f"/chats/{chat_id}/messages",
                            json={"role": "user", "content": [{"type": "text", "text": str(i)}]},
                            headers=alice,
                        )
                        for i in range(10)
                    )
                )
                assert [r.status_code for r in sent] == [201] * 10
                page = (await client.get(f"/chats/{chat_id}/messages", headers=alice)).json()
                assert page["total"] == 10
                assert sorted(m["content"][0]["text"] for m in page["items"]) == [str(i) for i in range(10)]
                assert (await client.get(f"/chats/{chat_id}", headers=bob)).status_code == 404
                bad = {"role": "robot", "content": [{"type": "text", "text": "x"}]}
                assert (
                    await client.post(f"/chats/{chat_id}/messages", json=bad, headers=alice)
                ).status_code == 422
                missing = {"role": "user", "content": [{"type": "text", "text": "x"}]}
                assert (
                    await client.post(f"/chats/{chat_id}/messages", json=missing, headers=bob)
                ).status_code == 404
                assert (await client.get("/chats", headers=alice)).json()["total"] == 1
                assert (await client.delete(f"/chats/{chat_id}", headers=alice)).status_code == 204
                assert (await client.get("/chats", headers=alice)).json()["total"] == 0

    asyncio.run(scenario())
