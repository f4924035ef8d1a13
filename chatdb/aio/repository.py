"""``AsyncChatRepository``: the :class:`~chatdb.repository.ChatRepository` contract for asyncio.

One source of truth: an ``AsyncChatRepository`` holds a sync repository of the same backend
(``SqlRepository``, ``MongoRepository``) whose connections are asyncio drivers', and runs each of
its methods in a greenlet (as SQLAlchemy's ``greenlet_spawn`` does, what its own asyncio
extension is built on; :mod:`chatdb.aio._greenlets` reuses the greenlets). Where the sync code
would block on the driver, the greenlet awaits the driver's coroutine on the event loop instead,
so no thread pool is involved on the servers and validation, statements, mapping, retries and
errors are literally the sync code. Each method here is one line that hands its arguments
over; ``tests/test_aio.py`` checks that every ``ChatRepository`` method has its coroutine here
with the same signature.

Cancellation: a task cancelled inside a SQL write closes the connection it was writing on (the
server rolls the transaction back) unless COMMIT was already sent, so the write happens whole or
not at all and the pool keeps only connections outside a transaction. MongoDB writes of several
steps (a message: claim the chat's next timestamp, insert, check the chat is still there) are
not one transaction there, so a cancelled one first finishes, then the task sees its
CancelledError.

A repository belongs to the event loop that first uses it (its connections do).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from .._aggregate import AggregateQuery
from .._base import RepositoryBase
from ..models import ApiKey, Chat, ContentPart, Message, MessageMetadata, Page, User, UserWithPasswordHash
from ._greenlets import spawn

__all__ = ["AsyncChatRepository"]

T = TypeVar("T")


async def _finish_first(work: Awaitable[T]) -> T:
    """``work`` run to its end even when the caller is cancelled meanwhile; the cancellation is
    then raised (a write that cannot be rolled back is never left half done)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


