"""Where exported batches go: Parquet files or datasets, DuckDB tables; and append watermarks.

Every writer consumes :class:`~chatdb.export._stream.Scan` batches one at a time, so memory
stays bounded by the batch size whatever the table size. Replacing is atomic: new data is
written beside the old (temporary file, directory or transaction) and swapped in at the end, so
a failed export leaves the previous one intact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._codec import format_ts
from ..errors import ValidationError
from ._stream import Scan
from .schemas import REPEATED_COLUMNS

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = [
    "PARTITIONS",
    "check_append_target",
    "duckdb_watermark",
    "load_duckdb",
    "parquet_watermark",
    "write_parquet",
]

PARTITIONS = ("month", "day", "user_id")
_FORMATS = {"month": "%Y-%m", "day": "%Y-%m-%d"}
_AGAIN = "append with the same options, or export anew with mode='replace'"


# -- Parquet -------------------------------------------------------------------------------------


def is_single_file(path: Path) -> bool:
    return path.suffix == ".parquet"


def _partition_column(batch: pa.RecordBatch, partition_by: str) -> pa.RecordBatch:
    """Add the ``month``/``day`` column hive partitioning splits on (UTC, from created_at)."""
    import pyarrow.compute as pc

    if partition_by == "user_id":
        return batch
    stamps = batch.column("created_at")
    labels = pc.strftime(stamps, format=_FORMATS[partition_by], locale="C")
    return batch.append_column(partition_by, labels)


def write_parquet(
    scan: Scan,
    path: Path,
    *,
    partition_by: str | None,
    append: bool,
    compression: str,
) -> int:
    """Write the scan to ``path`` and return how many files were written."""
    if partition_by is None and is_single_file(path):
        return _write_file(scan, path, append=append, compression=compression)
    return _write_dataset(scan, path, partition_by=partition_by, append=append, compression=compression)


def _dictionary(scan: Scan) -> list[str]:
    return list(REPEATED_COLUMNS[scan.table])


def _write_file(scan: Scan, path: Path, *, append: bool, compression: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with pq.ParquetWriter(
            temporary,
            scan.schema,
            compression=compression,
            use_dictionary=_dictionary(scan),
            # The system allocator returns freed buffers at once; the default pool (mimalloc)
            # keeps tens of MB cached over a long write.
            memory_pool=pa.system_memory_pool(),
        ) as writer:
            if append and path.exists():
                # A Parquet file cannot grow in place: stream the old row groups into the new file
                # (its schema was checked before the export began: check_append_target).
                old = pq.ParquetFile(path)
                for batch in old.iter_batches(batch_size=scan.batch_size):
                    writer.write_batch(batch)
            for batch in scan.batches(warn=False):
                writer.write_batch(batch)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return 1


def _write_dataset(
    scan: Scan, path: Path, *, partition_by: str | None, append: bool, compression: str
) -> int:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    if path.exists() and not path.is_dir():
        raise ValidationError(f"{path} is a file; a partitioned export needs a directory")
    if path.is_dir() and not append:
        _check_dataset_dir(path)
    target = path if append else path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    schema = scan.schema
    batches: Iterator[pa.RecordBatch] = scan.batches(warn=False)
    partitioning = None
    if partition_by is not None:
        import pyarrow as pa

        if partition_by != "user_id":
            schema = schema.append(_label_field(partition_by))
            batches = (_partition_column(batch, partition_by) for batch in batches)
        partitioning = ds.partitioning(pa.schema([schema.field(partition_by)]), flavor="hive")
    written: list[str] = []
    try:
        ds.write_dataset(
            ds.Scanner.from_batches(batches, schema=schema),
            target,
            format="parquet",
            partitioning=partitioning,
            basename_template=f"part-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            file_options=ds.ParquetFileFormat().make_write_options(
                compression=compression, use_dictionary=_dictionary(scan)
            ),
            max_rows_per_group=scan.batch_size,
            min_rows_per_group=min(scan.batch_size, 10_000),
            max_open_files=256,
            file_visitor=lambda written_file: written.append(written_file.path),
        )
        if not written and not append:
            # An empty export is still a readable dataset: one file with the schema, no rows.
            target.mkdir(parents=True, exist_ok=True)
            pq.write_table(schema.empty_table(), target / "part-empty.parquet", compression=compression)
            written.append(str(target / "part-empty.parquet"))
        if not append:
            _swap_dir(target, path)
    finally:
        if not append and target.exists():
            shutil.rmtree(target, ignore_errors=True)
    return len(written)


def _check_dataset_dir(path: Path) -> None:
    """Refuse to replace a directory that holds anything but a previous export."""
    for entry in path.rglob("*"):
        if entry.is_file() and entry.suffix != ".parquet":
            raise ValidationError(f"{path} holds {entry.name}, which is not Parquet: refusing to replace it")
        if entry.is_dir() and "=" not in entry.name:
            raise ValidationError(
                f"{path} holds folder {entry.name}, which is not a partition: refusing to replace it"
            )


def _swap_dir(new: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def check_append_target(path: Path, partition_by: str | None, schema: pa.Schema) -> None:
    """Refuse, before anything is written, to append to an export of another shape: other
    columns (or ``include_text`` where it had none) or another partitioning. The new files
    would not read back with the old ones."""
    import pyarrow.parquet as pq

    if is_single_file(path) and partition_by is None:
        if path.exists() and not pq.read_schema(path).equals(schema):
            raise ValidationError(f"{path} holds other columns than this export: {_AGAIN}")
        return
    if not path.is_dir():
        return
    # How the export there was partitioned: by its folders' names, or not at all when files with
    # rows sit at the top (an empty export's one file says nothing).
    entries = list(path.iterdir())
    layout: set[str | None] = {e.name.partition("=")[0] for e in entries if e.is_dir() and "=" in e.name}
    if any(e.suffix == ".parquet" and pq.ParquetFile(e).metadata.num_rows for e in entries if e.is_file()):
        layout.add(None)
    if layout - {partition_by}:
        found = " and ".join(sorted(repr(key) for key in layout))
        raise ValidationError(f"{path} was exported with partition_by={found}: {_AGAIN}")
    # Files in a partition folder lack the column the folder names (user_id); a dataset's
    # top-level file (an empty export's) holds every column, the month/day label included.
    # One file is enough: every earlier append was held to the same shape.
    inner = schema.remove(schema.get_field_index("user_id")) if partition_by == "user_id" else schema
    outer = schema.append(_label_field(partition_by)) if partition_by in _FORMATS else schema
    for file in path.rglob("*.parquet"):
        if not pq.read_schema(file).equals(outer if file.parent == path else inner):
            raise ValidationError(f"{path} holds other columns than this export: {_AGAIN}")
        return


def _label_field(partition_by: str | None) -> pa.Field:
    import pyarrow as pa

    return pa.field(str(partition_by), pa.string())


def parquet_watermark(path: Path, partition_by: str | None) -> tuple[str, str] | None:
    """``(created_at, message_id)`` of the newest message already in the export, or None."""
    import duckdb

    if is_single_file(path) and partition_by is None:
        if not path.exists():
            return None
        source = f"read_parquet('{_quote(str(path))}')"
    else:
        if not path.is_dir() or not any(path.rglob("*.parquet")):
            return None
        source = f"read_parquet('{_quote(str(path / '**' / '*.parquet'))}', hive_partitioning = false)"
    with duckdb.connect() as con:
        row = con.execute(
            f"SELECT created_at, message_id FROM {source} "
            "WHERE created_at IS NOT NULL ORDER BY created_at DESC, message_id DESC LIMIT 1"
        ).fetchone()
    return None if row is None else (format_ts(row[0]), row[1])


def _quote(text: str) -> str:
    return text.replace("'", "''")


# -- DuckDB --------------------------------------------------------------------------------------


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def duckdb_watermark(con: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema) -> tuple[str, str] | None:
    """The newest ``(created_at, message_id)`` in DuckDB table ``table``, None when there is
    none; ValidationError when the table holds other columns or types than ``schema`` (an
    append would fail half-way, or mix schemas)."""
    found = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? AND table_schema = current_schema() ORDER BY ordinal_position",
        [table],
    ).fetchall()
    if not found:
        return None
    view = f"chatdb_export_{uuid.uuid4().hex}"
    empty: Any = schema.empty_table()
    con.register(view, empty)
    try:
        expected = [
            tuple(row[:2]) for row in con.execute(f"DESCRIBE SELECT * FROM {_ident(view)}").fetchall()
        ]
    finally:
        con.unregister(view)
    if [tuple(row) for row in found] != expected:
        raise ValidationError(f"the DuckDB table {table!r} holds other columns than this export: {_AGAIN}")
    row = con.execute(
        f"SELECT created_at, message_id FROM {_ident(table)} "
        "WHERE created_at IS NOT NULL ORDER BY created_at DESC, message_id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (format_ts(row[0]), row[1])


def load_duckdb(con: duckdb.DuckDBPyConnection, scans: list[tuple[Scan, bool]]) -> None:
    """Create (or replace, or with ``True`` append to) each scan's table, batch by batch, all in
    one transaction: a failure leaves every table as it was (old messages never meet new chats,
    and a messages load that fails leaves no chats replaced)."""
    view = f"chatdb_export_{uuid.uuid4().hex}"
    con.execute("BEGIN TRANSACTION")
    try:
        for scan, append in scans:
            name = _ident(scan.table)
            empty: Any = scan.schema.empty_table()
            con.register(view, empty)
            verb = "CREATE TABLE IF NOT EXISTS" if append else "CREATE OR REPLACE TABLE"
            con.execute(f"{verb} {name} AS SELECT * FROM {_ident(view)}")
            con.unregister(view)
            for batch in scan.batches(warn=False):
                con.register(view, batch)
                con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM {_ident(view)}")
                con.unregister(view)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
