"""Exports under faults: a process killed (-9) at random points of ``to_parquet`` (one file, a
partitioned dataset, an append) and ``to_duckdb``; Ctrl-C during ``chatdb export``; database
servers restarted mid-export (private instances started here, never the shared ones).

After each fault, readers must see the old export or the new one (every Parquet file readable,
the row count one of the two), and a run afterwards must complete with the exact counts and
leave no staging files behind."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

import chatdb
from chatdb import export
from chatdb.errors import BackendError

from .backends import free_port, wait_for_port

pytestmark = pytest.mark.slow

MESSAGES = 60_000  # above the SQLite scan's child-process threshold (50,000 rows)
CHATS = 300
START = datetime(2025, 1, 1, tzinfo=UTC)
OLD_UNTIL = START + timedelta(days=10)  # the "previous export" holds the messages before this
ROOT = Path(__file__).resolve().parent.parent


def message_rows(chat_ids: list[str], count: int, text: str = "hello there") -> Iterator[dict[str, Any]]:
    for n in range(count):
        stamp = START + timedelta(seconds=n * 40)  # about 28 days
        yield {
            "id": f"m{n:08d}",
            "chat_id": chat_ids[n % len(chat_ids)],
            "role": "user" if n % 2 == 0 else "assistant",
            "content": json.dumps([{"type": "text", "text": f"{text} {n}"}]),
            "created_at": stamp.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "metadata": json.dumps({"model": "m", "inputTokens": n % 100, "totalCostUsd": 0.001}),
        }


def fill(repo: Any, messages: int = MESSAGES, text: str = "hello there") -> None:
    stamp = START.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    repo.import_rows(
        "users",
        [{"id": "u1", "username": "u1", "password_hash": "h", "created_at": stamp, "updated_at": stamp}],
    )
    chats = [f"c{n:05d}" for n in range(CHATS)]
    repo.import_rows(
        "chats",
        [
            {
                "id": c,
                "title": c,
                "session_id": None,
                "user_id": "u1",
                "created_at": stamp,
                "updated_at": stamp,
            }
            for c in chats
        ],
    )
    repo.import_rows("messages", message_rows(chats, messages, text))


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("faults") / "chat.db"
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        fill(repo)
    return f"sqlite:///{path}"


OLD_COUNT = 10 * 24 * 90  # messages before OLD_UNTIL: one every 40 s


def run_export(url: str, call: str) -> subprocess.Popen[bytes]:
    """A child process that runs ``call`` (chatdb.export's function on ``repo``) and exits 0."""
    script = textwrap.dedent(
        f"""
        import chatdb, datetime
        from chatdb import export
        with chatdb.create_repository({url!r}) as repo:
            {call}
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    return subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes]) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()


def parquet_count(path: Path) -> int:
    """Rows in the export at ``path``, opening every file (a file without its footer fails)."""
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def distinct_ids(path: Path) -> int:
    pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    with duckdb.connect() as con:
        row = con.execute("SELECT count(DISTINCT message_id) FROM read_parquet(?)", [pattern]).fetchone()
    return int(row[0]) if row else 0


def staging_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old", ".new")))


CASES = {
    "file": ("m.parquet", {}),
    "dataset": ("by_day", {"partition_by": "day"}),
}


def options(extra: dict[str, Any]) -> str:
    return "".join(f", {key}={value!r}" for key, value in extra.items())


@pytest.mark.parametrize("mode", ["replace", "append"])
@pytest.mark.parametrize("case", list(CASES))
def test_to_parquet_killed_at_random_points_leaves_old_or_new_and_reruns_exactly(
    database: str, tmp_path: Path, case: str, mode: str
) -> None:
    name, extra = CASES[case]
    path = tmp_path / name
    previous = f"export.to_parquet(repo, {str(path)!r}, until=datetime.datetime(2025, 1, 11, tzinfo=datetime.UTC){options(extra)})"
    full = f"export.to_parquet(repo, {str(path)!r}, mode={mode!r}{options(extra)})"
    started = time.monotonic()
    finish(run_export(database, previous))
    assert parquet_count(path) == OLD_COUNT
    took = time.monotonic() - started
    rng = random.Random(f"{case}-{mode}")
    for _ in range(3):
        process = run_export(database, full)
        time.sleep(rng.uniform(0.3, took * 1.6))
        process.kill()
        process.wait()
        # Readers: the old export or the new one, every file whole.
        assert parquet_count(path) in (OLD_COUNT, MESSAGES)
        assert distinct_ids(path) == parquet_count(path)
    finish(run_export(database, full))
    assert parquet_count(path) == MESSAGES == distinct_ids(path)
    assert staging_left(tmp_path) == []


@pytest.mark.parametrize("target", ["existing", "new"])
def test_to_duckdb_killed_at_random_points_keeps_the_database_whole(
    database: str, tmp_path: Path, target: str
) -> None:
    path = tmp_path / "x.duckdb"
    previous = f"export.to_duckdb(repo, {str(path)!r}, until=datetime.datetime(2025, 1, 11, tzinfo=datetime.UTC)).close()"
    full = f"export.to_duckdb(repo, {str(path)!r}).close()"
    started = time.monotonic()
    finish(run_export(database, previous))
    took = time.monotonic() - started
    rng = random.Random(target)
    for _ in range(3):
        if target == "new":
            path.unlink()
            path.with_name("x.duckdb.wal").unlink(missing_ok=True)
        process = run_export(database, full)
        time.sleep(rng.uniform(0.3, took * 1.6))
        process.kill()
        process.wait()
        if path.exists():
            with duckdb.connect(str(path)) as con:
                tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
                if tables or target == "existing":
                    assert tables == {"messages", "chats", "users"}
                    [(count,)] = con.execute("SELECT count(*) FROM messages").fetchall()
                    assert count in (OLD_COUNT, MESSAGES)
    finish(run_export(database, full))
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT message_id) FROM messages").fetchone() == (
            MESSAGES,
            MESSAGES,
        )
        assert con.execute("SELECT count(*) FROM chats").fetchone() == (CHATS,)


def test_readers_see_the_old_or_the_new_dataset_while_appends_run(database: str, tmp_path: Path) -> None:
    path = tmp_path / "by_day"
    with chatdb.create_repository(database) as repo:
        export.to_parquet(repo, path, partition_by="day", until=OLD_UNTIL)
    process = run_export(
        database, f"export.to_parquet(repo, {str(path)!r}, partition_by='day', mode='append')"
    )
    seen = set()
    while process.poll() is None:
        try:
            seen.add(parquet_count(path))
        except FileNotFoundError:
            continue  # a file listed before the swap and removed with the old directory
    finish(process)
    seen.add(parquet_count(path))
    assert seen <= {OLD_COUNT, MESSAGES} and MESSAGES in seen


# -- Ctrl-C ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "duckdb", "partitioned"])
def test_ctrl_c_during_an_export_prints_aborted_exits_130_and_leaves_no_partial_output(
    database: str, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / ("x.duckdb" if fmt == "duckdb" else "out")
    args = ["--format", "duckdb" if fmt == "duckdb" else ("parquet" if fmt == "partitioned" else fmt)]
    args += ["--out", str(out), "--tables", "chats,messages", "--include-text"]
    if fmt == "partitioned":
        args += ["--partition-by", "day"]
    command = [sys.executable, "-m", "chatdb", "--db", database, "export", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    aborted = 0
    for delay in (0.0, 0.1, 0.3):
        # The terminal sends SIGINT to the whole process group: the SQLite scan's child too.
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # (a test run started in the background has SIGINT ignored, and children inherit that)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        # Once the export writes (a staging file beside its target, or the DuckDB file), wait
        # ``delay`` more, then press Ctrl-C.
        while process.poll() is None and not (out.exists() if fmt == "duckdb" else _staging_under(tmp_path)):
            time.sleep(0.002)
        time.sleep(delay)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        if stdout.startswith(b"exported "):  # done before the signal
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
            continue
        assert (process.returncode, stderr.decode().strip()) == (130, "Aborted."), (stdout, stderr)
        assert list(tmp_path.iterdir()) == []  # no file, no staging, no empty folder
        aborted += 1
    assert aborted >= 2


def test_ctrl_c_while_duckdb_reads_a_batch_is_a_keyboard_interrupt_not_an_error() -> None:
    # A KeyboardInterrupt raised while DuckDB calls back into Python for a registered batch
    # comes out as DuckDB's InvalidInputException: the export said "Error: ... failed:
    # KeyboardInterrupt" and exited 1, or (where it tries another query) went on exporting.
    import pyarrow as pa

    from chatdb.export._stream import interruptible

    schema = pa.schema([("x", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch([pa.array([1])], schema=schema)
        raise KeyboardInterrupt

    con = duckdb.connect()
    con.register("batch", pa.RecordBatchReader.from_batches(schema, batches()))
    with pytest.raises(KeyboardInterrupt), interruptible():
        con.sql("SELECT sum(x) FROM batch").fetchall()
    with pytest.raises(duckdb.Error), interruptible():  # any other error stays what it is
        con.sql("SELECT * FROM no_such_table").fetchall()


def _staging_under(folder: Path) -> bool:
    return any(p.name.endswith(".tmp") for p in folder.rglob(".*"))


# -- servers restarted mid-export ---------------------------------------------------------------------


def _as_user(user: str) -> dict[str, Any]:
    """Popen options that run a program as ``user`` when this is root (initdb and mariadbd
    refuse to run as root); the server is then this process's own child, signals and all."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        pytest.skip(f"running as root and there is no {user!r} user to start a private server as")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PrivateServer:
    """A PostgreSQL or MariaDB server of this test's own, in a temporary folder, on a free port."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        owner = "postgres" if kind == "postgres" else "mysql"
        self.as_user = _as_user(owner)
        folder.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(folder, owner, owner)
        data = folder / "data"
        if kind == "postgres":
            if shutil.which("initdb") is None:
                pytest.skip("PostgreSQL's initdb is not installed")
            self._run(["initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        else:
            if shutil.which("mariadb-install-db") is None:
                pytest.skip("mariadb-install-db is not installed")
            user = ["--user=mysql"] if self.as_user else []
            subprocess.run(
                [
                    "mariadb-install-db",
                    "--no-defaults",
                    f"--datadir={data}",
                    "--auth-root-authentication-method=normal",
                    *user,
                ],
                check=True,
                capture_output=True,
            )

    def _run(self, command: list[str]) -> None:
        subprocess.run(command, check=True, capture_output=True, **self.as_user)

    @property
    def url(self) -> str:
        if self.kind == "postgres":
            return f"postgresql://postgres@127.0.0.1:{self.port}/chatdb_faults"
        return f"mysql://root@127.0.0.1:{self.port}/chatdb_faults"

    def start(self) -> None:
        data = self.folder / "data"
        if self.kind == "postgres":
            command = [
                "postgres",
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.folder),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]
        else:
            command = [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.folder / 'mysql.sock'}",
                f"--pid-file={self.folder / 'mysql.pid'}",
                "--skip-log-bin",
                "--innodb-flush-log-at-trx-commit=0",
            ]
            if self.as_user:
                command.append("--user=mysql")
        binary = shutil.which(command[0]) or "/usr/lib/postgresql/15/bin/postgres"
        self.process = subprocess.Popen(
            [binary, *command[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self.as_user
        )
        if not wait_for_port(self.port, 60):
            self.stop()
            pytest.fail(f"the private {self.kind} server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT if self.kind == "postgres" else signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def create_database(self) -> None:
        from sqlalchemy import create_engine, text

        admin = self.url.rsplit("/", 1)[0] + ("/postgres" if self.kind == "postgres" else "/mysql")
        with chatdb.create_repository(admin) as probe:
            engine_url = probe.engine.url  # type: ignore[attr-defined]
        engine = create_engine(engine_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE chatdb_faults"))
        engine.dispose()


@pytest.fixture(params=["postgres", "mysql"])
def private_server(request: pytest.FixtureRequest) -> Iterator[PrivateServer]:
    # Not under pytest's temporary folder: it is private to root, and the server runs as its
    # own user.
    folder = Path(tempfile.mkdtemp(prefix=f"chatdb-private-{request.param}-"))
    folder.chmod(0o755)
    server = PrivateServer(request.param, folder / "server")
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_server_restarted_mid_export_is_a_backend_error_naming_it(
    private_server: PrivateServer, tmp_path: Path
) -> None:
    with chatdb.create_repository(private_server.url) as repo:
        fill(repo, 40_000, text="x" * 1_500)  # ~60 MB of content: the scan is far from done
    with chatdb.create_repository(private_server.url) as repo:
        reader = export.read(repo, batch_size=2_000, include_text=True)
        first = reader.read_next_batch()
        assert first.num_rows == 2_000
        private_server.stop()
        private_server.start()
        rows, failed = first.num_rows, None
        try:
            for batch in reader:
                rows += batch.num_rows
        except BackendError as exc:
            failed = exc
        del reader
    name = "postgres" if private_server.kind == "postgres" else "mysql"
    if failed is None:
        # MySQL reads in pages, each on a connection of its own: a restart between two pages
        # (or one the pages already read past) costs nothing, and every row arrives once.
        assert private_server.kind == "mysql" and rows == 40_000, (private_server.kind, rows)
    else:
        assert str(failed).startswith((name, f"cannot reach {name}")), failed
