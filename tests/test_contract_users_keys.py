"""Users and API keys: exact matching, conflicts, revocation; the same on every backend."""

from __future__ import annotations

import hashlib

import pytest

from chatdb import ApiKey, User, UserWithPasswordHash, errors
from chatdb.repository import ChatRepository

from .backends import Backend

HASH = "$scrypt$n=16384,r=8,p=1$c2FsdA$aGFzaA"


def key_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def test_create_user_returns_a_user_without_the_hash(repo: ChatRepository) -> None:
    user = repo.create_user("alice", HASH)
    assert type(user) is User
    assert user.username == "alice" and user.created_at == user.updated_at
    assert not hasattr(user, "password_hash")


def test_get_user_by_username_includes_the_hash_but_its_repr_hides_it(repo: ChatRepository) -> None:
    user = repo.create_user("alice", HASH)
    found = repo.get_user_by_username("alice")
    assert isinstance(found, UserWithPasswordHash)
    assert found.password_hash == HASH
    assert (found.id, found.username, found.created_at) == (user.id, user.username, user.created_at)
    assert HASH not in repr(found) and HASH not in str(found)


def test_get_user_by_id_never_carries_the_hash(repo: ChatRepository) -> None:
    user = repo.create_user("alice", HASH)
    found = repo.get_user_by_id(user.id)
    assert found == user and type(found) is User
    assert repo.get_user_by_id("missing") is None


def test_usernames_match_exactly_in_case_and_spaces(backend: Backend, repo: ChatRepository) -> None:
    lower = repo.create_user("alice", HASH)
    if "text_ignores_case" in backend.limits:
        # The Node app's MySQL collation (warned about; `chatdb upgrade` fixes it): one username
        # whatever the case or trailing spaces, but lookups stay exact.
        for other in ("Alice", "alice "):
            with pytest.raises(errors.DuplicateUsernameError):
                repo.create_user(other, HASH)
        assert repo.get_user_by_username("alice").id == lower.id  # type: ignore[union-attr]
        assert [repo.get_user_by_username(n) for n in ("Alice", "alice ", "ALICE")] == [None] * 3
        return
    upper = repo.create_user("Alice", HASH)
    spaced = repo.create_user("alice ", HASH)
    assert len({lower.id, upper.id, spaced.id}) == 3
    assert repo.get_user_by_username("alice").id == lower.id  # type: ignore[union-attr]
    assert repo.get_user_by_username("Alice").id == upper.id  # type: ignore[union-attr]
    assert repo.get_user_by_username("alice ").id == spaced.id  # type: ignore[union-attr]
    assert repo.get_user_by_username("ALICE") is None
    assert repo.get_user_by_username(" alice") is None


def test_duplicate_username_is_a_conflict_and_keeps_the_first(repo: ChatRepository) -> None:
    first = repo.create_user("bob", HASH)
    with pytest.raises(errors.DuplicateUsernameError) as caught:
        repo.create_user("bob", "other-hash")
    assert isinstance(caught.value, errors.ConflictError)
    assert "other-hash" not in str(caught.value) and HASH not in str(caught.value)
    found = repo.get_user_by_username("bob")
    assert found is not None and found.id == first.id and found.password_hash == HASH


@pytest.mark.parametrize("username", ["", "x" * 256, None, "nul\x00"])
def test_bad_usernames_are_rejected(repo: ChatRepository, username: object) -> None:
    with pytest.raises(errors.ValidationError):
        repo.create_user(username, HASH)  # type: ignore[arg-type]


def test_a_255_character_unicode_username_is_accepted(repo: ChatRepository) -> None:
    name = "ü" * 254 + "🚀"
    repo.create_user(name, HASH)
    assert repo.get_user_by_username(name) is not None


def test_list_users_is_oldest_first(repo: ChatRepository) -> None:
    created = [repo.create_user(f"user{i}", HASH) for i in range(3)]
    page = repo.list_users(limit=2)
    assert page.total == 3
    expected = sorted(created, key=lambda u: (u.created_at, u.id))
    assert page.items == expected[:2]
    assert repo.list_users(limit=2, offset=2).items == expected[2:]


