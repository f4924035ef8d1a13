"""``chatdb init``, ``chatdb info``, ``chatdb copy`` and how the CLI picks its database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

import chatdb
from chatdb.copy import copy_database
from chatdb.errors import ConfigError
from chatdb.repository import ChatRepository

from .backends import Backend
from .cli_support import CLI_BACKENDS, invoke, ok, ok_json, one_error_line, sql_rows

on_backends = pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)
TABLES = ("users", "chats", "messages", "api_keys")


def seed(repo: ChatRepository, chats: int = 3, messages: int = 4) -> None:
    user = repo.create_user("alice", "scrypt$x")
    repo.create_api_key(user.id, "a" * 64, "cck_aaaaaaaa", "laptop")
    for c in range(chats):
        chat = repo.create_chat(user.id, f"chat {c}")
        for m in range(messages):
            role = "user" if m % 2 == 0 else "assistant"
            meta = {"model": "claude-sonnet-4", "inputTokens": m} if m % 2 else None
            repo.add_message(chat.id, role, [{"type": "text", "text": f"{m}"}], meta)


@on_backends
def test_init_creates_the_tables_and_is_idempotent(backend: Backend) -> None:
    with backend.admin.begin() as conn:  # start from nothing at all
        for table in TABLES:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    ok(backend.url, "init")
    ok(backend.url, "init")
    assert set(TABLES) <= set(inspect(backend.admin).get_table_names())


@on_backends
def test_info_json_matches_sql(backend: Backend, repo: ChatRepository) -> None:
    seed(repo)
    facts = ok_json(backend.url, "info")
    counts = {t: sql_rows(backend, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES}
    span = sql_rows(backend, "SELECT min(created_at) AS lo, max(created_at) AS hi FROM messages")[0]
    assert facts == {
        "backend": backend.config.driver,
        "url": backend.config.redacted_url,
        **{f"{t}_rows": counts[t] for t in TABLES},
        "first_message_at": span["lo"],
        "last_message_at": span["hi"],
    }
    table = ok(backend.url, "info").stdout
    assert f"messages  {span['lo']} .. {span['hi']}" in table
    assert [line.split() for line in table.splitlines()[-4:]] == [[t, str(counts[t])] for t in TABLES]


@on_backends
def test_info_on_an_empty_database_has_no_time_range(backend: Backend) -> None:
    facts = ok_json(backend.url, "info")
    assert facts["messages_rows"] == 0 and facts["first_message_at"] is None


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_info_never_prints_the_password(backend: Backend) -> None:
    # The test server trusts local connections, so any password connects.
    url = backend.url.replace("postgres@", "postgres:hunter2-secret@", 1)
    assert "hunter2-secret" in url
    result = ok(url, "info")
    assert "hunter2-secret" not in result.output and "postgres:***@" in result.output
    bad = invoke(url.replace(":5432/", ":1/"), "info")
    assert "hunter2-secret" not in bad.output
    one_error_line(bad)


def test_default_database_is_data_chat_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "no database at data/chat.db" in one_error_line(invoke(None, "info"))
    ok(None, "init")
    assert (tmp_path / "data" / "chat.db").is_file()
    facts = ok_json(None, "info")
    assert facts["backend"] == "sqlite" and facts["url"] == "sqlite:///./data/chat.db"


def test_seed_env_vars_and_chatdb_url_choose_the_database(tmp_path: Path) -> None:
    seed_db, url_db = tmp_path / "seed" / "app.db", tmp_path / "url.db"
    assert invoke(None, "init", env={"SQLITE_PATH": str(seed_db)}).exit_code == 0
    facts = json.loads(invoke(None, "info", "--json", env={"SQLITE_PATH": str(seed_db)}).stdout)
    assert facts["url"] == f"sqlite:///{seed_db}" and seed_db.is_file()
    env = {"SQLITE_PATH": str(seed_db), "CHATDB_URL": f"sqlite:///{url_db}"}
    assert invoke(None, "init", env=env).exit_code == 0
    facts = json.loads(invoke(None, "info", "--json", env=env).stdout)
    assert facts["url"] == f"sqlite:///{url_db}"  # CHATDB_URL wins over the seed's variables
    line = one_error_line(invoke(None, "info", env={"DB_DRIVER": "postgres"}))
    assert "POSTGRES_URL is required" in line


@on_backends
def test_copy_sqlite_to_server_and_back_is_exact_and_idempotent(backend: Backend, tmp_path: Path) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    with chatdb.create_repository(source_url) as source:
        seed(source, chats=4, messages=5)
    target_url = backend.url
    if backend.name == "sqlite":
        target_url = f"sqlite:///{tmp_path / 'target.db'}"
    first = ok_json(source_url, "copy", "--to", target_url, "--batch-size", "3")
    assert {r["table"]: (r["read"], r["inserted"]) for r in first} == {
        "users": (1, 1),
        "chats": (4, 4),
        "messages": (20, 20),
        "api_keys": (1, 1),
    }
    second = ok_json(None, "copy", "--from", source_url, "--to", target_url)
    assert all(r["inserted"] == 0 and r["already_present"] == r["read"] for r in second)
    assert dump(source_url) == dump(target_url)
    # ... and back again into an empty SQLite file, from the server
    back_url = f"sqlite:///{tmp_path / 'back.db'}"
    ok(target_url, "copy", "--to", back_url)
    assert dump(back_url) == dump(source_url)


def dump(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every stored row (hashes included), straight from SQL, in a backend-neutral order."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return {
                t: [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY id"))]
                for t in TABLES
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)], indirect=True)
def test_copy_reports_progress_and_refuses_to_copy_onto_itself(backend: Backend, tmp_path: Path) -> None:
    with backend.new_repo() as source, chatdb.create_repository(f"sqlite:///{tmp_path / 't.db'}") as target:
        seed(source, chats=2, messages=3)
        seen: list[tuple[str, int]] = []
        result = copy_database(source, target, batch_size=2, progress=lambda t, n: seen.append((t, n)))
        assert sum(n for t, n in seen if t == "messages") == 6 and max(n for _, n in seen) <= 2
        assert result.read == result.inserted == 1 + 2 + 6 + 1
        with pytest.raises(ConfigError, match="same database"):
            copy_database(source, backend.new_repo())
    line = one_error_line(invoke(backend.url, "copy", "--to", backend.url))
    assert "same database" in line


@pytest.mark.parametrize("backend", [pytest.param("mongodb", marks=pytest.mark.mongodb)], indirect=True)
def test_copy_through_mongodb_round_trips_every_stored_row(backend: Backend, tmp_path: Path) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    with chatdb.create_repository(source_url) as source:
        seed(source, chats=2, messages=3)
    # The URL's path names the database; the seed's variables name it too.
    mongo_url = f"{(backend.config.mongodb_url or '').rstrip('/')}/{backend.config.mongodb_name}"
    env = {
        "DB_DRIVER": "mongodb",
        "MONGODB_URL": backend.config.mongodb_url or "",
        "MONGODB_DB_NAME": backend.config.mongodb_name or "",
    }
    to_mongo = invoke(None, "copy", "--from", source_url, "--to", mongo_url, "--json", env=env)
    assert to_mongo.exit_code == 0, to_mongo.output
    facts = json.loads(invoke(None, "info", "--json", env=env).stdout)
    assert (facts["backend"], facts["messages_rows"], facts["chats_rows"]) == ("mongodb", 6, 2)
    back_url = f"sqlite:///{tmp_path / 'back.db'}"
    result = invoke(None, "copy", "--to", back_url, env=env)
    assert result.exit_code == 0, result.output
    assert dump(back_url) == dump(source_url)
