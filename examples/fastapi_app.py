"""A chat API on chatdb's asyncio repository: one repository for the app's lifetime.

Run it with ``CHATDB_URL=postgresql://... uvicorn examples.fastapi_app:app`` (without
CHATDB_URL, the Node app's variables or ./data/chat.db). The caller is named by the ``X-User-Id``
header here; a real app takes it from its authentication.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import chatdb
from chatdb import AsyncChatRepository, errors


class NewChat(BaseModel):
    title: str | None = None


class NewMessage(BaseModel):
    role: str
    content: list[dict[str, Any]]
    metadata: dict[str, Any] | None = None


def repository(request: Request) -> AsyncChatRepository:
    repo: AsyncChatRepository = request.app.state.repo
    return repo


Repo = Annotated[AsyncChatRepository, Depends(repository)]
User = Annotated[str, Header(alias="X-User-Id")]


def create_app(source: chatdb.DbConfig | str | None = None) -> FastAPI:
    """The app over ``source`` (a URL or DbConfig; default CHATDB_URL, else the environment)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Made once, closed at shutdown: its pool is shared by every request.
        async with chatdb.create_async_repository(source or os.environ.get("CHATDB_URL")) as repo:
            app.state.repo = repo
            yield

    app = FastAPI(title="chatdb example", lifespan=lifespan)

    @app.exception_handler(errors.NotFoundError)
    async def not_found(_request: Request, exc: errors.NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(errors.ValidationError)
    async def invalid(_request: Request, exc: errors.ValidationError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(errors.BackendUnavailableError)
    async def unavailable(_request: Request, exc: errors.BackendUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.post("/chats", status_code=201)
    async def create_chat(body: NewChat, repo: Repo, user: User) -> chatdb.Chat:
        return await repo.create_chat(user, body.title)

    @app.get("/chats")
    async def list_chats(
        repo: Repo, user: User, limit: int = 50, offset: int = 0
    ) -> chatdb.Page[chatdb.Chat]:
        return await repo.list_chats(user, limit, offset)

    @app.get("/chats/{chat_id}")
    async def get_chat(chat_id: str, repo: Repo, user: User) -> chatdb.Chat:
        chat = await repo.get_chat(chat_id, user)
        if chat is None:
            raise HTTPException(404, f"chat {chat_id!r} not found")
        return chat

    @app.delete("/chats/{chat_id}", status_code=204)
    async def delete_chat(chat_id: str, repo: Repo, user: User) -> None:
        if not await repo.delete_chat(chat_id, user):
            raise HTTPException(404, f"chat {chat_id!r} not found")

    @app.post("/chats/{chat_id}/messages", status_code=201)
    async def add_message(chat_id: str, body: NewMessage, repo: Repo, user: User) -> chatdb.Message:
        return await repo.add_message(chat_id, body.role, body.content, body.metadata, user_id=user)

    @app.get("/chats/{chat_id}/messages")
    async def get_messages(
        chat_id: str, repo: Repo, user: User, limit: int = 50, offset: int = 0
    ) -> chatdb.Page[chatdb.Message]:
        return await repo.get_messages(chat_id, limit, offset, user_id=user)

    return app


app = create_app()
