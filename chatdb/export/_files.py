"""Several tables to one place: Parquet, CSV or NDJSON files with a ``manifest.json``, or one
DuckDB file (what ``chatdb export`` runs).

Parquet and DuckDB are written by :func:`~chatdb.export.to_parquet` and the DuckDB loader;
CSV and NDJSON here, from the scan's record batches (timestamps as the stored ISO text,
``...Z``), so memory stays flat whatever the size. Every file is written beside its target and
swapped in (see :mod:`chatdb.export._sinks`), so an interrupted or killed export leaves each
file as it was or complete. The manifest's totals are read from the files themselves, never
added up from earlier runs: a run killed between its data and its manifest is corrected by the
next one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._codec import format_ts, parse_ts, utcnow
from ..errors import ValidationError
from ._sinks import exclusive, staging
from ._stream import ExportWarning, Scan, interruptible
from .schemas import EXPORT_TABLES

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["EXPORT_FORMATS", "MANIFEST", "ExportSummary", "TableExport", "export_tables"]

EXPORT_FORMATS = ("parquet", "csv", "ndjson", "duckdb")
MANIFEST = "manifest.json"


@dataclass
class TableExport:
    """One table of an :class:`ExportSummary`: rows written by this run (for an append, the rows
    added), the files that hold the table (relative to the export's directory) and the rows
    with unreadable values."""

    table: str
    rows: int = 0
    files: list[str] = field(default_factory=list)
    skipped_rows: int = 0


@dataclass
class ExportSummary:
    """What :func:`export_tables` wrote: per table rows and files, the messages' time range
    (of the whole export, for an append) and the wall seconds."""

    format: str
    out: Path
    tables: dict[str, TableExport] = field(default_factory=dict)
    first_message_at: datetime | None = None
    last_message_at: datetime | None = None
    seconds: float = 0.0


def export_tables(
    repo: Any,
    out: str | os.PathLike[str],
    *,
    format: str = "parquet",
    tables: tuple[str, ...] | list[str] = EXPORT_TABLES,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    include_text: bool = False,
    partition_by: str | None = None,
    append: bool = False,
    batch_size: int = 50_000,
    progress: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Export ``tables`` to the directory ``out`` (``<table>.parquet``, ``.csv`` or ``.ndjson``,
    ``messages/`` when partitioned, and ``manifest.json``) or, for ``format="duckdb"``, to the
    DuckDB file ``out``; return the :class:`ExportSummary`. ``append`` (Parquet and DuckDB)
    adds only the messages after those exported and replaces the other tables. Rows with
    unreadable values are counted in the summary instead of warned about. ``progress`` is
    called with each table's name once it is written. Raises ValidationError (bad options,
    ``out`` of the wrong kind), BackendError, OSError when ``out`` cannot be written."""
    if format not in EXPORT_FORMATS:
        raise ValidationError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
    if partition_by is not None and format != "parquet":
        raise ValidationError("partition_by needs format='parquet'")
    if append and format not in ("parquet", "duckdb"):
        raise ValidationError("append needs format='parquet' or 'duckdb'")
    names = tuple(dict.fromkeys([tables] if isinstance(tables, str) else tables))
    unknown = [name for name in names if name not in EXPORT_TABLES]
    if unknown or not names:
        raise ValidationError(f"tables must be among {', '.join(EXPORT_TABLES)}, not {unknown or names!r}")
    target = Path(out)
    if format != "duckdb" and target.exists() and not target.is_dir():
        raise ValidationError(f"{target} is a file; format {format!r} writes a directory")
    filters: dict[str, Any] = {"since": since, "until": until, "user_id": user_id}
    started = time.perf_counter()
    summary = ExportSummary(format, target)
    made = _missing_parents(target if format != "duckdb" else target.parent)
    try:
        with warnings.catch_warnings(), interruptible():
            # Unreadable rows are counted in the summary; the sinks' warnings would repeat them.
            warnings.simplefilter("ignore", ExportWarning)
            if format == "duckdb":
                _export_duckdb(repo, summary, names, filters, include_text, append, batch_size)
                if progress is not None:
                    for name in names:
                        progress(name)
            else:
                target.mkdir(parents=True, exist_ok=True)
                with exclusive(target):  # one run at a time writes the tables and the manifest
                    _export_files(
                        repo,
                        summary,
                        names,
                        filters,
                        include_text,
                        partition_by,
                        append,
                        batch_size,
                        progress,
                    )
                    summary.seconds = time.perf_counter() - started
                    manifest_filters = {**filters, "include_text": include_text, "partition_by": partition_by}
                    _write_manifest(summary, manifest_filters, append=append)
    except BaseException:
        # A folder this run made holds only what this run wrote: a failed or interrupted export
        # into a new folder leaves nothing. (Into an existing export, each table was swapped in
        # whole; those not reached are as they were, and the next run completes the export.)
        if format != "duckdb" and target in made:
            shutil.rmtree(target, ignore_errors=True)
        for directory in made:  # folders this export made and left empty
            try:
                directory.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break
        raise
    summary.seconds = time.perf_counter() - started
    return summary


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, innermost first."""
    missing: list[Path] = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    return missing


def _export_duckdb(
    repo: Any,
    summary: ExportSummary,
    names: tuple[str, ...],
    filters: dict[str, Any],
    include_text: bool,
    append: bool,
    batch_size: int,
) -> None:
    from . import _to_duckdb

    summary.out.parent.mkdir(parents=True, exist_ok=True)
    options = {**filters, "include_text": include_text, "batch_size": batch_size}
    connection, scans = _to_duckdb(repo, summary.out, names, "append" if append else "replace", options)
    connection.close()
    for name in names:
        scan = scans[name]
        summary.tables[name] = TableExport(name, scan.rows, [summary.out.name], scan.skipped_rows)


def _export_files(
    repo: Any,
    summary: ExportSummary,
    names: tuple[str, ...],
    filters: dict[str, Any],
    include_text: bool,
    partition_by: str | None,
    append: bool,
    batch_size: int,
    progress: Callable[[str], None] | None,
) -> None:
    from . import to_parquet

    out = summary.out
    # Appending, messages go first: an export they cannot be appended to (other options) is
    # refused before any other table is replaced.
    for table in sorted(names, key=lambda name: name != "messages") if append else names:
        text = include_text and table == "messages"
        if summary.format == "parquet":
            partitioned = partition_by if table == "messages" else None
            path = out / (table if partitioned else f"{table}.parquet")
            result = to_parquet(
                repo,
                path,
                table=table,
                partition_by=partitioned,
                mode="append" if append and table == "messages" else "replace",
                include_text=text,
                batch_size=batch_size,
                **filters,
            )
            summary.tables[table] = TableExport(
                table, result.rows, _files_under(path, out), result.skipped_rows
            )
            if table == "messages":
                summary.first_message_at, summary.last_message_at = _parquet_time_range(path)
        else:
            scan = Scan(repo, table, include_text=text, batch_size=batch_size, **filters)
            path = out / f"{table}.{summary.format}"
            first, last = _write_text_table(scan, path, summary.format)
            summary.tables[table] = TableExport(table, scan.rows, [path.name], scan.skipped_rows)
            if table == "messages":
                summary.first_message_at, summary.last_message_at = first, last
        if progress is not None:
            progress(table)


# -- CSV / NDJSON ----------------------------------------------------------------------------------


def _write_text_table(scan: Scan, path: Path, fmt: str) -> tuple[datetime | None, datetime | None]:
    """Write the scan as CSV or NDJSON at ``path`` (swapped in when complete); returns the
    messages' first and last ``created_at``."""
    import pyarrow.compute as pc

    first: datetime | None = None
    last: datetime | None = None
    with staging(path) as temporary, temporary.open("wb") as sink:
        writer: Any = None
        for batch in _iso_timestamps(scan):
            if batch.num_rows == 0:
                continue
            if "created_at" in batch.schema.names and batch.schema.field("created_at").type == "string":
                bounds = pc.min_max(batch.column("created_at"))
                low, high = bounds["min"].as_py(), bounds["max"].as_py()
                if low is not None:
                    first = min(first or parse_ts(low), parse_ts(low))
                    last = max(last or parse_ts(high), parse_ts(high))
            if fmt == "csv":
                import pyarrow.csv as pcsv

                writer = writer or pcsv.CSVWriter(sink, batch.schema)
                writer.write_batch(batch)
            else:
                import polars as pl

                pl.from_arrow(batch).write_ndjson(sink)  # type: ignore[union-attr]
        if fmt == "csv":
            if writer is None:  # no rows: still a header, so the file says what it would hold
                import pyarrow.csv as pcsv

                writer = pcsv.CSVWriter(sink, _string_schema(scan.schema))
            writer.close()
        sink.close()
        os.replace(temporary, path)
    return first, last


def _iso_timestamps(scan: Scan) -> Iterator[pa.RecordBatch]:
    """Timestamps as the database stores them (``2026-11-26T11:21:40.612Z``), not Arrow's text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = _string_schema(scan.schema)
    for batch in scan.batches(warn=False):
        columns = [
            pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ") if pa.types.is_timestamp(col.type) else col
            for col in batch.columns
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _string_schema(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema])


# -- Parquet helpers and the manifest --------------------------------------------------------------


def _files_under(path: Path, root: Path) -> list[str]:
    if path.is_file():
        return [str(path.relative_to(root))]
    return sorted(str(p.relative_to(root)) for p in path.rglob("*.parquet"))


def _parquet_rows(root: Path, files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(root / name).metadata.num_rows for name in files)


def _parquet_time_range(path: Path) -> tuple[datetime | None, datetime | None]:
    import duckdb

    pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    if path.is_dir() and not any(path.rglob("*.parquet")):
        return None, None
    with duckdb.connect() as con:
        [row] = con.execute(
            "SELECT min(created_at), max(created_at) FROM read_parquet(?, hive_partitioning = true)",
            [pattern],
        ).fetchall()
    if row[0] is None:
        return None, None
    return _utc(row[0]), _utc(row[1])


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _write_manifest(summary: ExportSummary, filters: dict[str, Any], *, append: bool) -> Path:
    """``manifest.json`` in the export's directory, swapped in whole. Each run is added to
    ``runs``; the totals (rows, files, time range) describe the files as they are, read from
    them (Parquet) or just written (CSV, NDJSON)."""
    path = summary.out / MANIFEST
    previous: dict[str, Any] = {}
    if append and path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            previous = loaded if isinstance(loaded, dict) else {}
        except ValueError:
            previous = {}  # unreadable: the totals come from the files anyway
    run = {
        "exported_at": format_ts(utcnow()),
        "filters": {k: format_ts(v) if isinstance(v, datetime) else v for k, v in filters.items()},
        "rows": {t.table: t.rows for t in summary.tables.values()},
        "skipped_rows": {t.table: t.skipped_rows for t in summary.tables.values()},
        "seconds": round(summary.seconds, 3),
    }
    # An append adds to the history of the export; a replace starts it anew.
    before = previous.get("runs")
    runs = [*(before if isinstance(before, list) else []), run] if append else [run]
    tables = {
        t.table: {
            "files": t.files,
            "rows": _parquet_rows(summary.out, t.files) if summary.format == "parquet" else t.rows,
            "skipped_rows": t.skipped_rows,
        }
        for t in summary.tables.values()
    }
    first, last = summary.first_message_at, summary.last_message_at
    manifest = {
        "chatdb_version": __version__,
        "format": summary.format,
        "tables": tables,
        "filters": run["filters"],
        "time_range": {
            "first": format_ts(first) if first else None,
            "last": format_ts(last) if last else None,
        },
        "runs": runs,
    }
    with staging(path) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    return path
