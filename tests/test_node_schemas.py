"""One database with the Node app: the orders and schemas that both programs write.

Shared-write cases on every backend (the ``backend``/``repo`` fixtures), and databases created
from the Node layer's own DDL (tests/fixtures/node-schema-*.sql).
"""

from __future__ import annotations

import sqlite3
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

import chatdb
import chatdb.admin
from chatdb._codec import format_ts
from chatdb.errors import DuplicateUsernameError, SchemaUpgradeError, SchemaWarning, ValidationError
from chatdb.repository import ChatRepository

from .backends import Backend, node_schema_backend
from .cli_support import invoke, ok

TEXT = [{"type": "text", "text": "hi"}]


def set_chat_updated_at(backend: Backend, repo: ChatRepository, chat_id: str, stamp: datetime) -> None:
    """What the Node app does to a chat it writes to: ``updated_at`` = its own clock."""
    if backend.name == "mongodb":
        backend.admin.chats.update_one({"_id": chat_id}, {"$set": {"updatedAt": format_ts(stamp)}})
        return
    engine: Any = repo.engine  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE chats SET updated_at = :at WHERE id = :id"), {"at": format_ts(stamp), "id": chat_id}
        )


def test_a_message_sorts_after_the_chat_s_last_even_when_another_writer_moved_updated_at_back(
    backend: Backend, repo: ChatRepository
) -> None:
    chat = repo.create_chat("u1")
    now = datetime.now(UTC)
    # A writer whose clock is ahead bumps the chat: chatdb's next messages follow it ...
    set_chat_updated_at(backend, repo, chat.id, now + timedelta(seconds=30))
    ahead = [repo.add_message(chat.id, "user", TEXT) for _ in range(2)]
    assert ahead[0].created_at > now + timedelta(seconds=30)
    # ... then one whose clock is behind sets updated_at back, before chatdb's next write.
    set_chat_updated_at(backend, repo, chat.id, now - timedelta(seconds=5))
    after = repo.add_message(chat.id, "assistant", TEXT)
    assert after.created_at == ahead[-1].created_at + timedelta(milliseconds=1)
    page = repo.get_messages(chat.id)
    assert [m.id for m in page.items] == [ahead[0].id, ahead[1].id, after.id]
    assert repo.get_chat(chat.id, "u1").updated_at == after.created_at  # type: ignore[union-attr]


# -- databases the Node layer's DDL created ----------------------------------------------------


@pytest.fixture
def node_mysql(tmp_path: Path) -> Iterator[Backend]:
    """A MySQL/MariaDB database whose tables the Node app's DDL made (TEXT timestamps, title,
    role and content; utf8mb4_general_ci), not upgraded."""
    yield from node_schema_backend("mysql", tmp_path)


def node_rows(repo: Any, chats: int, per_chat: int) -> list[str]:
    """Chats (owner u1) with messages, through import_rows: enough rows for a query planner."""
    ids = [str(uuid.uuid4()) for _ in range(chats)]
    base = datetime(2026, 11, 26, tzinfo=UTC)
    repo.import_rows(
        "chats",
        [
            {
                "id": c,
                "title": "t",
                "session_id": None,
                "user_id": "u1",
                "created_at": format_ts(base),
                "updated_at": format_ts(base),
            }
            for c in ids
        ],
    )
    repo.import_rows(
        "messages",
        [
            {
                "id": str(uuid.uuid4()),
                "chat_id": c,
                "role": "user",
                "content": '[{"type":"text","text":"x"}]',
                "created_at": format_ts(base + timedelta(milliseconds=n)),
                "metadata": None,
            }
            for c in ids
            for n in range(per_chat)
        ],
    )
    return ids


def schema_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, SchemaWarning)]


@pytest.mark.mysql
def test_a_node_created_mysql_schema_opens_warns_once_and_keeps_what_it_can(node_mysql: Backend) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with chatdb.create_repository(node_mysql.config) as repo:
            alice = repo.create_user("alice", "h")
            chat = repo.create_chat(alice.id, "t")
            for _ in range(3):
                repo.add_message(chat.id, "user", TEXT)
            assert repo.get_messages(chat.id).total == 3
        with chatdb.create_repository(node_mysql.config) as again:  # the same database: no repeat
            assert again.get_user_by_username("alice") is not None
    notes = schema_warnings(caught)
    assert len(notes) == 4, notes
    assert any("messages.content is TEXT" in n and "chatdb upgrade" in n for n in notes)
    assert any(
        "users.username uses collation utf8mb4_general_ci" in n and "chatdb upgrade" in n for n in notes
    )
    # The limits themselves: one username whatever the case; lookups stay exact.
    with chatdb.create_repository(node_mysql.config) as repo:
        with pytest.raises(DuplicateUsernameError):
            repo.create_user("Alice", "h")
        assert repo.get_user_by_username("ALICE") is None


