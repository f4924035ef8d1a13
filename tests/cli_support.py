"""Shared by the CLI tests: run ``chatdb`` in-process on a test backend, and check error output."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from chatdb.cli import cli
from chatdb.cli._app import SEED_ENV_VARS

# The CLI is tested on SQLite and on the SQL servers; the contract suite covers every backend.
CLI_BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("postgres", marks=pytest.mark.postgres),
]
# Variables that would silently pick another database for the CLI under test.
CLEAN_ENV: dict[str, str | None] = {name: None for name in (*SEED_ENV_VARS, "CHATDB_URL")}


def invoke(
    url: str | None, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """``chatdb [--db url] args...`` in-process; unexpected exceptions propagate to the test."""
    prefix = ["--db", url] if url is not None else []
    return CliRunner().invoke(
        cli, [*prefix, *args], input=input, env={**CLEAN_ENV, **(env or {})}, catch_exceptions=False
    )


def ok(url: str | None, *args: str, input: str | None = None) -> Result:
    result = invoke(url, *args, input=input)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result


def ok_json(url: str | None, *args: str) -> Any:
    return json.loads(ok(url, *args, "--format", "json").stdout)


def one_error_line(result: Result, code: int = 1) -> str:
    """The run failed with ``code`` and said why in exactly one line on stderr, no traceback."""
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def sql_rows(backend: Any, query: str, **params: Any) -> list[dict[str, Any]]:
    """Straight SQL over the backend's database, independent of chatdb's code paths."""
    from sqlalchemy import text

    with backend.admin.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(query), params)]
