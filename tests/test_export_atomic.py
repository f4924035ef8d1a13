"""Exports that fail leave nothing half-done: staging beside the target and what crashed runs
left, DuckDB files that are not DuckDB's, a failing COMMIT, backend errors typed at the scan
boundary, Ctrl-C inside DuckDB. (Killed processes: tests/test_faults_export.py.)"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

import chatdb
from chatdb import export
from chatdb.errors import BackendError, BackendUnavailableError, ValidationError
from chatdb.repository import ChatRepository


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[ChatRepository]:
    with chatdb.create_repository(f"sqlite:///{tmp_path / 'chat.db'}") as repository:
        seed(repository, 12)
        yield repository


def seed(repo: ChatRepository, messages: int) -> None:
    user = repo.create_user(f"u{uuid.uuid4().hex[:6]}", "hash")
    chat = repo.create_chat(user.id, "t")
    for n in range(messages):
        repo.add_message(chat.id, "user", [{"type": "text", "text": f"m{n}"}], {"inputTokens": n})


def failing_scan(repo: Any, error: BaseException, after_rows: int = 0) -> None:
    """Make ``repo``'s scans raise ``error`` once ``after_rows`` messages were read."""
    original = repo.scan_rows

    def scan_rows(table: str, **options: Any) -> Iterator[Any]:
        read = 0
        options["batch_size"] = 1
        for chunk in original(table, **options):
            if table == "messages" and read >= after_rows:
                raise error
            read += len(chunk)
            yield chunk

    repo.scan_rows = scan_rows
    repo.native_scans = False


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# -- staging and crashed runs' leftovers -----------------------------------------------------------


