"""chatdb.aio's reused greenlets keep greenlet_spawn's contract: awaits, contextvars, errors,
cancellation, and many calls at once."""

from __future__ import annotations

import asyncio
import contextvars

import pytest
from sqlalchemy.util import await_only

from chatdb.aio import _greenlets
from chatdb.aio._greenlets import spawn

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def _sleep_then_read(delay: float) -> str:
    await_only(asyncio.sleep(delay))
    return request_id.get()


def test_each_task_sees_its_own_contextvars_across_awaits() -> None:
    async def one(name: str, delay: float) -> str:
        request_id.set(name)
        return await spawn(_sleep_then_read, delay)

    async def main() -> list[str]:
        return await asyncio.gather(*(one(f"r{n}", 0.001 * (n % 3)) for n in range(30)))

    assert asyncio.run(main()) == [f"r{n}" for n in range(30)]


def test_an_error_in_the_sync_code_reaches_the_caller_and_the_greenlet_serves_again() -> None:
    def fail() -> None:
        await_only(asyncio.sleep(0))
        raise LookupError("gone")

    async def main() -> int:
        with pytest.raises(LookupError, match="gone"):
            await spawn(fail)
        return await spawn(lambda: 7)

    assert asyncio.run(main()) == 7


def test_a_cancelled_task_unwinds_the_sync_code_and_sees_cancelled_error() -> None:
    unwound: list[str] = []

    def slow() -> None:
        try:
            await_only(asyncio.sleep(10))
        finally:
            unwound.append("finally ran")

    async def main() -> None:
        task = asyncio.ensure_future(spawn(slow))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await spawn(_sleep_then_read, 0) == "-"

    asyncio.run(main())
    assert unwound == ["finally ran"]


def test_more_calls_at_once_than_greenlets_kept_all_finish() -> None:
    calls = _greenlets._KEEP * 3

    async def main() -> list[str]:
        return await asyncio.gather(*(spawn(_sleep_then_read, 0.001) for _ in range(calls)))

    assert asyncio.run(main()) == ["-"] * calls
    assert len(_greenlets._free()) <= _greenlets._KEEP
