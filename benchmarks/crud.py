"""CRUD throughput of chatdb beside the raw driver doing the same statements, in one run.

    python benchmarks/crud.py                      # SQLite file, 100,000 messages in 2,000 chats
    python benchmarks/crud.py --backend postgres   # or mysql, mongodb (URL from --url or defaults)
    python benchmarks/crud.py --scaling            # get_messages at 10,000 vs 1,000,000 messages

Each operation runs against two identical databases: one through chatdb, one through the raw
driver (stdlib sqlite3, psycopg, PyMySQL or pymongo) issuing the statements chatdb issues, in
the same transaction shape, and parsing the JSON columns as any caller must. The ratio is
chatdb time / raw time (1.00 = no overhead). Targets (issues 2-4): <= 2.0 on SQLite, <= 1.5 on
the servers; add_message >= 1,000 ops/s durably committed, get_messages >= 2,000 ops/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chatdb
from chatdb._codec import format_ts, utcnow

T = TypeVar("T")

OPS = ("create_user", "create_chat", "add_message", "get_chat", "list_chats", "get_messages")
CONTENT = [{"type": "text", "text": "Please refactor the auth middleware and run the tests. " * 4}]
METADATA = {
    "model": "claude-sonnet-4-5",
    "inputTokens": 1234,
    "outputTokens": 567,
    "totalCostUsd": 0.0123,
    "durationMs": 4321,
}


# -- data ------------------------------------------------------------------------------------------


def seed_rows(chats: int, messages: int, users: int = 20) -> dict[str, Iterator[dict[str, Any]]]:
    """Stored-format rows: ``messages`` spread evenly over ``chats`` owned by ``users``."""
    rng = random.Random(7)
    start = utcnow().timestamp() - 86_400 * 30
    user_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(users)]
    chat_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(chats)]
    per_chat = messages // chats
    content = json.dumps(CONTENT, separators=(",", ":"))
    metadata = json.dumps(METADATA, separators=(",", ":"))

    def stamp(seconds: float) -> str:
        from datetime import UTC, datetime

        return format_ts(datetime.fromtimestamp(seconds, UTC))

    def chat_rows() -> Iterator[dict[str, Any]]:
        for i, cid in enumerate(chat_ids):
            t0 = start + i * 60
            yield {
                "id": cid,
                "title": f"chat {i}",
                "session_id": None,
                "user_id": user_ids[i % users],
                "created_at": stamp(t0),
                "updated_at": stamp(t0 + per_chat),
            }

    def message_rows() -> Iterator[dict[str, Any]]:
        for i, cid in enumerate(chat_ids):
            t0 = start + i * 60
            for j in range(per_chat):
                yield {
                    "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "chat_id": cid,
                    "role": "user" if j % 2 == 0 else "assistant",
                    "content": content,
                    "created_at": stamp(t0 + j + 1),
                    "metadata": metadata if j % 2 else None,
                }

    def user_rows() -> Iterator[dict[str, Any]]:
        for i, uid in enumerate(user_ids):
            yield {
                "id": uid,
                "username": f"seed-user-{i}",
                "password_hash": "x",
                "created_at": stamp(start),
                "updated_at": stamp(start),
            }

    return {"users": user_rows(), "chats": chat_rows(), "messages": message_rows()}


def load(repo: Any, chats: int, messages: int) -> tuple[list[str], list[str]]:
    rows = seed_rows(chats, messages)
    for table in ("users", "chats", "messages"):
        repo.import_rows(table, rows[table], batch_size=10_000)
    chat_rows = [r for batch in repo.scan_rows("chats") for r in batch]
    return [r[0] for r in chat_rows], [r[1] for r in chat_rows]


# -- raw baselines ---------------------------------------------------------------------------------


class RawSql:
    """The statements SqlRepository issues, through the bare DB-API driver."""

    begin_write: str | None
    begin_read: str | None

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        if backend == "sqlite":
            import sqlite3

            self.conn: Any = sqlite3.connect(url, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA busy_timeout=30000")
            self.p = "?"
            self.begin_write, self.begin_read, self.lock = "BEGIN IMMEDIATE", "BEGIN", ""
        elif backend == "postgres":
            import psycopg

            self.conn = psycopg.connect(url)
            self.p = "%s"
            self.begin_write = self.begin_read = None
            self.lock = " FOR UPDATE"
        else:
            import pymysql
            from sqlalchemy.engine import make_url

            u = make_url(url)
            self.conn = pymysql.connect(
                host=u.host,
                port=u.port or 3306,
                user=u.username,
                password=u.password or "",
                database=u.database,
                charset="utf8mb4",
            )
            cur = self.conn.cursor()
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            self.p = "%s"
            self.begin_write = self.begin_read = None
            self.lock = " FOR UPDATE"

    def _tx(self, begin: str | None, work: Callable[[Any], T]) -> T:
        cur = self.conn.cursor()
        if begin:
            cur.execute(begin)
        try:
            result = work(cur)
        except BaseException:
            self.conn.rollback() if not begin else cur.execute("ROLLBACK")
            raise
        if begin:
            cur.execute("COMMIT")
        else:
            self.conn.commit()
        return result

    def q(self, sql: str) -> str:
        return sql.replace("?", self.p)

    def create_user(self, username: str) -> str:
        uid, now = str(uuid.uuid4()), format_ts(utcnow())
        sql = self.q(
            "INSERT INTO users (id, username, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
        )
        self._tx(self.begin_write, lambda c: c.execute(sql, (uid, username, "hash", now, now)))
        return uid

    def create_chat(self, user_id: str) -> str:
        cid, now = str(uuid.uuid4()), format_ts(utcnow())
        sql = self.q(
            "INSERT INTO chats (id, title, session_id, user_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
        )
        self._tx(self.begin_write, lambda c: c.execute(sql, (cid, "New Chat", None, user_id, now, now)))
        return cid

    def add_message(self, chat_id: str) -> None:
        from chatdb._codec import next_ts_after

        content = json.dumps(CONTENT, ensure_ascii=False, separators=(",", ":"))
        metadata = json.dumps(METADATA, ensure_ascii=False, separators=(",", ":"))

        def work(c: Any) -> None:
            c.execute(
                self.q(
                    "SELECT id, title, session_id, user_id, created_at, updated_at FROM chats WHERE id = ?"
                    + self.lock
                ),
                (chat_id,),
            )
            row = c.fetchone()
            c.execute(self.q("SELECT max(created_at) FROM messages WHERE chat_id = ?"), (chat_id,))
            latest = c.fetchone()
            created = format_ts(next_ts_after((row[5], latest[0])))
            c.execute(
                self.q(
                    "INSERT INTO messages (id, chat_id, role, content, created_at, metadata) VALUES (?, ?, ?, ?, ?, ?)"
                ),
                (str(uuid.uuid4()), chat_id, "assistant", content, created, metadata),
            )
            c.execute(self.q("UPDATE chats SET updated_at = ? WHERE id = ?"), (created, chat_id))

        self._tx(self.begin_write, work)

    def get_chat(self, chat_id: str, user_id: str) -> Any:
        sql = self.q(
            "SELECT id, title, session_id, user_id, created_at, updated_at FROM chats WHERE id = ? AND user_id = ?"
        )

        def work(c: Any) -> Any:
            c.execute(sql, (chat_id, user_id))
            return c.fetchone()

        return self._tx(self.begin_read, work)

    def list_chats(self, user_id: str) -> Sequence[Any]:
        def work(c: Any) -> Sequence[Any]:
            c.execute(self.q("SELECT count(*) FROM chats WHERE user_id = ?"), (user_id,))
            c.fetchone()
            c.execute(
                self.q(
                    "SELECT id, title, session_id, user_id, created_at, updated_at FROM chats WHERE user_id = ? "
                    "ORDER BY updated_at DESC, id DESC LIMIT ? OFFSET ?"
                ),
                (user_id, 50, 0),
            )
            rows: Sequence[Any] = c.fetchall()  # a list, or a tuple from PyMySQL
            return rows

        return self._tx(self.begin_read, work)

    def get_messages(self, chat_id: str) -> list[Any]:
        def work(c: Any) -> list[Any]:
            c.execute(self.q("SELECT count(*) FROM messages WHERE chat_id = ?"), (chat_id,))
            c.fetchone()
            c.execute(
                self.q(
                    "SELECT id, chat_id, role, content, created_at, metadata FROM messages WHERE chat_id = ? "
                    "ORDER BY created_at, id LIMIT ? OFFSET ?"
                ),
                (chat_id, 50, 0),
            )
            rows = c.fetchall()
            return [(r[0], json.loads(r[3]), r[5] and json.loads(r[5])) for r in rows]

        return self._tx(self.begin_read, work)

    def close(self) -> None:
        self.conn.close()


class ChatdbOps:
    def __init__(self, repo: Any) -> None:
        self.repo = repo

    def create_user(self, username: str) -> str:
        return str(self.repo.create_user(username, "hash").id)

    def create_chat(self, user_id: str) -> str:
        return str(self.repo.create_chat(user_id).id)

    def add_message(self, chat_id: str) -> None:
        self.repo.add_message(chat_id, "assistant", CONTENT, METADATA)

    def get_chat(self, chat_id: str, user_id: str) -> Any:
        return self.repo.get_chat(chat_id, user_id)

    def list_chats(self, user_id: str) -> Any:
        return self.repo.list_chats(user_id, limit=50)

    def get_messages(self, chat_id: str) -> Any:
        return self.repo.get_messages(chat_id, limit=50)

    def close(self) -> None:
        self.repo.close()


class RawMongoOps:
    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def create_user(self, username: str) -> str:
        return str(self.raw.create_user(username, "hash"))

    def create_chat(self, user_id: str) -> str:
        return str(self.raw.create_chat(user_id, "New Chat"))

    def add_message(self, chat_id: str) -> None:
        self.raw.add_message(chat_id, "assistant", CONTENT, METADATA)

    def get_chat(self, chat_id: str, user_id: str) -> Any:
        return self.raw.get_chat(chat_id, user_id)

    def list_chats(self, user_id: str) -> Any:
        return self.raw.list_chats(user_id, 50)

    def get_messages(self, chat_id: str) -> Any:
        return self.raw.get_messages(chat_id, 50)

    def close(self) -> None:
        self.raw.close()


# -- timing ----------------------------------------------------------------------------------------


def measure(ops: Any, op: str, n: int, chat_ids: list[str], owners: list[str], tag: str) -> float:
    """Seconds per operation (best of 5 rounds of ``n``)."""
    rng = random.Random(11)
    picks = [rng.randrange(len(chat_ids)) for _ in range(n)]
    best = float("inf")
    for round_ in range(5):
        started = time.perf_counter()
        for i, k in enumerate(picks):
            if op == "create_user":
                ops.create_user(f"{tag}-{round_}-{i}")
            elif op == "create_chat":
                ops.create_chat(owners[k])
            elif op == "add_message":
                ops.add_message(chat_ids[k])
            elif op == "get_chat":
                ops.get_chat(chat_ids[k], owners[k])
            elif op == "list_chats":
                ops.list_chats(owners[k])
            else:
                ops.get_messages(chat_ids[k])
        best = min(best, (time.perf_counter() - started) / n)
    return best


def sql_url(backend: str, args: argparse.Namespace) -> tuple[str, Callable[[], None]]:
    """A fresh database on the server; returns its URL and a function that drops it."""
    from sqlalchemy import create_engine, text

    base = (
        args.url
        or {
            "postgres": "postgresql://postgres@127.0.0.1:5432/postgres",
            "mysql": "mysql://root@127.0.0.1:3306/mysql",
        }[backend]
    )
    engine_url = chatdb.create_repository(base).engine.url  # type: ignore[attr-defined]
    name = f"chatdb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(engine_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}" + (" WITH (FORCE)" if backend == "postgres" else "")))
        admin.dispose()

    return engine_url.set(database=name).render_as_string(hide_password=False), drop


def make_pair(
    backend: str, args: argparse.Namespace, workdir: Path, chats: int, messages: int
) -> tuple[Any, Any, list[str], list[str], Callable[[], None]]:
    """Two databases with the same rows: one for chatdb, one for the raw driver."""
    cleanups: list[Callable[[], None]] = []
    if backend == "sqlite":
        path = workdir / "chatdb.db"
        repo = chatdb.create_repository(f"sqlite:///{path}")
        chat_ids, owners = load(repo, chats, messages)
        repo.close()
        raw_path = workdir / "raw.db"
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                shutil.copy(f"{path}{suffix}", f"{raw_path}{suffix}")
        ours: Any = ChatdbOps(chatdb.create_repository(f"sqlite:///{path}"))
        raw: Any = RawSql("sqlite", str(raw_path))
    elif backend in ("postgres", "mysql"):
        urls = []
        for _ in range(2):
            url, drop = sql_url(backend, args)
            cleanups.append(drop)
            repo = chatdb.create_repository(url)
            chat_ids, owners = load(repo, chats, messages)
            repo.close()
            urls.append(url)
        ours = ChatdbOps(chatdb.create_repository(urls[0]))
        from sqlalchemy.engine import make_url

        raw_url = make_url(urls[1])
        if backend == "postgres":
            raw_url = raw_url.set(drivername="postgresql")
        raw = RawSql(backend, raw_url.render_as_string(hide_password=False))
    else:
        from raw_mongo import RawMongo

        url, process = mongo_url(args, workdir)
        if process is not None:
            cleanups.append(process.terminate)
        names = [f"chatdb_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        for name in names:
            repo = chatdb.create_repository(
                chatdb.DbConfig(driver="mongodb", mongodb_url=url, mongodb_name=name)
            )
            chat_ids, owners = load(repo, chats, messages)
            repo.close()
        ours = ChatdbOps(
            chatdb.create_repository(
                chatdb.DbConfig(driver="mongodb", mongodb_url=url, mongodb_name=names[0])
            )
        )
        raw = RawMongoOps(RawMongo(url, names[1]))

    def cleanup() -> None:
        ours.close()
        raw.close()
        for step in reversed(cleanups):
            step()

    return ours, raw, chat_ids, owners, cleanup


def mongo_url(args: argparse.Namespace, workdir: Path) -> tuple[str, Any]:
    if args.url or os.environ.get("CHATDB_TEST_MONGODB_URL"):
        return args.url or os.environ["CHATDB_TEST_MONGODB_URL"], None

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.backends import start_nx27017

    started = start_nx27017(workdir)
    if started is None:
        raise SystemExit("nx-27017 did not start")
    return started


def run_crud(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="chatdb-bench-"))
    try:
        started = time.perf_counter()
        ours, raw, chat_ids, owners, cleanup = make_pair(
            args.backend, args, workdir, args.chats, args.messages
        )
        print(
            f"# {args.backend}: {args.messages:,} messages in {args.chats:,} chats loaded in {time.perf_counter() - started:.1f}s"
        )
        print(
            f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"chatdb {chatdb.__version__}"
        )
        target = 2.0 if args.backend == "sqlite" else 1.5
        print(f"{'operation':<14}{'chatdb ops/s':>14}{'raw ops/s':>12}{'ratio':>8}  target")
        try:
            for op in OPS:
                n = args.n if op not in ("create_user", "create_chat", "add_message") else args.n_write
                raw_t = measure(raw, op, n, chat_ids, owners, "raw")
                our_t = measure(ours, op, n, chat_ids, owners, "chatdb")
                ratio = our_t / raw_t
                mark = "ok" if ratio <= target else "MISSED"
                print(f"{op:<14}{1 / our_t:>14,.0f}{1 / raw_t:>12,.0f}{ratio:>8.2f}  <= {target} {mark}")
        finally:
            cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_scaling(args: argparse.Namespace) -> None:
    """get_messages latency at 10,000 vs 1,000,000 messages (50 per chat): the index keeps it flat."""
    workdir = Path(tempfile.mkdtemp(prefix="chatdb-scale-"))
    try:
        results = {}
        for total in (10_000, args.scaling_messages):
            path = workdir / f"scale-{total}.db"
            repo = chatdb.create_repository(f"sqlite:///{path}")
            started = time.perf_counter()
            chat_ids, owners = load(repo, total // 50, total)
            load_s = time.perf_counter() - started
            results[total] = measure(ChatdbOps(repo), "get_messages", args.n, chat_ids, owners, "s")
            repo.close()
            print(
                f"get_messages at {total:>9,} messages: {1 / results[total]:>8,.0f} ops/s "
                f"({results[total] * 1e3:.3f} ms; loaded in {load_s:.1f}s)"
            )
        ratio = results[args.scaling_messages] / results[10_000]
        print(
            f"time ratio {args.scaling_messages:,} / 10,000: {ratio:.2f} (target <= 1.5: {'ok' if ratio <= 1.5 else 'MISSED'})"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres", "mysql", "mongodb"), default="sqlite")
    parser.add_argument("--url", help="server URL (PostgreSQL/MySQL: any database; a fresh one is created)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--chats", type=int, default=2_000)
    parser.add_argument("-n", type=int, default=5_000, help="reads per round")
    parser.add_argument("--n-write", type=int, default=1_000, help="writes per round")
    parser.add_argument("--scaling", action="store_true", help="only the get_messages scaling check (SQLite)")
    parser.add_argument("--scaling-messages", type=int, default=1_000_000)
    args = parser.parse_args()
    run_scaling(args) if args.scaling else run_crud(args)


if __name__ == "__main__":
    main()
