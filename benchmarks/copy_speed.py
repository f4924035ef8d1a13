"""How fast ``chatdb copy`` moves a SQLite demo database to each server, beside baselines run
on the same rows in the same run.

    .venv/bin/python benchmarks/copy_speed.py                     # 1,000,000 messages, 20,000 chats
    .venv/bin/python benchmarks/copy_speed.py --messages 50000 --chats 1000 --users 20

The source is ``chatdb demo`` data in a temporary SQLite file. Every measured run is a child
process into a new, empty database (made with chatdb's schema and indexes, except for pgloader,
which makes its own), timed from start to exit; its peak RSS is the child's own ``VmHWM``. Rows
are counted in the target afterwards.

  chatdb copy (PostgreSQL)   ``chatdb copy --to postgresql://...``
  pgloader                   ``pgloader sqlite:///... postgresql:///...`` (Debian package; shown as
                             unavailable when not installed)
  psycopg COPY loop          ``COPY ... FROM STDIN`` of the same rows, 5,000 per COPY, indexes in place
  chatdb copy (MySQL)        ``chatdb copy --to mysql://...``
  PyMySQL INSERT loop        ``executemany`` multi-row INSERTs of 5,000 rows, indexes in place
  chatdb copy (MongoDB)      ``chatdb copy --to mongodb://...`` (nx-27017 unless --mongodb-url)
  pymongo insert_many loop   unordered ``insert_many`` of 5,000 Node-shape documents, indexes in place
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _rss import peak_mb

from chatdb._base import IMPORT_COLUMNS as COLUMNS

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("users", "chats", "messages", "api_keys")
CHUNK = 5_000


def _source_rows(path: str, table: str) -> Iterator[list[tuple[Any, ...]]]:
    con = sqlite3.connect(path)
    try:
        cursor = con.execute(f"SELECT {', '.join(COLUMNS[table])} FROM {table}")
        while rows := cursor.fetchmany(CHUNK):
            yield rows
    finally:
        con.close()


# -- baselines (each run in a child process: ``copy_speed.py --run NAME SOURCE TARGET``) -------------------


def run_psycopg(source: str, target: str) -> None:
    import psycopg

    with psycopg.connect(target) as con:
        for table in TABLES:
            for rows in _source_rows(source, table):
                with (
                    con.cursor() as cur,
                    cur.copy(f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN") as cp,
                ):
                    for row in rows:
                        cp.write_row(row)
                con.commit()


def run_pymysql(source: str, target: str) -> None:
    import pymysql
    from sqlalchemy.engine import make_url

    url = make_url(target)
    con = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password or "",
                          database=url.database, charset="utf8mb4")  # fmt: skip
    try:
        with con.cursor() as cur:
            for table in TABLES:
                names = COLUMNS[table]
                sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
                for rows in _source_rows(source, table):
                    cur.executemany(sql, rows)
                    con.commit()
    finally:
        con.close()


_MONGO_FIELDS = {
    "users": ("_id", "username", "passwordHash", "createdAt", "updatedAt"),
    "chats": ("_id", "title", "sessionId", "userId", "createdAt", "updatedAt"),
    "messages": ("_id", "chatId", "role", "content", "createdAt", "metadata"),
    "api_keys": ("_id", "userId", "keyHash", "keyPrefix", "name", "createdAt", "lastUsedAt", "revokedAt"),
}


def run_pymongo(source: str, target: str) -> None:
    import pymongo

    url, _, name = target.rpartition("#")
    client: Any = pymongo.MongoClient(url)
    try:
        db = client[name]
        for table in TABLES:
            fields = _MONGO_FIELDS[table]
            collection = db["apiKeys" if table == "api_keys" else table]
            for rows in _source_rows(source, table):
                docs = [dict(zip(fields, row, strict=True)) for row in rows]
                if table == "messages":
                    for doc in docs:
                        doc["content"] = json.loads(doc["content"])
                        if doc["metadata"] is not None:
                            doc["metadata"] = json.loads(doc["metadata"])
                collection.insert_many(docs, ordered=False)
    finally:
        client.close()


def run_chatdb(source: str, target: str) -> None:
    command = [
        sys.executable,
        "-m",
        "chatdb",
        "--quiet",
        "--db",
        f"sqlite:///{source}",
        "copy",
        "--to",
        target,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


RUNS = {"psycopg": run_psycopg, "pymysql": run_pymysql, "pymongo": run_pymongo, "chatdb": run_chatdb}


# -- the benchmark ------------------------------------------------------------------------------------


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB: the child's, or its own child's for chatdb) of a command."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL
    )
    peak = [0.0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for pid in [str(process.pid), *_descendants(process.pid)]:
                peak[0] = max(peak[0], peak_mb(pid) or 0.0)
            time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    code = process.wait()
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    if code:
        raise SystemExit(f"{command[:4]} failed with exit code {code}")
    return seconds, peak[0]


def _descendants(pid: int) -> list[str]:
    found: list[str] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                for child in children.read().split():
                    found += [child, *_descendants(int(child))]
    except OSError:
        pass
    return found


class Servers:
    """Fresh databases on the servers, dropped at the end."""

    def __init__(self, postgres: str, mysql: str, mongodb: str | None, workdir: Path) -> None:
        from sqlalchemy import create_engine

        self.pg_admin = create_engine(postgres.replace("postgresql://", "postgresql+psycopg://", 1),
                                      isolation_level="AUTOCOMMIT")  # fmt: skip
        self.my_admin = create_engine(
            mysql.replace("mysql://", "mysql+pymysql://", 1), isolation_level="AUTOCOMMIT"
        )
        self.pg_base, self.my_base = postgres.rsplit("/", 1)[0], mysql.rsplit("/", 1)[0]
        self.made: list[tuple[str, str]] = []
        self.nx: Any = None
        if mongodb is None:
            sys.path.insert(0, str(ROOT))
            from tests.backends import start_nx27017

            started = start_nx27017(workdir)
            if started is None:
                raise SystemExit("nx-27017 did not start")
            mongodb, self.nx = started
        self.mongodb = mongodb

    def new(self, kind: str, schema: bool = True) -> str:
        from sqlalchemy import text

        name = f"chatdb_bench_{uuid.uuid4().hex[:8]}"
        self.made.append((kind, name))
        if kind == "postgres":
            with self.pg_admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            url = f"{self.pg_base}/{name}"
        elif kind == "mysql":
            with self.my_admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            url = f"{self.my_base}/{name}"
        else:
            url = f"{self.mongodb.rstrip('/')}/{name}"
        if schema:
            import chatdb

            with chatdb.create_repository(url) as repo:
                repo.ensure_schema()
        return url

    def counts(self, url: str) -> dict[str, int]:
        import chatdb

        with chatdb.create_repository(url) as repo:
            return repo.count_rows()

    def close(self) -> None:
        try:
            self._drop()
        finally:
            self.pg_admin.dispose()
            self.my_admin.dispose()
            if self.nx is not None:  # (also when a drop failed: never leave the server running)
                self.nx.terminate()
                self.nx.wait()

    def _drop(self) -> None:
        from sqlalchemy import text

        for kind, name in self.made:
            if kind == "postgres":
                with self.pg_admin.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            elif kind == "mysql":
                with self.my_admin.connect() as conn:
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            else:
                import pymongo

                client: Any = pymongo.MongoClient(self.mongodb)
                client.drop_database(name)
                client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--source", help="an existing chatdb SQLite file to copy (default: a new demo)")
    parser.add_argument("--targets", default="postgres,mysql,mongodb")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/mysql")
    parser.add_argument("--mongodb-url", help="a MongoDB server (default: nx-27017 started for the run)")
    parser.add_argument("--run", nargs=3, metavar=("NAME", "SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        name, source, target = args.run
        RUNS[name](source, target)
        return
    targets = args.targets.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="chatdb-copy-bench-"))
    me = [sys.executable, str(Path(__file__).resolve()), "--run"]
    results: list[tuple[str, float, float, int]] = []
    servers = Servers(args.postgres, args.mysql, args.mongodb_url if "mongodb" in targets else "", workdir)
    try:
        source = args.source
        if source is None:
            source = str(workdir / "demo.db")
            demo = [sys.executable, "-m", "chatdb", "--quiet", "--db", f"sqlite:///{source}", "demo",
                    "--users", str(args.users), "--chats", str(args.chats), "--messages", str(args.messages)]  # fmt: skip
            seconds, peak = measure(demo)
            results.append(("chatdb demo into SQLite", seconds, peak, args.messages))
        messages = sqlite3.connect(source).execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        size = Path(source).stat().st_size / 1e6
        print(f"source: {source} ({size:,.0f} MB, {messages:,} messages); load: {os.getloadavg()[0]:.2f}")

        def one(
            label: str, kind: str, command: list[str], schema: bool = True, url: str | None = None
        ) -> None:
            target = url or servers.new(kind, schema)
            seconds, peak = measure([*command, target] if url is None else command)
            got = servers.counts(target)["messages"] if kind != "pgloader" else _pg_count(target)
            results.append((label, seconds, peak, got))
            print(f"  {label:<28} {seconds:7.1f} s  peak RSS {peak:6.0f} MB  {got:,} messages", flush=True)

        if "postgres" in targets:
            one("chatdb copy -> PostgreSQL", "postgres", [*me, "chatdb", source])
            if shutil.which("pgloader"):
                target = servers.new("postgres", schema=False)
                one("pgloader -> PostgreSQL", "pgloader", ["pgloader", "--quiet", f"sqlite:///{source}", target],
                    url=target)  # fmt: skip
            else:
                print("  pgloader                     unavailable (apt-get install pgloader)")
            one("psycopg COPY loop", "postgres", [*me, "psycopg", source])
        if "mysql" in targets:
            one("chatdb copy -> MariaDB", "mysql", [*me, "chatdb", source])
            one("PyMySQL INSERT loop", "mysql", [*me, "pymysql", source])
        if "mongodb" in targets:
            one("chatdb copy -> MongoDB", "mongodb", [*me, "chatdb", source])
            target = servers.new("mongodb")
            base, _, name = target.rpartition("/")
            one(
                "pymongo insert_many loop", "mongodb", [*me, "pymongo", source, f"{base}/#{name}"], url=target
            )
    finally:
        servers.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n| run | seconds | messages/s | peak RSS (MB) |\n|---|---:|---:|---:|")
    for label, seconds, peak, count in results:
        print(f"| {label} | {seconds:.1f} | {count / seconds:,.0f} | {peak:,.0f} |")
    print(f"load after: {os.getloadavg()}")


def _pg_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as con:
        row = con.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(row[0]) if row else 0


if __name__ == "__main__":
    main()
