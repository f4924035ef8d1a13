"""chatdb and the Node application share one database: a database written by the real Node code
(tests/fixtures/) is read exactly, and what chatdb writes has the Node formats."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

import chatdb
from chatdb import DbConfig, MessageMetadata
from chatdb.errors import SchemaError
from chatdb.repository import ChatRepository

from .backends import Backend, node_ddl

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CHATDB_INDEXES = {
    "idx_chats_user_updated",
    "idx_messages_chat_created",
    "idx_messages_created",
    "idx_api_keys_user",
}


def expected_tables(fixtures_dir: Path) -> dict[str, list[dict[str, Any]]]:
    data = json.loads((fixtures_dir / "ccluster-node.expected.json").read_text())
    return {name: table["rows"] for name, table in data["tables"].items()}


def assert_reads_every_node_row_exactly(
    repo: ChatRepository, tables: dict[str, list[dict[str, Any]]]
) -> None:
    ts = chatdb._codec.parse_ts
    for row in tables["users"]:
        user = repo.get_user_by_username(row["username"])
        assert user is not None
        assert (user.id, user.password_hash) == (row["id"], row["password_hash"])
        assert (user.created_at, user.updated_at) == (ts(row["created_at"]), ts(row["updated_at"]))
        assert repo.get_user_by_id(row["id"]) is not None
    for row in tables["chats"]:
        chat = repo.get_chat(row["id"], row["user_id"])
        assert chat is not None
        assert (chat.title, chat.session_id, chat.user_id) == (
            row["title"],
            row["session_id"],
            row["user_id"],
        )
        assert (chat.created_at, chat.updated_at) == (ts(row["created_at"]), ts(row["updated_at"]))
        stored = [m for m in tables["messages"] if m["chat_id"] == row["id"]]
        page = repo.get_messages(row["id"], limit=1000, user_id=row["user_id"])
        assert page.total == len(stored)
        assert [m.id for m in page.items] == [m["id"] for m in sorted(stored, key=lambda m: m["created_at"])]
        for message, raw in zip(page.items, sorted(stored, key=lambda m: m["created_at"]), strict=True):
            assert message.role == raw["role"]
            assert message.content == json.loads(raw["content"])
            assert message.created_at == ts(raw["created_at"])
            if raw["metadata"] is None:
                assert message.metadata is None
            else:
                meta = json.loads(raw["metadata"])
                assert message.metadata == MessageMetadata(
                    model=meta["model"],
                    input_tokens=meta["inputTokens"],
                    output_tokens=meta["outputTokens"],
                    total_cost_usd=meta["totalCostUsd"],
                    duration_ms=meta["durationMs"],
                )
    for user_id in {row["user_id"] for row in tables["api_keys"]}:
        rows = sorted(
            (r for r in tables["api_keys"] if r["user_id"] == user_id),
            key=lambda r: r["created_at"],
            reverse=True,
        )
        keys = repo.list_api_keys(user_id)
        assert [k.id for k in keys] == [r["id"] for r in rows]
        for key, raw in zip(keys, rows, strict=True):
            assert (key.name, key.key_prefix) == (raw["name"], raw["key_prefix"])
            assert key.revoked_at == (ts(raw["revoked_at"]) if raw["revoked_at"] else None)
            assert key.last_used_at == (ts(raw["last_used_at"]) if raw["last_used_at"] else None)
            assert (repo.get_api_key_by_hash(raw["key_hash"]) is not None) == (raw["revoked_at"] is None)
    for table, rows in tables.items():
        scanned = [r for batch in repo.scan_rows(table, stored=True) for r in batch]
        columns = chatdb._base.IMPORT_COLUMNS[table]
        assert sorted(scanned) == sorted(tuple(row[c] for c in columns) for row in rows)


@pytest.fixture
def node_sqlite(tmp_path: Path, fixtures_dir: Path) -> Path:
    copy = tmp_path / "node.sqlite"
    shutil.copy(fixtures_dir / "ccluster-node.sqlite", copy)
    copy.chmod(0o644)
    return copy


def test_chatdb_reads_every_row_of_the_node_sqlite_database(node_sqlite: Path, fixtures_dir: Path) -> None:
    with chatdb.create_repository(DbConfig(sqlite_path=str(node_sqlite))) as repo:
        assert_reads_every_node_row_exactly(repo, expected_tables(fixtures_dir))
        assert repo.count_rows() == {"users": 3, "chats": 11, "messages": 84, "api_keys": 6}


def test_opening_the_node_database_adds_indexes_and_loses_nothing(
    node_sqlite: Path, fixtures_dir: Path
) -> None:
    with chatdb.create_repository(DbConfig(sqlite_path=str(node_sqlite))) as repo:
        repo.ensure_schema()
    with sqlite3.connect(node_sqlite) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        tables = expected_tables(fixtures_dir)
        for table, rows in tables.items():
            stored = conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            assert stored == [tuple(row.values()) for row in rows]
    assert names >= CHATDB_INDEXES


def test_rows_chatdb_writes_have_the_node_formats(node_sqlite: Path) -> None:
    with chatdb.create_repository(f"sqlite:///{node_sqlite}") as repo:
        user = repo.create_user("dave", "$2b$10$fakefakefake")
        chat = repo.create_chat(user.id, "Ideas 💡 für später")
        repo.set_chat_session(chat.id, "sess-1", user.id)
        repo.add_message(chat.id, "user", [{"type": "text", "text": 'Héllo 🚀 "q"\n'}])
        repo.add_message(
            chat.id,
            "assistant",
            [{"type": "text", "text": "ok"}],
            {
                "durationMs": 6561,
                "model": "claude-opus-4-1",
                "totalCostUsd": 0.050292,
                "outputTokens": 2749,
                "inputTokens": 3019,
            },
        )
        key = repo.create_api_key(user.id, "ab" * 32, "cck_abcdefgh", "laptop")
        repo.update_api_key_last_used(key.id)
        repo.revoke_api_key(key.id, user.id)
    with sqlite3.connect(node_sqlite) as conn:
        conn.row_factory = sqlite3.Row
        mine = conn.execute("SELECT * FROM users WHERE username='dave'").fetchone()
        assert TS.match(mine["created_at"]) and mine["created_at"] == mine["updated_at"]
        assert str(uuid.UUID(mine["id"], version=4)) == mine["id"]
        row = conn.execute("SELECT * FROM chats WHERE id=?", (chat.id,)).fetchone()
        assert (row["user_id"], row["session_id"]) == (user.id, "sess-1")
        assert TS.match(row["created_at"]) and TS.match(row["updated_at"])
        messages = conn.execute(
            "SELECT * FROM messages WHERE chat_id=? ORDER BY created_at", (chat.id,)
        ).fetchall()
        assert messages[0]["content"] == '[{"type":"text","text":"Héllo 🚀 \\"q\\"\\n"}]'
        assert messages[0]["metadata"] is None
        # Node writes metadata keys in this order, compact, as JSON.stringify does.
        assert messages[1]["metadata"] == (
            '{"model":"claude-opus-4-1","inputTokens":3019,"outputTokens":2749,"totalCostUsd":0.050292,"durationMs":6561}'
        )
        assert row["updated_at"] == messages[1]["created_at"]
        key_row = conn.execute("SELECT * FROM api_keys WHERE id=?", (key.id,)).fetchone()
        assert TS.match(key_row["last_used_at"]) and TS.match(key_row["revoked_at"])
        assert key_row["key_hash"] == "ab" * 32


def test_a_database_whose_chats_lack_user_id_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE chats (id TEXT PRIMARY KEY, title TEXT NOT NULL, session_id TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO chats VALUES ('c1', 'old chat', NULL, '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')"
        )
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        # Reads never alter a schema: they say what is missing and how to upgrade.
        with pytest.raises(SchemaError, match=r"chats\.user_id.*ensure_schema"):
            repo.get_chat("c1", "system")
        repo.ensure_schema()
        chat = repo.get_chat("c1", "system")
        assert chat is not None and chat.title == "old chat" and chat.user_id == "system"


# -- PostgreSQL and MySQL: the same rows loaded from the portable INSERTs ----------------------


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def node_server_url(request: pytest.FixtureRequest, fixtures_dir: Path) -> Any:
    """A fresh database on the server with the Node layer's own tables and rows, no extra indexes."""
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    admin = backend.extra["server_admin"]
    name = f"chatdb_node_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = backend.admin.url.set(database=name)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for ddl in node_ddl(request.param):  # the Node layer's own tables (tests/fixtures)
                conn.exec_driver_sql(ddl)
            if request.param == "mysql":  # the file is standard SQL: a backslash is just a character
                conn.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
            for line in (fixtures_dir / "ccluster-node.sql").read_text().splitlines():
                if line.startswith("INSERT"):
                    conn.exec_driver_sql(line.replace("%", "%%"))
        yield request.param, url
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(
                text(f"DROP DATABASE {name}" + (" WITH (FORCE)" if request.param == "postgres" else ""))
            )


def test_a_node_written_server_database_reads_exactly_and_gains_indexes(
    node_server_url: Any, fixtures_dir: Path
) -> None:
    _, url = node_server_url

    def index_names() -> set[str]:
        engine = create_engine(url)
        with engine.connect() as conn:
            inspector = inspect(conn)
            names = {
                str(ix["name"])
                for table in ("chats", "messages", "api_keys")
                for ix in inspector.get_indexes(table)
            }
        engine.dispose()
        return names

    before = index_names()
    with chatdb.create_repository(url.render_as_string(hide_password=False)) as repo:
        assert_reads_every_node_row_exactly(repo, expected_tables(fixtures_dir))
        assert [row for batch in repo.scan_rows("messages") for row in batch]
        assert index_names() == before  # reads alter nothing
        repo.ensure_schema()
    assert index_names() >= CHATDB_INDEXES
