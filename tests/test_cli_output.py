"""The shared output options: every format renders the same rows, machine formats parse back."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime

import pytest

from chatdb.cli.output import FORMATS, render

from .backends import Backend
from .cli_support import CLI_BACKENDS, invoke, ok, sql_rows

ROWS = [
    {
        "name": "alice",
        "n": 1234,
        "cost_usd": 0.5,
        "at": datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        "day": date(2026, 1, 2),
        "note": None,
    },
    {"name": 'bob, "the" builder', "n": 7, "cost_usd": None, "at": None, "day": None, "note": "a\nb"},
]
COLUMNS = ("name", "n", "cost_usd", "at", "day", "note")


def rendered(fmt: str) -> str:
    out = io.StringIO()
    assert render(iter(ROWS), COLUMNS, fmt, out=out) == 2
    return out.getvalue()


def test_json_is_a_list_of_objects_with_stored_timestamps() -> None:
    assert json.loads(rendered("json")) == [
        {
            "name": "alice",
            "n": 1234,
            "cost_usd": 0.5,
            "at": "2026-01-02T03:04:05.006Z",
            "day": "2026-01-02",
            "note": None,
        },
        {"name": 'bob, "the" builder', "n": 7, "cost_usd": None, "at": None, "day": None, "note": "a\nb"},
    ]
    empty = io.StringIO()
    render(iter([]), COLUMNS, "json", out=empty)
    assert json.loads(empty.getvalue()) == []


def test_nl_csv_and_tsv_parse_back() -> None:
    assert [json.loads(line) for line in rendered("nl").splitlines()] == json.loads(rendered("json"))
    for fmt, dialect in (("csv", "excel"), ("tsv", "excel-tab")):
        parsed = list(csv.DictReader(io.StringIO(rendered(fmt)), dialect=dialect))
        assert parsed[0] == {
            "name": "alice",
            "n": "1234",
            "cost_usd": "0.5",
            "at": "2026-01-02T03:04:05.006Z",
            "day": "2026-01-02",
            "note": "",
        }
        assert parsed[1]["name"] == 'bob, "the" builder' and parsed[1]["note"] == "a\nb"


def test_table_and_markdown_align_columns_for_people() -> None:
    table = rendered("table").splitlines()
    assert table[0].split() == list(COLUMNS)
    assert table[2].startswith("alice") and "1,234" in table[2] and "0.5000" in table[2]
    assert len(table) == 4  # a newline inside a value does not break the row
    markdown = rendered("markdown").splitlines()
    assert markdown[0].startswith("| name") and markdown[1].startswith("|---")
    assert markdown[1].split("|")[2].endswith(":")  # numbers right-aligned
    assert all(line.count("|") == len(COLUMNS) + 1 for line in markdown)


@pytest.mark.parametrize("backend", CLI_BACKENDS, indirect=True)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_lists_the_same_users(backend: Backend, fmt: str) -> None:
    for name in ("alice", "bob"):
        ok(backend.url, "users", "create", name, "--password", "pw")
    out = ok(backend.url, "users", "list", "--format", fmt).stdout
    for row in sql_rows(backend, "SELECT id, username FROM users"):
        assert row["id"] in out and row["username"] in out


@pytest.mark.parametrize("backend", [CLI_BACKENDS[0]], indirect=True)
def test_json_and_csv_shorthands(backend: Backend) -> None:
    ok(backend.url, "users", "create", "alice", "--password", "pw")
    assert json.loads(ok(backend.url, "users", "list", "--json").stdout)[0]["username"] == "alice"
    assert ok(backend.url, "users", "list", "--csv").stdout.startswith("id,username,created_at,updated_at\n")
    assert ok(backend.url, "users", "list", "--json", "--format", "json").exit_code == 0
    clash = invoke(backend.url, "users", "list", "--json", "--csv")
    assert clash.exit_code == 2 and "choose one output format" in clash.stderr
