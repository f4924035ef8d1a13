"""Test databases for every backend: found (or started) once per run, emptied before each test.

Selection follows the advanced-alchemy pattern: each backend is a session fixture, and the ``repo``
fixture asks for the one its parameter names, so only the backends a run selects are started.

* PostgreSQL / MySQL: ``CHATDB_TEST_POSTGRES_URL`` / ``CHATDB_TEST_MYSQL_URL`` (a server URL; the
  database in it is ignored), else the local servers on their default ports. Each run creates its
  own uniquely named database and drops it at the end.
* MongoDB: ``CHATDB_TEST_MONGODB_URL``, else an ``nx-27017`` wire-protocol server started on a free
  port for the run and stopped after it.
* A backend that cannot be had is skipped with the reason, or fails the run when
  ``CHATDB_TEST_REQUIRE=all`` (or a comma list of backends) is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

import chatdb
import chatdb.admin
from chatdb import DbConfig
from chatdb.repository import ChatRepository

SQL_TABLES = ("messages", "chats", "api_keys", "users")


def required(name: str) -> bool:
    wanted = os.environ.get("CHATDB_TEST_REQUIRE", "")
    return wanted == "all" or name in {w.strip() for w in wanted.split(",")}


def unavailable(name: str, reason: str) -> NoReturn:
    message = f"{name} backend unavailable: {reason}"
    if required(name):
        pytest.fail(message + " (CHATDB_TEST_REQUIRE is set)", pytrace=False)
    pytest.skip(message)


def run_id() -> str:
    return f"chatdb_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@dataclass
class Backend:
    """One backend under test: how to make a repository on it and how to empty it."""

    name: str
    config: DbConfig
    admin: Any = None  # what reset() uses (an engine, a pymongo database)
    extra: dict[str, Any] = field(default_factory=dict)
    asynchronous: bool = False  # new_repo() is chatdb.aio's, through tests/async_face.py
    # Promises its schema cannot keep (a Node-created MySQL one before `chatdb upgrade`):
    # "text_ignores_case", "text_content". Tests assert the difference there.
    limits: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        return self.name + ("_async" if self.asynchronous else "")

    @property
    def url(self) -> str:
        return self.config.url

    def new_repo(self) -> ChatRepository:
        if self.asynchronous:
            from chatdb.aio import create_async_repository

            from .async_face import SyncFace

            face: Any = SyncFace(create_async_repository(self.config))
            return face  # type: ignore[no-any-return]
        return chatdb.create_repository(self.config)

    def reset(self) -> None:
        if self.name == "sqlite_memory":
            return
        if self.name == "mongodb":
            for name in self.admin.list_collection_names():
                self.admin[name].delete_many({})
            return
        from sqlalchemy import inspect, text

        with self.admin.begin() as conn:
            existing = set(inspect(conn).get_table_names())
            for table in SQL_TABLES:
                if table in existing:
                    conn.execute(text(f"DELETE FROM {table}"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


# -- per-backend session setup ------------------------------------------------------------------


def sqlite_file_backend(tmp_dir: Path) -> Iterator[Backend]:
    from sqlalchemy import create_engine

    path = tmp_dir / "contract.db"
    backend = Backend("sqlite", DbConfig(driver="sqlite", sqlite_path=str(path)))
    backend.admin = create_engine(f"sqlite:///{path}")
    yield backend
    backend.admin.dispose()


def sqlite_memory_backend() -> Iterator[Backend]:
    yield Backend("sqlite_memory", DbConfig(driver="sqlite", sqlite_path=":memory:"))


def server_backend(name: str) -> Generator[Backend, None, None]:
    """Create a fresh database on the PostgreSQL or MySQL server, drop it at the end."""
    from sqlalchemy import create_engine, text

    env = {"postgres": "CHATDB_TEST_POSTGRES_URL", "mysql": "CHATDB_TEST_MYSQL_URL"}[name]
    default = {
        "postgres": "postgresql://postgres@127.0.0.1:5432/postgres",
        "mysql": "mysql://root@127.0.0.1:3306/mysql",
    }[name]
    server_url = os.environ.get(env) or default
    with chatdb.create_repository(server_url) as probe:  # only to learn the driver URL
        engine_url = probe.engine.url  # type: ignore[attr-defined]
    admin_url = engine_url.set(database="postgres" if name == "postgres" else "mysql")
    database = run_id()
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {database}"))
    except Exception as exc:
        unavailable(name, f"{chatdb.config.redact_url(server_url)}: {str(exc).splitlines()[0]}")
    test_url = engine_url.set(database=database)
    url = test_url.render_as_string(hide_password=False)
    config = DbConfig.from_url(url)
    backend = Backend(name, config, admin=create_engine(test_url), extra={"server_admin": admin})
    try:
        yield backend
    finally:
        backend.admin.dispose()
        with admin.connect() as conn:
            if name == "postgres":
                conn.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS {database}"))
        admin.dispose()


FIXTURES = Path(__file__).resolve().parent / "fixtures"
NODE_DDL = {
    "sqlite": "ccluster-node.schema.sql",
    "postgres": "node-schema-postgres.sql",
    "mysql": "node-schema-mysql.sql",
}
NODE_MYSQL_LIMITS = frozenset({"text_ignores_case", "text_content"})


def node_ddl(name: str) -> list[str]:
    """The Node layer's CREATE/ALTER statements for backend ``name`` (tests/fixtures)."""
    lines = (FIXTURES / NODE_DDL[name]).read_text().splitlines()
    body = "\n".join(line for line in lines if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in body.split(";") if statement.strip()]


