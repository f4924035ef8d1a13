"""``chatdb export``: tables to Parquet, CSV, NDJSON or a DuckDB file, streamed batch by batch.

Parquet and DuckDB are written by :mod:`chatdb.export`. CSV and NDJSON are written here from
:func:`chatdb.export.read`'s record batches (timestamps as the stored ISO text, ``...Z``), so
memory stays flat whatever the size. Parquet, CSV and NDJSON exports get a ``manifest.json``
beside them: files, row counts, filters, time range and chatdb version.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import __version__, admin
from .._codec import format_ts, parse_ts, utcnow
from ..errors import ValidationError
from ..repository import ChatRepository
from ._app import DATETIME, check_range, localize, state

if TYPE_CHECKING:
    import pyarrow as pa

EXPORT_FORMATS = ("parquet", "csv", "ndjson", "duckdb")
ALL_TABLES = ("messages", "chats", "users", "api_keys")
MANIFEST = "manifest.json"


@dataclass
class TableExport:
    table: str
    rows: int = 0
    files: list[str] = field(default_factory=list)
    skipped_rows: int = 0


@dataclass
class ExportSummary:
    """What one ``chatdb export`` wrote: per table rows and files, and the messages' time range."""

    format: str
    out: Path
    tables: dict[str, TableExport] = field(default_factory=dict)
    first_message_at: datetime | None = None
    last_message_at: datetime | None = None
    seconds: float = 0.0

    def line(self) -> str:
        rows = ", ".join(f"{t.table} {t.rows:,}" for t in self.tables.values())
        files = len({f for t in self.tables.values() for f in t.files}) or 1
        skipped = sum(t.skipped_rows for t in self.tables.values())
        return (
            f"exported {rows} rows to {self.out} ({self.format}): {files} file{'s' if files != 1 else ''}, "
            f"{skipped:,} rows skipped as unreadable, {self.seconds:.1f} s"
        )


def _tables(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in ALL_TABLES]
    if unknown or not names:
        raise click.BadParameter(f"use a comma list of {', '.join(ALL_TABLES)}, not {value!r}")
    return names


@click.command()
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="parquet", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Directory for parquet/csv/ndjson (default ./export); file for duckdb (default ./export.duckdb).",
)
@click.option(
    "--tables",
    default=",".join(ALL_TABLES),
    show_default=True,
    callback=_tables,
    help="Comma list of tables.",
)
@click.option("--since", type=DATETIME, help="Messages (and rows) created from this UTC date/time.")
@click.option("--until", type=DATETIME, help="... and before this one.")
@click.option("--user", help="Only this user's rows (username or id).")
@click.option("--include-text", is_flag=True, help="Add the messages' text (off: metadata only).")
@click.option(
    "--partition-by",
    type=click.Choice(["month", "day", "user_id"]),
    help="Parquet only: write messages as a hive-partitioned dataset.",
)
@click.option(
    "--append", is_flag=True, help="Parquet/DuckDB: add only messages newer than those already exported."
)
@click.option("--batch-size", type=click.IntRange(1), default=50_000, show_default=True)
def export(
    fmt: str,
    out: Path | None,
    tables: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    user: str | None,
    include_text: bool,
    partition_by: str | None,
    append: bool,
    batch_size: int,
) -> None:
    """Export tables for analytics; ends with a summary line."""
    since, until = localize(since), localize(until)
    check_range(since, until)
    if partition_by and fmt != "parquet":
        raise click.UsageError("--partition-by needs --format parquet")
    if append and fmt not in ("parquet", "duckdb"):
        raise click.UsageError("--append needs --format parquet or duckdb")
    app = state()
    repo = app.open()
    user_id = admin.resolve_user(repo, user).id if user is not None else None
    target = out or Path("export.duckdb" if fmt == "duckdb" else "export")
    if fmt != "duckdb" and target.exists() and not target.is_dir():
        raise click.BadParameter(
            f"{target} is a file; --format {fmt} writes a directory (a DuckDB export is one file)",
            param_hint="'--out'",
        )
    with app.progress(len(tables), "exporting") as bar:
        try:
            summary = export_tables(
                repo,
                target,
                fmt=fmt,
                tables=tables,
                since=since,
                until=until,
                user_id=user_id,
                include_text=include_text,
                partition_by=partition_by,
                append=append,
                batch_size=batch_size,
                progress=lambda _table: bar.update(1),
            )
        except ValidationError as exc:
            # The library names its own option; here that is running without --append.
            raise ValidationError(str(exc).replace("mode='replace'", "without --append")) from None
    click.echo(summary.line())


