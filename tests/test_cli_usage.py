"""``chatdb demo`` then ``chatdb usage``: the report's numbers equal straight SQL over the database."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import chatdb
from chatdb.analytics import REPORT_COLUMNS

from .backends import Backend
from .cli_support import CLI_BACKENDS, invoke, ok, ok_json, sql_rows

on_backends = pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)
DEMO = ("demo", "--users", "4", "--chats", "30", "--messages", "600", "--days", "10", "--seed", "7")


def stored_messages(backend: Backend) -> list[dict[str, Any]]:
    """Every message with its owner and decoded metadata, read with plain SQL."""
    rows = sql_rows(
        backend,
        "SELECT m.created_at, m.metadata, c.user_id FROM messages m LEFT JOIN chats c ON c.id = m.chat_id",
    )
    for row in rows:
        row["meta"] = json.loads(row["metadata"]) if row["metadata"] else {}
    return rows


def total(rows: list[dict[str, Any]], key: str) -> int:
    return sum(int(r["meta"].get(key) or 0) for r in rows)


@on_backends
def test_demo_writes_what_it_says(backend: Backend) -> None:
    line = ok(backend.url, *DEMO).stdout
    tables = ("users", "chats", "messages")
    counts = {t: sql_rows(backend, f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in tables}
    assert counts == {"users": 4, "chats": 30, "messages": 600}
    assert line.startswith("demo data (seed 7, ")
    if backend.name == "sqlite":  # PostgreSQL's import_rows reports 0 inserted rows (a known bug)
        assert "4 users" in line and "30 chats" in line and "600 messages" in line
    models = {r["meta"].get("model") for r in stored_messages(backend)} - {None}
    assert len(models) >= 3  # several models


@on_backends
def test_usage_json_totals_equal_sql(backend: Backend) -> None:
    ok(backend.url, *DEMO)
    messages = stored_messages(backend)
    report = ok_json(backend.url, "usage", "daily")
    assert all(set(row) == {"period", *REPORT_COLUMNS} for row in report)
    assert sum(r["messages"] for r in report) == len(messages) == 600
    for column, key in (
        ("input_tokens", "inputTokens"),
        ("output_tokens", "outputTokens"),
        ("cache_creation_input_tokens", "cacheCreationInputTokens"),
        ("cache_read_input_tokens", "cacheReadInputTokens"),
    ):
        assert sum(r[column] for r in report) == total(messages, key), column
    assert sum(r["total_tokens"] for r in report) == sum(
        total(messages, k)
        for k in ("inputTokens", "outputTokens", "cacheCreationInputTokens", "cacheReadInputTokens")
    )
    per_day = Counter(m["created_at"][:10] for m in messages)
    assert {r["period"]: r["messages"] for r in report} == dict(per_day)
    reported = sum(float(m["meta"].get("totalCostUsd") or 0) for m in messages)
    displayed = ok_json(backend.url, "usage", "monthly", "--cost-mode", "display")
    assert sum(r["cost_usd"] or 0 for r in displayed) == pytest.approx(reported)
    auto = sum((r["cost_usd"] or 0) - (r["estimated_cost_usd"] or 0) for r in report)
    assert auto == pytest.approx(reported)  # auto = reported + estimated


@on_backends
def test_usage_filters_and_groupings_match_sql(backend: Backend) -> None:
    ok(backend.url, *DEMO)
    messages = stored_messages(backend)
    users = {u["id"]: u["username"] for u in sql_rows(backend, "SELECT id, username FROM users")}
    by_user = ok_json(backend.url, "usage", "users")
    assert {r["user_id"]: r["messages"] for r in by_user} == dict(Counter(m["user_id"] for m in messages))
    busiest = max(by_user, key=lambda r: r["messages"])
    only = ok_json(backend.url, "usage", "monthly", "--user", users[busiest["user_id"]])
    assert sum(r["messages"] for r in only) == busiest["messages"]
    by_model = ok_json(backend.url, "usage", "models")
    model_counts = Counter(m["meta"].get("model") for m in messages)
    assert {r["model"]: r["messages"] for r in by_model} == dict(model_counts)
    name = next(n for n, _ in model_counts.most_common() if n)
    filtered = ok_json(backend.url, "usage", "models", "--model", name)
    assert sum(r["messages"] for r in filtered) >= model_counts[name]
    chats = ok_json(backend.url, "usage", "chats")
    assert sum(r["messages"] for r in chats) == 600 and len(chats) <= 30
    days = sorted({m["created_at"][:10] for m in messages})
    since, until = days[2], days[5]
    window = ok_json(backend.url, "usage", "--since", since, "--until", until)
    assert sum(r["messages"] for r in window) == sum(since <= m["created_at"][:10] < until for m in messages)
    hourly = ok_json(backend.url, "usage", "hourly", "--order", "desc")
    assert [r["period"] for r in hourly] == sorted((r["period"] for r in hourly), reverse=True)
    assert sum(r["messages"] for r in hourly) == 600
    weekly = ok_json(backend.url, "usage", "weekly", "--breakdown", "model", "--timezone", "Asia/Tokyo")
    assert {"period", "model"} <= set(weekly[0]) and sum(r["messages"] for r in weekly) == 600


@on_backends
def test_the_users_report_names_each_user_in_every_format(backend: Backend) -> None:
    ok(backend.url, *DEMO)
    with chatdb.create_repository(backend.url) as repo:  # a message whose chat is gone: no user
        repo.import_rows("messages", [{"id": "m-orphan", "chat_id": "c-gone", "role": "user", "content": "[]",
                                       "created_at": "2026-10-28T12:00:00.000Z", "metadata": None}])  # fmt: skip
    users = {u["id"]: u["username"] for u in sql_rows(backend, "SELECT id, username FROM users")}
    by_user = ok_json(backend.url, "usage", "users")
    assert by_user and all(list(r)[:2] == ["user_id", "username"] for r in by_user)
    assert [r["messages"] for r in by_user if r["user_id"] is None and r["username"] is None] == [1]
    by_user = [r for r in by_user if r["user_id"] is not None]
    assert {r["user_id"]: r["username"] for r in by_user} == {
        r["user_id"]: users[r["user_id"]] for r in by_user
    }
    csv = ok(backend.url, "usage", "users", "--csv").stdout.splitlines()
    assert csv[0].startswith("user_id,username,messages,")
    assert {tuple(line.split(",")[:2]) for line in csv[1:]} == {
        ("", ""),
        *((r["user_id"], r["username"]) for r in by_user),
    }
    table = ok(backend.url, "usage", "users", "--wide").stdout.splitlines()
    assert table[0].split()[:3] == ["user_id", "username", "messages"]
    for r in by_user:
        assert any(line.split()[:2] == [r["user_id"], r["username"]] for line in table), r
    assert any(line.split()[:3] == ["(no", "user)", "1"] for line in table), table


@on_backends
def test_the_chats_report_titles_each_chat_in_every_format(backend: Backend) -> None:
    ok(backend.url, *DEMO)
    long_title = "A long look at\nquarterly numbers, " + "and more " * 10
    with chatdb.create_repository(backend.url) as repo:
        owner = repo.create_user("titled", "pw").id
        chat = repo.create_chat(owner, title=long_title).id
        repo.import_rows("messages", [
            {"id": "m-titled", "chat_id": chat, "role": "user", "content": "[]",
             "created_at": "2026-10-28T12:00:00.000Z", "metadata": None},
            {"id": "m-orphan", "chat_id": "c-gone", "role": "user", "content": "[]",
             "created_at": "2026-10-28T12:00:00.000Z", "metadata": None},
        ])  # fmt: skip
    titles = {c["id"]: c["title"] for c in sql_rows(backend, "SELECT id, title FROM chats")}
    by_chat = ok_json(backend.url, "usage", "chats")
    assert by_chat and all(list(r)[:2] == ["chat_id", "title"] for r in by_chat)
    assert {r["chat_id"]: r["title"] for r in by_chat} == {
        r["chat_id"]: titles.get(r["chat_id"]) for r in by_chat
    }
    assert {r["chat_id"]: r["title"] for r in by_chat if r["chat_id"] in (chat, "c-gone")} == {
        chat: long_title, "c-gone": None,
    }  # fmt: skip
    csv = ok(backend.url, "usage", "chats", "--csv").stdout
    assert csv.startswith("chat_id,title,messages,") and "quarterly numbers, and more" in csv
    table = ok(backend.url, "usage", "chats", "--wide").stdout.splitlines()
    assert table[0].split()[:3] == ["chat_id", "title", "messages"]
    # (in a table: the title's first 40 characters on one line)
    assert any(line.startswith(f"{chat}  A long look at quarterly numbers, and m…  ") for line in table), (
        table
    )
    for r in by_chat:
        if r["chat_id"] != chat and r["title"]:
            assert any(line.split()[0] == r["chat_id"] and r["title"][:30] in line for line in table), r


@pytest.mark.parametrize("backend", [CLI_BACKENDS[0]], indirect=True)
def test_usage_table_has_totals_and_plot_and_prices(backend: Backend, tmp_path: Path) -> None:
    ok(backend.url, *DEMO)
    table = ok(backend.url, "usage", "monthly").stdout.splitlines()
    assert table[0].split()[:3] == ["period", "messages", "input_tokens"]
    assert table[-1].split()[:2] == ["Total", "600"]
    assert ok(backend.url, "usage", "--format", "markdown").stdout.splitlines()[-1].startswith("| Total")
    csv_out = ok(backend.url, "usage", "--csv").stdout
    assert csv_out.startswith("period,messages,") and "Total" not in csv_out
    chart = tmp_path / "daily.png"
    ok(backend.url, "usage", "--plot", str(chart))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A price file that makes every family 1000x dearer: calculated costs follow it.
    from chatdb.analytics.pricing import bundled_prices

    dear = [
        {
            "model": p.model,
            "from": p.effective_from.isoformat(),
            "input": p.input * 1000,
            "output": p.output * 1000,
            "cache_write": p.cache_write * 1000,
            "cache_read": p.cache_read * 1000,
        }
        for p in bundled_prices().prices
    ]
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"prices": dear}))
    calculate = ("usage", "models", "--cost-mode", "calculate")
    normal = sum(r["cost_usd"] or 0 for r in ok_json(backend.url, *calculate))
    result = invoke(backend.url, *calculate, "--prices", str(prices), "--json")
    assert result.exit_code == 0, result.output
    costly = sum(r["cost_usd"] or 0 for r in json.loads(result.stdout))
    assert normal > 0 and costly == pytest.approx(normal * 1000)


@pytest.mark.parametrize("backend", [CLI_BACKENDS[0]], indirect=True)
def test_the_table_total_row_obeys_the_filters(backend: Backend) -> None:
    """Table and JSON reports read the messages differently (one export for the rows and the
    total): the same filters must give the same messages."""
    ok(backend.url, *DEMO)
    messages = stored_messages(backend)
    days = sorted({m["created_at"][:10] for m in messages})
    user = sql_rows(backend, "SELECT username FROM users ORDER BY username")[0]["username"]
    model = next(m["meta"]["model"] for m in messages if m["meta"].get("model"))
    filters = ["--since", days[1], "--until", days[6], "--user", user, "--model", model]
    rows = ok_json(backend.url, "usage", "daily", *filters)
    table = ok(backend.url, "usage", "daily", *filters).stdout.splitlines()
    assert rows, "the filters must leave some messages for this test to mean anything"
    assert table[-1].split()[:2] == ["Total", f"{sum(r['messages'] for r in rows):,}"]
    assert len(table) == len(rows) + 3  # header, rule, one line per row, total


@pytest.mark.parametrize("backend", [CLI_BACKENDS[0]], indirect=True)
def test_every_report_renders_in_every_format_with_its_chart(backend: Backend, tmp_path: Path) -> None:
    """Each report (computed in the database), in each format, and its --plot chart, in a zone
    with a 45-minute offset."""
    from chatdb.cli.output import FORMATS
    from chatdb.cli.usage import REPORTS

    ok(backend.url, *DEMO)
    daily = ok_json(backend.url, "usage", "daily")
    for report in REPORTS:
        chart = tmp_path / f"{report}.png"
        for fmt in FORMATS:
            ok(backend.url, "usage", report, "--format", fmt, "--timezone", "Asia/Kathmandu")
        rows = ok_json(backend.url, "usage", report, "--timezone", "Asia/Kathmandu", "--plot", str(chart))
        assert sum(r["messages"] for r in rows) == sum(r["messages"] for r in daily) == 600, report
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", report
