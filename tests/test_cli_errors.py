"""Bad input gives one clear line on stderr and a non-zero exit; --debug shows the traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from chatdb.cli import cli
from chatdb.errors import BackendUnavailableError

from .backends import Backend
from .cli_support import CLEAN_ENV, CLI_BACKENDS, invoke, one_error_line

on_sqlite = pytest.mark.parametrize("backend", [CLI_BACKENDS[0]], indirect=True)
UNREACHABLE = {
    "postgres": "postgresql://postgres:pw-not-shown@127.0.0.1:1/chatdb",
    "mysql": "mysql://root:pw-not-shown@127.0.0.1:1/chatdb",
}


def read_only_dir(tmp_path: Path) -> Path:
    """A directory nothing can be written under (root ignores modes, but not /sys)."""
    if os.geteuid() == 0:
        return Path("/sys/chatdb-test-output")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked / "out"


@on_sqlite
@pytest.mark.parametrize(
    "args",
    [
        ("info", "--format", "xml"),
        ("usage", "--format", "yaml"),
        ("usage", "fortnightly"),
        ("usage", "--since", "yesterday"),
        ("usage", "--until", "2026-13-45"),
        ("usage", "--since", "2026-05-02", "--until", "2026-05-01"),
        ("usage", "--timezone", "Mars/Olympus"),
        ("export", "--since", "01/02/2026"),
        ("export", "--format", "xlsx"),
        ("export", "--tables", "messages,passwords"),
        ("export", "--format", "csv", "--partition-by", "month"),
        ("users", "list", "--limit", "0"),
        ("nonsense",),
    ],
)
def test_usage_errors_are_one_line_exit_2(backend: Backend, args: tuple[str, ...]) -> None:
    line = one_error_line(invoke(backend.url, *args), code=2)
    assert "--help" in line  # says where to look


@on_sqlite
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("keys", "list", "--user", "ghost"), "user 'ghost' not found"),
        (("chats", "list", "--user", "ghost"), "user 'ghost' not found"),
        (("usage", "--user", "ghost"), "user 'ghost' not found"),
        (("export", "--user", "ghost"), "user 'ghost' not found"),
        (("chats", "show", "no-such-chat", "--user", "alice"), "not found"),
    ],
)
def test_unknown_users_and_chats_are_one_line_exit_1(
    backend: Backend, args: tuple[str, ...], expected: str
) -> None:
    invoke(backend.url, "users", "create", "alice", "--password", "pw")
    assert expected in one_error_line(invoke(backend.url, *args))


@pytest.mark.parametrize("scheme", sorted(UNREACHABLE))
def test_unreachable_database_is_one_line_without_password(scheme: str) -> None:
    result = invoke(UNREACHABLE[scheme], "info")
    line = one_error_line(result)
    assert "cannot reach" in line and "127.0.0.1" in line
    assert "pw-not-shown" not in result.output


def test_bad_url_is_one_line() -> None:
    assert "not supported" in one_error_line(invoke("oracle://host/db", "info"))


def test_debug_lets_the_traceback_through() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", UNREACHABLE["postgres"], "--debug", "info"], env=CLEAN_ENV)
    assert result.exit_code == 1
    assert isinstance(result.exception, BackendUnavailableError)


@on_sqlite
def test_read_only_output_path_is_one_line(backend: Backend, tmp_path: Path) -> None:
    target = read_only_dir(tmp_path)
    for fmt in ("parquet", "csv"):
        line = one_error_line(invoke(backend.url, "export", "--format", fmt, "--out", str(target)))
        assert str(target) in line or "ermission" in line or "not permitted" in line
    one_error_line(invoke(backend.url, "export", "--format", "duckdb", "--out", str(target / "x.duckdb")))


@on_sqlite
def test_unreadable_database_file_is_one_line(backend: Backend, tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("this is not a database\n" * 100)
    one_error_line(invoke(f"sqlite:///{not_a_db}", "info"))