@pytest.mark.mysql
def test_content_a_text_column_cannot_hold_is_a_validation_error_before_writing(node_mysql: Backend) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchemaWarning)
        with chatdb.create_repository(node_mysql.config) as repo:
            chat = repo.create_chat("u1")
            fits = [{"type": "text", "text": "é" * 32_000}]  # 64,000+ bytes: fits TEXT
            repo.add_message(chat.id, "user", fits)
            with pytest.raises(ValidationError, match=r"messages\.content.*65,535 bytes.*chatdb upgrade"):
                repo.add_message(chat.id, "user", [{"type": "text", "text": "é" * 33_000}])
            assert repo.get_messages(chat.id).total == 1
            assert repo.get_chat(chat.id, "u1").updated_at == repo.get_messages(chat.id).items[0].created_at  # type: ignore[union-attr]


def explain_page(repo: Any, chat_id: str) -> str:
    """The plan of the (chat_id, created_at) page query, as text."""
    sql = f"SELECT * FROM messages WHERE chat_id = '{chat_id}' ORDER BY created_at, id LIMIT 50"
    with repo.engine.connect() as conn:
        if repo.backend == "sqlite":
            return " | ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        if repo.backend == "mysql":
            conn.exec_driver_sql("ANALYZE TABLE messages").fetchall()
            row = conn.exec_driver_sql("EXPLAIN " + sql).mappings().one()
            return f"type={row['type']} key={row['key']} extra={row['Extra']}"
        conn.exec_driver_sql("ANALYZE messages")
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # tiny tables: which index it can use
        return " | ".join(str(row[0]) for row in conn.exec_driver_sql("EXPLAIN " + sql))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_the_page_query_comes_from_the_chat_index_on_node_schemas_before_and_after_upgrade(
    name: str, tmp_path: Path
) -> None:
    for backend in node_schema_backend(name, tmp_path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SchemaWarning)
            with chatdb.create_repository(backend.config) as repo:
                chat_ids = node_rows(repo, chats=40, per_chat=10)
                before = explain_page(repo, chat_ids[7])
                chatdb.admin.upgrade_schema(repo)
                after = explain_page(repo, chat_ids[7])
        for plan in (before, after):
            assert "idx_messages_chat_created" in plan, plan
        if name == "mysql":
            # Before: TEXT created_at, a prefix index finds the chat's rows, which are then sorted.
            assert "type=ref" in before, before
            assert "type=ref" in after and "filesort" not in after, after
        elif name == "sqlite":
            assert "SCAN" not in before.replace("SCAN messages USING INDEX", ""), before


@pytest.mark.sqlite
def test_node_ties_keep_their_insertion_order_for_the_node_app_after_chatdb_opens_sqlite(
    tmp_path: Path,
) -> None:
    """The Node app orders by created_at alone; chatdb's chat index breaks its ties by rowid."""
    for backend in node_schema_backend("sqlite", tmp_path):
        chat_id = str(uuid.uuid4())
        stamp = "2026-11-26T11:21:40.612Z"
        written = [str(uuid.uuid4()) for _ in range(30)]
        node_query = "SELECT id FROM messages WHERE chat_id = ? ORDER BY created_at"
        with sqlite3.connect(backend.config.sqlite_path) as conn:
            conn.execute("INSERT INTO chats VALUES (?, 't', NULL, 'u1', ?, ?)", (chat_id, stamp, stamp))
            conn.executemany(
                "INSERT INTO messages VALUES (?, ?, 'user', '[]', ?, NULL)",
                [(m, chat_id, stamp) for m in written],
            )
            assert [r[0] for r in conn.execute(node_query, (chat_id,))] == written
        with chatdb.create_repository(backend.config) as repo:
            repo.ensure_schema()
            assert repo.get_messages(chat_id, limit=100).total == 30
        with sqlite3.connect(backend.config.sqlite_path) as conn:
            plan = " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + node_query, (chat_id,)))
            assert "idx_messages_chat_created" in plan
            assert [r[0] for r in conn.execute(node_query, (chat_id,))] == written


