"""Random sequences of every operation against a tiny in-memory model of the contract.

Hypothesis drives several users through chats, messages, users and API keys; after each step the
repository must agree with the model on results, pages, totals, ordering, isolation and errors.
It runs through the ``backend`` fixture, so every backend gets the same machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from chatdb import errors
from chatdb.repository import ChatRepository

from .backends import Backend

USERS = st.sampled_from(["u1", "u2", "u3"])
USERNAMES = st.sampled_from(["alice", "Alice", "alice ", "bob", "ünï", "🚀"])
TITLES = st.one_of(st.none(), st.just(""), st.text(max_size=20).filter(lambda t: "\x00" not in t))
TEXT = st.text(max_size=30).filter(
    lambda t: "\x00" not in t and not any(0xD800 <= ord(c) <= 0xDFFF for c in t)
)
PAGES = st.tuples(st.integers(1, 6), st.integers(0, 8))


@dataclass
class ChatModel:
    id: str
    user_id: str
    title: str
    session_id: str | None
    updated_at: datetime
    messages: list[Any] = field(default_factory=list)


@dataclass
class KeyModel:
    id: str
    user_id: str
    key_hash: str
    created_at: datetime
    revoked: bool = False


def order_chats(chats: list[ChatModel]) -> list[str]:
    return [c.id for c in sorted(chats, key=lambda c: (c.updated_at, c.id), reverse=True)]


class ContractMachine(RuleBasedStateMachine):
    backend: Backend

    chats = Bundle("chats")
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.backend.reset()
        self.repo: ChatRepository = self.backend.new_repo()
        self.model_chats: dict[str, ChatModel] = {}
        self.users: dict[str, str] = {}
        self.model_keys: dict[str, KeyModel] = {}

    def teardown(self) -> None:
        self.repo.close()

    # -- chats --------------------------------------------------------------------------------

    @rule(target=chats, user=USERS, title=TITLES)
    def create_chat(self, user: str, title: str | None) -> str:
        chat = self.repo.create_chat(user, title)
        assert chat.title == (title or "New Chat")
        self.model_chats[chat.id] = ChatModel(chat.id, user, chat.title, None, chat.updated_at)
        return chat.id

    @rule(chat_id=chats, user=USERS)
    def get_chat(self, chat_id: str, user: str) -> None:
        model = self.model_chats.get(chat_id)
        got = self.repo.get_chat(chat_id, user)
        if model is None or model.user_id != user:
            assert got is None
        else:
            assert got is not None
            assert (got.title, got.session_id, got.updated_at) == (
                model.title,
                model.session_id,
                model.updated_at,
            )

    @rule(chat_id=chats, user=USERS, title=TITLES)
    def update_chat(self, chat_id: str, user: str, title: str | None) -> None:
        model = self.model_chats.get(chat_id)
        got = self.repo.update_chat(chat_id, user, title)
        if model is None or model.user_id != user:
            assert got is None
            return
        assert got is not None and got.updated_at > model.updated_at
        if title is not None:
            model.title = title or "New Chat"
        assert got.title == model.title
        model.updated_at = got.updated_at

    @rule(chat_id=chats, user=USERS, session=st.one_of(st.none(), st.sampled_from(["s1", "s2"])))
    def set_session(self, chat_id: str, user: str, session: str | None) -> None:
        model = self.model_chats.get(chat_id)
        ok = self.repo.set_chat_session(chat_id, session, user)
        assert ok == (model is not None and model.user_id == user)
        if ok and model is not None:
            model.session_id = session
            now = self.repo.get_chat(chat_id, user)
            assert now is not None and now.updated_at > model.updated_at
            model.updated_at = now.updated_at

    @rule(chat_id=consumes(chats), user=USERS)
    def delete_chat(self, chat_id: str, user: str) -> None:
        model = self.model_chats.get(chat_id)
        ok = self.repo.delete_chat(chat_id, user)
        assert ok == (model is not None and model.user_id == user)
        if ok:
            del self.model_chats[chat_id]

    @rule(user=USERS, page=PAGES)
    def list_chats(self, user: str, page: tuple[int, int]) -> None:
        limit, offset = page
        mine = [c for c in self.model_chats.values() if c.user_id == user]
        got = self.repo.list_chats(user, limit, offset)
        assert got.total == len(mine)
        assert [c.id for c in got.items] == order_chats(mine)[offset : offset + limit]

    # -- messages -------------------------------------------------------------------------------

    @rule(
        chat_id=chats,
        role=st.sampled_from(["user", "assistant", "system"]),
        text=TEXT,
        owner=st.one_of(st.none(), USERS),
        tokens=st.one_of(st.none(), st.integers(-1, 10_000)),
    )
    def add_message(self, chat_id: str, role: str, text: str, owner: str | None, tokens: int | None) -> None:
        model = self.model_chats.get(chat_id)
        metadata = None if tokens is None else {"model": "m", "inputTokens": tokens}

        def call() -> Any:
            return self.repo.add_message(
                chat_id, role, [{"type": "text", "text": text}], metadata, user_id=owner
            )

        if role == "system" or (tokens is not None and tokens < 0):
            with pytest.raises(errors.ValidationError):
                call()
            return
        if model is None or (owner is not None and owner != model.user_id):
            with pytest.raises(errors.NotFoundError):
                call()
            return
        message = call()
        assert message.created_at > model.updated_at or (
            not model.messages and message.created_at >= model.updated_at
        )
        model.messages.append(message)
        model.updated_at = message.created_at

    @rule(chat_id=chats, page=PAGES, owner=st.one_of(st.none(), USERS))
    def get_messages(self, chat_id: str, page: tuple[int, int], owner: str | None) -> None:
        limit, offset = page
        model = self.model_chats.get(chat_id)
        got = self.repo.get_messages(chat_id, limit, offset, user_id=owner)
        if model is None or (owner is not None and owner != model.user_id):
            assert (got.items, got.total) == ([], 0)
            return
        assert got.total == len(model.messages)
        assert got.items == model.messages[offset : offset + limit]

    # -- users and keys ---------------------------------------------------------------------------

    def _same(self, stored: str, given: str) -> bool:
        """Whether a unique index sees two values as one. The Node app's MySQL collation (before
        `chatdb upgrade`) ignores case and trailing spaces; lookups stay exact all the same."""
        if "text_ignores_case" in self.backend.limits:
            return stored.lower().rstrip(" ") == given.lower().rstrip(" ")
        return stored == given

    def _taken(self, username: str) -> bool:
        return any(self._same(u, username) for u in self.users)

    @rule(username=USERNAMES)
    def create_user(self, username: str) -> None:
        if self._taken(username):
            with pytest.raises(errors.DuplicateUsernameError):
                self.repo.create_user(username, "h")
            return
        self.users[username] = self.repo.create_user(username, "h").id

    @rule(username=USERNAMES)
    def get_user(self, username: str) -> None:
        got = self.repo.get_user_by_username(username)
        assert (got.id if got else None) == self.users.get(username)

    @rule(target=keys, user=USERS, digest=st.sampled_from(["h1", "h2", "h3", "H1"]))
    def create_key(self, user: str, digest: str) -> str:
        if any(self._same(k.key_hash, digest) for k in self.model_keys.values()):
            with pytest.raises(errors.DuplicateApiKeyError):
                self.repo.create_api_key(user, digest, "cck_x", "k")
            return "missing"
        key = self.repo.create_api_key(user, digest, "cck_x", "k")
        self.model_keys[key.id] = KeyModel(key.id, user, digest, key.created_at)
        return key.id

    @rule(key_id=keys, user=USERS)
    def revoke_key(self, key_id: str, user: str) -> None:
        model = self.model_keys.get(key_id)
        ok = self.repo.revoke_api_key(key_id, user)
        assert ok == (model is not None and model.user_id == user)
        if ok and model is not None:
            model.revoked = True

    @rule(digest=st.sampled_from(["h1", "h2", "h3", "H1"]))
    def key_by_hash(self, digest: str) -> None:
        active = [k.id for k in self.model_keys.values() if k.key_hash == digest and not k.revoked]
        got = self.repo.get_api_key_by_hash(digest)
        assert ([got.id] if got else []) == active

    @invariant()
    def keys_listed_newest_first(self) -> None:
        for user in ("u1", "u2", "u3"):
            mine = [k for k in self.model_keys.values() if k.user_id == user]
            expected = [k.id for k in sorted(mine, key=lambda k: (k.created_at, k.id), reverse=True)]
            listed = self.repo.list_api_keys(user)
            assert [k.id for k in listed] == expected
            assert [k.revoked_at is not None for k in listed] == [
                self.model_keys[i].revoked for i in expected
            ]


def test_repository_agrees_with_the_model_under_random_operations(backend: Backend) -> None:
    machine = cast("type[ContractMachine]", type("Machine", (ContractMachine,), {"backend": backend}))
    machine.TestCase.settings = settings(
        max_examples=20 if backend.name.startswith("sqlite") else 12,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine.TestCase().runTest()
