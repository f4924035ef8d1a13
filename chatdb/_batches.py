"""Batch helpers shared by the export (in process), the scans (:mod:`chatdb.sql.arrow_scan`,
``scan_rows`` on SQL and MongoDB) and the SQLite scan's child process
(:mod:`chatdb._sqlite_arrow`): the size of a batch, a producer thread, private DuckDB
connections, stages, owner lookups, and how a child process (the SQLite scan's, the demo's) is
started. Imports nothing heavy at module level."""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any

_DONE = object()

# The bytes of a batch of rows, whatever its row count: messages with images are MBs each, and
# a fixed number of rows held them all (25,000 overflowed Arrow's 2 GiB text columns). Scans
# that size their reads by bytes start with FIRST_ROWS rows, whose size sets the next read's.
BATCH_BYTES = 32 << 20
FIRST_ROWS = 100


def rows_within(budget: int, rows: int, nbytes: int, most: int) -> int:
    """How many rows like the ``rows`` just read (``nbytes`` in all) fit in ``budget`` bytes:
    at least 1, at most ``most``."""
    return max(1, min(most, budget * rows // max(1, nbytes)))


def private_duckdb() -> Any:
    """A new in-memory DuckDB for converting batches: UTC, one thread (the scan runs on the other
    core, and batches are small), freed memory returned promptly instead of being cached (the
    defaults keep up to 512 MiB)."""
    import duckdb

    con = duckdb.connect()
    for setting in (
        "TimeZone = 'UTC'",
        "threads = 1",
        "allocator_flush_threshold = '8MiB'",
        "allocator_bulk_deallocation_flush_threshold = '8MiB'",
    ):
        con.execute(f"SET {setting}")
    return con


def interrupted(exc: BaseException) -> bool:
    """Whether an error out of DuckDB is a Ctrl-C: its InterruptException ("Query
    interrupted"), or a KeyboardInterrupt raised while it called back into Python (to read a
    registered Arrow object), which it reports as an error of its own."""
    text = str(exc)
    return (
        type(exc).__name__ == "InterruptException"
        or text.startswith("Query interrupted")
        or "KeyboardInterrupt" in text
    )


def apply_stage(con: Any, stage: Mapping[str, Any], batch: Any) -> Any:
    """``batch`` (an Arrow record batch or table) as a table with ``stage["columns"]`` replaced
    by the result of the first of ``stage["queries"]`` (DuckDB SQL over a relation ``batch``
    holding only those columns) that does not raise; the other columns pass through uncopied."""
    import duckdb
    import pyarrow as pa

    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    con.register("batch", table.select(stage["columns"]))
    try:
        *strict, last = stage["queries"]
        for sql in strict:
            try:
                result = con.sql(sql).to_arrow_table()
                break
            except duckdb.Error as exc:
                if interrupted(exc):
                    raise KeyboardInterrupt from exc
                continue
        else:
            result = con.sql(last).to_arrow_table()
    finally:
        con.unregister("batch")
    kept = table.drop_columns(stage["columns"])
    return pa.table([*kept.columns, *result.columns], names=[*kept.column_names, *result.column_names])


def is_staged(stage: Mapping[str, Any], table: Any) -> bool:
    """Whether ``table`` went through ``stage`` already (it lacks the columns the stage reads)."""
    return not set(stage["columns"]) <= set(table.column_names)


def lookup_table(table: Any) -> tuple[Any, Any]:
    """(keys, values) of a two-column (key, value) table, as text arrays."""
    import pyarrow as pa

    def text(column: Any) -> Any:
        # (Text already, nearly always: a cast needs Arrow's compute module, slow to import.)
        return column if column.type == pa.string() else column.cast(pa.string())

    keys, values = (text(table.column(i).combine_chunks()) for i in (0, 1))
    return keys, values


def attach_lookup(batch: Any, lookup: Mapping[str, Any], keys: Any, values: Any) -> Any:
    """``batch`` with column ``lookup["name"]`` inserted at ``lookup["position"]``: the value
    of each row's ``lookup["key"]`` among ``keys`` (null where absent)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = pc.index_in(batch.column(lookup["key"]), value_set=keys)
    columns = list(batch.columns)
    names = list(batch.schema.names)
    columns.insert(lookup["position"], values.take(found))
    names.insert(lookup["position"], lookup["name"])
    kind = pa.RecordBatch if isinstance(batch, pa.RecordBatch) else pa.Table
    return kind.from_arrays(columns, names=names)


def prefetch(open_scan: Callable[[], Iterable[Any]], depth: int = 1) -> Generator[Any, None, None]:
    """Iterate ``open_scan()`` in a producer thread, ``depth`` items ahead of the consumer.

    Errors in the producer are re-raised in the consumer; when the consumer stops early the
    producer is told to stop and closes its iterator (in its own thread) before we return.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            source = open_scan()
            try:
                for item in source:
                    if not put((item, None)):
                        break
                    del item  # (a batch is tens of MB: no reference kept while the next is read)
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((_DONE, exc))
        else:
            put((_DONE, None))

    worker = threading.Thread(target=produce, name="chatdb-export-scan", daemon=True)
    worker.start()
    try:
        while True:
            item, error = handoff.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
            del item
    finally:
        stop.set()
        worker.join()


# -- child processes (the SQLite scan's, the demo's, SQLite aggregation parts) --------------------------------------------

# glibc raises its trim threshold as large blocks are freed (up to 64 MB per arena), so a
# stream of 20 MB batches leaves tens of MB of freed memory mapped in the child; a fixed
# threshold hands it back (child peak 250-320 -> ~205 MB on 1M and 3M messages, for 0-8% more
# time). An environment that sets it already wins.
_CHILD_ENV = {"MALLOC_TRIM_THRESHOLD_": str(8 << 20)}


def can_start_child() -> bool:
    """Whether there is a Python to start a child process with (not in an embedded
    interpreter without one)."""
    return bool(sys.executable) and os.path.isfile(sys.executable)


def child_failure(stderr: bytes, returncode: int) -> str:
    """What a failed child process said last (its error), else its exit status."""
    message = stderr.decode("utf-8", "replace").strip()
    return message.splitlines()[-1] if message else f"exit status {returncode}"


def child_env() -> dict[str, str]:
    """This environment, plus the trim threshold and, first on the child's path, the folder
    this chatdb was imported from: the child must run this very code (a checkout put on
    ``sys.path`` by a notebook, beside another chatdb installed or none at all)."""
    env = _CHILD_ENV | dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    return env


def widen_pipe(stream: Any) -> None:
    """A 1 MiB pipe instead of 64 KiB (Linux): 16x fewer wake-ups for the same bytes."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass
