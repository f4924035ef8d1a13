"""Hostile input, found by trying to break chatdb (issue 16): each case, on every backend.

* Secrets in a URL's query string never show (repr, ``chatdb info``/``copy``, errors, logs).
* Metadata and content that a backend could not store or read back (nesting, integer range,
  keys) are a ValidationError before anything is written, the same on every backend.
* Every public method checks its arguments' types, storage-level ones included: SQL injection
  strings are plain values and MongoDB operators are refused, so nothing leaks.
* pymongo's DEBUG log never shows a password or key hash.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import chatdb
from chatdb import errors
from chatdb.repository import ChatRepository

from .backends import Backend
from .cli_support import invoke, ok, one_error_line

TEXT = [{"type": "text", "text": "hello"}]
QUERY_SECRET = "qpass-9f3b"


def with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


# -- item 6: secrets in a URL's query string ----------------------------------------------------------


postgres_only = pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@postgres_only
def test_info_hides_a_password_given_as_a_query_parameter(backend: Backend) -> None:
    with backend.new_repo() as repo:
        repo.ensure_schema()
    # The test server trusts local connections, so the password connects whatever it is.
    for name in ("password", "sslpassword"):
        url = with_query(backend.url, f"{name}={QUERY_SECRET}")
        result = ok(url, "info")
        assert QUERY_SECRET not in result.output and f"{name}=***" in result.output
        assert QUERY_SECRET not in ok(url, "info", "--format", "json").output


@postgres_only
def test_copy_hides_query_passwords_of_both_databases(backend: Backend, tmp_path: Path) -> None:
    source_url = with_query(f"sqlite:///{tmp_path / 'source.db'}", f"token={QUERY_SECRET}")
    with chatdb.create_repository(f"sqlite:///{tmp_path / 'source.db'}") as source:
        source.add_message(source.create_chat("u1").id, "user", TEXT)
    target_url = with_query(backend.url, f"password={QUERY_SECRET}")
    result = ok(source_url, "copy", "--to", target_url)
    assert QUERY_SECRET not in result.output and "password=***" in result.output
    same = invoke(None, "copy", "--from", target_url, "--to", target_url)
    assert "same database" in one_error_line(same) and QUERY_SECRET not in same.output


@pytest.mark.filterwarnings("ignore:Unknown option:UserWarning")  # pymongo, on ?secret=
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://postgres@127.0.0.1:1/chatdb?password={QUERY_SECRET}",
        f"mysql://root@127.0.0.1:1/chatdb?password={QUERY_SECRET}",
        f"mongodb://127.0.0.1:1/chatdb?secret={QUERY_SECRET}",
    ],
)
def test_errors_and_logs_of_an_unreachable_server_hide_query_secrets(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    if not url.startswith("mongodb"):  # (pymongo waits out its 5 s server selection timeout)
        result = invoke(url, "info")
        assert QUERY_SECRET not in result.output
        assert "cannot reach" in one_error_line(result)
    repo = chatdb.create_repository(chatdb.DbConfig.from_url(url, connect_timeout=1))
    with pytest.raises(errors.BackendUnavailableError) as caught:
        repo.count_rows()
    repo.close()
    shown = "".join(traceback.format_exception(caught.value)) + repr(repo) + caplog.text
    assert QUERY_SECRET not in shown


# -- item 7: one rule per hostile metadata (and content) case ----------------------------------------


def nested(levels: int) -> Any:
    """``levels`` objects, one inside the other."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


HOSTILE_METADATA = {
    "nested 5,000 deep": {"x": nested(5_000)},
    "nested 65 deep": nested(65),  # the limit is 64 levels
    "cost 10**400": {"totalCostUsd": 10**400},
    "tokens 10**400": {"inputTokens": 10**400},
    "tokens 2**63": {"inputTokens": 2**63},
    "tokens 1e300": {"outputTokens": 1e300},
    "extra 2**63": {"x": 2**63},
    "extra -2**63-1": {"x": -(2**63) - 1},
    "extra 10**400 in a list": {"x": [1, 10**400]},
    "nested int key": {"x": {1: "a"}},
    "nested tuple key": {"x": {(1, 2): "a"}},
    "NUL in a key": {"x": {"a\x00b": 1}},
    "top-level NUL key": {"a\x00b": 1},
    "lone surrogate key": {"x": {"\ud800": 1}},
    "DBRef shape": {"x": {"$ref": "chats", "$id": "c"}},
}


@pytest.mark.parametrize("case", list(HOSTILE_METADATA))
def test_hostile_metadata_is_a_validation_error_on_every_backend(repo: ChatRepository, case: str) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.ValidationError):
        repo.add_message(chat.id, "assistant", TEXT, HOSTILE_METADATA[case])
    assert repo.get_messages(chat.id).total == 0
    assert repo.get_chat(chat.id, "u1") == chat


