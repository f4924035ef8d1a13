"""Benchmark: chatdb.export against the ways a user would otherwise get message metadata out.

    python benchmarks/export.py --messages 1000000 --chats 20000 --backend sqlite
    python benchmarks/export.py --backend postgres --url postgresql://postgres@127.0.0.1/bench
    python benchmarks/export.py --rss-scale            # to_parquet peak RSS at 1M and 3M messages

The database is generated once with ``repo.import_rows`` (the bulk path) and reused while its
row counts match. Every case runs in its own subprocess so its peak RSS (``VmHWM``, see
``_rss.py``; the SQLite scan's child process apart) is its own; all cases run in the same
invocation, on the same data, one after another:

* chatdb to_parquet / to_polars -- the library;
* naive -- a Python loop over the raw driver's rows with ``json.loads`` per row, building a
  Polars DataFrame with the same columns;
* floor -- the raw driver's ``fetchmany`` over the same query, building nothing;
* connectorx -- ``polars.read_database_uri(engine="connectorx")`` on the same query (with a typed
  first row, as connectorx cannot type a column whose first value is NULL), then the metadata
  JSON decoded with Polars (``+ decode``) so the frame holds the same metadata columns;
* duckdb sqlite scanner -- when the extension can be loaded (it is downloaded on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _data
import _rss

import chatdb

DEFAULT_URLS = {
    "postgres": "postgresql://postgres@127.0.0.1:5432/chatdb_bench",
    "mysql": "mysql://root@127.0.0.1:3306/chatdb_bench",
    "mongodb": "mongodb://127.0.0.1:27017/chatdb_bench",
}


# -- the database ----------------------------------------------------------------------------------


def database_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    if args.backend == "sqlite":
        folder = Path(args.workdir)
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / f'bench-{args.messages}-{args.chats}.db'}"
    return DEFAULT_URLS[args.backend]


def ensure_database(url: str, messages: int, chats: int) -> None:
    with chatdb.create_repository(url) as repo:
        counts = repo.count_rows()
        if counts["messages"] == messages and counts["chats"] == chats:
            return
        if counts["messages"] or counts["chats"]:
            sys.exit(f"{chatdb.config.redact_url(url)} holds other data ({counts}); give an empty database")
        started = time.perf_counter()
        print(f"generating {messages:,} messages in {chats:,} chats ...", file=sys.stderr, flush=True)
        _data.populate(repo, messages, chats)
        print(f"generated in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def scan_sql(url: str) -> str:
    """The exact SELECT behind ``scan_rows('messages')``, as literal SQL for the baselines."""
    from chatdb.sql.repository import build_scan

    repo = chatdb.create_repository(url)
    engine = getattr(repo, "engine", None)
    if engine is None:
        raise RuntimeError("not for MongoDB (no SQL query to run)")
    return str(build_scan("messages").compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


# -- the cases (each runs in its own process) -----------------------------------------------------------


def case_chatdb_parquet(url: str, workdir: str) -> int:
    from chatdb import export

    with chatdb.create_repository(url) as repo:
        result = export.to_parquet(repo, Path(workdir) / "bench-out.parquet")
    return result.rows


def case_chatdb_polars(url: str, workdir: str) -> int:
    from chatdb import export

    with chatdb.create_repository(url) as repo:
        return export.to_polars(repo).height


def _raw_cursor(url: str) -> tuple[Any, Any]:
    """(connection, cursor) of the bare driver, streaming where the driver can."""
    config = chatdb.DbConfig.from_url(url)
    if config.driver == "sqlite":
        import sqlite3

        con: Any = sqlite3.connect(config.sqlite_path)
        return con, con.cursor()
    if config.driver == "postgres":
        import psycopg

        con = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        return con, con.cursor(name="bench")
    import pymysql
    import pymysql.cursors
    from sqlalchemy.engine import make_url

    parts = make_url(url)
    con = pymysql.connect(
        host=parts.host or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.database,
        charset="utf8mb4",
    )
    return con, con.cursor(pymysql.cursors.SSCursor)


def _mongo_rows(url: str) -> Any:
    """MongoDB has no SQL: pymongo's cursor over the messages in the scan's order, each
    message's owner from a dict of the chats read first (what a user would write)."""
    import pymongo

    client: Any = pymongo.MongoClient(url)
    try:
        db = client.get_default_database("ccluster")  # as chatdb: the URL's database, else ccluster
        owners = {chat["_id"]: chat.get("userId") for chat in db.chats.find({}, {"userId": 1})}
        for doc in db.messages.find({}, sort=[("createdAt", 1), ("_id", 1)], batch_size=50_000):
            yield (
                doc["_id"],
                doc.get("chatId"),
                owners.get(doc.get("chatId")),
                doc.get("role"),
                doc.get("content"),
                doc.get("createdAt"),
                doc.get("metadata"),
            )
    finally:
        client.close()