@pytest.mark.mysql
def test_upgrade_is_explicit_has_a_dry_run_and_then_keeps_every_promise(node_mysql: Backend) -> None:
    url = node_mysql.config.url
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchemaWarning)
        with chatdb.create_repository(node_mysql.config) as repo:
            alice = repo.create_user("alice", "h")
            chat = repo.create_chat(alice.id, "t")
            first = repo.add_message(chat.id, "user", TEXT)
    dry = ok(url, "upgrade", "--dry-run")
    statements = [line for line in dry.stdout.splitlines() if line]
    assert any(s.startswith("ALTER TABLE messages") and "content LONGTEXT" in s for s in statements), (
        statements
    )
    assert any("username VARCHAR(255)" in s and "_bin" in s for s in statements)
    assert "none run" in dry.stderr
    with chatdb.create_repository(node_mysql.config) as repo, pytest.raises(DuplicateUsernameError):
        repo.create_user("Alice", "h")  # the dry run changed nothing
    applied = ok(url, "upgrade")
    assert [line for line in applied.stdout.splitlines() if line] == statements
    assert "nothing to upgrade" in ok(url, "upgrade", "--dry-run").stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error", SchemaWarning)  # no limits left to warn about
        with chatdb.create_repository(node_mysql.config) as repo:
            upper = repo.create_user("Alice", "h")
            assert repo.get_user_by_username("Alice").id == upper.id  # type: ignore[union-attr]
            big = [{"type": "image", "imageData": "A" * 200_000, "mimeType": "image/png"}]
            second = repo.add_message(chat.id, "assistant", big)
            assert [m.id for m in repo.get_messages(chat.id).items] == [first.id, second.id]
    # The Node app's own queries (mysql2, plain SQL) keep working on the upgraded tables.
    engine = create_engine(node_mysql.admin.url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO messages (id, chat_id, role, content, created_at, metadata) VALUES (:i, :c, 'user', :t, :at, NULL)"
                ),
                {
                    "i": str(uuid.uuid4()),
                    "c": chat.id,
                    "t": '[{"type":"text","text":"from node"}]',
                    "at": "2099-01-01T00:00:00.000Z",
                },
            )
            conn.execute(
                text("UPDATE chats SET updated_at = :at WHERE id = :c"),
                {"at": "2099-01-01T00:00:00.000Z", "c": chat.id},
            )
            rows = conn.execute(
                text("SELECT * FROM messages WHERE chat_id = :c ORDER BY created_at"), {"c": chat.id}
            ).all()
            assert [r.id for r in rows][:2] == [first.id, second.id] and len(rows) == 3
            assert conn.execute(text("SELECT id FROM users WHERE username = 'alice'")).scalar() == alice.id
    finally:
        engine.dispose()


@pytest.mark.mysql
def test_upgrade_refuses_naming_the_rows_it_would_break(node_mysql: Backend) -> None:
    with node_mysql.admin.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO messages VALUES ('m-long-role', 'c1', '"
            + "r" * 40
            + "', '[]', '2026-01-01T00:00:00.000Z', NULL)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SchemaWarning)
        with chatdb.create_repository(node_mysql.config) as repo:
            with pytest.raises(
                SchemaUpgradeError, match=r"messages\.role longer than 32 characters: m-long-role, 40"
            ):
                chatdb.admin.upgrade_schema(repo)
            with pytest.raises(DuplicateUsernameError):  # nothing changed
                repo.create_user("x", "h")
                repo.create_user("X", "h")
    result = invoke(node_mysql.config.url, "upgrade")
    assert result.exit_code == 1 and "m-long-role" in result.output


def test_upgrade_has_nothing_to_do_on_mongodb_and_on_chatdb_s_own_schema(
    backend: Backend, repo: ChatRepository
) -> None:
    repo.ensure_schema()
    assert chatdb.admin.upgrade_schema(repo, dry_run=True).statements == ()


@pytest.mark.sqlite
def test_upgrade_reshapes_an_older_sqlite_chat_index_so_node_ties_keep_their_order(tmp_path: Path) -> None:
    """A file chatdb opened before gave its chat index a trailing id (ties in random id order
    for the Node app); the upgrade, and nothing implicit, rebuilds it as (chat_id, created_at)."""
    path = tmp_path / "older.db"
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        repo.ensure_schema()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX idx_messages_chat_created")
        conn.execute("CREATE INDEX idx_messages_chat_created ON messages (chat_id, created_at, id)")
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        repo.ensure_schema()  # not an upgrade: the index stays as it is
        planned = chatdb.admin.upgrade_schema(repo, dry_run=True)
        assert planned.statements == (
            "DROP INDEX idx_messages_chat_created",
            "CREATE INDEX IF NOT EXISTS idx_messages_chat_created ON messages (chat_id, created_at)",
        )
        assert chatdb.admin.upgrade_schema(repo).applied
        assert chatdb.admin.upgrade_schema(repo, dry_run=True).statements == ()
    with sqlite3.connect(path) as conn:
        columns = [r[2] for r in conn.execute("PRAGMA index_info('idx_messages_chat_created')")]
    assert columns == ["chat_id", "created_at"]
