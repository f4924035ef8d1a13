"""``chatdb chats ...``: a user's chats and their messages."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from .. import admin
from ..errors import NotFoundError
from ..models import Message, MessageMetadata
from ._app import state
from .output import output_options, render

CHAT_COLUMNS = ("id", "title", "session_id", "created_at", "updated_at")
MESSAGE_COLUMNS = (
    "id",
    "created_at",
    "role",
    "text",
    "images",
    "model",
    "input_tokens",
    "output_tokens",
    "total_cost_usd",
    "duration_ms",
)
_TEXT_IN_TABLE = 80

user_option = click.option("--user", required=True, help="Username (or user id) that owns the chats.")
page_options = [
    click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True),
    click.option("--offset", type=click.IntRange(0), default=0, show_default=True),
]


def paged(func: Any) -> Any:
    for option in reversed(page_options):
        func = option(func)
    return func


@click.group()
def chats() -> None:
    """List, show and delete a user's chats."""


@chats.command("list")
@user_option
@paged
@output_options
def chats_list(user: str, limit: int, offset: int, fmt: str) -> None:
    """The user's chats, most recently updated first."""
    repo = state().open()
    page = repo.list_chats(admin.resolve_user(repo, user).id, limit=limit, offset=offset)
    render((asdict(c) for c in page.items), CHAT_COLUMNS, fmt)
    state().page_footer("chats", page.offset, len(page.items), page.total)


@chats.command("show")
@click.argument("chat_id")
@user_option
@paged
@click.option("--full", is_flag=True, help="Do not shorten long texts in the table.")
@output_options
def chats_show(chat_id: str, user: str, limit: int, offset: int, full: bool, fmt: str) -> None:
    """The messages of chat CHAT_ID, in order, one page at a time."""
    repo = state().open()
    owner = admin.resolve_user(repo, user).id
    chat = repo.get_chat(chat_id, owner)
    if chat is None:
        raise NotFoundError(f"chat {chat_id!r} not found for user {user!r}")
    page = repo.get_messages(chat.id, limit=limit, offset=offset, user_id=owner)
    shorten = fmt in ("table", "markdown") and not full
    if fmt in ("table", "markdown"):
        state().note(f"{chat.title} ({chat.id})")
    render((message_row(m, shorten=shorten) for m in page.items), MESSAGE_COLUMNS, fmt)
    state().page_footer("messages", page.offset, len(page.items), page.total)


@chats.command("delete")
@click.argument("chat_id")
@user_option
@click.confirmation_option("--yes", "-y", prompt="Delete this chat and all its messages?")
def chats_delete(chat_id: str, user: str) -> None:
    """Delete chat CHAT_ID and its messages."""
    repo = state().open()
    if not repo.delete_chat(chat_id, admin.resolve_user(repo, user).id):
        raise NotFoundError(f"chat {chat_id!r} not found for user {user!r}")
    state().note(f"deleted chat {chat_id}")


def message_row(message: Message, *, shorten: bool = False) -> dict[str, Any]:
    """One message as a flat row: text parts joined, images counted, metadata spread out."""
    text = "\n".join(str(p.get("text", "")) for p in message.content if p.get("type") == "text")
    if shorten and len(text) > _TEXT_IN_TABLE:
        text = text[: _TEXT_IN_TABLE - 1] + "…"
    meta = message.metadata or MessageMetadata()
    return {
        "id": message.id,
        "created_at": message.created_at,
        "role": message.role,
        "text": text,
        "images": sum(1 for p in message.content if p.get("type") == "image"),
        "model": meta.model,
        "input_tokens": meta.input_tokens,
        "output_tokens": meta.output_tokens,
        "total_cost_usd": meta.total_cost_usd,
        "duration_ms": meta.duration_ms,
    }


COMMANDS = [chats]