def case_floor(url: str, workdir: str) -> int:
    if chatdb.DbConfig.from_url(url).driver == "mongodb":
        return sum(1 for _ in _mongo_rows(url))
    con, cursor = _raw_cursor(url)
    cursor.execute(scan_sql(url))
    count = 0
    while rows := cursor.fetchmany(50_000):
        count += len(rows)
    con.close()
    return count


def case_naive(url: str, workdir: str) -> int:
    import polars as pl

    keys = (
        ("model", "model"),
        ("input_tokens", "inputTokens"),
        ("output_tokens", "outputTokens"),
        ("cache_creation_input_tokens", "cacheCreationInputTokens"),
        ("cache_read_input_tokens", "cacheReadInputTokens"),
        ("total_cost_usd", "totalCostUsd"),
        ("duration_ms", "durationMs"),
    )
    names = ["message_id", "chat_id", "user_id", "role", "created_at"]
    names += [name for name, _ in keys] + ["content_chars", "content_parts", "has_image"]
    columns: dict[str, list[Any]] = {name: [] for name in names}
    mongo = chatdb.DbConfig.from_url(url).driver == "mongodb"
    if mongo:
        rows: Any = _mongo_rows(url)
    else:
        con, cursor = _raw_cursor(url)
        cursor.execute(scan_sql(url))
        rows = cursor
    for message_id, chat_id, user_id, role, content, created_at, metadata in rows:
        parts = json.loads(content) if isinstance(content, str) else content
        meta = (json.loads(metadata) if isinstance(metadata, str) else metadata) or {}
        columns["message_id"].append(message_id)
        columns["chat_id"].append(chat_id)
        columns["user_id"].append(user_id)
        columns["role"].append(role)
        columns["created_at"].append(datetime.fromisoformat(created_at))
        for name, key in keys:
            columns[name].append(meta.get(key))
        texts = [part.get("text", "") for part in parts if part.get("type") == "text"]
        columns["content_chars"].append(sum(len(text) for text in texts))
        columns["content_parts"].append(len(parts))
        columns["has_image"].append(any(part.get("type") == "image" for part in parts))
    if not mongo:
        con.close()
    return pl.DataFrame(columns).height


def _connectorx_query(url: str) -> tuple[str, str]:
    """(uri, query) with a typed first row: connectorx types each column from its first value."""
    config = chatdb.DbConfig.from_url(url)
    typed = (
        "SELECT 'x' AS id, 'x' AS chat_id, 'x' AS user_id, 'x' AS role, 'x' AS content, "
        "'x' AS created_at, 'x' AS metadata"
    )
    query = f"SELECT * FROM ({typed}) AS typed UNION ALL SELECT * FROM ({scan_sql(url)}) AS scan"
    if config.driver == "sqlite":
        return f"sqlite://{Path(config.sqlite_path).resolve()}", query
    return url.replace("postgresql+psycopg://", "postgresql://"), query


def case_connectorx(url: str, workdir: str) -> int:
    import polars as pl

    uri, query = _connectorx_query(url)
    frame = pl.read_database_uri(query, uri, engine="connectorx").slice(1)
    return frame.height


def case_connectorx_decode(url: str, workdir: str) -> int:
    import polars as pl

    uri, query = _connectorx_query(url)
    frame = pl.read_database_uri(query, uri, engine="connectorx").slice(1)
    dtype = pl.Struct(
        {
            "model": pl.String,
            "inputTokens": pl.Int64,
            "outputTokens": pl.Int64,
            "cacheCreationInputTokens": pl.Int64,
            "cacheReadInputTokens": pl.Int64,
            "totalCostUsd": pl.Float64,
            "durationMs": pl.Int64,
        }
    )
    frame = frame.with_columns(
        pl.col("metadata").str.json_decode(dtype).struct.unnest(),
        pl.col("created_at").str.to_datetime(time_unit="ms", time_zone="UTC"),
    ).drop("metadata", "content")
    return frame.height


def case_duckdb_sqlite(url: str, workdir: str) -> int:
    import duckdb

    config = chatdb.DbConfig.from_url(url)
    if config.driver != "sqlite":
        raise RuntimeError("only for SQLite")
    con = duckdb.connect()
    try:
        con.execute("LOAD sqlite")  # downloaded on first use: fails offline unless installed
    except duckdb.Error as exc:
        raise RuntimeError("DuckDB's sqlite extension is not installed and cannot be downloaded") from exc
    con.execute(f"ATTACH '{config.sqlite_path}' AS src (TYPE sqlite, READ_ONLY)")
    con.execute("USE src")
    table = con.execute(scan_sql(url)).to_arrow_table()
    assert table is not None
    return len(table)


CASES = {
    "chatdb to_parquet": case_chatdb_parquet,
    "chatdb to_polars": case_chatdb_polars,
    "naive json.loads loop": case_naive,
    "driver fetchmany floor": case_floor,
    "connectorx": case_connectorx,
    "connectorx + decode": case_connectorx_decode,
    "duckdb sqlite scanner": case_duckdb_sqlite,
}


