"""``chatdb demo`` and ``chatdb copy`` killed with SIGKILL at several moments: a reader sees no
message without its chat (nor a chat without its user) at the moment of the kill, and running the
same command again ends with exactly the rows of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

import chatdb
from chatdb import demo

from .backends import Backend, run_id

ROOT = Path(__file__).resolve().parent.parent
DEMO = {"users": 4, "chats": 40, "messages": 14_000, "days": 10, "seed": 9}  # 2 chunks of messages
ORPHANS = (
    "SELECT (SELECT COUNT(*) FROM messages WHERE chat_id NOT IN (SELECT id FROM chats)), "
    "(SELECT COUNT(*) FROM chats WHERE user_id NOT IN (SELECT id FROM users))"
)


def chatdb_command(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "chatdb", "--quiet", "--db", url, *args]


def demo_args() -> list[str]:
    return ["demo", *(f"--{name}={value}" for name, value in DEMO.items())]


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def kill_when(
    command: list[str],
    ready: Callable[[], bool],
    timeout: float = 120,
    *,
    step_from: Callable[[], bool] | None = None,
) -> list[int]:
    """Start ``command``, SIGKILL it as soon as ``ready()`` (polled); fails if it ended first.
    Returns the ids of the processes it had started, as they were at the kill.

    Once ``step_from()`` holds, the process runs in slices of about a millisecond and is
    stopped (SIGSTOP) while ``ready()`` looks: a state that lasts a few milliseconds of the
    process's time (the chats written, no message yet) is then seen every time, and it is the
    state the kill lands in. Only the process itself is stopped: not for commands whose
    children write."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    stepped = False
    try:
        while not ready():
            assert process.poll() is None, f"ended before the kill point: {process.stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "kill point not reached"
            stepped = stepped or (step_from is not None and step_from())
            if stepped:
                process.send_signal(signal.SIGCONT)
                time.sleep(0.001)
                process.send_signal(signal.SIGSTOP)
                os.waitid(os.P_PID, process.pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT)
            else:
                time.sleep(0.01)
        children = children_of(process.pid)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:  # (a failed assertion: stopped processes never end alone)
            process.kill()
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]
    assert process.returncode == -signal.SIGKILL, "the process was not killed mid-run"
    return children


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            found += [int(child) for child in children.read().split()]
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is alive (not gone, nor a zombie nobody has reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def counts_of(engine: Any) -> Callable[[], dict[str, int]]:
    def counts() -> dict[str, int]:
        try:
            with engine.connect() as conn:
                return {
                    t: int(conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one())
                    for t in ("users", "chats", "messages")
                }
        except Exception:  # not created yet, or locked for a moment: not ready
            return {"users": 0, "chats": 0, "messages": 0}

    return counts


def schema_exists(engine: Any) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM messages WHERE 1 = 0"))
            return True
    except Exception:
        return False


def _reached(point: Callable[[dict[str, int]], bool], counts: Callable[[], dict[str, int]]) -> bool:
    return point(counts())


def orphans(engine: Any) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(text(ORPHANS)).one()
        return int(row[0]), int(row[1])


def stored(config: Any) -> dict[str, list[tuple[Any, ...]]]:
    with chatdb.create_repository(config) as repo:
        return {
            t: sorted(row for batch in repo.scan_rows(t, stored=True) for row in batch)
            for t in ("users", "chats", "messages", "api_keys")
        }


# Kill points: while the chats are written (no message yet), and in the middle of the messages.
KILL_POINTS: dict[str, Callable[[dict[str, int]], bool]] = {
    "before-messages": lambda c: c["chats"] > 0 and c["messages"] == 0,
    "mid-messages": lambda c: 0 < c["messages"] < DEMO["messages"],
}


@pytest.mark.slow
@pytest.mark.sqlite
def test_a_killed_demo_is_consistent_and_a_rerun_gives_the_uninterrupted_rows(tmp_path: Path) -> None:
    whole = tmp_path / "whole.db"
    with chatdb.create_repository(f"sqlite:///{whole}") as repo:
        demo.generate(repo, **DEMO)  # type: ignore[arg-type]
    expected = stored(f"sqlite:///{whole}")
    for name, point in KILL_POINTS.items():
        path = tmp_path / f"{name}.db"
        engine = create_engine(f"sqlite:///{path}")
        counts = counts_of(engine)
        try:
            ready = partial(_reached, point, counts)
            children = kill_when(chatdb_command(f"sqlite:///{path}", *demo_args()), ready)
            assert children, "the demo's rows are made by a child process"
            # The child that made the rows ends with its parent (its next write finds no reader).
            deadline = time.monotonic() + 30
            while any(running(child) for child in children):
                assert time.monotonic() < deadline, "the demo's child process outlived its parent"
                time.sleep(0.05)
            assert orphans(engine) == (0, 0), name
            run(chatdb_command(f"sqlite:///{path}", *demo_args()))
        finally:
            engine.dispose()
        assert stored(f"sqlite:///{path}") == expected, name


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "source.db"
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        demo.generate(repo, **DEMO)  # type: ignore[arg-type]
    return path


COPY_KILL_POINTS: dict[str, Callable[[dict[str, int]], bool]] = {
    "before-messages": lambda c: c["chats"] > 0 and c["messages"] == 0,
    "mid-messages": lambda c: 0 < c["messages"] < DEMO["messages"],
    "any-moment": lambda c: True,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "point"),
    [
        *(pytest.param("sqlite", point, marks=pytest.mark.sqlite) for point in COPY_KILL_POINTS),
        pytest.param("postgres", "mid-messages", marks=pytest.mark.postgres),
    ],
    indirect=["backend"],
)
def test_a_killed_copy_is_consistent_and_a_rerun_completes_it_exactly(
    backend: Backend, point: str, demo_source: Path, tmp_path: Path
) -> None:
    source_url = f"sqlite:///{demo_source}"
    command = chatdb_command(source_url, "copy", "--to", backend.url, "--batch-size", "500")
    counts = counts_of(backend.admin)
    started = time.monotonic()
    ready = COPY_KILL_POINTS[point]
    if point == "any-moment":
        # Somewhere in the run, wherever that falls: 10-64% of the time an uninterrupted run takes.
        scratch = chatdb_command(source_url, "copy", "--to", f"sqlite:///{tmp_path / 'timing.db'}")
        run(scratch)
        delay = (time.monotonic() - started) * (0.1 + 0.6 * (os.getpid() % 10) / 10)
        started = time.monotonic()
        kill_when(command, lambda: time.monotonic() - started > delay)
    else:
        # Stepped on SQLite only: a PostgreSQL reader waits on the locks of a stopped writer
        # (the copy drops and rebuilds the message indexes); its kill point lasts long anyway.
        step_from = partial(schema_exists, backend.admin) if backend.name == "sqlite" else None
        kill_when(command, lambda: ready(counts()), step_from=step_from)
    if counts()["users"]:  # (a kill before the schema exists leaves nothing to read)
        assert orphans(backend.admin) == (0, 0)
    run(command)
    assert stored(backend.config) == stored(source_url)