def export_tables(
    repo: ChatRepository,
    out: Path,
    *,
    fmt: str = "parquet",
    tables: tuple[str, ...] = ALL_TABLES,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    include_text: bool = False,
    partition_by: str | None = None,
    append: bool = False,
    batch_size: int = 50_000,
    progress: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Write ``tables`` to ``out`` in ``fmt`` and (except for DuckDB) a manifest; returns the
    summary. Raises the export layer's errors and OSError when ``out`` cannot be written."""
    from .. import export as exporter

    started = time.perf_counter()
    summary = ExportSummary(fmt, out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", exporter.ExportWarning)
        _export(
            exporter,
            repo,
            summary,
            tables=tables,
            since=since,
            until=until,
            user_id=user_id,
            include_text=include_text,
            partition_by=partition_by,
            append=append,
            batch_size=batch_size,
            progress=progress,
        )
    for warning in caught:
        if not issubclass(warning.category, exporter.ExportWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif (
            (match := _SKIPPED.match(str(warning.message)))
            and fmt == "duckdb"
            and (match["table"] in summary.tables)
        ):  # to_duckdb reports unreadable rows only this way
            summary.tables[match["table"]].skipped_rows += int(match["rows"])
    summary.seconds = time.perf_counter() - started
    if fmt != "duckdb":
        write_manifest(
            summary,
            {
                "since": since,
                "until": until,
                "user_id": user_id,
                "include_text": include_text,
                "partition_by": partition_by,
            },
            append=append,
        )
    return summary


def _export(
    exporter: Any,
    repo: ChatRepository,
    summary: ExportSummary,
    *,
    tables: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    user_id: str | None,
    include_text: bool,
    partition_by: str | None,
    append: bool,
    batch_size: int,
    progress: Callable[[str], None] | None,
) -> None:
    fmt, out = summary.format, summary.out
    filters: dict[str, Any] = {"since": since, "until": until, "user_id": user_id}
    if fmt == "duckdb":
        out.parent.mkdir(parents=True, exist_ok=True)
        con = exporter.to_duckdb(
            repo,
            str(out),
            tables=tables,
            mode="append" if append else "replace",
            include_text=include_text,
            batch_size=batch_size,
            **filters,
        )
        try:
            for table in tables:
                [(rows,)] = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()
                summary.tables[table] = TableExport(table, int(rows), [out.name])
        finally:
            con.close()
        if progress is not None:
            for table in tables:
                progress(table)
        return

    out.mkdir(parents=True, exist_ok=True)
    # Appending, messages go first: an export they cannot be appended to (other options) is
    # refused before any other table is replaced.
    for table in sorted(tables, key=lambda name: name != "messages") if append else tables:
        text = include_text and table == "messages"
        if fmt == "parquet":
            incremental = append and table == "messages"
            partitioned = partition_by if table == "messages" else None
            path = out / (table if partitioned else f"{table}.parquet")
            result = exporter.to_parquet(
                repo,
                str(path),
                table=table,
                partition_by=partitioned,
                mode="append" if incremental else "replace",
                include_text=text,
                batch_size=batch_size,
                **filters,
            )
            files = _files_under(path, out)
            summary.tables[table] = TableExport(table, result.rows, files, result.skipped_rows)
            if table == "messages":
                summary.first_message_at, summary.last_message_at = _parquet_time_range(path)
        else:
            reader = exporter.read(repo, table, include_text=text, batch_size=batch_size, **filters)
            path = out / f"{table}.{fmt}"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", exporter.ExportWarning)
                done = _write_text_table(reader, path, fmt)
            # read() reports unreadable rows only through its end-of-stream ExportWarning
            # ("N of M <table> rows had unreadable values ...").
            done.skipped = sum(
                _leading_int(str(w.message)) for w in caught if issubclass(w.category, exporter.ExportWarning)
            )
            summary.tables[table] = TableExport(table, done.rows, [path.name], done.skipped)
            if table == "messages":
                summary.first_message_at, summary.last_message_at = done.first, done.last
        if progress is not None:
            progress(table)


# -- CSV / NDJSON ----------------------------------------------------------------------------------


@dataclass
class _Written:
    rows: int = 0
    skipped: int = 0
    first: datetime | None = None
    last: datetime | None = None


def _write_text_table(reader: pa.RecordBatchReader, path: Path, fmt: str) -> _Written:
    import pyarrow.compute as pc

    done = _Written()
    with path.open("wb") as sink:
        writer: Any = None
        for batch in _iso_timestamps(reader):
            if batch.num_rows == 0:
                continue
            if "created_at" in batch.schema.names and batch.schema.field("created_at").type == "string":
                bounds = pc.min_max(batch.column("created_at"))
                low, high = bounds["min"].as_py(), bounds["max"].as_py()
                if low is not None:
                    done.first = min(done.first or parse_ts(low), parse_ts(low))
                    done.last = max(done.last or parse_ts(high), parse_ts(high))
            if fmt == "csv":
                import pyarrow.csv as pcsv

                writer = writer or pcsv.CSVWriter(sink, batch.schema)
                writer.write_batch(batch)
            else:
                import polars as pl

                pl.from_arrow(batch).write_ndjson(sink)  # type: ignore[union-attr]
            done.rows += batch.num_rows
        if fmt == "csv":
            if writer is None:  # no rows: still a header, so the file says what it would hold
                import pyarrow.csv as pcsv

                writer = pcsv.CSVWriter(sink, _string_schema(reader.schema))
            writer.close()
    return done


def _iso_timestamps(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """Timestamps as the database stores them (``2026-11-26T11:21:40.612Z``), not Arrow's text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = _string_schema(reader.schema)
    for batch in reader:
        columns = [
            pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ") if pa.types.is_timestamp(col.type) else col
            for col in batch.columns
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _string_schema(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema])


# The export layer's warning text: "N of M <table> rows had unreadable values ...".
_SKIPPED = re.compile(r"^(?P<rows>\d+) of \d+ (?P<table>\w+) rows")


def _leading_int(text: str) -> int:
    match = _SKIPPED.match(text)
    return int(match["rows"]) if match else 0


# -- Parquet helpers and the manifest --------------------------------------------------------------


def _files_under(path: Path, root: Path) -> list[str]:
    if path.is_file():
        return [str(path.relative_to(root))]
    return sorted(str(p.relative_to(root)) for p in path.rglob("*.parquet"))


def _parquet_time_range(path: Path) -> tuple[datetime | None, datetime | None]:
    import duckdb

    pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
    if path.is_dir() and not any(path.rglob("*.parquet")):
        return None, None
    con = duckdb.connect()
    try:
        [row] = con.execute(
            "SELECT min(created_at), max(created_at) FROM read_parquet(?, hive_partitioning = true)",
            [pattern],
        ).fetchall()
    finally:
        con.close()
    if row[0] is None:
        return None, None
    return _utc(row[0]), _utc(row[1])


def _utc(value: datetime) -> datetime:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def write_manifest(summary: ExportSummary, filters: dict[str, Any], *, append: bool = False) -> Path:
    """``manifest.json`` in the export directory; with ``append``, each run is added to ``runs``
    and the totals describe the whole export."""
    path = summary.out / MANIFEST
    previous: dict[str, Any] = {}
    if append and path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise ValidationError(f"{path} is not valid JSON; cannot append to this export") from None
    run = {
        "exported_at": format_ts(utcnow()),
        "filters": {k: format_ts(v) if isinstance(v, datetime) else v for k, v in filters.items()},
        "rows": {t.table: t.rows for t in summary.tables.values()},
        "skipped_rows": {t.table: t.skipped_rows for t in summary.tables.values()},
        "seconds": round(summary.seconds, 3),
    }
    runs = [*previous.get("runs", []), run]
    tables = {
        t.table: {"files": t.files, "rows": _total_rows(previous, t, append), "skipped_rows": t.skipped_rows}
        for t in summary.tables.values()
    }
    first = _earliest(previous.get("time_range", {}).get("first"), summary.first_message_at)
    last = _latest(previous.get("time_range", {}).get("last"), summary.last_message_at)
    manifest = {
        "chatdb_version": __version__,
        "format": summary.format,
        "tables": tables,
        "filters": run["filters"],
        "time_range": {"first": first, "last": last},
        "runs": runs,
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def _total_rows(previous: dict[str, Any], table: TableExport, append: bool) -> int:
    if append and table.table == "messages":
        return int(previous.get("tables", {}).get("messages", {}).get("rows", 0)) + table.rows
    return table.rows


def _earliest(stored: str | None, new: datetime | None) -> str | None:
    values = [v for v in (stored, format_ts(new) if new else None) if v]
    return min(values) if values else None


def _latest(stored: str | None, new: datetime | None) -> str | None:
    values = [v for v in (stored, format_ts(new) if new else None) if v]
    return max(values) if values else None


COMMANDS = [export]