# (The in-process native drivers too, as the connectorx cases import connectorx first; the
# SQLite scan's child process imports its own, inside the clock: that is part of its cost.)
_ARROW = (
    "pyarrow",
    "pyarrow.parquet",
    "duckdb",
    "chatdb.export",
    "chatdb.sql",
    "connectorx",
    "adbc_driver_manager",
    "adbc_driver_postgresql",
)
NEEDS = {
    "chatdb to_parquet": _ARROW,
    "chatdb to_polars": (*_ARROW, "polars"),
    "naive json.loads loop": ("polars",),
    "driver fetchmany floor": (),
    "connectorx": ("polars", "connectorx"),
    "connectorx + decode": ("polars", "connectorx"),
    "duckdb sqlite scanner": ("duckdb", "pyarrow"),
}


def run_case(name: str, url: str, workdir: str) -> None:
    """Child process: run one case, print {seconds, rows, rss_mb} as JSON. Libraries are
    imported before the clock starts: import time is not what is compared."""
    import importlib

    for module in NEEDS[name]:
        importlib.import_module(module)
    # A native SQLite scan reads in a child process (chatdb._sqlite_arrow): reported apart.
    with _rss.ChildPeaks() as children:
        started = time.perf_counter()
        rows = CASES[name](url, workdir)
        seconds = time.perf_counter() - started
    rss_mb = _rss.own_peak_mb()
    print(json.dumps({"seconds": seconds, "rows": rows, "rss_mb": rss_mb, "child_mb": children.max_mb}))


def measure(name: str, url: str, workdir: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--run-case", name, "--url", url, "--workdir", workdir],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": reason[:100]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_all(names: list[str], url: str, workdir: str, repeat: int) -> dict[str, dict[str, Any]]:
    """Each case ``repeat`` times, the cases interleaved (a slow spell of the machine hits them
    all alike); the median time and the highest peak RSS of each."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(repeat):
        for name in names:
            runs[name].append(measure(name, url, workdir))
    results: dict[str, dict[str, Any]] = {}
    for name, done in runs.items():
        failed = [run for run in done if "error" in run]
        if failed:
            results[name] = failed[0]
            continue
        results[name] = {
            "seconds": statistics.median(run["seconds"] for run in done),
            "all": [run["seconds"] for run in done],
            "rows": done[0]["rows"],
            "rss_mb": max(run["rss_mb"] for run in done),
            "child_mb": max(run.get("child_mb", 0) for run in done),
        }
    return results


def report(results: dict[str, dict[str, Any]], title: str) -> None:
    naive = results.get("naive json.loads loop", {}).get("seconds")
    cx = results.get("connectorx", {}).get("seconds")
    print(f"\n{title}")
    print(
        f"{'case':26s} {'median s':>9s} {'runs':>18s} {'RSS MB':>7s} {'child MB':>9s} {'rows':>10s} "
        f"{'naive/case':>11s} {'cx/case':>8s}"
    )
    for name, result in results.items():
        if "error" in result:
            print(f"{name:26s} {'n/a':>9s}   ({result['error']})")
            continue
        ratio = f"{naive / result['seconds']:.1f}x" if naive else ""
        versus = f"{cx / result['seconds']:.2f}x" if cx else ""
        runs = " ".join(f"{value:.2f}" for value in result.get("all", [result["seconds"]]))
        child = f"{result['child_mb']:9.0f}" if result.get("child_mb") else f"{'-':>9s}"
        print(
            f"{name:26s} {result['seconds']:9.2f} {runs:>18s} {result['rss_mb']:7.0f} {child} "
            f"{result['rows']:10,d} {ratio:>11s} {versus:>8s}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--chats", type=int, default=20_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "mysql", "mongodb"), default="sqlite")
    parser.add_argument("--url", help="database URL (default: a file in --workdir, or a local server)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "chatdb-bench"))
    parser.add_argument("--cases", help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument(
        "--rss-scale", action="store_true", help="peak RSS of to_parquet at 1M and 3M messages"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case, interleaved (median)")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_case:
        run_case(args.run_case, args.url, args.workdir)
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.rss_scale:
        results = {}
        for count in (1_000_000, 3_000_000):
            args.messages = count
            url = database_url(args)
            ensure_database(url, count, args.chats)
            results[f"to_parquet {count:,}"] = measure_all(
                ["chatdb to_parquet"], url, args.workdir, args.repeat
            )["chatdb to_parquet"]
        report(results, f"to_parquet peak RSS by size ({args.backend}, {os.cpu_count()} cores)")
        return
    url = database_url(args)
    ensure_database(url, args.messages, args.chats)
    names = [name.strip() for name in args.cases.split(",")] if args.cases else list(CASES)
    results = measure_all(names, url, args.workdir, args.repeat)
    report(
        results, f"{args.messages:,} messages, {args.chats:,} chats, {args.backend}, {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
