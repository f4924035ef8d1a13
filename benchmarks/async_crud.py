"""chatdb.aio under 100 concurrent tasks beside the raw asyncio driver, in one run.

    python benchmarks/async_crud.py --backend postgres   # or mysql, mongodb (URL from --url)

Each operation of benchmarks/crud.py runs as ``--tasks`` concurrent tasks on one event loop,
three ways on the same data: chatdb's ``AsyncChatRepository`` (pool of ``--pool``), the raw
asyncio driver (psycopg ``AsyncConnection``, aiomysql, pymongo ``AsyncMongoClient``) issuing the
same statements in the same transaction shape over a pool of the same size, and (with
``--threads``, on by default for PostgreSQL) the sync repository driven through
``asyncio.to_thread`` with the default executor. Throughput is total operations / wall time, best
of 3 rounds. Targets (issue 19): chatdb within 1.5x of raw; >= 2x the to_thread figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _latency
import crud
import raw_mongo

import chatdb
from chatdb._codec import format_ts, next_ts_after, utcnow

CHAT_COLUMNS = "id, title, session_id, user_id, created_at, updated_at"


class RawAsyncSql:
    """crud.RawSql's statements through the bare asyncio driver, on a pool of ``size``."""

    def __init__(self, backend: str, url: str, size: int) -> None:
        self.backend, self.url, self.size = backend, url, size
        self.pool: asyncio.Queue[Any] = asyncio.Queue()

    async def open(self) -> None:
        from sqlalchemy.engine import make_url

        u = make_url(self.url)
        for _ in range(self.size):
            if self.backend == "postgres":
                import psycopg

                conn: Any = await psycopg.AsyncConnection.connect(
                    host=u.host, port=u.port or 5432, user=u.username, dbname=u.database
                )
            else:
                import aiomysql

                conn = await aiomysql.connect(
                    host=u.host or "127.0.0.1",
                    port=u.port or 3306,
                    user=u.username or "root",
                    password=u.password or "",
                    db=u.database,
                    charset="utf8mb4",
                )
                cur = await conn.cursor()
                await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                await conn.commit()
            self.pool.put_nowait(conn)

    async def _tx(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        conn = await self.pool.get()
        try:
            cur = conn.cursor() if self.backend == "postgres" else await conn.cursor()
            try:
                result = await work(cur)
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise
            finally:
                await cur.close()
            return result
        finally:
            self.pool.put_nowait(conn)

    async def create_user(self, username: str) -> None:
        uid, now = str(uuid.uuid4()), format_ts(utcnow())
        sql = "INSERT INTO users (id, username, password_hash, created_at, updated_at) VALUES (%s, %s, %s, %s, %s)"
        await self._tx(lambda c: c.execute(sql, (uid, username, "hash", now, now)))

    async def create_chat(self, user_id: str) -> None:
        cid, now = str(uuid.uuid4()), format_ts(utcnow())
        sql = f"INSERT INTO chats ({CHAT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
        await self._tx(lambda c: c.execute(sql, (cid, "New Chat", None, user_id, now, now)))

    async def add_message(self, chat_id: str) -> None:
        content = json.dumps(crud.CONTENT, ensure_ascii=False, separators=(",", ":"))
        metadata = json.dumps(crud.METADATA, ensure_ascii=False, separators=(",", ":"))

        async def work(c: Any) -> None:
            await c.execute(f"SELECT {CHAT_COLUMNS} FROM chats WHERE id = %s FOR UPDATE", (chat_id,))
            row = await c.fetchone()
            await c.execute("SELECT max(created_at) FROM messages WHERE chat_id = %s", (chat_id,))
            latest = await c.fetchone()
            created = format_ts(next_ts_after((row[5], latest[0])))
            await c.execute(
                "INSERT INTO messages (id, chat_id, role, content, created_at, metadata) VALUES (%s, %s, %s, %s, %s, %s)",
                (str(uuid.uuid4()), chat_id, "assistant", content, created, metadata),
            )
            await c.execute("UPDATE chats SET updated_at = %s WHERE id = %s", (created, chat_id))

        await self._tx(work)

    async def get_chat(self, chat_id: str, user_id: str) -> Any:
        async def work(c: Any) -> Any:
            await c.execute(
                f"SELECT {CHAT_COLUMNS} FROM chats WHERE id = %s AND user_id = %s", (chat_id, user_id)
            )
            return await c.fetchone()

        return await self._tx(work)

    async def list_chats(self, user_id: str) -> Any:
        async def work(c: Any) -> Any:
            await c.execute("SELECT count(*) FROM chats WHERE user_id = %s", (user_id,))
            await c.fetchone()
            await c.execute(
                f"SELECT {CHAT_COLUMNS} FROM chats WHERE user_id = %s "
                "ORDER BY updated_at DESC, id DESC LIMIT %s OFFSET %s",
                (user_id, 50, 0),
            )
            return await c.fetchall()

        return await self._tx(work)

    async def get_messages(self, chat_id: str) -> Any:
        async def work(c: Any) -> Any:
            await c.execute("SELECT count(*) FROM messages WHERE chat_id = %s", (chat_id,))
            await c.fetchone()
            await c.execute(
                "SELECT id, chat_id, role, content, created_at, metadata FROM messages WHERE chat_id = %s "
                "ORDER BY created_at, id LIMIT %s OFFSET %s",
                (chat_id, 50, 0),
            )
            rows = await c.fetchall()
            return [(r[0], json.loads(r[3]), r[5] and json.loads(r[5])) for r in rows]

        return await self._tx(work)

    async def close(self) -> None:
        while not self.pool.empty():
            conn = self.pool.get_nowait()
            await conn.close() if self.backend == "postgres" else conn.close()


class RawAsyncMongo:
    """raw_mongo.RawMongo's calls through pymongo's AsyncMongoClient."""

    def __init__(self, url: str, db_name: str, size: int) -> None:
        from pymongo import AsyncMongoClient

        self.client: Any = AsyncMongoClient(url, maxPoolSize=size)
        self.db = self.client[db_name]
        self.raw = raw_mongo

    async def open(self) -> None:
        for collection, keys, unique in self.raw.INDEXES:
            await self.db[collection].create_index(keys, unique=unique)

    async def create_user(self, username: str) -> None:
        now = self.raw._iso(self.raw._now())
        doc = {"_id": str(uuid.uuid4()), "username": username, "passwordHash": "hash"}
        await self.db.users.insert_one({**doc, "createdAt": now, "updatedAt": now})

    async def create_chat(self, user_id: str) -> None:
        now = self.raw._iso(self.raw._now())
        doc = {"_id": str(uuid.uuid4()), "title": "New Chat", "sessionId": None, "userId": user_id}
        await self.db.chats.insert_one({**doc, "createdAt": now, "updatedAt": now})

    async def add_message(self, chat_id: str) -> None:
        chats = self.db.chats
        while True:
            chat: Any = await chats.find_one({"_id": chat_id})
            last = await self.db.messages.find_one(
                {"chatId": chat_id}, {"createdAt": 1}, sort=[("createdAt", -1), ("_id", -1)]
            )
            stamp = self.raw._next_iso(chat["updatedAt"], None if last is None else last["createdAt"])
            moved = await chats.update_one(
                {"_id": chat_id, "updatedAt": chat["updatedAt"]}, {"$set": {"updatedAt": stamp}}
            )
            if moved.matched_count:
                break
        message_id = str(uuid.uuid4())
        await self.db.messages.insert_one(
            {
                "_id": message_id,
                "chatId": chat_id,
                "role": "assistant",
                "content": crud.CONTENT,
                "createdAt": stamp,
                "metadata": crud.METADATA,
            }
        )
        if await chats.find_one({"_id": chat_id}, {"_id": 1}) is None:
            await self.db.messages.delete_one({"_id": message_id})

    async def get_chat(self, chat_id: str, user_id: str) -> Any:
        return await self.db.chats.find_one({"_id": chat_id, "userId": user_id})

    async def _count(self, collection: Any, query: dict[str, Any]) -> int:
        cursor = await collection.aggregate([{"$match": query}, {"$count": "n"}])
        found = await cursor.to_list()
        return int(found[0]["n"]) if found else 0

    async def list_chats(self, user_id: str) -> Any:
        await self._count(self.db.chats, {"userId": user_id})
        cursor = self.db.chats.find({"userId": user_id}, sort=[("updatedAt", -1), ("_id", -1)], limit=50)
        return await cursor.to_list()

    async def get_messages(self, chat_id: str) -> Any:
        await self._count(self.db.messages, {"chatId": chat_id})
        cursor = self.db.messages.find({"chatId": chat_id}, sort=[("createdAt", 1), ("_id", 1)], limit=50)
        return await cursor.to_list()

    async def close(self) -> None:
        await self.client.close()


class ChatdbAsyncOps:
    def __init__(self, repo: chatdb.AsyncChatRepository) -> None:
        self.repo = repo

    async def open(self) -> None:
        await self.repo.ensure_schema()

    async def create_user(self, username: str) -> None:
        await self.repo.create_user(username, "hash")

    async def create_chat(self, user_id: str) -> None:
        await self.repo.create_chat(user_id)

    async def add_message(self, chat_id: str) -> None:
        await self.repo.add_message(chat_id, "assistant", crud.CONTENT, crud.METADATA)

    async def get_chat(self, chat_id: str, user_id: str) -> Any:
        return await self.repo.get_chat(chat_id, user_id)

    async def list_chats(self, user_id: str) -> Any:
        return await self.repo.list_chats(user_id, limit=50)

    async def get_messages(self, chat_id: str) -> Any:
        return await self.repo.get_messages(chat_id, limit=50)

    async def close(self) -> None:
        await self.repo.aclose()


class ToThreadOps:
    """The sync repository, each call through asyncio.to_thread (the default executor)."""

    def __init__(self, repo: Any) -> None:
        self.sync = crud.ChatdbOps(repo)

    async def open(self) -> None:
        await asyncio.to_thread(self.sync.repo.ensure_schema)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.sync, name)
        return lambda *args: asyncio.to_thread(method, *args)

    async def close(self) -> None:
        self.sync.close()


