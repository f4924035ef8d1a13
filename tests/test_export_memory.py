"""Exports stream: peak memory does not grow with the number of rows.

Each export runs in a fresh subprocess that reports its own peak RSS, and its SQLite scan's
child process's; ten times the rows (about 250 MB more message text) must not cost more than a
few batches' worth. Peaks are read from ``VmHWM``, not ``ru_maxrss``: on exec, Linux carries the
exec-ing process's high-water mark into the new program's, so a subprocess of this (large) test
session would report the session's peak, the same for both sizes.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import chatdb

pytestmark = [
    pytest.mark.sqlite,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak RSS from Linux /proc"),
]

# Peaks are read by the export benchmark's own helper (benchmarks/_rss.py): one measure for both.
RSS_HELPERS = Path(__file__).resolve().parent.parent / "benchmarks"
EXPORT = textwrap.dedent(
    """
    import json, sys
    import chatdb
    from chatdb import export

    sys.path.insert(0, sys.argv[3])
    import _rss

    # The SQLite scan's child process (chatdb._sqlite_arrow): its high-water mark, polled.
    with _rss.ChildPeaks() as children:
        with chatdb.create_repository(sys.argv[1]) as repo:
            result = export.to_parquet(repo, sys.argv[2], batch_size=10_000)
    print(json.dumps({"rows": result.rows, "peak_mb": _rss.own_peak_mb(), "child_mb": children.max_mb}))
    """
)


def make_database(path: Path, messages: int) -> str:
    url = f"sqlite:///{path}"
    with chatdb.create_repository(url) as repo:
        repo.import_rows(
            "chats",
            [
                {
                    "id": f"c{n}",
                    "title": "t",
                    "session_id": None,
                    "user_id": f"u{n % 7}",
                    "created_at": "2025-01-01T00:00:00.000Z",
                    "updated_at": "2025-01-01T00:00:00.000Z",
                }
                for n in range(100)
            ],
        )
    text = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 9  # ~500 characters
    meta = '{"model":"m","inputTokens":120,"outputTokens":45,"totalCostUsd":0.01,"durationMs":900}'
    with sqlite3.connect(path) as con:  # fastest way to a large table; the format is the stored one
        con.executemany(
            "INSERT INTO messages (id, chat_id, role, content, created_at, metadata) VALUES (?, ?, ?, ?, ?, ?)",
            (
                (
                    f"m{n:07d}",
                    f"c{n % 100}",
                    "assistant",
                    f'[{{"type":"text","text":"{text}{n}"}}]',
                    f"2025-01-01T00:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}Z",
                    meta,
                )
                for n in range(messages)
            ),
        )
    return url


def peak_export_mb(url: str, out: Path) -> tuple[float, float]:
    """Peak RSS of the exporting process and of the scan's child process, in MB."""
    done = subprocess.run(
        [sys.executable, "-c", EXPORT, url, str(out), str(RSS_HELPERS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return float(report["peak_mb"]), float(report["child_mb"])


def test_peak_rss_does_not_grow_with_rows(tmp_path: Path) -> None:
    small, small_child = peak_export_mb(
        make_database(tmp_path / "small.db", 50_000), tmp_path / "small.parquet"
    )
    large, large_child = peak_export_mb(
        make_database(tmp_path / "large.db", 500_000), tmp_path / "large.parquet"
    )
    # 450,000 more rows hold ~250 MB more text; a streaming export needs no more memory for them
    # (the margin covers allocator noise between two processes).
    assert small > 50 and large - small < 50, (small, large)
    # Both exports scan natively (at least 50,000 rows), in a child process: it streams too.
    assert small_child > 50 and large_child - small_child < 50, (small_child, large_child)


IMAGES_EXPORT = textwrap.dedent(
    """
    import json, sys
    import chatdb
    from chatdb import export

    sys.path.insert(0, sys.argv[3])
    import _rss

    with _rss.ChildPeaks() as children:
        with chatdb.create_repository(sys.argv[1]) as repo:
            if sys.argv[4] == "native":
                repo.arrow_scan_min_rows = 0  # the native scan, however few the rows
            else:
                repo.native_scans = False  # the DB-API driver's rows
            result = export.to_parquet(repo, sys.argv[2])
    print(json.dumps({"rows": result.rows, "peak_mb": _rss.own_peak_mb(), "child_mb": children.max_mb}))
    """
)
IMAGE = json.dumps([{"type": "text", "text": "look"}, {"type": "image", "imageData": "A" * 131_072}])


@pytest.mark.parametrize(
    "backend, scan, counts",
    [
        pytest.param("sqlite", "native", (100, 2_400), marks=pytest.mark.sqlite),
        pytest.param("postgres", "native", (100, 2_400), marks=pytest.mark.postgres),
        pytest.param("mysql", "native", (100, 2_400), marks=pytest.mark.mysql),
        # The DB-API path's working set (pieces of 32 MB fetched, converted, queued) is ~200 MB:
        # compared past it.
        pytest.param("sqlite", "db-api", (2_400, 4_800), marks=pytest.mark.sqlite),
    ],
)
def test_messages_with_images_export_in_memory_that_does_not_grow_with_them(
    backend: str, scan: str, counts: tuple[int, int], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Images are MBs a message: batches of a fixed number of rows held them all (and 25,000
    of them overflowed Arrow's 2 GiB text columns). Thousands of messages with a 128 KB image
    (300 MB or more) must not need much more memory than fewer: a page or two in flight."""
    peaks = []
    for count in counts:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'images-{count}.db'}"
        else:
            server = request.getfixturevalue(f"{backend}_backend")
            server.reset()
            url = server.url
        with chatdb.create_repository(url) as repo:
            repo.import_rows("chats", [{"id": "c", "user_id": "u", "title": "t", "session_id": None,
                                        "created_at": "2025-01-01T00:00:00.000Z",
                                        "updated_at": "2025-01-01T00:00:00.000Z"}])  # fmt: skip
            repo.import_rows(
                "messages",
                (
                    {
                        "id": f"m{n:05d}",
                        "chat_id": "c",
                        "role": "user",
                        "content": IMAGE,
                        "created_at": f"2025-01-01T00:00:{n // 1000:02d}.{n % 1000:03d}Z",
                        "metadata": None,
                    }
                    for n in range(count)
                ),
                batch_size=200,
            )
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                IMAGES_EXPORT,
                url,
                str(tmp_path / f"{count}.parquet"),
                str(RSS_HELPERS),
                scan,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["rows"] == count
        peaks.append(max(report["peak_mb"], report["child_mb"]))
    small, large = peaks
    assert large - small < 150, (small, large)