@pytest.mark.parametrize("target", ["m.parquet", "dataset", "by_day"])
def test_a_run_removes_what_crashed_runs_left_and_leaves_nothing_itself(
    repo: ChatRepository, tmp_path: Path, target: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = out / target
    stale_dir = out / f".{target}.{uuid.uuid4().hex}.tmp"
    (stale_dir / "day=2025-01-01").mkdir(parents=True)
    (stale_dir / "day=2025-01-01" / "part-0.parquet").write_bytes(b"PAR1 no footer")
    stale_file = out / f".{target}.{uuid.uuid4().hex}.tmp"
    stale_file.write_bytes(b"PAR1")
    stale_old = out / f".{target}.{uuid.uuid4().hex}.old"
    stale_old.mkdir()
    other = out / f".{target}x.{uuid.uuid4().hex}.tmp"  # another target's: not ours to remove
    other.write_bytes(b"")
    partition_by = "day" if target == "by_day" else None
    for mode in ("replace", "append"):
        result = export.to_parquet(repo, path, partition_by=partition_by, mode=mode)
        assert result.rows == (12 if mode == "replace" else 0)
    assert leftovers(out) == [other.name]
    pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    with duckdb.connect() as con:
        assert con.execute("SELECT count(*) FROM read_parquet(?)", [pattern]).fetchone() == (12,)


def test_a_live_runs_staging_is_never_swept(tmp_path: Path) -> None:
    import fcntl

    from chatdb.export._sinks import sweep

    target = tmp_path / "m.parquet"
    live = tmp_path / f".m.parquet.{uuid.uuid4().hex}.tmp"
    live.write_bytes(b"")
    holder = os.open(live, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert sweep(target) == []
        assert live.exists()
    finally:
        os.close(holder)
    assert sweep(target) == [live] and not live.exists()


@pytest.mark.parametrize("target", ["m.parquet", "by_day"])
def test_a_failed_export_or_append_leaves_the_previous_one_and_no_staging(
    repo: ChatRepository, tmp_path: Path, target: str
) -> None:
    path = tmp_path / target
    partition_by = "day" if target == "by_day" else None
    export.to_parquet(repo, path, partition_by=partition_by)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    seed(repo, 5)
    failing_scan(repo, OSError("server closed the connection unexpectedly"), after_rows=2)
    for mode in ("replace", "append"):
        with pytest.raises(BackendUnavailableError, match="sqlite"):
            export.to_parquet(repo, path, partition_by=partition_by, mode=mode)
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet")) == before
        assert leftovers(tmp_path) == []


def test_an_append_to_a_dataset_adds_new_files_beside_the_old_ones(
    repo: ChatRepository, tmp_path: Path
) -> None:
    path = tmp_path / "by_day"
    export.to_parquet(repo, path, partition_by="day")
    old = {p.relative_to(path): p.stat().st_ino for p in path.rglob("*.parquet")}
    seed(repo, 3)
    assert export.to_parquet(repo, path, partition_by="day", mode="append").rows == 3
    now = {p.relative_to(path): p.stat().st_ino for p in path.rglob("*.parquet")}
    assert {name: now[name] for name in old} == old  # the same files (hard links), not copies
    assert len(now) > len(old)
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in path.rglob("*.parquet")) == 15


# -- DuckDB targets -------------------------------------------------------------------------------


def test_to_duckdb_into_a_file_that_is_not_duckdb_is_a_validation_error(
    repo: ChatRepository, tmp_path: Path
) -> None:
    notes = tmp_path / "out" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("my notes\n")
    with pytest.raises(ValidationError, match="not a DuckDB database"):
        export.to_duckdb(repo, notes)
    assert notes.read_text() == "my notes\n"
    assert [p.name for p in notes.parent.iterdir()] == ["notes.txt"]


def test_a_failed_to_duckdb_into_a_new_path_leaves_no_file(repo: ChatRepository, tmp_path: Path) -> None:
    failing_scan(repo, OSError("server closed the connection unexpectedly"), after_rows=3)
    target = tmp_path / "new.duckdb"
    with pytest.raises(BackendUnavailableError):
        export.to_duckdb(repo, target)
    assert not target.exists() and not target.with_name("new.duckdb.wal").exists()


def test_a_failed_to_duckdb_into_an_existing_file_keeps_it(repo: ChatRepository, tmp_path: Path) -> None:
    target = tmp_path / "old.duckdb"
    export.to_duckdb(repo, target).close()
    seed(repo, 4)
    failing_scan(repo, OSError("connection reset"), after_rows=3)
    with pytest.raises(BackendUnavailableError):
        export.to_duckdb(repo, target)
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM messages").fetchone() == (12,)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root and mount needed; skipped with the reason otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a size-limited filesystem needs root to mount a tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_duckdb_export_that_fills_the_disk_says_so_and_leaves_no_file(
    tmp_path: Path, small_filesystem: Path
) -> None:
    with chatdb.create_repository(f"sqlite:///{tmp_path / 'big.db'}") as repo:
        user = repo.create_user("big", "hash")
        chat = repo.create_chat(user.id, "t")
        rows = [
            {
                "id": uuid.uuid4().hex,
                "chat_id": chat.id,
                "role": "user",
                "content": '[{"type":"text","text":"x"}]',
                "metadata": f'{{"model":"{uuid.uuid4().hex * 4}"}}',
                "created_at": f"2025-01-01T00:00:{n // 1000 % 60:02d}.{n % 1000:03d}Z",
            }
            for n in range(60_000)
        ]
        repo.import_rows("messages", rows)
        target = small_filesystem / "x.duckdb"
        with pytest.raises(OSError) as raised:
            export.to_duckdb(repo, target, include_text=True)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert str(raised.value) == f"[Errno {errno.ENOSPC}] No space left on device: '{target}'"
    assert list(small_filesystem.iterdir()) == []


# -- errors at the scan boundary, Ctrl-C ------------------------------------------------------------