async def measure(
    ops: Any, op: str, n: int, tasks: int, chat_ids: list[str], owners: list[str], tag: str
) -> float:
    """Operations per second of ``n`` operations split over ``tasks`` concurrent tasks (best of 3)."""
    rng = random.Random(11)
    picks = [rng.randrange(len(chat_ids)) for _ in range(n)]
    best = 0.0
    for round_ in range(3):

        async def worker(first: int, round_: int = round_) -> None:
            for i in range(first, n, tasks):
                k = picks[i]
                if op == "create_user":
                    await ops.create_user(f"{tag}-{round_}-{i}")
                elif op == "create_chat":
                    await ops.create_chat(owners[k])
                elif op == "add_message":
                    await ops.add_message(chat_ids[k])
                elif op == "get_chat":
                    await ops.get_chat(chat_ids[k], owners[k])
                elif op == "list_chats":
                    await ops.list_chats(owners[k])
                else:
                    await ops.get_messages(chat_ids[k])

        started = time.perf_counter()
        await asyncio.gather(*(worker(t) for t in range(tasks)))
        best = max(best, n / (time.perf_counter() - started))
    return best


def prepare(
    args: argparse.Namespace, workdir: Path
) -> tuple[list[Any], list[str], list[str], list[Callable[[], None]]]:
    """(chatdb config, raw target, sync config) on two databases with the same rows; with
    ``--latency-ms``, all three reach the server through a delaying proxy."""
    cleanups: list[Callable[[], None]] = []
    if args.backend in ("postgres", "mysql"):
        from sqlalchemy.engine import make_url

        urls = []
        for _ in range(2):
            url, drop = crud.sql_url(args.backend, args)
            cleanups.append(drop)
            with chatdb.create_repository(url) as repo:
                chat_ids, owners = crud.load(repo, args.chats, args.messages)
            urls.append(url)
        if args.latency_ms:
            parts = make_url(urls[0])
            port, stop = _latency.start(parts.host or "127.0.0.1", parts.port or 0, args.latency_ms / 2)
            cleanups.append(stop)
            urls = [
                make_url(u).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
                for u in urls
            ]
        configs = [chatdb.DbConfig.from_url(urls[0], pool_size=args.pool), urls[1], urls[0]]
    else:
        url, process = crud.mongo_url(args, workdir)
        if process is not None:
            cleanups.append(process.terminate)
        names = [f"chatdb_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        for name in names:
            with chatdb.create_repository(
                chatdb.DbConfig(driver="mongodb", mongodb_url=url, mongodb_name=name)
            ) as repo:
                chat_ids, owners = crud.load(repo, args.chats, args.messages)
        if args.latency_ms:
            host, _, server_port = url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
            port, stop = _latency.start(host, int(server_port), args.latency_ms / 2)
            cleanups.append(stop)
            url = f"mongodb://127.0.0.1:{port}/"
        ours = chatdb.DbConfig(driver="mongodb", mongodb_url=url, mongodb_name=names[0], pool_size=args.pool)
        configs = [ours, (url, names[1]), ours]
    return configs, chat_ids, owners, cleanups


async def run(args: argparse.Namespace, configs: list[Any], chat_ids: list[str], owners: list[str]) -> None:
    ours: Any = ChatdbAsyncOps(chatdb.create_async_repository(configs[0]))
    raw: Any = (
        RawAsyncMongo(configs[1][0], configs[1][1], size=args.pool)
        if args.backend == "mongodb"
        else RawAsyncSql(args.backend, configs[1], args.pool)
    )
    threads: Any = ToThreadOps(chatdb.create_repository(configs[2])) if args.threads else None
    for each in (ours, raw, threads):
        if each is not None:
            await each.open()
    header = f"{'operation':<14}{'chatdb ops/s':>14}{'raw ops/s':>12}{'raw/chatdb':>12}"
    print(header + (f"{'to_thread ops/s':>17}{'chatdb/thread':>15}" if threads else ""))
    try:
        for op in crud.OPS:
            n = args.n if op not in ("create_user", "create_chat", "add_message") else args.n_write
            raw_rate = await measure(raw, op, n, args.tasks, chat_ids, owners, "raw")
            our_rate = await measure(ours, op, n, args.tasks, chat_ids, owners, "chatdb")
            line = f"{op:<14}{our_rate:>14,.0f}{raw_rate:>12,.0f}{raw_rate / our_rate:>12.2f}"
            line += " ok" if raw_rate / our_rate <= 1.5 else " MISSED"
            if threads:
                thread_rate = await measure(threads, op, n, args.tasks, chat_ids, owners, "thread")
                line += f"{thread_rate:>14,.0f}{our_rate / thread_rate:>15.2f}"
                line += " ok" if our_rate / thread_rate >= 2 else " MISSED"
            print(line, flush=True)
    finally:
        for each in (ours, raw, threads):
            if each is not None:
                await each.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("postgres", "mysql", "mongodb"), default="postgres")
    parser.add_argument("--url", help="server URL (PostgreSQL/MySQL: any database; a fresh one is created)")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--chats", type=int, default=400)
    parser.add_argument("-n", type=int, default=4_000, help="reads per round")
    parser.add_argument("--n-write", type=int, default=2_000, help="writes per round")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--pool", type=int, default=10, help="connections of chatdb and of the raw pool")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="network round trip to simulate (a delaying proxy in a child process; see _latency.py)",
    )
    parser.add_argument(
        "--threads",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also the sync repository through asyncio.to_thread (default: on PostgreSQL)",
    )
    args = parser.parse_args()
    if args.threads is None:
        args.threads = args.backend == "postgres"
    workdir = Path(tempfile.mkdtemp(prefix="chatdb-abench-"))
    try:
        started = time.perf_counter()
        configs, chat_ids, owners, cleanups = prepare(args, workdir)
        print(
            f"# {args.backend}: {args.messages:,} messages in {args.chats:,} chats loaded in "
            f"{time.perf_counter() - started:.1f}s; {args.tasks} tasks, pool {args.pool}, "
            f"round trip +{args.latency_ms:g} ms"
        )
        print(
            f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load {os.getloadavg()[0]:.1f}"
        )
        try:
            asyncio.run(run(args, configs, chat_ids, owners))
        finally:
            for step in reversed(cleanups):
                step()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
