"""The MongoDB side of chatdb.aio: :class:`MongoRepository` itself, on ``AsyncMongoClient``.

As for SQL (:mod:`chatdb.aio._sql`), nothing of the repository is rewritten: its methods run in
a greenlet, and the client they see is pymongo's ``AsyncMongoClient`` behind :class:`_Awaiting`,
which gives each async object pymongo's sync API by awaiting its coroutines from the greenlet.
Queries, document mapping, compare-and-set retries and error translation are the sync code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import Any

from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import AsyncAdaptedLock

from ..config import DbConfig
from ..errors import ConfigError
from ..mongo.repository import MongoRepository
from ._greenlets import spawn

_CHUNK = 1_000  # documents per await when a cursor is read whole


def require_async_pymongo() -> None:
    try:
        import greenlet  # noqa: F401
        from pymongo import AsyncMongoClient  # noqa: F401
    except ImportError:
        raise ConfigError(
            "chatdb.aio on MongoDB needs greenlet and pymongo 4.13+: pip install 'chatdb[async]'"
        ) from None


def _unwrap(value: Any) -> Any:
    return value._target if isinstance(value, _Awaiting) else value


def _wrap(value: Any) -> Any:
    if type(value).__module__.startswith("pymongo.asynchronous"):
        return _Awaiting(value)
    return value


class _Awaiting:
    """A pymongo asyncio object (client, database, collection, cursor, session) with the sync
    API: a method's coroutine is awaited from the calling greenlet; what it returns is wrapped
    alike. (Only what MongoRepository calls needs to work; the rest is plain delegation.)"""

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return _wrap(value)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*map(_unwrap, args), **{k: _unwrap(v) for k, v in kwargs.items()})
            if inspect.isawaitable(result):
                result = await_only(result)
            return _wrap(result)

        return call

    def __getitem__(self, name: str) -> Any:
        return _wrap(self._target[name])

    # cursors

    def __iter__(self) -> Iterator[Any]:
        while documents := await_only(self._target.to_list(_CHUNK)):
            yield from documents

    def __next__(self) -> Any:
        try:
            return await_only(self._target.next())
        except StopAsyncIteration:
            raise StopIteration from None

    # sessions

    def __enter__(self) -> _Awaiting:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await_only(self._target.__aexit__(exc_type, exc, tb))

    def with_transaction(self, callback: Callable[[Any], Any], **options: Any) -> Any:
        async def run(session: Any) -> Any:
            return await spawn(callback, _Awaiting(session))

        return await_only(self._target.with_transaction(run, **options))


class BridgedMongoRepository(MongoRepository):
    """:class:`MongoRepository` over ``AsyncMongoClient``; every call runs in a greenlet."""

    # A message is several writes without a transaction: a cancelled one finishes first.
    finish_writes_on_cancel = True

    def __init__(self, config: DbConfig) -> None:
        super().__init__(config)
        self._schema_lock = AsyncAdaptedLock()  # type: ignore[assignment]

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:  # (never held across an await)
                if self._client is None:
                    from pymongo import AsyncMongoClient

                    timeout_ms = max(1, round(self.config.connect_timeout * 1000))
                    with self._errors():
                        self._client = _Awaiting(  # type: ignore[assignment]
                            AsyncMongoClient(
                                self.config.mongodb_url,
                                serverSelectionTimeoutMS=timeout_ms,
                                connectTimeoutMS=timeout_ms,
                                maxPoolSize=self.config.pool_size,
                                appname="chatdb",
                            )
                        )
        return self._client

    def _prefetch(self, open_scan: Callable[[], Iterator[bytes]]) -> Generator[bytes, None, None]:
        # No read-ahead thread: a thread cannot await on this loop. The next piece is read
        # when this one is used up.
        yield from open_scan()
