"""Arrow-native scans for exports: the driver fills Arrow columns, no Python row objects.

PostgreSQL is read with the ADBC PostgreSQL driver (``adbc-driver-postgresql``) in process:
libpq's binary protocol straight into Arrow, about twice as fast as psycopg's rows.

The ADBC SQLite driver (``adbc-driver-sqlite``, in the ``analytics`` extra) reads a query
straight into Arrow, about twice as fast as ``sqlite3`` rows turned into Arrow. It bundles its
own SQLite library, and two SQLite libraries in one process must never open the same file:
POSIX locks are per process, so one library closing the file drops the other's locks. The scan
therefore runs in a child process (``python -m chatdb.sql.arrow_scan``) that only reads and
streams Arrow IPC to its parent; a few hundred milliseconds of start-up, so only large scans
take this path (``SqlRepository.scan_arrow``).

ADBC infers a column's type from its first values, so a column that starts with NULLs would be
typed wrongly and fail later: the query selects ``ifnull(column, NULL)`` with the sentinel
below (a NUL character, which chatdb never stores in these columns) and the child turns it back
into a null.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import BackendError, BackendUnavailableError

NULL = "\x00"


class NativeScan:
    """How one backend's ADBC driver runs a scan (the repository asks, it does not branch)."""

    def __init__(self, backend: str, module: str, *, null_as: str | None, start_up_cost: bool) -> None:
        self.backend = backend
        self.module = module
        self.null_as = null_as  # select ifnull(column, null_as): for drivers that infer types
        self.start_up_cost = start_up_cost  # small scans are cheaper without it

    def batches(self, url: Any, config: Any, statement: Any, batch_rows: int, location: str) -> Iterator[Any]:
        """Arrow tables for ``statement`` (a Core SELECT), read by this backend's driver."""
        if self.backend == "postgres":
            from sqlalchemy.dialects.postgresql import asyncpg  # renders $n parameters, as libpq wants

            compiled = statement.compile(dialect=asyncpg.dialect())  # type: ignore[no-untyped-call]
            params = tuple(compiled.params[name] for name in compiled.positiontup or ())
            uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
            return postgres_batches(uri, str(compiled), params, batch_rows, location)
        from sqlalchemy.dialects import sqlite

        compiled = statement.compile(dialect=sqlite.dialect())
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
        return sqlite_batches(config.sqlite_path, str(compiled), params, batch_rows)


_NATIVE = {
    "sqlite": NativeScan("sqlite", "adbc_driver_sqlite", null_as=NULL, start_up_cost=True),
    "postgres": NativeScan("postgres", "adbc_driver_postgresql", null_as=None, start_up_cost=False),
}


def for_backend(backend: str) -> NativeScan | None:
    """The native scan for ``backend`` when its driver is installed, else None."""
    native = _NATIVE.get(backend)
    if native is None or any(importlib.util.find_spec(name) is None for name in (native.module, "pyarrow")):
        return None
    return native


def postgres_batches(
    uri: str, sql: str, params: tuple[Any, ...], batch_rows: int, location: str
) -> Iterator[Any]:
    """Arrow tables of at least ``batch_rows`` rows (the last may be smaller) for ``sql`` (with
    ``$n`` parameters) on PostgreSQL; ``location`` (host and port) names the server in errors."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa

    try:
        conn = adbc.connect(uri)
    except Exception as exc:
        raise BackendUnavailableError(f"cannot reach {location}: {_first_line(exc, uri)}") from None
    try:
        cursor = conn.cursor()
        cursor.execute(sql, params)
        pending: list[Any] = []
        count = 0
        for batch in cursor.fetch_record_batch():
            pending.append(batch)
            count += batch.num_rows
            if count >= batch_rows:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
        if pending:
            yield pa.Table.from_batches(pending)
        cursor.close()
    except Exception as exc:
        if type(exc).__module__.startswith(("adbc_driver", "pyarrow")):
            raise BackendError(f"postgres error during export scan: {_first_line(exc, uri)}") from None
        raise
    finally:
        conn.close()


def _first_line(exc: BaseException, uri: str) -> str:
    from ..config import redact_url

    text = str(exc).replace(uri, redact_url(uri)).strip().splitlines()
    return text[0] if text else type(exc).__name__


def sqlite_batches(path: str, sql: str, params: tuple[Any, ...], batch_rows: int) -> Iterator[Any]:
    """Arrow tables of about ``batch_rows`` rows for ``sql`` over the SQLite file at ``path``,
    read by a child process in one statement (one consistent snapshot)."""
    import pyarrow as pa

    request = json.dumps({"path": path, "sql": sql, "params": list(params), "batch_rows": batch_rows})
    child = subprocess.Popen(
        [sys.executable, "-m", "chatdb.sql.arrow_scan"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    finished = False
    try:
        child.stdin.write(request.encode())
        child.stdin.close()
        try:
            reader = pa.ipc.open_stream(child.stdout, memory_pool=pa.system_memory_pool())
            for batch in reader:
                yield pa.Table.from_batches([batch])
        except pa.ArrowInvalid:
            pass  # the child failed before or while streaming: its exit status says why
        finished = child.wait() == 0
        if not finished:
            message = (child.stderr.read() if child.stderr else b"").decode("utf-8", "replace").strip()
            last = message.splitlines()[-1] if message else f"exit status {child.returncode}"
            raise BackendError(f"sqlite error during export scan: {last}")
    finally:
        if not finished:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def _serve() -> None:
    """The child: run the request from stdin, write Arrow IPC batches to stdout."""
    import adbc_driver_sqlite.dbapi as adbc
    import pyarrow as pa
    import pyarrow.compute as pc

    pa.set_memory_pool(pa.system_memory_pool())  # this process only: freed batches go back at once
    request = json.loads(sys.stdin.buffer.read())
    conn = adbc.connect(request["path"])
    try:
        cursor = conn.cursor()
        cursor.adbc_statement.set_options(
            **{"adbc.sqlite.query.batch_rows": str(max(1, request["batch_rows"]))}
        )
        cursor.execute(request["sql"], tuple(request["params"]))
        reader = cursor.fetch_record_batch()
        writer = None
        for batch in reader:
            columns = [
                pc.if_else(pc.equal(column, NULL), pa.scalar(None, column.type), column)
                if pa.types.is_string(column.type)
                else column
                for column in batch.columns
            ]
            out = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
            if writer is None:
                writer = pa.ipc.new_stream(sys.stdout.buffer, out.schema)
            writer.write_batch(out)
        if writer is None:  # no rows: an empty stream with the right column names
            names = [field.name for field in reader.schema]
            empty = pa.schema([pa.field(name, pa.string()) for name in names])
            writer = pa.ipc.new_stream(sys.stdout.buffer, empty)
        writer.close()
        cursor.close()
    finally:
        conn.close()


if __name__ == "__main__":
    try:
        _serve()
    except BrokenPipeError:
        sys.exit(0)  # the parent stopped reading: nothing more to do