@pytest.mark.parametrize(
    "part",
    [
        {"type": "tool_use", "input": nested(5_000)},
        {"type": "tool_use", "input": nested(63)},  # 65 levels with the list and the part
        {"type": "tool_use", "input": {"n": 2**64}},
        {"type": "tool_use", "input": {7: "int key"}},
        {"type": "tool_use", "input": {"k\x00": "NUL key"}},
        {"type": "text", "text": "x", "n": -(2**63) - 1},
    ],
)
def test_hostile_content_is_a_validation_error_on_every_backend(repo: ChatRepository, part: Any) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.ValidationError):
        repo.add_message(chat.id, "user", [part])
    assert repo.get_messages(chat.id).total == 0


def test_values_at_the_limits_round_trip_on_every_backend(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    metadata = {
        "inputTokens": 2**63 - 1,
        "outputTokens": 0,
        "totalCostUsd": 1e308,
        "deep": nested(63),  # 64 levels with the metadata object
        "ints": [2**63 - 1, -(2**63)],
        "keys": {"": 1, "$where": 2, "a.b": 3, "$ref": "only one of the pair"},
        "pair": (1, 2),  # a tuple is stored, and returned, as a list
    }
    parts = [{"type": "tool_use", "input": {"deep": nested(61), "n": -(2**63)}}]  # 64 levels
    message = repo.add_message(chat.id, "assistant", parts, metadata)
    assert message.metadata is not None and message.metadata.extra["pair"] == [1, 2]
    assert repo.get_message(message.id) == message


def test_the_input_is_copied_not_kept(repo: ChatRepository) -> None:
    chat = repo.create_chat("u1")
    inner = {"k": [1]}
    part = {"type": "tool_use", "input": inner}
    message = repo.add_message(chat.id, "user", [part], {"x": inner})
    inner["k"].append(2)
    assert message.content[0]["input"] == {"k": [1]}
    assert message.metadata is not None and message.metadata.extra["x"] == {"k": [1]}


# -- item 8: every public method checks its arguments' types ----------------------------------------

# MongoDB operator documents and other non-strings, in place of a string argument.
OPERATORS: list[Any] = [{"$ne": None}, {"$gt": ""}, {"$regex": ".*"}, ["u1"], 1, b"u1"]
# SQL injection attempts: plain strings, which every backend must treat as plain values.
SQL_PAYLOADS = [
    "' OR '1'='1",
    "u1' --",
    "u1'; DROP TABLE messages; --",
    '" OR ""="',
    "') OR ('1'='1",
    "u1\\' OR 1=1 #",
    "1 UNION SELECT password_hash FROM users",
    "%",
    "_",
    "$where",
    "this.userId != ''",
]


def seed_two_users(repo: ChatRepository) -> dict[str, int]:
    for owner in ("u1", "u2"):
        user = repo.create_user(f"name-{owner}", f"hash-{owner}")
        repo.create_api_key(user.id, f"keyhash-{owner}", "cck_x", "key")
        chat = repo.create_chat(owner, "t")
        repo.add_message(chat.id, "user", TEXT)
    return repo.count_rows()


NOW = datetime(2026, 1, 1, tzinfo=UTC)

# (name, call with a hostile value in one argument); each must be a ValidationError for a non-string.
STORAGE_CALLS: dict[str, Callable[[ChatRepository, Any], Any]] = {
    "scan_rows(table)": lambda r, v: list(r.scan_rows(v)),
    "scan_rows(user_id)": lambda r, v: list(r.scan_rows("messages", user_id=v)),
    "scan_rows(chats, user_id)": lambda r, v: list(r.scan_rows("chats", user_id=v)),
    "scan_rows(users, user_id)": lambda r, v: list(r.scan_rows("users", user_id=v, stored=True)),
    "scan_rows(api_keys, user_id)": lambda r, v: list(r.scan_rows("api_keys", user_id=v)),
    "scan_rows(since)": lambda r, v: list(r.scan_rows("messages", since=v)),
    "scan_rows(until)": lambda r, v: list(r.scan_rows("messages", until=v)),
    "scan_rows(after id)": lambda r, v: list(r.scan_rows("messages", after=("2026-01-01T00:00:00.000Z", v))),
    "scan_rows(after created_at)": lambda r, v: list(r.scan_rows("messages", after=(v, "id"))),
    "scan_rows(after)": lambda r, v: list(r.scan_rows("messages", after=v)),
    "scan_rows(stored)": lambda r, v: list(r.scan_rows("users", stored=v)),
    "import_rows(table)": lambda r, v: r.import_rows(v, []),
    "import_rows(rows)": lambda r, v: r.import_rows("chats", v),
    "import_rows(a row)": lambda r, v: r.import_rows("chats", [v]),
    "import_rows(chat id)": lambda r, v: r.import_rows("chats", [chat_row(id=v)]),
    "import_rows(chat owner)": lambda r, v: r.import_rows("chats", [chat_row(user_id=v)]),
    "import_rows(message chat)": lambda r, v: r.import_rows("messages", [message_row(chat_id=v)]),
    "admin.upgrade_schema(dry_run)": lambda r, v: chatdb.admin.upgrade_schema(r, dry_run=v),
}
CRUD_CALLS: dict[str, Callable[[ChatRepository, Any], Any]] = {
    "create_chat(user_id)": lambda r, v: r.create_chat(v),
    "create_chat(title)": lambda r, v: r.create_chat("u1", v),
    "get_chat(chat_id)": lambda r, v: r.get_chat(v, "u1"),
    "get_chat(user_id)": lambda r, v: r.get_chat("c", v),
    "list_chats(user_id)": lambda r, v: r.list_chats(v),
    "update_chat(user_id)": lambda r, v: r.update_chat("c", v, "t"),
    "delete_chat(user_id)": lambda r, v: r.delete_chat("c", v),
    "set_chat_session(session_id)": lambda r, v: r.set_chat_session("c", v, "u1"),
    "add_message(chat_id)": lambda r, v: r.add_message(v, "user", TEXT),
    "add_message(user_id)": lambda r, v: r.add_message("c", "user", TEXT, user_id=v),
    "get_messages(user_id)": lambda r, v: r.get_messages("c", user_id=v),
    "get_message(message_id)": lambda r, v: r.get_message(v),
    "get_user_by_username": lambda r, v: r.get_user_by_username(v),
    "get_user_by_id": lambda r, v: r.get_user_by_id(v),
    "get_api_key_by_hash": lambda r, v: r.get_api_key_by_hash(v),
    "list_api_keys": lambda r, v: r.list_api_keys(v),
    "revoke_api_key(user_id)": lambda r, v: r.revoke_api_key("k", v),
    "update_api_key_last_used": lambda r, v: r.update_api_key_last_used(v),
}


def chat_row(**changes: Any) -> dict[str, Any]:
    stamp = "2026-01-01T00:00:00.000Z"
    row = {"id": "c-new", "title": "t", "session_id": None, "user_id": "u3", "created_at": stamp}
    return {**row, "updated_at": stamp, **changes}


def message_row(**changes: Any) -> dict[str, Any]:
    stamp = "2026-01-01T00:00:00.000Z"
    row = {"id": "m-new", "chat_id": "c", "role": "user", "content": "[]", "created_at": stamp}
    return {**row, "metadata": None, **changes}


def refused(repo: ChatRepository, calls: dict[str, Callable[[ChatRepository, Any], Any]]) -> list[str]:
    """The calls (with each operator value) that did not raise ValidationError."""
    missed = []
    for name, call in calls.items():
        for value in OPERATORS:
            try:
                call(repo, value)
            except errors.ValidationError:
                continue
            except Exception as exc:
                missed.append(f"{name} with {value!r}: {type(exc).__name__}: {exc}")
            else:
                missed.append(f"{name} with {value!r}: no error")
    return missed


def test_operator_values_are_validation_errors_in_the_storage_level_methods(repo: ChatRepository) -> None:
    counts = seed_two_users(repo)
    assert refused(repo, STORAGE_CALLS) == []
    assert repo.count_rows() == counts


def test_operator_values_are_validation_errors_in_the_crud_methods(repo: ChatRepository) -> None:
    counts = seed_two_users(repo)
    assert refused(repo, CRUD_CALLS) == []
    assert repo.count_rows() == counts


def test_injection_strings_are_plain_values_in_the_storage_level_methods(repo: ChatRepository) -> None:
    counts = seed_two_users(repo)
    every_id = {table: {row[0] for batch in repo.scan_rows(table) for row in batch} for table in counts}
    for payload in SQL_PAYLOADS:
        for table in ("messages", "chats", "users", "api_keys"):
            assert list(repo.scan_rows(table, user_id=payload)) == [], (table, payload)
            after = {row[0] for batch in repo.scan_rows(table, after=(payload, payload)) for row in batch}
            assert after <= every_id[table], (table, payload)
    # ...stored literally by an import, found literally by a scan, nothing else touched
    chats = [
        chat_row(id=f"c-inj-{n}", user_id=payload, title=payload) for n, payload in enumerate(SQL_PAYLOADS)
    ]
    assert repo.import_rows("chats", chats) == len(SQL_PAYLOADS)
    for n, payload in enumerate(SQL_PAYLOADS):
        [[row]] = list(repo.scan_rows("chats", user_id=payload))
        assert row[:3] == (f"c-inj-{n}", payload, payload)
        assert repo.list_chats(payload).total == 1
    assert repo.count_rows() == {**counts, "chats": counts["chats"] + len(SQL_PAYLOADS)}
    assert repo.list_chats("u1").total == 1


def test_injection_strings_are_plain_values_in_the_crud_methods(repo: ChatRepository) -> None:
    counts = seed_two_users(repo)
    for payload in SQL_PAYLOADS:
        assert repo.get_user_by_username(payload) is None
        assert repo.get_api_key_by_hash(payload) is None
        assert repo.list_chats(payload).total == 0 and repo.list_api_keys(payload) == []
        assert repo.get_messages(payload).total == 0 and repo.get_message(payload) is None
    for payload in SQL_PAYLOADS:
        chat = repo.create_chat(payload, payload)
        assert repo.get_chat(chat.id, payload) == chat and repo.get_chat(chat.id, "u1") is None
        message = repo.add_message(chat.id, "user", [{"type": "text", "text": payload}], {payload: payload})
        assert repo.get_message(message.id, user_id=payload) == message
    added = len(SQL_PAYLOADS)
    assert repo.count_rows() == {
        **counts,
        "chats": counts["chats"] + added,
        "messages": counts["messages"] + added,
    }


def test_a_scan_user_id_no_stored_row_can_have_yields_nothing(repo: ChatRepository) -> None:
    seed_two_users(repo)
    for table in ("messages", "chats", "users", "api_keys"):
        assert list(repo.scan_rows(table, user_id="u1\x00")) == []
        assert list(repo.scan_rows(table, user_id="\ud800")) == []


@pytest.mark.parametrize("size", [0, -1, True, 2.5, "10"])
def test_batch_sizes_below_one_or_not_integers_are_validation_errors(repo: ChatRepository, size: Any) -> None:
    with pytest.raises(errors.ValidationError):
        repo.scan_rows("chats", batch_size=size)
    with pytest.raises(errors.ValidationError):
        repo.import_rows("chats", [], batch_size=size)


def test_import_rows_names_the_bad_row_and_column(repo: ChatRepository) -> None:
    with pytest.raises(errors.ValidationError, match="chats row 1: created_at"):
        repo.import_rows("chats", [chat_row(id="c-1"), chat_row(id="c-2", created_at=12)])
    with pytest.raises(errors.ValidationError, match="messages row 0: content"):
        repo.import_rows("messages", [message_row(content=None)])
    with pytest.raises(errors.ValidationError, match="users row 0: password_hash"):
        repo.import_rows("users", [{"id": "u", "username": "n", "created_at": "x", "updated_at": "x"}])


# -- item 9: no password or key hash in any log line ---------------------------------------------------


def test_no_hash_reaches_the_logs_at_debug(repo: ChatRepository, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, pymongo's command log included
    secrets = ("pwhash-7c1d with spaces", "keyhash-0a9e", "pwhash-imported", "keyhash-imported")
    user = repo.create_user("alice", secrets[0])
    repo.create_api_key(user.id, secrets[1], "cck_x", "laptop")
    with pytest.raises(errors.DuplicateApiKeyError) as duplicate:
        repo.create_api_key(user.id, secrets[1], "cck_y", "again")
    found = repo.get_user_by_username("alice")
    assert found is not None and found.password_hash == secrets[0]
    assert repo.get_api_key_by_hash(secrets[1]) is not None
    repo.list_users()
    stamp = "2026-01-01T00:00:00.000Z"
    repo.import_rows(
        "users",
        [
            {
                "id": "u-2",
                "username": "bob",
                "password_hash": secrets[2],
                "created_at": stamp,
                "updated_at": stamp,
            }
        ],
    )
    key = {
        "id": "k-2",
        "user_id": "u-2",
        "key_hash": secrets[3],
        "key_prefix": "p",
        "name": "n",
        "created_at": stamp,
    }
    repo.import_rows("api_keys", [{**key, "last_used_at": None, "revoked_at": None}])
    stored = [
        row
        for table in ("users", "api_keys")
        for batch in repo.scan_rows(table, stored=True)
        for row in batch
    ]
    assert {secrets[0], secrets[2]} <= {row[2] for row in stored}  # the hashes are really there
    if repo.backend == "mongodb":
        assert any(r.name == "pymongo.command" for r in caplog.records)  # the log was on
    logged = caplog.text + "".join(record.getMessage() for record in caplog.records)
    logged += "".join(traceback.format_exception(duplicate.value))
    for secret in secrets:
        assert secret not in logged
        assert secret.split()[0] not in logged
