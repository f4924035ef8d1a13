"""Reads never create or alter a schema; writes and ensure_schema() do (every backend).

On a database without chatdb's tables, reads return what an empty database returns; with only
some of them (another application's database), reads raise SchemaError; the CLI's reading
commands refuse both, and a SQLite file that does not exist, without creating anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import chatdb
from chatdb import DbConfig
from chatdb._aggregate import AggregateQuery
from chatdb.errors import SchemaError

from .backends import Backend, empty_database
from .cli_support import CLI_BACKENDS, invoke, one_error_line

EmptyDb = tuple[DbConfig, Callable[[], set[str]]]
NO_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def empty_db(backend: Backend, tmp_path: Path) -> Iterator[EmptyDb]:
    with empty_database(backend, tmp_path) as found:
        yield found


def every_read(repo: chatdb.ChatRepository) -> list[object]:
    return [
        repo.get_chat(NO_ID, "u1"),
        repo.list_chats("u1").total,
        repo.get_messages(NO_ID).total,
        repo.get_message(NO_ID),
        repo.get_user_by_username("alice"),
        repo.get_user_by_id(NO_ID),
        repo.list_users().total,
        repo.get_api_key_by_hash("0" * 64),
        repo.list_api_keys("u1"),
        [row for batch in repo.scan_rows("messages") for row in batch],
        sum(repo.count_rows().values()),
        repo.message_time_range(),
        [row for batch in repo.aggregate_messages(AggregateQuery()) for row in batch],
        repo.has_schema(),
    ]


def test_reads_on_a_database_without_tables_are_empty_and_create_nothing(empty_db: EmptyDb) -> None:
    config, tables = empty_db
    with chatdb.create_repository(config) as repo:
        assert every_read(repo) == [None, 0, 0, None, None, None, 0, None, [], [], 0, (None, None), [], False]
    assert tables() == set()


def test_chatdb_export_reads_a_database_without_tables_as_empty(empty_db: EmptyDb) -> None:
    from chatdb import export

    config, tables = empty_db
    with chatdb.create_repository(config) as repo:
        assert export.to_polars(repo, "messages").height == 0
    assert tables() == set()


def test_a_write_creates_the_schema(empty_db: EmptyDb) -> None:
    config, tables = empty_db
    with chatdb.create_repository(config) as repo:
        user = repo.create_user("alice", "hash")
        assert repo.has_schema()
        assert repo.get_user_by_id(user.id) is not None
    assert len(tables()) >= 4  # (MongoDB's collection for API keys is apiKeys)


def test_sqlite_reads_of_a_missing_file_create_neither_file_nor_folder(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "chat.db"
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        assert repo.list_users().total == 0
        assert repo.count_rows() == {"users": 0, "chats": 0, "messages": 0, "api_keys": 0}
        assert not repo.has_schema()
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)
def test_reads_refuse_another_applications_tables(backend: Backend, empty_db: EmptyDb) -> None:
    config, tables = empty_db
    _foreign_messages_table(config)
    with chatdb.create_repository(config) as repo, pytest.raises(SchemaError, match="users, chats"):
        repo.list_users()
    assert tables() == {"messages"}


# -- the CLI ---------------------------------------------------------------------------------------

READING_COMMANDS = [
    ("info",),
    ("info", "--json"),
    ("usage",),
    ("usage", "monthly", "--json"),
    ("export", "--format", "csv"),
    ("users", "list"),
    ("keys", "list", "--user", "alice"),
    ("chats", "list", "--user", "alice"),
]


@pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)
@pytest.mark.parametrize("args", READING_COMMANDS, ids=" ".join)
def test_cli_reads_refuse_a_database_without_tables_and_create_none(
    empty_db: EmptyDb, args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, tables = empty_db
    monkeypatch.chdir(tmp_path)
    line = one_error_line(invoke(config.url, *args))
    assert "no chatdb tables in" in line and "run `chatdb init` to create them" in line
    assert tables() == set()


@pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)
def test_cli_reads_leave_another_applications_database_unchanged(backend: Backend, empty_db: EmptyDb) -> None:
    config, tables = empty_db
    _foreign_messages_table(config)
    line = one_error_line(invoke(config.url, "info"))
    assert "holds messages but not chatdb's users, chats, api_keys" in line
    assert tables() == {"messages"}


@pytest.mark.parametrize("args", READING_COMMANDS, ids=" ".join)
def test_cli_reads_of_a_missing_sqlite_file_name_it_and_create_nothing(
    args: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nonexistent" / "dir" / "chat.db"
    line = one_error_line(invoke(f"sqlite:///{missing}", *args))
    assert f"no database at {missing}" in line and "chatdb demo" in line and "chatdb init" in line
    # ... and without --db, the default ./data/chat.db
    line = one_error_line(invoke(None, *args))
    assert "no database at data/chat.db" in line
    assert list(tmp_path.iterdir()) == []


def test_cli_init_then_reads_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'chat.db'}"
    assert invoke(url, "init").exit_code == 0
    result = invoke(url, "users", "list")
    assert result.exit_code == 0, result.output
    assert "no users" in result.stderr


def _foreign_messages_table(config: DbConfig) -> None:
    """Another application's table named like one of chatdb's."""
    from sqlalchemy import create_engine, text

    with chatdb.create_repository(config) as probe:
        url = probe.engine.url  # type: ignore[attr-defined]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE messages (x INTEGER)"))
    engine.dispose()
