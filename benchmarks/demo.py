"""How fast ``chatdb demo`` fills a SQLite file, beside a raw ``sqlite3.executemany`` baseline.

    .venv/bin/python benchmarks/demo.py                # 1,000,000 messages, 20,000 chats
    .venv/bin/python benchmarks/demo.py --messages 100000

Measured in one run, on fresh files with the same schema and indexes:
  generate only  — the demo rows built and thrown away (the floor for any writer of this data);
  chatdb         — ``chatdb.demo.generate`` end to end (rows made by a child process while this one
                   writes them through ``import_values``: prepared INSERTs in 10,000-row
                   transactions, secondary indexes built once at the end);
  raw sqlite3    — the same generated rows written with ``sqlite3.executemany`` in 5,000-row chunks
                   (sqlite3's defaults: synchronous=FULL, indexes in place).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import chatdb
from chatdb import demo
from chatdb._base import IMPORT_COLUMNS
from chatdb.analytics.pricing import bundled_prices

END = datetime(2026, 11, 1, tzinfo=UTC)


def _plans(args: argparse.Namespace) -> tuple[demo._Generator, list[demo._ChatPlan]]:
    """The chat plans generate() makes, made the same way (users and keys are not benchmarked)."""
    gen = demo._Generator(args.seed, END, args.days, bundled_prices())
    people = demo._make_users(gen, args.users)
    return gen, demo._plan_chats(gen, people, args.chats, args.messages, args.days)


def generate_only(args: argparse.Namespace) -> float:
    gen, plans = _plans(args)
    started = time.perf_counter()
    for _ in demo._make_messages(gen, plans):
        pass
    return time.perf_counter() - started


def chatdb_generate(args: argparse.Namespace, path: Path) -> tuple[float, dict[str, int]]:
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        repo.ensure_schema()
        started = time.perf_counter()
        demo.generate(repo, users=args.users, chats=args.chats, messages=args.messages, days=args.days,
                      seed=args.seed, end=END)  # fmt: skip
        seconds = time.perf_counter() - started
        return seconds, repo.count_rows()


def raw_sqlite(args: argparse.Namespace, path: Path) -> float:
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        repo.ensure_schema()  # same tables and indexes
    gen, plans = _plans(args)
    columns = IMPORT_COLUMNS["messages"]
    insert = f"INSERT OR IGNORE INTO messages ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    con = sqlite3.connect(path)
    started = time.perf_counter()
    rows = ((r["id"], r["chat_id"], r["role"], r["content"], r["created_at"], r["metadata"])
            for r in demo._make_messages(gen, plans))  # fmt: skip
    while chunk := list(islice(rows, 5_000)):
        con.executemany(insert, chunk)
        con.commit()
    seconds = time.perf_counter() - started
    con.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        floor = generate_only(args)
        ours, counts = chatdb_generate(args, folder / "chatdb.db")
        raw = raw_sqlite(args, folder / "raw.db")
        size = (folder / "chatdb.db").stat().st_size / 1e6
    n = args.messages
    print(f"demo data: {counts} -> SQLite file of {size:,.0f} MB")
    print(f"generate only (no writes):  {floor:6.1f} s  {n / floor:>9,.0f} messages/s")
    print(f"chatdb demo.generate:       {ours:6.1f} s  {n / ours:>9,.0f} messages/s  (all tables)")
    print(f"raw sqlite3 executemany:    {raw:6.1f} s  {n / raw:>9,.0f} messages/s  (messages only)")
    print(f"chatdb / raw: {ours / raw:.2f}x")
    print(f"writing alone (minus generation): chatdb {ours - floor:.1f} s, raw {raw - floor:.1f} s")


if __name__ == "__main__":
    main()
