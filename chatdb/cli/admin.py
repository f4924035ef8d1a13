"""``chatdb users ...`` and ``chatdb keys ...``: accounts and API keys."""

from __future__ import annotations

from dataclasses import asdict

import click

from .. import admin
from ..errors import NotFoundError
from ._app import state
from .output import output_options, render

USER_COLUMNS = ("id", "username", "created_at", "updated_at")
KEY_COLUMNS = ("id", "name", "key_prefix", "created_at", "last_used_at", "revoked_at")


@click.group()
def users() -> None:
    """Create and list users."""


@users.command("create")
@click.argument("username")
@click.password_option(help="The password (prompted for, hidden, when not given).")
@output_options
def users_create(username: str, password: str, fmt: str) -> None:
    """Create user USERNAME; only a scrypt hash of the password is stored."""
    user = admin.create_user(state().open(create=True), username, password)
    render([asdict(user)], USER_COLUMNS, fmt)


@users.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@output_options
def users_list(limit: int, offset: int, fmt: str) -> None:
    """List users, oldest first."""
    page = state().open().list_users(limit=limit, offset=offset)
    render((asdict(u) for u in page.items), USER_COLUMNS, fmt)
    state().page_footer("users", page.offset, len(page.items), page.total)


@click.group()
def keys() -> None:
    """Create, list and revoke a user's API keys."""


@keys.command("create")
@click.option("--user", required=True, help="Username (or user id) the key belongs to.")
@click.option("--name", "label", required=True, help="A label to recognise the key by.")
@output_options
def keys_create(user: str, label: str, fmt: str) -> None:
    """Create an API key and print it; it is shown this one time only."""
    new = admin.create_api_key(state().open(), user, label)
    render([asdict(new.key) | {"key": new.raw_key}], ("id", "name", "key_prefix", "key"), fmt)
    state().note("Store the key now: only its hash is kept, it cannot be shown again.")


@keys.command("list")
@click.option("--user", required=True, help="Username (or user id).")
@output_options
def keys_list(user: str, fmt: str) -> None:
    """List a user's API keys, newest first, revoked ones included (never the key or its hash)."""
    repo = state().open()
    render((asdict(k) for k in repo.list_api_keys(admin.resolve_user(repo, user).id)), KEY_COLUMNS, fmt)


@keys.command("revoke")
@click.argument("key_id")
@click.option("--user", required=True, help="Username (or user id) that owns the key.")
def keys_revoke(key_id: str, user: str) -> None:
    """Revoke API key KEY_ID (revoking twice keeps the first time)."""
    repo = state().open()
    if not repo.revoke_api_key(key_id, admin.resolve_user(repo, user).id):
        raise NotFoundError(f"API key {key_id!r} not found for user {user!r}")
    state().note(f"revoked {key_id}")


COMMANDS = [users, keys]
