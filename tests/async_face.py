"""The asyncio repository through the sync ``ChatRepository`` interface, for the contract suite.

Each call runs the coroutine on an event loop in a background thread and waits for it, so every
contract test body runs unchanged against ``AsyncChatRepository`` (threads of a concurrency test
become concurrent tasks on that one loop, sharing one bounded pool).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from chatdb.aio import AsyncChatRepository

T = TypeVar("T")


class SyncFace:
    """``ChatRepository`` calls, each run to completion on this object's own event loop."""

    def __init__(self, repository: AsyncChatRepository) -> None:
        self.aio = repository
        self.backend = repository.backend
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
                self._thread.start()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.aio, name)
        if inspect.isasyncgenfunction(method):
            return lambda *args, **kwargs: self._iterate(method(*args, **kwargs))
        if not inspect.iscoroutinefunction(method):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.run(method(*args, **kwargs))

    def _iterate(self, batches: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, Any]:
            try:
                return True, await anext(batches)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, batch = self.run(step())
                if not more:
                    return
                yield batch
        finally:
            self.run(batches.aclose())  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self.run(self.aio.aclose())
        finally:
            with self._lock:
                loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join()
            loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