@pytest.mark.slow
@pytest.mark.sqlite
@pytest.mark.mongodb
def test_a_copy_into_mongodb_killed_midway_ends_with_every_index_when_run_again(
    mongodb_backend: Backend, demo_source: Path
) -> None:
    client = mongodb_backend.extra["client"]
    schema_name, target_name = run_id(), run_id()
    server = str(mongodb_backend.config.mongodb_url).rstrip("/")
    try:
        with chatdb.create_repository(f"{server}/{schema_name}") as reference:
            reference.ensure_schema()
            schema = indexes_of(client[schema_name])
        target = f"{server}/{target_name}"
        source_url = f"sqlite:///{demo_source}"
        command = chatdb_command(source_url, "copy", "--to", target, "--batch-size", "500")
        messages = client[target_name]["messages"]
        kill_when(command, lambda: 0 < messages.estimated_document_count() < DEMO["messages"])
        # Killed while the messages went in: their indexes were waiting for the end.
        assert indexes_of(client[target_name])["messages"] != schema["messages"]
        run(command)
        assert indexes_of(client[target_name]) == schema
        assert decoded(stored(target)) == decoded(stored(source_url))
    finally:
        client.drop_database(schema_name)
        client.drop_database(target_name)


def decoded(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """Message JSON decoded (MongoDB holds it so; demo JSON is always readable)."""

    def value(item: Any) -> Any:
        return json.loads(item) if isinstance(item, str) else item

    messages = [(*row[:3], value(row[3]), row[4], value(row[5])) for row in rows["messages"]]
    return {**rows, "messages": messages}


def indexes_of(db: Any) -> dict[str, list[tuple[str, tuple[Any, ...], bool]]]:
    return {
        name: sorted((index, tuple(info["key"]), bool(info.get("unique")))
                     for index, info in db[name].index_information().items())
        for name in ("users", "chats", "messages", "apiKeys")
    }  # fmt: skip