@pytest.mark.parametrize(
    "error, expected, text",
    [
        (OSError("IO error: server closed the connection"), BackendUnavailableError, "connection lost"),
        (RuntimeError("relation is gone"), BackendError, "error during export scan: relation is gone"),
    ],
)
def test_what_escapes_a_scan_is_a_backend_error_naming_the_backend(
    repo: ChatRepository, error: Exception, expected: type[Exception], text: str
) -> None:
    failing_scan(repo, error, after_rows=4)
    with pytest.raises(expected) as raised:
        export.to_polars(repo)
    assert type(raised.value) is expected and str(raised.value).startswith("sqlite ")
    assert text in str(raised.value) and raised.value.__cause__ is error


def test_duckdb_query_interrupted_is_a_keyboard_interrupt() -> None:
    from chatdb.export._stream import interruptible

    with pytest.raises(KeyboardInterrupt), interruptible():
        raise RuntimeError("Query interrupted")
    with pytest.raises(RuntimeError, match="other"), interruptible():
        raise RuntimeError("other")


def test_an_append_to_a_dataset_holding_a_file_cut_short_is_a_validation_error(
    repo: ChatRepository, tmp_path: Path
) -> None:
    path = tmp_path / "by_day"
    export.to_parquet(repo, path, partition_by="day")
    # What an export killed mid-append left before appends were atomic: a file without its footer.
    folder = next(path.iterdir())
    whole = next(folder.iterdir()).read_bytes()
    (folder / "part-cut.parquet").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValidationError, match=r"not readable Parquet.*mode='replace'"):
        export.to_parquet(repo, path, partition_by="day", mode="append")
    assert export.to_parquet(repo, path, partition_by="day").rows == 12


# -- concurrent exports to one path ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["m.parquet", "by_day"])
def test_concurrent_appends_to_one_export_add_every_message_once(
    repo: ChatRepository, tmp_path: Path, target: str
) -> None:
    # Without a lock, runs started together read the same watermark: duplicates, or a later
    # swap dropping an earlier run's rows.
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / target
    partition_by = "day" if target == "by_day" else None
    export.to_parquet(repo, path, partition_by=partition_by)
    seed(repo, 40)
    with ThreadPoolExecutor(4) as pool:
        added = list(
            pool.map(
                lambda _: export.to_parquet(repo, path, partition_by=partition_by, mode="append").rows,
                range(4),
            )
        )
    assert sorted(added) == [0, 0, 0, 40]
    pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    with duckdb.connect() as con:
        assert con.execute(
            "SELECT count(*), count(DISTINCT message_id) FROM read_parquet(?)", [pattern]
        ).fetchone() == (
            52,
            52,
        )
    assert leftovers(tmp_path) == []


def test_concurrent_table_exports_to_one_folder_keep_a_true_manifest(
    repo: ChatRepository, tmp_path: Path
) -> None:
    import json
    from concurrent.futures import ThreadPoolExecutor

    out = tmp_path / "out"
    export.export_tables(repo, out, partition_by="month")
    seed(repo, 30)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: export.export_tables(repo, out, partition_by="month", append=True), range(3)))
    manifest = json.loads((out / "manifest.json").read_text())
    with duckdb.connect() as con:
        stored = con.execute(
            "SELECT count(*), count(DISTINCT message_id) FROM read_parquet(?)",
            [str(out / "messages" / "**" / "*.parquet")],
        ).fetchone()
    assert stored == (42, 42)
    assert manifest["tables"]["messages"]["rows"] == 42 and len(manifest["runs"]) == 4


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_table_export_into_a_new_folder_that_fails_midway_leaves_no_folder(
    repo: ChatRepository, tmp_path: Path, fmt: str
) -> None:
    # chats is written and swapped in before messages fails: the folder is this run's alone.
    out = tmp_path / "new" / "out"
    failing_scan(repo, OSError("server closed the connection unexpectedly"), after_rows=2)
    with pytest.raises(BackendUnavailableError):
        export.export_tables(repo, out, tables=("chats", "messages"), format=fmt)
    assert not (tmp_path / "new").exists()
