"""The child process of SQLite Arrow scans (the parent side is :mod:`chatdb.sql.arrow_scan`).

Runs one read-only request from stdin in one transaction (one snapshot) with the ADBC SQLite
driver and writes Arrow IPC to stdout. It lives outside ``chatdb.sql`` and uses ADBC's
low-level API so that starting it imports neither SQLAlchemy nor the ADBC DB-API layer (which
imports pandas and Polars when installed): about 0.15 s of start-up instead of 1.3 s.

The request (JSON): ``path``, ``sql`` and ``params`` (the ordered scan), ``batch_rows``,
``null`` (the sentinel the query selects for NULL: ADBC types a column from its first values,
so NULLs are selected as this string and turned back into nulls here), and optionally
``lookup``: ``{"sql", "key", "name", "position"}`` -- a two-column query (key, value) read
first, whose value is added to every batch as column ``name`` at ``position``, matched on
column ``key`` (null where absent). The lookup replaces a join SQLite would do per row
(chat owner per message: ~40% of the scan's time) by a hash lookup per batch. And optionally
``stage``: ``{"columns", "queries"}`` applied to every batch before it is sent (see
:func:`apply_stage`; the export's text stage: the message text, most of the bytes, is
parsed here and never crosses the pipe, and the two processes share the work).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.abc
import json
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any


def _read(statement: Any, sql: str, params: list[Any], batch_rows: int) -> Any:
    """A RecordBatchReader over ``sql`` (low-level ADBC: statement, bound parameters)."""
    import pyarrow as pa

    statement.set_options(**{"adbc.sqlite.query.batch_rows": str(max(1, batch_rows))})
    statement.set_sql_query(sql)
    if params:
        values = [pa.array([value]) for value in params]
        statement.bind(pa.record_batch(values, names=[f"p{i}" for i in range(len(params))]))
    handle, _ = statement.execute_query()
    return pa.RecordBatchReader._import_from_c(handle.address)


def _nulls(batch: Any, null: str) -> list[Any]:
    """The batch's columns with the NULL sentinel turned back into nulls (a column without
    any is passed on as it is, not copied)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for column in batch.columns:
        if pa.types.is_string(column.type):
            is_null = pc.equal(column, null)
            if pc.any(is_null).as_py():
                column = pc.if_else(is_null, pa.scalar(None, column.type), column)
        columns.append(column)
    return columns


def _stager(stage: Mapping[str, Any]) -> Any:
    """A function applying ``stage`` to a batch, in a private in-process DuckDB."""
    from ._batches import apply_stage, private_duckdb

    con = private_duckdb()
    return lambda batch: apply_stage(con, stage, batch).to_batches()


def _import(*modules: str) -> None:
    for module in modules:
        importlib.import_module(module)


def serve(request: dict[str, Any], out: Any) -> None:
    import adbc_driver_manager
    import adbc_driver_sqlite
    import pyarrow as pa

    from ._batches import attach_lookup, lookup_table, prefetch

    pa.set_memory_pool(pa.system_memory_pool())  # this process only: freed batches go back at once
    stage_request = request.get("stage")
    # Arrow's compute functions (80 ms) and DuckDB (0.1 s) are imported while SQLite starts
    # reading; the first batch needs both.
    later = ("pyarrow.compute", "duckdb") if stage_request else ("pyarrow.compute",)
    threading.Thread(target=_import, args=later, daemon=True).start()
    database = adbc_driver_sqlite.connect(request["path"])
    connection = adbc_driver_manager.AdbcConnection(database)
    statements = []
    try:
        connection.set_autocommit(False)  # one transaction: the lookup and the scan see one snapshot
        lookup = request.get("lookup")
        keys: Any = None
        values: Any = None
        if lookup:
            statements.append(adbc_driver_manager.AdbcStatement(connection))
            keys, values = lookup_table(_read(statements[-1], lookup["sql"], [], 65_536).read_all())
        statements.append(adbc_driver_manager.AdbcStatement(connection))
        reader = _read(statements[-1], request["sql"], request["params"], request["batch_rows"])
        names = list(reader.schema.names)
        if lookup:
            names.insert(lookup["position"], lookup["name"])

        def prepared() -> Any:
            # (References are dropped as soon as possible: a batch is tens of MB.)
            for batch in reader:
                result = pa.RecordBatch.from_arrays(_nulls(batch, request["null"]), names=batch.schema.names)
                del batch
                yield result if not lookup else attach_lookup(result, lookup, keys, values)
                del result

        # With a stage, SQLite reads the next batch (in a thread) while DuckDB parses this one;
        # DuckDB is set up once the first batch is in, while the second is being read. The
        # reading thread is stopped (closing) before the statements are closed below.
        stage = None
        writer = None
        with contextlib.closing(prefetch(prepared) if stage_request else prepared()) as batches:
            for result in batches:
                if stage_request and stage is None:
                    stage = _stager(stage_request)
                output = stage(result) if stage else [result]
                del result
                for staged in output:
                    if writer is None:
                        writer = pa.ipc.new_stream(out, staged.schema)
                    writer.write_batch(staged)
                output = staged = None
        if writer is None:  # no rows: an empty stream with the right column names
            writer = pa.ipc.new_stream(out, pa.schema([pa.field(name, pa.string()) for name in names]))
        writer.close()
    finally:
        for statement in statements:
            statement.close()
        connection.rollback()
        connection.close()
        database.close()


class _NoPandas(importlib.abc.MetaPathFinder):
    """pyarrow imports pandas, when installed, to rule out pandas objects in ``pa.array()`` and
    ``pa.scalar()`` (0.6 s), and NumPy as it starts (75 ms, on the way to the first row):
    start-up this process never needs -- Arrow, ADBC and DuckDB work without either."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.partition(".")[0] in ("pandas", "numpy"):
            raise ImportError(f"{name} is not used in this process")
        return None


def main() -> None:
    sys.meta_path.insert(0, _NoPandas())
    gc.disable()  # short-lived and without reference cycles: no collection pauses
    try:
        serve(json.loads(sys.stdin.buffer.read()), sys.stdout.buffer)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        os._exit(0)  # the parent stopped reading: nothing more to do
    # Everything is written: skip the interpreter's final collection of every object (0.3 s).
    os._exit(0)


if __name__ == "__main__":
    main()
