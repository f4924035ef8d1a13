"""Arrow batch helpers shared by the export (in process), the native scans
(:mod:`chatdb.sql.arrow_scan`) and the SQLite scan's child process (:mod:`chatdb._sqlite_arrow`):
private DuckDB connections, stages, owner lookups. Imports nothing heavy at module level."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
            except duckdb.Error:
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

    return tuple(table.column(i).combine_chunks().cast(pa.string()) for i in (0, 1))  # type: ignore[return-value]


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
