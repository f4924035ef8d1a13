"""``chatdb export``: every format, filters, partitions and appends, checked against straight SQL."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from chatdb.repository import ChatRepository

from .backends import Backend
from .cli_support import CLI_BACKENDS, invoke, ok, one_error_line, sql_rows

on_backends = pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)
on_sqlite = pytest.mark.parametrize("backend", [CLI_BACKENDS[0]], indirect=True)
TABLES = ("messages", "chats", "users", "api_keys")


def seed(repo: ChatRepository) -> dict[str, str]:
    ids = {}
    for name in ("alice", "bob"):
        user = repo.create_user(name, "scrypt$secret-hash")
        ids[name] = user.id
        repo.create_api_key(user.id, f"{name:0<64}", f"cck_{name[:8]}", "laptop")
        for c in range(2):
            chat = repo.create_chat(user.id, f"{name} {c}")
            for m in range(3):
                repo.add_message(chat.id, "user", [{"type": "text", "text": f"q{m} ✓"}])
                repo.add_message(
                    chat.id,
                    "assistant",
                    [{"type": "text", "text": f"a{m}"}],
                    {
                        "model": "claude-sonnet-4",
                        "inputTokens": m + 1,
                        "outputTokens": 10,
                        "totalCostUsd": 0.01,
                        "durationMs": 100,
                    },
                )
    return ids


def parquet_ids(path: Path) -> list[str]:
    pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT message_id FROM read_parquet(?, hive_partitioning = true) ORDER BY message_id", [pattern]
        ).fetchall()
    return [r[0] for r in rows]


def sql_ids(backend: Backend, where: str = "", **params: Any) -> list[str]:
    query = f"SELECT m.id FROM messages m JOIN chats c ON c.id = m.chat_id {where} ORDER BY m.id"
    return [r["id"] for r in sql_rows(backend, query, **params)]


@on_backends
def test_parquet_export_writes_every_table_a_manifest_and_a_summary(
    backend: Backend, repo: ChatRepository, tmp_path: Path
) -> None:
    seed(repo)
    out = tmp_path / "export"
    line = ok(backend.url, "export", "--out", str(out)).stdout
    counts = {t: sql_rows(backend, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in TABLES}
    assert line.startswith("exported messages 24, chats 4, users 2, api_keys 2 rows to ")
    assert "0 rows skipped as unreadable" in line
    assert parquet_ids(out / "messages.parquet") == sql_ids(backend)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {t: manifest["tables"][t]["rows"] for t in TABLES} == counts
    assert manifest["tables"]["messages"]["files"] == ["messages.parquet"]
    span = sql_rows(backend, "SELECT min(created_at) AS lo, max(created_at) AS hi FROM messages")[0]
    assert manifest["time_range"] == {"first": span["lo"], "last": span["hi"]}
    assert manifest["chatdb_version"] and manifest["format"] == "parquet"
    users = pl.read_parquet(out / "users.parquet")
    assert "password_hash" not in users.columns and sorted(users["username"]) == ["alice", "bob"]
    assert "secret-hash" not in (out / "users.parquet").read_bytes().decode("latin-1")


@on_backends
def test_partitioned_parquet_reads_back_in_duckdb_and_polars(
    backend: Backend, repo: ChatRepository, tmp_path: Path
) -> None:
    seed(repo)
    out = tmp_path / "export"
    ok(backend.url, "export", "--out", str(out), "--tables", "messages", "--partition-by", "month")
    assert any(p.name.startswith("month=") for p in (out / "messages").iterdir())
    assert parquet_ids(out / "messages") == sql_ids(backend)
    frame = pl.read_parquet(str(out / "messages" / "**" / "*.parquet"), hive_partitioning=True)
    assert sorted(frame["message_id"]) == sql_ids(backend)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["tables"]) == ["messages"]
    assert all(f.startswith("messages/month=") for f in manifest["tables"]["messages"]["files"])


@on_backends
def test_csv_and_ndjson_hold_the_stored_values(
    backend: Backend, repo: ChatRepository, tmp_path: Path
) -> None:
    seed(repo)
    stored = {r["id"]: r for r in sql_rows(backend, "SELECT id, created_at, metadata FROM messages")}
    ok(backend.url, "export", "--format", "csv", "--out", str(tmp_path / "csv"), "--include-text")
    with (tmp_path / "csv" / "messages.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    stamps = {i: r["created_at"] for i, r in stored.items()}
    assert {r["message_id"]: r["created_at"] for r in rows} == stamps
    assert {r["text"] for r in rows} >= {"q0 ✓", "a2"}
    ok(
        backend.url,
        "export",
        "--format",
        "ndjson",
        "--out",
        str(tmp_path / "nd"),
        "--tables",
        "messages,users",
    )
    lines = [json.loads(x) for x in (tmp_path / "nd" / "messages.ndjson").read_text().splitlines()]
    assert {x["message_id"]: x["created_at"] for x in lines} == stamps
    tokens = sum(x["input_tokens"] or 0 for x in lines)
    assert tokens == sum(json.loads(r["metadata"])["inputTokens"] for r in stored.values() if r["metadata"])
    assert "text" not in lines[0]  # text only with --include-text
    users = [json.loads(x) for x in (tmp_path / "nd" / "users.ndjson").read_text().splitlines()]
    assert sorted(u["username"] for u in users) == ["alice", "bob"] and "password_hash" not in users[0]
    manifest = json.loads((tmp_path / "nd" / "manifest.json").read_text())
    assert manifest["tables"]["messages"] == {"files": ["messages.ndjson"], "rows": 24, "skipped_rows": 0}


@on_backends
def test_filters_match_sql(backend: Backend, repo: ChatRepository, tmp_path: Path) -> None:
    ids = seed(repo)
    times = sorted(r["created_at"] for r in sql_rows(backend, "SELECT created_at FROM messages"))
    since, until = times[5], times[17]
    args = ("export", "--tables", "messages", "--since", since, "--until", until, "--user", "bob")
    ok(backend.url, *args, "--out", str(tmp_path / "f"))
    expected = sql_ids(
        backend,
        "WHERE m.created_at >= :s AND m.created_at < :u AND c.user_id = :o",
        s=since,
        u=until,
        o=ids["bob"],
    )
    assert parquet_ids(tmp_path / "f" / "messages.parquet") == expected
    filters = json.loads((tmp_path / "f" / "manifest.json").read_text())["filters"]
    assert filters["user_id"] == ids["bob"] and filters["since"] == since


@on_backends
def test_append_writes_only_newer_messages(backend: Backend, repo: ChatRepository, tmp_path: Path) -> None:
    ids = seed(repo)
    out = tmp_path / "inc"
    ok(backend.url, "export", "--out", str(out), "--append", "--tables", "messages,chats")
    chat = repo.create_chat(ids["alice"], "later")
    for m in range(3):
        repo.add_message(chat.id, "user", [{"type": "text", "text": f"late {m}"}])
    line = ok(backend.url, "export", "--out", str(out), "--append", "--tables", "messages,chats").stdout
    assert line.startswith("exported messages 3, chats 5 rows")
    assert parquet_ids(out / "messages.parquet" if (out / "messages.parquet").exists() else out) == sql_ids(
        backend
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tables"]["messages"]["rows"] == 27 and len(manifest["runs"]) == 2


@on_backends
def test_duckdb_export_can_be_joined(backend: Backend, repo: ChatRepository, tmp_path: Path) -> None:
    seed(repo)
    target = tmp_path / "chat.duckdb"
    line = ok(backend.url, "export", "--format", "duckdb", "--out", str(target)).stdout
    assert line.startswith("exported messages 24, chats 4, users 2, api_keys 2 rows")
    with duckdb.connect(str(target), read_only=True) as con:
        per_user = dict(
            con.execute(
                "SELECT u.username, count(*) FROM messages m JOIN chats c USING (chat_id) "
                "JOIN users u ON u.user_id = c.user_id GROUP BY 1"
            ).fetchall()
        )
    assert per_user == {"alice": 12, "bob": 12}
    assert not (tmp_path / "manifest.json").exists()


@on_sqlite
def test_append_is_refused_for_text_formats(backend: Backend, tmp_path: Path) -> None:
    result = invoke(backend.url, "export", "--format", "csv", "--append", "--out", str(tmp_path))
    line = one_error_line(result, 2)
    assert "--append" in line


@on_sqlite
def test_append_with_other_options_is_refused_before_any_table_is_replaced(
    backend: Backend, repo: ChatRepository, tmp_path: Path
) -> None:
    seed(repo)
    out = tmp_path / "inc"
    ok(backend.url, "export", "--out", str(out), "--tables", "chats,messages")
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    result = invoke(
        backend.url, "export", "--out", str(out), "--append", "--include-text", "--tables", "chats,messages"
    )
    line = one_error_line(result)
    assert "holds other columns" in line and "without --append" in line
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before


@on_sqlite
def test_out_naming_a_file_for_a_directory_format_is_a_usage_error(backend: Backend, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    line = one_error_line(invoke(backend.url, "export", "--out", str(target)), 2)
    assert "is a file" in line and "--out" in line
    assert target.read_text() == "keep me"


@on_sqlite
def test_duckdb_out_naming_a_file_that_is_not_duckdb_is_one_error_line(
    backend: Backend, repo: ChatRepository, tmp_path: Path
) -> None:
    seed(repo)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    line = one_error_line(invoke(backend.url, "export", "--format", "duckdb", "--out", str(notes)))
    assert "notes.txt exists and is not a DuckDB database" in line
    assert notes.read_text() == "keep me\n" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@on_sqlite
def test_duckdb_append_reports_the_rows_it_added(
    backend: Backend, repo: ChatRepository, tmp_path: Path
) -> None:
    ids = seed(repo)
    target = str(tmp_path / "chat.duckdb")
    args = ("export", "--format", "duckdb", "--out", target, "--append", "--tables", "messages,chats")
    assert ok(backend.url, *args).stdout.startswith("exported messages 24, chats 4 rows")
    assert ok(backend.url, *args).stdout.startswith("exported messages 0, chats 4 rows")
    chat = repo.create_chat(ids["bob"], "later")
    for m in range(3):
        repo.add_message(chat.id, "user", [{"type": "text", "text": f"late {m}"}])
    assert ok(backend.url, *args).stdout.startswith("exported messages 3, chats 5 rows")
    with duckdb.connect(target, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM messages").fetchone() == (27,)


@on_sqlite
@pytest.mark.parametrize("damage", ["short", "truncated"])
def test_the_manifest_is_derived_from_the_files_not_added_up(
    backend: Backend, repo: ChatRepository, tmp_path: Path, damage: str
) -> None:
    ids = seed(repo)
    out = tmp_path / "inc"
    args = ("export", "--out", str(out), "--append", "--tables", "messages,users")
    ok(backend.url, *args)
    manifest = out / "manifest.json"
    if damage == "short":  # a run killed between its data and its manifest
        stale = json.loads(manifest.read_text())
        stale["tables"]["messages"]["rows"] = 5
        manifest.write_text(json.dumps(stale))
    else:  # a manifest write that was cut short
        manifest.write_text(manifest.read_text()[:40])
    chat = repo.create_chat(ids["alice"], "later")
    repo.add_message(chat.id, "user", [{"type": "text", "text": "late"}])
    assert ok(backend.url, *args).stdout.startswith("exported messages 1, users 2 rows")
    tables = json.loads(manifest.read_text())["tables"]
    assert tables["messages"]["rows"] == 25 and tables["users"]["rows"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "messages.parquet", "users.parquet"]
