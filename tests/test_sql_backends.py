"""What only the SQL backends promise: reconnects, driver errors, dialect types and indexes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

import chatdb
from chatdb import errors

from .backends import Backend

SERVERS = [
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> Backend:
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    backend.reset()
    return backend


def kill_other_connections(server: Backend) -> int:
    database = server.admin.url.database
    with server.extra["server_admin"].connect() as conn:
        if server.name == "postgres":
            rows = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
                ),
                {"d": database},
            ).all()
            return len(rows)
        ids = (
            conn.execute(text("SELECT id FROM information_schema.processlist WHERE db = :d"), {"d": database})
            .scalars()
            .all()
        )
        killed = 0
        for pid in ids:
            try:
                conn.execute(text(f"KILL {int(pid)}"))
                killed += 1
            except DBAPIError as exc:  # 1094: that connection ended on its own meanwhile
                if "1094" not in str(exc.orig):
                    raise
        return killed


def test_a_dropped_connection_costs_a_reconnect_not_an_error(server: Backend) -> None:
    with server.new_repo() as repo:
        chat = repo.create_chat("u1")
        server.admin.dispose()
        assert kill_other_connections(server) >= 1
        assert repo.get_chat(chat.id, "u1") == chat
        repo.add_message(chat.id, "user", [{"type": "text", "text": "still here"}])
        assert repo.get_messages(chat.id).total == 1


def test_schema_creation_is_idempotent_and_keeps_rows(server: Backend) -> None:
    with server.new_repo() as repo:
        chat = repo.create_chat("u1", "kept")
    with server.new_repo() as again:
        again.ensure_schema()
        again.ensure_schema()
        assert again.get_chat(chat.id, "u1") == chat


def test_the_indexes_exist_on_the_server(server: Backend) -> None:
    with server.new_repo() as repo:
        repo.ensure_schema()
    with server.admin.connect() as conn:
        inspector = inspect(conn)
        names = {ix["name"] for t in ("chats", "messages", "api_keys") for ix in inspector.get_indexes(t)}
    assert {
        "idx_chats_user_updated",
        "idx_messages_chat_created",
        "idx_messages_created",
        "idx_api_keys_user",
    } <= names


def test_a_dropped_index_is_created_again_by_the_next_repository(server: Backend) -> None:
    """ensure_schema reads the catalog once and does nothing when all is there; anything
    missing (an index another program dropped, a Node-created database) is still created."""
    with server.new_repo() as repo:
        repo.ensure_schema()
    with server.admin.begin() as conn:
        on = " ON messages" if server.name == "mysql" else ""
        conn.execute(text(f"DROP INDEX idx_messages_created{on}"))
    with server.new_repo() as again:
        again.ensure_schema()
    with server.admin.connect() as conn:
        names = {ix["name"] for ix in inspect(conn).get_indexes("messages")}
    assert "idx_messages_created" in names


@pytest.mark.mysql
def test_mysql_columns_hold_large_content_and_compare_exactly(mysql_backend: Backend) -> None:
    mysql_backend.reset()
    with mysql_backend.new_repo() as repo:
        repo.ensure_schema()
    with mysql_backend.admin.connect() as conn:
        columns = {
            row.COLUMN_NAME: row
            for row in conn.execute(
                text(
                    "SELECT COLUMN_NAME, DATA_TYPE, COLLATION_NAME FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('messages', 'users')"
                )
            )
        }
    assert columns["content"].DATA_TYPE == "longtext"
    assert columns["metadata"].DATA_TYPE == "longtext"
    assert columns["username"].COLLATION_NAME in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")


@pytest.mark.parametrize(
    ("module", "extra", "url"),
    [
        ("psycopg", "postgres", "postgresql://u@127.0.0.1/db"),
        ("pymysql", "mysql", "mysql://u@127.0.0.1/db"),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(module: str, extra: str, url: str) -> None:
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "import chatdb\n"
        "try:\n"
        f"    chatdb.create_repository({url!r}).get_chat('c', 'u')\n"
        "except chatdb.errors.ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert f"pip install 'chatdb[{extra}]'" in out


def test_unknown_database_is_backend_unavailable_naming_the_server(server: Backend) -> None:
    url = server.admin.url.set(database="chatdb_does_not_exist").render_as_string(hide_password=False)
    with chatdb.create_repository(url) as repo, pytest.raises(errors.BackendUnavailableError) as caught:
        repo.list_chats("u1")
    assert "127.0.0.1" in str(caught.value)