class AsyncChatRepository:
    """Users, chats, messages and API keys, every method a coroutine (see ChatRepository)."""

    def __init__(self, repository: RepositoryBase) -> None:
        self._repo = repository
        self.backend: str = repository.backend
        self.config = repository.config
        self._finish_writes = bool(getattr(repository, "finish_writes_on_cancel", False))

    def __repr__(self) -> str:
        return f"<AsyncChatRepository {self.backend} {self.config.redacted_url}>"

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await spawn(method, *args, **kwargs)

    async def _write(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._finish_writes:
            return await _finish_first(spawn(method, *args, **kwargs))
        return await spawn(method, *args, **kwargs)

    # -- chats ----------------------------------------------------------------------------------

    async def create_chat(self, user_id: str, title: str | None = None) -> Chat:
        return await self._write(self._repo.create_chat, user_id, title)

    async def get_chat(self, chat_id: str, user_id: str) -> Chat | None:
        return await self._call(self._repo.get_chat, chat_id, user_id)

    async def list_chats(self, user_id: str, limit: int = 50, offset: int = 0) -> Page[Chat]:
        return await self._call(self._repo.list_chats, user_id, limit, offset)

    async def update_chat(self, chat_id: str, user_id: str, title: str | None = None) -> Chat | None:
        return await self._write(self._repo.update_chat, chat_id, user_id, title)

    async def delete_chat(self, chat_id: str, user_id: str) -> bool:
        return await self._write(self._repo.delete_chat, chat_id, user_id)

    async def set_chat_session(self, chat_id: str, session_id: str | None, user_id: str) -> bool:
        return await self._write(self._repo.set_chat_session, chat_id, session_id, user_id)

    # -- messages -------------------------------------------------------------------------------

    async def add_message(
        self,
        chat_id: str,
        role: str,
        content: list[ContentPart],
        metadata: MessageMetadata | Mapping[str, Any] | None = None,
        *,
        user_id: str | None = None,
        message_id: str | None = None,
    ) -> Message:
        return await self._write(
            self._repo.add_message, chat_id, role, content, metadata, user_id=user_id, message_id=message_id
        )

    async def get_messages(
        self, chat_id: str, limit: int = 50, offset: int = 0, *, user_id: str | None = None
    ) -> Page[Message]:
        return await self._call(self._repo.get_messages, chat_id, limit, offset, user_id=user_id)

    async def get_message(self, message_id: str, *, user_id: str | None = None) -> Message | None:
        return await self._call(self._repo.get_message, message_id, user_id=user_id)

    # -- users ----------------------------------------------------------------------------------

    async def create_user(self, username: str, password_hash: str) -> User:
        return await self._write(self._repo.create_user, username, password_hash)

    async def get_user_by_username(self, username: str) -> UserWithPasswordHash | None:
        return await self._call(self._repo.get_user_by_username, username)

    async def get_user_by_id(self, user_id: str) -> User | None:
        return await self._call(self._repo.get_user_by_id, user_id)

    async def list_users(self, limit: int = 50, offset: int = 0) -> Page[User]:
        return await self._call(self._repo.list_users, limit, offset)

    # -- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, user_id: str, key_hash: str, key_prefix: str, name: str) -> ApiKey:
        return await self._write(self._repo.create_api_key, user_id, key_hash, key_prefix, name)

    async def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        return await self._call(self._repo.get_api_key_by_hash, key_hash)

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        return await self._call(self._repo.list_api_keys, user_id)

    async def revoke_api_key(self, key_id: str, user_id: str) -> bool:
        return await self._write(self._repo.revoke_api_key, key_id, user_id)

    async def update_api_key_last_used(self, key_id: str) -> None:
        await self._write(self._repo.update_api_key_last_used, key_id)

    # -- storage level --------------------------------------------------------------------------

    async def scan_rows(
        self,
        table: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: str | None = None,
        after: tuple[str, str] | None = None,
        batch_size: int = 10_000,
        stored: bool = False,
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The batches of ``ChatRepository.scan_rows``, as an async generator: it holds one
        pooled connection until it is exhausted or closed (``contextlib.aclosing``)."""
        batches: Any = await self._call(
            self._repo.scan_rows,
            table,
            since=since,
            until=until,
            user_id=user_id,
            after=after,
            batch_size=batch_size,
            stored=stored,
        )
        try:
            while (batch := await self._call(next, batches, None)) is not None:
                yield batch
        finally:
            await self._call(batches.close)

    async def import_rows(
        self, table: str, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 5_000
    ) -> int:
        """Bulk-insert stored-format rows; each batch is one transaction, whole or not at all,
        even when the task is cancelled (see ``ChatRepository.import_rows``)."""
        return await self._write(self._repo.import_rows, table, rows, batch_size=batch_size)

    async def aggregate_messages(self, query: AggregateQuery) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The group batches of ``ChatRepository.aggregate_messages``, as an async generator
        (only groups are held; close it early with ``contextlib.aclosing``)."""
        batches: Any = await self._call(self._repo.aggregate_messages, query)
        try:
            while (batch := await self._call(next, batches, None)) is not None:
                yield batch
        finally:
            if (close := getattr(batches, "close", None)) is not None:  # a generator's cursor
                await self._call(close)

    async def count_rows(self) -> dict[str, int]:
        return await self._call(self._repo.count_rows)

    async def message_time_range(self) -> tuple[datetime | None, datetime | None]:
        return await self._call(self._repo.message_time_range)

    # -- lifecycle ------------------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        """Create missing tables and indexes, upgrading an older layout (idempotent); every
        write does it first. Reads never do."""
        await self._call(self._repo.ensure_schema)

    async def has_schema(self) -> bool:
        """Whether chatdb's tables are there (creates nothing); False when none is, SchemaError
        when only some are."""
        return await self._call(self._repo.has_schema)

    async def aclose(self) -> None:
        """Close every pooled connection; the repository reconnects if used again."""
        await self._call(self._repo.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