def test_api_key_lifecycle(repo: ChatRepository) -> None:
    key = repo.create_api_key("u1", key_hash("cck_raw"), "cck_raw12345", "laptop")
    assert isinstance(key, ApiKey)
    assert (key.user_id, key.name, key.key_prefix, key.last_used_at, key.revoked_at) == (
        "u1",
        "laptop",
        "cck_raw12345",
        None,
        None,
    )
    assert not hasattr(key, "key_hash")
    assert repo.get_api_key_by_hash(key_hash("cck_raw")) == key
    assert repo.get_api_key_by_hash(key_hash("cck_other")) is None


def test_duplicate_key_hash_is_a_conflict(repo: ChatRepository) -> None:
    repo.create_api_key("u1", key_hash("k"), "cck_k", "one")
    with pytest.raises(errors.DuplicateApiKeyError) as caught:
        repo.create_api_key("u2", key_hash("k"), "cck_k", "two")
    assert isinstance(caught.value, errors.ConflictError)
    assert key_hash("k") not in str(caught.value)
    assert [k.name for k in repo.list_api_keys("u1")] == ["one"]
    assert repo.list_api_keys("u2") == []


def test_list_api_keys_is_newest_first_with_revoked_ones(repo: ChatRepository) -> None:
    keys = [repo.create_api_key("u1", key_hash(f"k{i}"), f"cck_{i}", f"key {i}") for i in range(3)]
    repo.create_api_key("u2", key_hash("other"), "cck_o", "other")
    assert repo.revoke_api_key(keys[0].id, "u1") is True
    listed = repo.list_api_keys("u1")
    assert [k.id for k in listed] == [
        k.id for k in sorted(keys, key=lambda k: (k.created_at, k.id), reverse=True)
    ]
    assert [k.revoked_at is not None for k in listed] == [k.id == keys[0].id for k in listed]


def test_revoking_hides_the_key_and_twice_keeps_the_first_time(repo: ChatRepository) -> None:
    key = repo.create_api_key("u1", key_hash("r"), "cck_r", "r")
    assert repo.revoke_api_key(key.id, "u2") is False
    assert repo.get_api_key_by_hash(key_hash("r")) == key
    assert repo.revoke_api_key(key.id, "u1") is True
    assert repo.get_api_key_by_hash(key_hash("r")) is None
    first = repo.list_api_keys("u1")[0].revoked_at
    assert first is not None
    assert repo.revoke_api_key(key.id, "u1") is True
    assert repo.list_api_keys("u1")[0].revoked_at == first
    assert repo.revoke_api_key("missing", "u1") is False


def test_update_last_used_records_the_time_and_ignores_missing_keys(repo: ChatRepository) -> None:
    key = repo.create_api_key("u1", key_hash("l"), "cck_l", "l")
    repo.update_api_key_last_used(key.id)
    used = repo.get_api_key_by_hash(key_hash("l"))
    assert used is not None and used.last_used_at is not None and used.last_used_at >= key.created_at
    repo.update_api_key_last_used("missing")  # no error, no row
    assert len(repo.list_api_keys("u1")) == 1


@pytest.mark.parametrize(
    ("digest", "prefix", "name"),
    [("x" * 129, "p", "n"), ("", "p", "n"), ("h", "x" * 21, "n"), ("h", "", "n"), ("h", "p", "x" * 256)],
)
def test_api_key_limits_are_the_same_everywhere(
    repo: ChatRepository, digest: str, prefix: str, name: str
) -> None:
    with pytest.raises(errors.ValidationError):
        repo.create_api_key("u1", digest, prefix, name)
    assert repo.list_api_keys("u1") == []


def test_api_key_limits_at_the_edges_are_accepted(repo: ChatRepository) -> None:
    key = repo.create_api_key("u1", "h" * 128, "p" * 20, "n" * 255)
    assert repo.get_api_key_by_hash("h" * 128) == key
