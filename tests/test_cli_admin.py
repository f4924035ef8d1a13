"""``chatdb users`` and ``chatdb keys``, and the hashing helpers behind them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from chatdb import admin
from chatdb.errors import ValidationError

from .backends import Backend
from .cli_support import CLI_BACKENDS, invoke, ok, ok_json, one_error_line, sql_rows

on_backends = pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)


@on_backends
def test_users_create_prompts_twice_hidden_and_stores_only_a_scrypt_hash(backend: Backend) -> None:
    result = ok(backend.url, "users", "create", "alice", "--json", input="s3cret-pw\ns3cret-pw\n")
    assert "s3cret-pw" not in result.output  # hidden input is not echoed
    assert result.output.count("Password") == 1 and "Repeat for confirmation" in result.output
    created = json.loads(result.stdout[result.stdout.index("[") :])[0]
    [row] = sql_rows(backend, "SELECT id, username, password_hash FROM users")
    assert (row["id"], row["username"]) == (created["id"], "alice")
    assert row["password_hash"].startswith("scrypt$n=16384,r=8,p=1$")
    assert "s3cret-pw" not in row["password_hash"]
    assert admin.verify_password("s3cret-pw", row["password_hash"])
    assert not admin.verify_password("wrong", row["password_hash"])


@on_backends
def test_users_create_rejects_mismatched_confirmation_then_accepts(backend: Backend) -> None:
    result = ok(backend.url, "users", "create", "bob", input="one\ntwo\nsame\nsame\n")
    assert "do not match" in result.output
    [row] = sql_rows(backend, "SELECT password_hash FROM users")
    assert admin.verify_password("same", row["password_hash"])


@on_backends
def test_users_create_duplicate_is_one_error_line(backend: Backend) -> None:
    ok(backend.url, "users", "create", "alice", "--password", "pw")
    line = one_error_line(invoke(backend.url, "users", "create", "alice", "--password", "pw"))
    assert "alice" in line
    assert sql_rows(backend, "SELECT count(*) AS n FROM users")[0]["n"] == 1


@on_backends
def test_users_list_json_matches_the_table(backend: Backend) -> None:
    for name in ("carol", "alice", "bob"):
        ok(backend.url, "users", "create", name, "--password", "pw")
    listed = ok_json(backend.url, "users", "list")
    expected = sql_rows(
        backend, "SELECT id, username, created_at, updated_at FROM users ORDER BY created_at, id"
    )
    assert listed == expected
    assert all("password" not in key for row in listed for key in row)
    page = invoke(backend.url, "users", "list", "--limit", "2", "--offset", "1", "--json")
    assert [u["username"] for u in json.loads(page.stdout)] == [r["username"] for r in expected[1:3]]
    assert "users 2-3 of 3" in page.stderr
    first = invoke(backend.url, "users", "list", "--limit", "1")
    assert "users 1-1 of 3" in first.stderr


@on_backends
def test_keys_create_prints_the_raw_key_once_and_stores_its_hash(backend: Backend) -> None:
    ok(backend.url, "users", "create", "alice", "--password", "pw")
    [created] = ok_json(backend.url, "keys", "create", "--user", "alice", "--name", "laptop")
    raw = created["key"]
    assert re.fullmatch(r"cck_[0-9a-f]{32}", raw)
    [row] = sql_rows(backend, "SELECT * FROM api_keys")
    assert row["key_hash"] == hashlib.sha256(raw.encode()).hexdigest()
    assert row["key_prefix"] == raw[:12] == created["key_prefix"]
    assert row["name"] == "laptop" and row["id"] == created["id"]
    assert raw not in json.dumps(row)  # only the hash and prefix are stored


@on_backends
def test_keys_list_and_revoke(backend: Backend) -> None:
    ok(backend.url, "users", "create", "alice", "--password", "pw")
    ok(backend.url, "keys", "create", "--user", "alice", "--name", "one")
    ok(backend.url, "keys", "create", "--user", "alice", "--name", "two")
    listed = ok_json(backend.url, "keys", "list", "--user", "alice")
    expected = sql_rows(
        backend,
        "SELECT id, name, key_prefix, created_at, last_used_at, revoked_at FROM api_keys "
        "ORDER BY created_at DESC, id DESC",
    )
    assert listed == expected
    assert not any("hash" in key for row in listed for key in row)
    result = ok(backend.url, "keys", "revoke", listed[0]["id"], "--user", "alice")
    assert "revoked" in result.stderr
    revoked = sql_rows(backend, "SELECT revoked_at FROM api_keys WHERE id = :id", id=listed[0]["id"])
    assert revoked[0]["revoked_at"] is not None
    again = ok_json(backend.url, "keys", "list", "--user", "alice")
    assert again[0]["revoked_at"] == revoked[0]["revoked_at"]


@on_backends
def test_keys_of_an_unknown_user_or_key_fail_with_one_line(backend: Backend) -> None:
    assert "user 'nobody' not found" in one_error_line(
        invoke(backend.url, "keys", "create", "--user", "nobody", "--name", "x")
    )
    one_error_line(invoke(backend.url, "keys", "list", "--user", "nobody"))
    ok(backend.url, "users", "create", "alice", "--password", "pw")
    line = one_error_line(invoke(backend.url, "keys", "revoke", "no-such-key", "--user", "alice"))
    assert "no-such-key" in line


@on_backends
def test_users_can_be_named_by_id(backend: Backend) -> None:
    [user] = ok_json(backend.url, "users", "create", "alice", "--password", "pw")
    ok(backend.url, "keys", "create", "--user", user["id"], "--name", "by-id")
    assert [k["name"] for k in ok_json(backend.url, "keys", "list", "--user", "alice")] == ["by-id"]


def test_api_keys_match_the_node_app(fixtures_dir: Path) -> None:
    manifest = json.loads((fixtures_dir / "ccluster-node.manifest.json").read_text())
    keys = [k for user in manifest["users"] for k in user["apiKeys"]]
    for key in keys:
        assert admin.hash_api_key(key["rawKey"]) == key["keyHash"]
        assert key["rawKey"][:12] == key["keyPrefix"]
    raw, digest, prefix = admin.generate_api_key()
    assert len(raw) == len(keys[0]["rawKey"]) and raw.startswith("cck_")
    assert (digest, prefix) == (admin.hash_api_key(raw), raw[:12])
    assert admin.generate_api_key()[0] != raw


def test_password_hashes_are_salted_and_self_describing() -> None:
    first, second = admin.hash_password("pw"), admin.hash_password("pw")
    assert first != second
    assert admin.verify_password("pw", first) and admin.verify_password("pw", second)
    assert not admin.verify_password("pw", "$2b$10$notscrypt")
    assert not admin.verify_password("pw", "scrypt$garbage")
    with pytest.raises(ValidationError):
        admin.hash_password("")
