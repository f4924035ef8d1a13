"""The installed ``chatdb`` console script and ``python -m chatdb``, and help for every command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from chatdb.cli import cli

from .cli_support import CLEAN_ENV, invoke


def console_script() -> str:
    found = shutil.which("chatdb") or str(Path(sys.executable).with_name("chatdb"))
    if not Path(found).exists():
        pytest.fail("the chatdb console script is not installed (pip install -e '.[dev]')", pytrace=False)
    return found


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}


def test_console_script_runs_in_a_real_process(tmp_path: Path) -> None:
    exe = console_script()
    run = [exe, "--db", f"sqlite:///{tmp_path / 'app.db'}"]
    created = subprocess.run(
        [*run, "users", "create", "alice", "--password", "pw", "--json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=True,
    )
    assert json.loads(created.stdout)[0]["username"] == "alice"
    info = subprocess.run(
        [*run, "info", "--json"], capture_output=True, text=True, env=clean_env(), timeout=60, check=True
    )
    assert json.loads(info.stdout)["users_rows"] == 1
    failed = subprocess.run(
        [*run, "keys", "list", "--user", "ghost"], capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert failed.returncode == 1 and failed.stderr == "Error: user 'ghost' not found\n"


def test_python_dash_m_chatdb_works_in_the_default_location(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatdb", "init"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "chat.db").is_file()


def all_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += all_commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


COMMANDS = all_commands(cli)


def test_the_issue_commands_all_exist() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {
        "init",
        "info",
        "demo",
        "export",
        "usage",
        "users create",
        "users list",
        "keys create",
        "keys list",
        "keys revoke",
        "chats list",
        "chats show",
        "chats delete",
        "copy",
        "upgrade",
    } <= names


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "chatdb")
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = invoke(None, *command, "--help")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ")
    own_help = result.stdout.split("Options:")[0]
    assert len(own_help.splitlines()) >= 3, f"{command} has no description"