def node_schema_backend(name: str, tmp_dir: Path, *, upgraded: bool = False) -> Iterator[Backend]:
    """A database whose tables the Node layer's own DDL created (tests/fixtures), emptied
    before each test like the others; ``upgraded``: after ``chatdb upgrade``."""
    from sqlalchemy import create_engine

    if name == "sqlite":
        path = tmp_dir / f"node-{'upgraded' if upgraded else 'plain'}.db"
        base = Backend("sqlite", DbConfig(driver="sqlite", sqlite_path=str(path)))
        base.admin = create_engine(f"sqlite:///{path}")
        servers = None
    else:
        servers = server_backend(name)
        base = next(servers)
    try:
        with base.admin.begin() as conn:
            for statement in node_ddl(name):
                conn.exec_driver_sql(statement)
        limits = NODE_MYSQL_LIMITS if name == "mysql" and not upgraded else frozenset()
        if upgraded:
            with chatdb.create_repository(base.config) as repo:
                chatdb.admin.upgrade_schema(repo)
        label = f"{name}_node_upgraded" if upgraded else f"{name}_node"
        yield Backend(label, base.config, admin=base.admin, extra=base.extra, limits=limits)
    finally:
        if servers is None:
            base.admin.dispose()
        else:
            servers.close()


def refuses_content_too_large(backend: Backend, repo: ChatRepository, parts: list[dict[str, Any]]) -> bool:
    """Where the schema's content column is TEXT (the Node app's MySQL, before `chatdb upgrade`),
    assert the difference (ValidationError naming the fix, nothing stored) and return True."""
    if "text_content" not in backend.limits:
        return False
    chat = repo.create_chat("u-limits")
    with pytest.raises(chatdb.errors.ValidationError, match="chatdb upgrade"):
        repo.add_message(chat.id, "user", parts)
    assert repo.get_messages(chat.id).total == 0
    return True


def mongodb_backend(tmp_dir: Path) -> Iterator[Backend]:
    """A real MongoDB from CHATDB_TEST_MONGODB_URL, else an nx-27017 server for this run.

    nx-27017 runs through tests/_nx27017.py, which works around one of its gaps (see
    tests/README.md); ``extra["server"]`` says which kind of server the tests talk to.
    """
    try:
        import pymongo
    except ImportError:
        unavailable("mongodb", "pymongo is not installed (pip install -e '.[dev]')")
    url = os.environ.get("CHATDB_TEST_MONGODB_URL")
    process = None
    if not url:
        import importlib.util

        if importlib.util.find_spec("nx_27017") is None:
            unavailable("mongodb", "no CHATDB_TEST_MONGODB_URL and the nx-27017 test server is not installed")
        started = start_nx27017(tmp_dir)
        if started is None:
            unavailable("mongodb", "nx-27017 did not start")
        url, process = started
    database = run_id()
    config = DbConfig(driver="mongodb", mongodb_url=url, mongodb_name=database)
    client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    server = "nx-27017" if process is not None else "mongodb"
    backend = Backend("mongodb", config, admin=client[database], extra={"client": client, "server": server})
    try:
        yield backend
    finally:
        try:
            client.drop_database(database)
        finally:
            client.close()
            if process is not None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def start_nx27017(work_dir: Path) -> tuple[str, subprocess.Popen[bytes]] | None:
    """Start the nx-27017 test server (through tests/_nx27017.py) on a free port; None if it
    does not answer within 20 s. The caller terminates the process."""
    port = free_port()
    launcher = Path(__file__).with_name("_nx27017.py")
    command = [sys.executable, str(launcher), "--db", "memory", "--port", str(port)]
    command += ["--log-file", str(work_dir / "nx-27017.log"), "--pid-file", str(work_dir / "nx-27017.pid")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_for_port(port, 20):
        process.kill()
        process.wait()
        return None
    return f"mongodb://127.0.0.1:{port}/", process


def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="chatdb-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def empty_database(backend: Backend, tmp_dir: Path) -> Iterator[tuple[DbConfig, Callable[[], set[str]]]]:
    """A new database on ``backend``'s server (a new file for SQLite) without any table, and a
    function naming the tables (collections) it holds; dropped at the end."""
    from sqlalchemy import create_engine, inspect, text

    if backend.name in ("sqlite", "sqlite_memory"):
        path = tmp_dir / f"{run_id()}.db"
        sqlite3.connect(path).close()

        def sqlite_tables() -> set[str]:
            with sqlite3.connect(path) as conn:
                return {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}

        yield DbConfig(driver="sqlite", sqlite_path=str(path)), sqlite_tables
        return
    database = run_id()
    if backend.name == "mongodb":
        client = backend.extra["client"]
        try:
            yield (
                DbConfig(driver="mongodb", mongodb_url=backend.config.mongodb_url, mongodb_name=database),
                lambda: set(client[database].list_collection_names()),
            )
        finally:
            client.drop_database(database)
        return
    admin = backend.extra["server_admin"]
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
    url = backend.admin.url.set(database=database)
    engine = create_engine(url)
    try:
        yield (
            DbConfig.from_url(url.render_as_string(hide_password=False)),
            lambda: set(inspect(engine).get_table_names()),
        )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            force = " WITH (FORCE)" if backend.name == "postgres" else ""
            conn.execute(text(f"DROP DATABASE IF EXISTS {database}{force}"))
