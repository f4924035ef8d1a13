"""``chatdb export``: tables to Parquet, CSV, NDJSON or a DuckDB file, streamed batch by batch.

One call of :func:`chatdb.export.export_tables` (files, manifest, DuckDB), then a summary line.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from .. import admin
from ..errors import ValidationError
from ..export import EXPORT_FORMATS, EXPORT_TABLES, ExportSummary, export_tables
from ._app import DATETIME, check_range, localize, state


def _tables(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in EXPORT_TABLES]
    if unknown or not names:
        raise click.BadParameter(f"use a comma list of {', '.join(EXPORT_TABLES)}, not {value!r}")
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
    default=",".join(EXPORT_TABLES),
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
    """Export tables for analytics; ends with a summary line. An interrupted export (Ctrl-C)
    leaves every file as it was."""
    since, until = localize(since), localize(until)
    check_range(since, until)
    if partition_by and fmt != "parquet":
        raise click.UsageError("--partition-by needs --format parquet")
    if append and fmt not in ("parquet", "duckdb"):
        raise click.UsageError("--append needs --format parquet or duckdb")
    target = out or Path("export.duckdb" if fmt == "duckdb" else "export")
    if fmt != "duckdb" and target.exists() and not target.is_dir():
        raise click.BadParameter(
            f"{target} is a file; --format {fmt} writes a directory (a DuckDB export is one file)",
            param_hint="'--out'",
        )
    app = state()
    repo = app.open()
    user_id = admin.resolve_user(repo, user).id if user is not None else None
    with app.progress(len(tables), "exporting") as bar:
        try:
            summary = export_tables(
                repo,
                target,
                format=fmt,
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
        except Exception as exc:
            if not type(exc).__module__.startswith(("duckdb", "_duckdb")):
                raise
            # An error of the target DuckDB file itself (say, a view of yours named messages).
            raise click.ClickException(f"{target}: {str(exc).strip().splitlines()[0]}") from exc
    click.echo(summary_line(summary))


def summary_line(summary: ExportSummary) -> str:
    """``exported messages 24, chats 4 rows to export (parquet): 2 files, 0 rows skipped ...``;
    for an append, the rows it added."""
    rows = ", ".join(f"{t.table} {t.rows:,}" for t in summary.tables.values())
    files = len({f for t in summary.tables.values() for f in t.files}) or 1
    skipped = sum(t.skipped_rows for t in summary.tables.values())
    return (
        f"exported {rows} rows to {summary.out} ({summary.format}): {files} file{'s' if files != 1 else ''}, "
        f"{skipped:,} rows skipped as unreadable, {summary.seconds:.1f} s"
    )


COMMANDS = [export]
