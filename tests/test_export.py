"""chatdb.export on every backend: frames equal the repository API, filters, bad rows, append,
Parquet datasets, DuckDB joins. Data goes in through the public API or ``import_rows``."""

from __future__ import annotations

import json
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bson.int64 import Int64

from chatdb import export
from chatdb._batches import apply_stage
from chatdb._codec import format_ts
from chatdb.errors import ConfigError, ValidationError
from chatdb.export import ExportWarning
from chatdb.export._flatten import Flattener
from chatdb.models import Message
from chatdb.repository import ChatRepository

from .backends import Backend
from .conftest import ALL_BACKENDS

IMAGE = {"type": "image", "imageData": "iVBORw0KGgo" * 50, "mimeType": "image/png"}
METADATA_KEYS = {
    "cacheCreationInputTokens": "cache_creation_input_tokens",
    "cacheReadInputTokens": "cache_read_input_tokens",
}


def seed(repo: ChatRepository) -> dict[str, Any]:
    """Two users, three chats (one of an owner without a user row), mixed messages."""
    alice = repo.create_user("alice", "secret-hash-alice")
    bob = repo.create_user("bob", "secret-hash-bob")
    c1 = repo.create_chat(alice.id, "Alice's chat")
    c2 = repo.create_chat(bob.id, "Bob's chat")
    c3 = repo.create_chat("system", None)
    repo.set_chat_session(c2.id, "session-42", bob.id)
    repo.add_message(c1.id, "user", [{"type": "text", "text": 'héllo 🙂 "quoted"\nline'}])
    repo.add_message(
        c1.id,
        "assistant",
        [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        {
            "model": "claude-sonnet",
            "inputTokens": 120,
            "outputTokens": 45,
            "totalCostUsd": 0.0125,
            "durationMs": 2300,
            "cacheCreationInputTokens": 10,
            "cacheReadInputTokens": 2000,
            "stopReason": "end_turn",
        },
    )
    repo.add_message(c2.id, "user", [{"type": "text", "text": "look"}, IMAGE])
    repo.add_message(c2.id, "assistant", [{"type": "text", "text": "a picture"}])
    repo.add_message(c3.id, "assistant", [{"type": "text", "text": "x"}], {"model": "m", "totalCostUsd": 1})
    repo.create_api_key(alice.id, "hash-of-key-1", "ck_live_abcd", "laptop")
    key = repo.create_api_key(bob.id, "hash-of-key-2", "ck_live_efgh", "ci")
    repo.revoke_api_key(key.id, bob.id)
    return {"alice": alice, "bob": bob, "chats": [c1, c2, c3]}


def api_messages(repo: ChatRepository, chats: list[Any]) -> list[tuple[Message, str]]:
    found = []
    for chat in chats:
        found += [(m, chat.user_id) for m in repo.get_messages(chat.id, limit=1000).items]
    return sorted(found, key=lambda pair: (pair[0].created_at, pair[0].id))


def expected_message(message: Message, owner: str | None) -> dict[str, Any]:
    meta = message.metadata
    extra = dict(meta.extra) if meta is not None else {}
    texts = [part["text"] for part in message.content if part.get("type") == "text"]
    row: dict[str, Any] = {
        "message_id": message.id,
        "chat_id": message.chat_id,
        "user_id": owner,
        "role": message.role,
        "created_at": message.created_at,
        "model": meta.model if meta else None,
        "input_tokens": meta.input_tokens if meta else None,
        "output_tokens": meta.output_tokens if meta else None,
        "total_cost_usd": meta.total_cost_usd if meta else None,
        "duration_ms": meta.duration_ms if meta else None,
        "content_chars": sum(len(text) for text in texts),
        "content_parts": len(message.content),
        "has_image": any(part.get("type") == "image" for part in message.content),
        "text": "\n".join(texts),
    }
    for key, column in METADATA_KEYS.items():
        row[column] = extra.pop(key, None)
    row["metadata_extra"] = extra or None
    return row


def frame_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    rows = frame.to_dicts()
    for row in rows:
        if row.get("metadata_extra") is not None:
            row["metadata_extra"] = json.loads(row["metadata_extra"])
    return rows


def _message(
    n: int, chat_id: str, stamp: str, metadata: str | None = None, content: str | None = None
) -> dict[str, Any]:
    return {
        "id": f"m-{n:05d}",
        "chat_id": chat_id,
        "role": "assistant",
        "content": content or json.dumps([{"type": "text", "text": f"message {n}"}]),
        "created_at": stamp,
        "metadata": metadata,
    }


def _chat(chat_id: str, user_id: str, stamp: str = "2025-01-01T00:00:00.000Z") -> dict[str, Any]:
    return {
        "id": chat_id,
        "title": chat_id,
        "session_id": None,
        "user_id": user_id,
        "created_at": stamp,
        "updated_at": stamp,
    }


# -- frames equal the repository API ---------------------------------------------------------------


def test_messages_frame_equals_repository_api(repo: ChatRepository) -> None:
    data = seed(repo)
    frame = export.to_polars(repo, include_text=True, include_extra=True)
    expected = [expected_message(m, owner) for m, owner in api_messages(repo, data["chats"])]
    assert frame.columns == export.schema("messages", include_text=True, include_extra=True).names
    assert frame_rows(frame) == expected


def test_messages_schema_types_are_fixed(repo: ChatRepository) -> None:
    seed(repo)
    table = export.read(repo).read_all()
    assert table.schema == export.schema("messages")
    assert table.schema.field("created_at").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("input_tokens").type == pa.int64()
    assert table.schema.field("total_cost_usd").type == pa.float64()
    assert "text" not in table.schema.names and "metadata_extra" not in table.schema.names


def test_chats_users_and_keys_equal_api_without_hashes(repo: ChatRepository) -> None:
    data = seed(repo)
    chats = export.to_polars(repo, "chats").to_dicts()
    api_chats = []
    for created in data["chats"]:
        chat = repo.get_chat(created.id, created.user_id)
        assert chat is not None, created.id
        api_chats.append(chat)
    api_chats.sort(key=lambda c: (c.created_at, c.id))
    assert chats == [
        {
            "chat_id": c.id,
            "user_id": c.user_id,
            "title": c.title,
            "session_id": c.session_id,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
        }
        for c in api_chats
    ]
    users = export.to_polars(repo, "users")
    assert users.to_dicts() == [
        {"user_id": u.id, "username": u.username, "created_at": u.created_at, "updated_at": u.updated_at}
        for u in repo.list_users().items
    ]
    keys = export.to_polars(repo, "api_keys")
    api_keys = sorted(
        repo.list_api_keys(data["alice"].id) + repo.list_api_keys(data["bob"].id),
        key=lambda k: (k.created_at, k.id),
    )
    assert keys.to_dicts() == [
        {
            "key_id": k.id,
            "user_id": k.user_id,
            "name": k.name,
            "key_prefix": k.key_prefix,
            "created_at": k.created_at,
            "last_used_at": k.last_used_at,
            "revoked_at": k.revoked_at,
        }
        for k in api_keys
    ]
    dumped = str(users.rows()) + str(keys.rows())
    assert "secret-hash" not in dumped and "hash-of-key" not in dumped


def test_message_of_deleted_chat_has_null_user(repo: ChatRepository) -> None:
    repo.import_rows("messages", [_message(1, "no-such-chat", "2025-01-01T00:00:00.000Z")])
    frame = export.to_polars(repo)
    assert frame["chat_id"].to_list() == ["no-such-chat"]
    assert frame["user_id"].to_list() == [None]


def test_empty_table_exports_schema_without_rows(repo: ChatRepository, tmp_path: Path) -> None:
    assert export.read(repo).read_all().num_rows == 0
    result = export.to_parquet(repo, tmp_path / "empty.parquet")
    assert (result.rows, result.files, result.skipped_rows) == (0, 1, 0)
    assert pq.read_table(tmp_path / "empty.parquet").schema == export.schema("messages")


# -- filters ----------------------------------------------------------------------------------------


def test_filters_match_a_direct_query(repo: ChatRepository) -> None:
    repo.import_rows("chats", [_chat("c-a", "alice"), _chat("c-b", "bob")])
    start = datetime(2025, 3, 1, tzinfo=UTC)
    rows = [_message(n, "c-a" if n % 3 else "c-b", format_ts(start + timedelta(hours=n))) for n in range(60)]
    repo.import_rows("messages", rows)
    since, until = start + timedelta(hours=10), start + timedelta(hours=40)
    frame = export.to_polars(repo, since=since, until=until, user_id="bob", batch_size=4)
    expected = [
        r["id"]
        for r in rows
        if r["chat_id"] == "c-b" and format_ts(since) <= r["created_at"] < format_ts(until)
    ]
    assert frame["message_id"].to_list() == expected
    assert set(frame["user_id"].to_list()) == {"bob"}
    assert export.to_polars(repo, "chats", user_id="bob")["chat_id"].to_list() == ["c-b"]
    sizes = [batch.num_rows for batch in export.read(repo, batch_size=7)]
    assert sizes == [7] * 8 + [4]


def test_bad_arguments_raise_validation_error(repo: ChatRepository, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        export.read(repo, "secrets")
    with pytest.raises(ValidationError):
        export.read(repo, batch_size=0)
    with pytest.raises(ValidationError):
        export.to_parquet(repo, tmp_path / "x", partition_by="week")
    with pytest.raises(ValidationError):
        export.to_parquet(repo, tmp_path / "x.parquet", "chats", mode="append")
    with pytest.raises(ValidationError):
        export.to_parquet(repo, tmp_path / "x.parquet", colour="red")


# -- consistency while the database changes ------------------------------------------------------------


# An in-memory SQLite database is one connection: no write can run while a scan reads it.
@pytest.mark.parametrize(
    "backend", [p for p in ALL_BACKENDS if p.values[0] != "sqlite_memory"], indirect=True
)
def test_chat_deleted_mid_export_leaves_no_orphans(repo: ChatRepository, backend: Backend) -> None:
    chats = [repo.create_chat(f"user-{n}", f"chat {n}") for n in range(3)]
    for round_ in range(10):
        for chat in chats:
            repo.add_message(chat.id, "user", [{"type": "text", "text": f"r{round_}"}])
    reader = export.read(repo, batch_size=5)
    first = reader.read_next_batch()
    assert repo.delete_chat(chats[1].id, chats[1].user_id)
    rest = [batch for batch in reader]
    exported = pa.Table.from_batches([first, *rest])
    assert exported.column("user_id").null_count == 0
    survivors = export.to_polars(repo)
    assert chats[1].id not in survivors["chat_id"].to_list()
    assert survivors.height == 20


# -- bad data ----------------------------------------------------------------------------------------------


BAD_ROWS: list[tuple[str, str | None, dict[str, Any]]] = [
    # (metadata, content, expected fields) -- stored exactly as another program might write them
    ('{"inputTokens":"12","outputTokens":7}', None, {"input_tokens": 12, "output_tokens": 7}),
    ('{"totalCostUsd":"0.5","model":5}', None, {"total_cost_usd": 0.5, "model": None}),
    (
        '{"inputTokens":12.5,"durationMs":-3,"outputTokens":true}',
        None,
        {"input_tokens": None, "duration_ms": None, "output_tokens": None},
    ),
    ("{not json", None, {"model": None, "input_tokens": None}),
    ('["a", "list"]', None, {"model": None}),
    (
        '{"model":"ok","inputTokens":3}',
        "[{not json",
        {"model": "ok", "input_tokens": 3, "content_parts": None, "content_chars": None, "has_image": None},
    ),
    ('{"inputTokens":"abc"}', None, {"input_tokens": None}),
    ('{"totalCostUsd":-0.5,"durationMs":-1}', None, {"total_cost_usd": None, "duration_ms": None}),
]
# Bad rows the MongoDB test server cannot store (integers beyond 64 bits, infinity): for the
# SQL-level tests.
BAD_BEYOND_MONGODB: list[tuple[str, str | None, dict[str, Any]]] = [
    ('{"outputTokens":9223372036854775808}', None, {"output_tokens": None}),
    ('{"totalCostUsd":1e400}', None, {"total_cost_usd": None}),
]


def test_bad_rows_export_with_nulls_and_are_counted(repo: ChatRepository, tmp_path: Path) -> None:
    repo.import_rows("chats", [_chat("c-1", "alice")])
    good = _message(0, "c-1", "2025-01-01T00:00:00.000Z", '{"model":"m","inputTokens":12.0}')
    rows = [good] + [
        _message(n, "c-1", f"2025-01-01T00:00:0{n}.000Z", metadata, content)
        for n, (metadata, content, _) in enumerate(BAD_ROWS, start=1)
    ]
    repo.import_rows("messages", rows)
    with pytest.warns(ExportWarning, match=f"{len(BAD_ROWS)} of {len(rows)} messages rows"):
        result = export.to_parquet(repo, tmp_path / "m.parquet")
    assert (result.rows, result.skipped_rows) == (len(rows), len(BAD_ROWS))
    frame = pl.read_parquet(tmp_path / "m.parquet")
    assert frame.row(0, named=True)["input_tokens"] == 12 and frame.row(0, named=True)["model"] == "m"
    for index, (_, _, fields) in enumerate(BAD_ROWS, start=1):
        row = frame.row(index, named=True)
        assert {key: row[key] for key in fields} == fields, BAD_ROWS[index - 1]


def test_bad_timestamp_becomes_null(repo: ChatRepository) -> None:
    repo.import_rows("chats", [_chat("c-1", "alice")])
    repo.import_rows("messages", [_message(1, "c-1", "yesterday-ish")])
    with pytest.warns(ExportWarning, match="1 of 1"):
        frame = export.to_polars(repo)
    assert frame["created_at"].to_list() == [None]


@pytest.mark.parametrize(
    "stored, exported",
    [
        ("2025-01-01T00:00:00.123999Z", datetime(2025, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)),
        ("2025-01-01T02:00:00.5+02:00", datetime(2025, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("1969-12-31T23:59:59.9995Z", datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("9999-12-31T23:59:59.9999Z", datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
    ],
)
def test_timestamps_are_exported_in_utc_rounded_down_to_the_millisecond(
    repo: ChatRepository, stored: str, exported: datetime
) -> None:
    repo.import_rows("chats", [_chat("c-1", "alice")])
    repo.import_rows("messages", [_message(1, "c-1", stored)])
    assert export.to_polars(repo)["created_at"].to_list() == [exported]


def test_large_image_is_counted_not_decoded(repo: ChatRepository) -> None:
    chat = repo.create_chat("alice", "pictures")
    big = {"type": "image", "imageData": "A" * 10_000_000, "mimeType": "image/png"}
    repo.add_message(chat.id, "user", [{"type": "text", "text": "see"}, big])
    frame = export.to_polars(repo, include_text=True)
    assert frame.select("content_chars", "content_parts", "has_image", "text").row(0) == (3, 2, True, "see")


# -- append mode -----------------------------------------------------------------------------------------


def _same_millisecond_batches() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stamp = "2025-06-01T12:00:00.000Z"
    first = [_message(n, "c-1", stamp) for n in (1, 3, 5)]
    # arrive later but share the newest exported millisecond; ids sort after and before the last
    second = [_message(n, "c-1", stamp) for n in (7, 9)] + [_message(11, "c-1", "2025-06-01T12:00:00.001Z")]
    return first, second


@pytest.mark.parametrize("target", ["file.parquet", "dataset", "by_day"])
def test_parquet_append_neither_duplicates_nor_skips(
    repo: ChatRepository, tmp_path: Path, target: str
) -> None:
    repo.import_rows("chats", [_chat("c-1", "alice")])
    first, second = _same_millisecond_batches()
    path = tmp_path / target
    partition = "day" if target == "by_day" else None
    repo.import_rows("messages", first)
    assert export.to_parquet(repo, path, partition_by=partition, mode="append").rows == 3
    repo.import_rows("messages", second)
    assert export.to_parquet(repo, path, partition_by=partition, mode="append").rows == 3
    assert export.to_parquet(repo, path, partition_by=partition, mode="append").rows == 0
    source = str(path) if target.endswith(".parquet") else str(path / "**" / "*.parquet")
    relation = duckdb.sql(f"SELECT message_id FROM read_parquet('{source}') ORDER BY ALL")
    assert relation is not None
    ids = relation.fetchall()
    assert [i for (i,) in ids] == sorted(r["id"] for r in first + second)


def test_duckdb_append_neither_duplicates_nor_skips(repo: ChatRepository, tmp_path: Path) -> None:
    repo.import_rows("chats", [_chat("c-1", "alice")])
    first, second = _same_millisecond_batches()
    repo.import_rows("messages", first)
    path = tmp_path / "analytics.duckdb"
    export.to_duckdb(repo, path, mode="append").close()
    repo.import_rows("messages", second)
    con = export.to_duckdb(repo, str(path), mode="append")
    ids = [
        i for (i,) in con.sql("SELECT message_id FROM messages ORDER BY created_at, message_id").fetchall()
    ]
    assert ids == sorted(r["id"] for r in first + second)
    assert con.sql("SELECT count(*) FROM chats").fetchall() == [(1,)]
    con.close()


# -- Parquet and DuckDB -------------------------------------------------------------------------------


@pytest.mark.parametrize("partition_by", ["month", "day", "user_id"])
def test_partitioned_parquet_reads_back_equal(
    repo: ChatRepository, tmp_path: Path, partition_by: str
) -> None:
    data = seed(repo)
    repo.import_rows(
        "messages",
        [
            _message(1, data["chats"][0].id, "2024-12-31T23:59:59.999Z"),
            _message(2, "gone-chat", "2025-02-01T00:00:00.000Z"),  # null user_id: the hive default
        ],
    )
    path = tmp_path / "dataset"
    result = export.to_parquet(repo, path, partition_by=partition_by)
    original = export.to_polars(repo)
    assert result.rows == original.height and result.files >= 2
    assert list(path.glob(f"{partition_by}=*"))
    columns = original.columns
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true)")
    assert relation is not None
    in_duckdb = relation.pl().select(columns)
    in_polars = pl.read_parquet(path, hive_partitioning=True).select(columns)
    for frame in (in_duckdb, in_polars):
        assert frame.sort("created_at", "message_id").to_dicts() == original.to_dicts()


def test_parquet_replace_is_atomic_over_previous_export(repo: ChatRepository, tmp_path: Path) -> None:
    seed(repo)
    path = tmp_path / "out"
    export.to_parquet(repo, path, partition_by="month")
    export.to_parquet(repo, path, partition_by="month")
    assert pl.read_parquet(path, hive_partitioning=True).height == 5
    (path / "notes.txt").write_text("mine")
    with pytest.raises(ValidationError, match=r"notes\.txt"):
        export.to_parquet(repo, path, partition_by="month")


def test_to_duckdb_tables_join(repo: ChatRepository) -> None:
    seed(repo)
    con = export.to_duckdb(repo)
    rows = con.sql(
        "SELECT u.username, c.title, count(*) AS messages, sum(m.total_cost_usd) AS cost "
        "FROM messages m JOIN chats c USING (chat_id) JOIN users u ON u.user_id = c.user_id "
        "GROUP BY ALL ORDER BY u.username"
    ).fetchall()
    assert rows == [("alice", "Alice's chat", 2, 0.0125), ("bob", "Bob's chat", 2, None)]
    assert con.sql("SELECT typeof(created_at), typeof(input_tokens) FROM messages LIMIT 1").fetchall() == [
        ("TIMESTAMP WITH TIME ZONE", "BIGINT")
    ]


def _exported_then_changed(repo: ChatRepository, tmp_path: Path) -> Path:
    """A DuckDB export of the seed data (2 users), after which the database gains a user."""
    seed(repo)
    path = tmp_path / "export.duckdb"
    export.to_duckdb(repo, path).close()
    repo.create_user("carol", "hash")
    return path


def test_to_duckdb_checks_every_option_before_touching_the_database(
    repo: ChatRepository, tmp_path: Path
) -> None:
    """Users are loaded first: a bad messages option must not leave them replaced and the
    messages not, nor create a database file."""
    path = _exported_then_changed(repo, tmp_path)
    for bad in ({"sinse": datetime(2025, 1, 1, tzinfo=UTC)}, {"since": "yesterday"}, {"batch_size": 0}):
        with pytest.raises(ValidationError):
            export.to_duckdb(repo, path, **bad)
        with duckdb.connect(str(path)) as con:
            assert con.sql("SELECT count(*) FROM users").fetchall() == [(2,)], bad
    with pytest.raises(ValidationError, match="sinse"):
        export.to_duckdb(repo, tmp_path / "new.duckdb", sinse=None)
    assert not (tmp_path / "new.duckdb").exists()


def test_to_duckdb_append_to_a_table_of_another_shape_fails_cleanly_and_changes_nothing(
    repo: ChatRepository, tmp_path: Path
) -> None:
    path = _exported_then_changed(repo, tmp_path)
    with duckdb.connect(str(path)) as con:
        con.execute("ALTER TABLE messages DROP COLUMN has_image")
    with pytest.raises(ValidationError, match="mode='replace'"):
        export.to_duckdb(repo, path, mode="append")
    # Text columns added since the table was made are another shape too.
    export.to_duckdb(repo, path).close()
    with pytest.raises(ValidationError, match="other columns"):
        export.to_duckdb(repo, path, mode="append", include_text=True)
    with duckdb.connect(str(path)) as con:
        assert con.sql("SELECT count(*) FROM users").fetchall() == [(3,)]
        assert "text" not in [row[0] for row in con.sql("DESCRIBE messages").fetchall()]


def test_to_duckdb_loads_all_tables_or_none(repo: ChatRepository, tmp_path: Path) -> None:
    """Users and chats load before messages: when the messages load fails, they stay as they
    were, so old messages never meet a newer chats table."""
    path = _exported_then_changed(repo, tmp_path)
    with duckdb.connect(str(path)) as con:
        # Same columns, but a constraint the new messages break: the insert fails mid-load.
        con.execute("CREATE OR REPLACE TABLE messages AS SELECT * FROM messages LIMIT 0")
        con.execute("CREATE UNIQUE INDEX one_role ON messages (role)")
    with pytest.raises(duckdb.ConstraintException):
        export.to_duckdb(repo, path, mode="append")
    with duckdb.connect(str(path)) as con:
        assert con.sql("SELECT count(*) FROM users").fetchall() == [(2,)]
        assert con.sql("SELECT count(*) FROM messages").fetchall() == [(0,)]


@pytest.mark.parametrize(
    "name, first, then",
    [
        ("m.parquet", {}, {"include_text": True}),
        ("m.parquet", {}, {"include_extra": True}),
        ("ds", {"partition_by": "month"}, {"partition_by": "day"}),
        ("ds", {"partition_by": "month"}, {}),
        ("ds", {}, {"partition_by": "user_id"}),
        ("ds", {"partition_by": "user_id"}, {"partition_by": "month"}),
        ("ds", {"partition_by": "month"}, {"partition_by": "month", "include_text": True}),
    ],
)
def test_parquet_append_to_an_export_of_another_shape_is_refused_before_writing(
    repo: ChatRepository, tmp_path: Path, name: str, first: dict[str, Any], then: dict[str, Any]
) -> None:
    """New files of other columns or another partitioning would not read back with the old."""
    seed(repo)
    path = tmp_path / name
    export.to_parquet(repo, path, **first)
    before = sorted((str(f), f.stat().st_size) for f in tmp_path.rglob("*"))
    alice = repo.get_user_by_username("alice")
    assert alice is not None
    chat = repo.list_chats(alice.id).items[0]
    repo.add_message(chat.id, "user", [{"type": "text", "text": "later"}])
    with pytest.raises(ValidationError, match="mode='replace'"):
        export.to_parquet(repo, path, mode="append", **then)
    assert sorted((str(f), f.stat().st_size) for f in tmp_path.rglob("*")) == before
    assert export.to_parquet(repo, path, mode="append", **first).rows == 1  # the same options still work


def test_compression_and_option_types_are_checked(repo: ChatRepository, tmp_path: Path) -> None:
    seed(repo)
    with pytest.raises(ValidationError, match="compression"):
        export.to_parquet(repo, tmp_path / "m.parquet", compression="nope")
    assert not (tmp_path / "m.parquet").exists()
    assert export.to_parquet(repo, tmp_path / "m.parquet", compression="none").rows == 5
    for bad in ({"user_id": 5}, {"include_text": "no"}, {"include_extra": 1}):
        with pytest.raises(ValidationError):
            export.to_polars(repo, **bad)


@pytest.mark.parametrize("sink", ["to_polars", "to_parquet", "to_duckdb", "to_ibis"])
def test_an_unknown_option_is_a_validation_error_in_every_sink(
    repo: ChatRepository, tmp_path: Path, sink: str
) -> None:
    call: dict[str, Any] = {
        "to_polars": lambda: export.to_polars(repo, sinse=None),
        "to_parquet": lambda: export.to_parquet(repo, tmp_path / "m.parquet", sinse=None),
        "to_duckdb": lambda: export.to_duckdb(repo, sinse=None),
        "to_ibis": lambda: export.to_ibis(repo, sinse=None),
    }
    with pytest.raises(ValidationError, match=r"unknown export option.*sinse"):
        call[sink]()
    assert not (tmp_path / "m.parquet").exists()


def test_to_ibis_returns_table_over_duckdb(repo: ChatRepository) -> None:
    seed(repo)
    table = export.to_ibis(repo)
    assert table.count().execute() == 5
    assert table.group_by("role").aggregate(n=table.count()).order_by("role").execute()["n"].tolist() == [
        3,
        2,
    ]


# -- dependencies and pure conversion (no database) ---------------------------------------------------


def test_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import chatdb

    repo = chatdb.create_repository("sqlite:///:memory:")
    monkeypatch.setitem(sys.modules, "ibis", None)
    with pytest.raises(ConfigError, match=r"pip install 'chatdb\[ibis\]'"):
        export.to_ibis(repo)
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(ConfigError, match=r"pip install 'chatdb\[analytics\]'"):
        export.read(repo)


def test_importing_chatdb_does_not_import_analytics_stack() -> None:
    import subprocess

    code = (
        "import chatdb, chatdb.export, sys; print(sorted({'pyarrow', 'polars', 'duckdb'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_decoded_values_convert_like_json_text() -> None:
    """MongoDB yields content/metadata decoded; they must export exactly like the JSON text."""
    columns = ("id", "chat_id", "user_id", "role", "content", "created_at", "metadata")
    parts = [{"type": "text", "text": "hi 🙂"}, IMAGE]
    meta = {"model": "m", "inputTokens": 5, "other": [1]}
    as_text = ("m1", "c1", "u1", "user", json.dumps(parts), "2025-01-01T00:00:00.000Z", json.dumps(meta))
    decoded = ("m1", "c1", "u1", "user", parts, datetime(2025, 1, 1, tzinfo=UTC), meta)
    flattener = Flattener("messages", columns, include_text=True, include_extra=True)
    try:
        results = [flattener.convert(flattener.to_arrow([row])) for row in (as_text, decoded)]
    finally:
        flattener.close()
    assert results[0][0].to_pylist() == results[1][0].to_pylist()
    assert results[0][1] == results[1][1] == 0


def test_warning_is_silent_for_clean_data(repo: ChatRepository) -> None:
    seed(repo)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export.read(repo).read_all()


CLEAN_METADATA = [
    None,
    "null",
    "{}",
    '{"model":"claude-sonnet-4-5","inputTokens":10,"outputTokens":0,"totalCostUsd":0.0012,"durationMs":5}',
    '{"model":null,"inputTokens":null,"totalCostUsd":1}',
    '{"cacheCreationInputTokens":7,"cacheReadInputTokens":9223372036854775807,"extra":{"a":[1]}}',
    '{"totalCostUsd":1e-7,"durationMs":0,"model":"ünïcode 🙂"}',
]


@pytest.mark.parametrize("staged", [False, True])
def test_fast_and_exact_conversions_agree_on_every_clean_row(staged: bool) -> None:
    """Clean batches take the fast query; it must give exactly what the exact query gives."""
    columns = ("id", "chat_id", "user_id", "role", "content", "created_at", "metadata")
    contents = [json.dumps([{"type": "text", "text": 'a\\nb "q" 🙂'}]), json.dumps([IMAGE]), "[]"]
    rows = [
        (f"m{n}", "c1", None if n % 4 == 0 else "u1", "assistant", contents[n % 3],
         f"2025-01-01T00:00:0{n}.12{n}Z", metadata)
        for n, metadata in enumerate(CLEAN_METADATA)
    ]  # fmt: skip
    flattener = Flattener("messages", columns, include_text=True, include_extra=False)
    try:
        source = flattener.to_arrow(rows)
        con = flattener._connection()
        if staged:
            assert flattener.stage is not None
            source = apply_stage(con, flattener.stage, source)
        fast, exact = flattener._queries[staged]
        assert fast is not None
        quick = flattener._fast(con, fast, source, staged)
        con.register("batch", source)
        slow = con.sql(exact).to_arrow_table()
    finally:
        flattener.close()
    assert quick is not None, "every row is clean: the fast query must take the batch"
    assert slow.column("_bad").to_pylist() == [False] * len(rows)
    assert quick.to_pylist() == slow.drop_columns(["_bad"]).cast(flattener.schema).to_pylist()


@pytest.mark.parametrize("metadata, _content, _expected", BAD_ROWS + BAD_BEYOND_MONGODB)
def test_the_fast_query_never_passes_a_row_with_unexpected_types(
    metadata: str, _content: str | None, _expected: dict[str, Any]
) -> None:
    columns = ("id", "chat_id", "user_id", "role", "content", "created_at", "metadata")
    row = ("m1", "c1", "u1", "user", _content or "[]", "2025-01-01T00:00:00.000Z", metadata)
    flattener = Flattener("messages", columns, include_text=False, include_extra=False)
    try:
        fast, _ = flattener._queries[False]
        assert fast is not None
        quick = flattener._fast(flattener._connection(), fast, flattener.to_arrow([row]), False)
    finally:
        flattener.close()
    assert quick is None


def test_the_text_stage_reads_invalid_json_as_null_and_passes_other_columns() -> None:
    flattener = Flattener("messages", ("id", "content", "created_at"), include_text=True, include_extra=False)
    assert flattener.stage is not None
    source = pa.table(
        {
            "id": ["a", "b"],
            "content": [json.dumps([{"type": "text", "text": "hé"}]), "{bad"],
            "created_at": ["2025-01-01T00:00:00.123Z", "yesterday"],
        }
    )
    try:
        staged = apply_stage(flattener._connection(), flattener.stage, source)
    finally:
        flattener.close()
    assert staged.column("id").to_pylist() == ["a", "b"]
    assert staged.column("content_chars").to_pylist() == [2, None]
    assert staged.column("content_bad").to_pylist() == [False, True]
    assert staged.column("text").to_pylist() == ["hé", None]
    assert staged.column("created_bad").to_pylist() == [False, True]
    assert staged.column("created_ts")[0].as_py() == 1735689600123  # ms since the epoch
    assert "content" not in staged.column_names and "created_at" not in staged.column_names


DECODED_CONTENTS = [
    [{"type": "text", "text": "hi 🙂 e\u0301"}],
    [{"type": "text", "text": "a\nb"}, {"type": "text", "text": "c"}, IMAGE],
    [{"type": "image", "mimeType": "image/png"}, {"type": "text"}, {"type": "text", "text": None}],
    [{"type": "tool_use", "text": "ignored", "input": {"x": 1}}],
    [],
    None,
]


@pytest.mark.parametrize("include_text", [False, True])
def test_decoded_content_is_staged_exactly_as_its_json_would_be(include_text: bool) -> None:
    """MongoDB's decoded content is staged in Python, skipping JSON: the same values as
    DuckDB's stage over the same content as JSON text."""
    from chatdb.export._flatten import decoded_stage

    stamps = [f"2025-01-0{n + 1}T10:00:00.{n:03d}Z" for n in range(len(DECODED_CONTENTS))]
    stamps[1], stamps[2] = "2025-01-02T12:00:00.5+02:00", "1969-12-31T23:59:59.999-0030"  # offsets
    flattener = Flattener(
        "messages", ("content", "created_at"), include_text=include_text, include_extra=False
    )
    assert flattener.stage is not None
    as_text = pa.table(
        {
            "content": pa.array(
                [None if c is None else json.dumps(c) for c in DECODED_CONTENTS], pa.large_string()
            ),
            "created_at": stamps,
        }
    )
    try:
        expected = apply_stage(flattener._connection(), flattener.stage, as_text)
    finally:
        flattener.close()
    staged = decoded_stage(DECODED_CONTENTS, stamps, include_text=include_text)
    assert staged is not None
    assert staged.column_names == expected.column_names
    for name in staged.column_names:
        assert staged.column(name).to_pylist() == expected.column(name).to_pylist(), name


@pytest.mark.parametrize(
    "content, stamp",
    [
        ({"type": "text", "text": "not a list"}, "2025-01-01T00:00:00.000Z"),
        ("[]", "2025-01-01T00:00:00.000Z"),
        (["a string part"], "2025-01-01T00:00:00.000Z"),
        ([{"type": 5, "text": "x"}], "2025-01-01T00:00:00.000Z"),
        ([{"type": "text", "text": 5}], "2025-01-01T00:00:00.000Z"),
        ([{"text": "no type"}], "2025-01-01T00:00:00.000Z"),
        ([{"type": "text", "text": "x"}], "2025-01-01 00:00:00"),
        ([{"type": "text", "text": "x"}], "yesterday"),
    ],
)
def test_decoded_content_that_is_not_plain_takes_the_json_way(content: Any, stamp: str) -> None:
    from chatdb.export._flatten import decoded_stage

    assert (
        decoded_stage(
            [[{"type": "text", "text": "ok"}], content],
            ["2025-01-01T00:00:00.000Z", stamp],
            include_text=True,
        )
        is None
    )


def test_a_scan_mixing_plain_and_other_decoded_chunks_exports_like_json(tmp_path: Path) -> None:
    """Fetched chunks staged in Python and chunks left to DuckDB meet in one stream."""
    from chatdb.export._stream import _ArrowChunks, _Staged

    columns = ("id", "chat_id", "user_id", "role", "content", "created_at", "metadata")

    def row(n: int, content: Any) -> tuple[Any, ...]:
        return (f"m{n}", "c1", "u1", "user", content, f"2025-01-01T00:00:{n:02d}.000Z", {"inputTokens": n})

    plain = [{"type": "text", "text": "plain"}]
    chunks = [[row(0, plain), row(1, plain)], [row(2, json.dumps(plain))], [row(3, plain)]]
    flattener = Flattener("messages", columns, include_text=True, include_extra=False)
    assert flattener.stage is not None
    try:
        tables = list(_Staged(_ArrowChunks(iter(chunks), flattener.to_arrow, 1000), flattener.stage))
        assert [table.num_rows for table in tables] == [2, 1, 1]
        mixed = pa.concat_tables([flattener.convert(table)[0] for table in tables])
        text_rows = [
            (*r[:4], json.dumps(r[4]) if not isinstance(r[4], str) else r[4], r[5], json.dumps(r[6]))
            for chunk in chunks
            for r in chunk
        ]
        expected, skipped = flattener.convert(flattener.to_arrow(text_rows))
    finally:
        flattener.close()
    assert skipped == 0
    assert mixed.to_pylist() == expected.to_pylist()


DECODED_METADATA = [
    None,
    {},
    {
        "model": "claude-sonnet-4-5",
        "inputTokens": 10,
        "outputTokens": 0,
        "totalCostUsd": 0.0012,
        "durationMs": 5,
    },
    {"model": None, "inputTokens": None, "totalCostUsd": 1, "other": {"nested": [1, "x"]}},
    {"cacheCreationInputTokens": Int64(7), "cacheReadInputTokens": 2**63 - 1, "durationMs": 0},
    {"totalCostUsd": -0.0, "outputTokens": 2**53 + 1, "model": "ünïcode 🙂"},
    {"totalCostUsd": 2**63 - 1, "inputTokens": Int64(2**40)},
]


def _decoded_and_text_rows(metadata: list[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    parts = [{"type": "text", "text": "hi 🙂"}]
    decoded = [
        (f"m{n}", "c1", "u1", "assistant", parts, f"2025-01-01T00:00:0{n}.000Z", meta)
        for n, meta in enumerate(metadata)
    ]
    as_text = [(*row[:4], json.dumps(row[4]), row[5], json.dumps(row[6])) for row in decoded]
    return decoded, as_text


@pytest.mark.parametrize("include_text", [False, True])
def test_decoded_metadata_converts_exactly_as_its_json_would(include_text: bool) -> None:
    """MongoDB's decoded metadata skips JSON and DuckDB: the same values as its JSON text."""
    columns = ("id", "chat_id", "user_id", "role", "content", "created_at", "metadata")
    decoded, as_text = _decoded_and_text_rows(DECODED_METADATA)
    flattener = Flattener("messages", columns, include_text=include_text, include_extra=False)
    try:
        source = flattener.to_arrow(decoded)
        assert "metadata" not in source.column_names, "plain decoded metadata is read in Python"
        got = flattener.convert(source)
        expected = flattener.convert(flattener.to_arrow(as_text))
    finally:
        flattener.close()
    assert got[0].schema == expected[0].schema
    assert got[0].to_pylist() == expected[0].to_pylist()
    assert got[1] == expected[1] == 0


@pytest.mark.parametrize(
    "meta",
    [
        "{}",  # text: another program's
        ["a", "list"],
        {"inputTokens": "12"},
        {"inputTokens": 12.0},
        {"inputTokens": -1},
        {"outputTokens": True},
        {"durationMs": 2**63},
        {"totalCostUsd": -0.5},
        {"totalCostUsd": float("nan")},
        {"totalCostUsd": 2**63},
        {"totalCostUsd": False},
        {"model": 5},
        {"model": {"name": "m"}},
    ],
)
def test_decoded_metadata_that_is_not_plain_takes_the_json_way(meta: Any) -> None:
    from chatdb.export._flatten import decoded_metadata

    assert decoded_metadata([{"model": "ok"}, meta]) is None
    columns = ("id", "chat_id", "user_id", "role", "content", "created_at", "metadata")
    decoded, as_text = _decoded_and_text_rows([{"model": "ok"}, meta])
    if isinstance(meta, str):
        as_text[1] = (*as_text[1][:6], meta)
    flattener = Flattener("messages", columns, include_text=False, include_extra=False)
    try:
        source = flattener.to_arrow(decoded)
        assert "metadata" in source.column_names
        got = flattener.convert(source)
        expected = flattener.convert(flattener.to_arrow(as_text))
    finally:
        flattener.close()
    assert got[0].to_pylist() == expected[0].to_pylist()
    assert got[1] == expected[1]
