"""How every command prints rows: one ``output_options`` decorator and one ``render`` function.

Formats follow sqlite-utils: ``table`` (aligned columns for people, the default), ``json`` (a list
of objects, streamed row by row so a large listing never sits in memory), ``nl`` (one JSON object
per line), ``csv``, ``tsv`` and ``markdown``. ``--json`` and ``--csv`` are shorthands.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import IO, Any, TypeVar, cast

import click

__all__ = ["FORMATS", "format_ts", "output_options", "render", "render_one"]

FORMATS = ("table", "json", "nl", "csv", "tsv", "markdown")
F = TypeVar("F", bound=Callable[..., Any])


def format_ts(value: datetime) -> str:
    """A timestamp as the database stores it, ``2026-11-26T11:21:40.612Z`` (a naive one is UTC)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def output_options(func: F) -> F:
    """Add ``--format``, ``--json`` and ``--csv``; the command receives one ``fmt`` argument."""

    @click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS, case_sensitive=False),
        default=None,
        help="Output format (default: table).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
    @click.option("--csv", "as_csv", is_flag=True, help="Same as --format csv.")
    @click.option(
        "--wide",
        is_flag=True,
        help="Tables: every column, even on a narrow terminal (piped output always has them all).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, fmt: str | None, as_json: bool, as_csv: bool, wide: bool, **kwargs: Any) -> Any:
        click.get_current_context().meta[_WIDE] = wide
        chosen = {name for name, on in (("json", as_json), ("csv", as_csv)) if on}
        if fmt is not None:
            chosen.add(fmt.lower())
        if len(chosen) > 1:
            raise click.UsageError(f"choose one output format, not {' and '.join(sorted(chosen))}")
        return func(*args, fmt=chosen.pop() if chosen else "table", **kwargs)

    return cast(F, wrapper)


def render(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: str,
    *,
    out: IO[str] | None = None,
    compact: Sequence[str] | None = None,
) -> int:
    """Write ``rows`` (only ``columns``, in that order) to ``out`` (stdout); returns the row count.

    JSON, NDJSON, CSV and TSV are written as rows arrive; table and markdown need every row to
    size their columns, so they are for listings meant for people. A table wider than the
    terminal keeps only the ``compact`` columns (when given), unless ``--wide``; output that is
    not a terminal always has every column.
    """
    stream = out if out is not None else sys.stdout
    if fmt == "json":
        return _write_json(rows, columns, stream)
    if fmt == "nl":
        count = 0
        for row in rows:
            stream.write(_dumps(row, columns) + "\n")
            count += 1
        return count
    if fmt in ("csv", "tsv"):
        writer = csv.writer(stream, dialect="excel" if fmt == "csv" else "excel-tab", lineterminator="\n")
        writer.writerow(columns)
        count = 0
        for row in rows:
            writer.writerow(["" if row.get(c) is None else _plain(row.get(c)) for c in columns])
            count += 1
        return count
    if fmt in ("table", "markdown"):
        cells = [[_human(row.get(c), c) for c in columns] for row in rows]
        if fmt == "table" and compact is not None:
            columns, cells = _fit(columns, cells, compact)
        numeric = [_is_numeric_column(rows_col) for rows_col in zip(*cells, strict=False)] if cells else []
        stream.write(_grid(columns, cells, numeric, markdown=fmt == "markdown"))
        return len(cells)
    raise click.UsageError(f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})")


def render_one(row: Mapping[str, Any], fmt: str, *, out: IO[str] | None = None) -> None:
    """One record (``chatdb info``): JSON as one object, not a list of one; the other formats
    as a one-row listing."""
    if fmt == "json":
        (out if out is not None else sys.stdout).write(_dumps(row, list(row)) + "\n")
    else:
        render([row], list(row), fmt, out=out)


_WIDE = "chatdb.wide"


def terminal_width() -> int | None:
    """Columns of the terminal stdout is, or None when it is none (a pipe, a file)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def _fit(
    columns: Sequence[str], cells: list[list[str]], compact: Sequence[str]
) -> tuple[Sequence[str], list[list[str]]]:
    ctx = click.get_current_context(silent=True)
    width = None if ctx is not None and ctx.meta.get(_WIDE) else terminal_width()
    if width is None or _grid_width(columns, cells) <= width:
        return columns, cells
    keep = [i for i, name in enumerate(columns) if name in compact]
    click.echo(
        f"({len(columns) - len(keep)} columns left out to fit the terminal; --wide shows them)", err=True
    )
    return [columns[i] for i in keep], [[row[i] for i in keep] for row in cells]


def _grid_width(columns: Sequence[str], cells: list[list[str]]) -> int:
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    return sum(widths) + 2 * (len(widths) - 1)


# -- writers ---------------------------------------------------------------------------------------


def _write_json(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], stream: IO[str]) -> int:
    count = 0
    stream.write("[")
    for row in rows:
        stream.write((",\n " if count else "\n ") + _dumps(row, columns))
        count += 1
    stream.write("\n]\n" if count else "]\n")
    return count


def _dumps(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    return json.dumps({c: _jsonable(row.get(c)) for c in columns}, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_ts(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """A CSV cell: timestamps as stored (ISO, ms, Z), nested values as JSON, numbers untouched."""
    value = _jsonable(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _human(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (float, Decimal)):
        number = float(value)
        if not math.isfinite(number):
            return ""
        return f"{number:,.4f}" if column.endswith("usd") else f"{number:,.1f}"
    if isinstance(value, datetime):
        return format_ts(value) if value.tzinfo is not None else value.isoformat(sep=" ")
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    return text.replace("\n", " ").replace("\r", " ")


def _is_numeric_column(cells: Sequence[str]) -> bool:
    filled = [c for c in cells if c]
    return bool(filled) and all(c.replace(",", "").replace(".", "").lstrip("-").isdigit() for c in filled)


def _grid(columns: Sequence[str], cells: list[list[str]], numeric: list[bool], *, markdown: bool) -> str:
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    right = numeric or [False] * len(columns)

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded).rstrip()

    if markdown:
        rule = (
            "|"
            + "|".join(
                ("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True)
            )
            + "|"
        )
    else:
        rule = "  ".join("-" * w for w in widths)
    body = [line(row) for row in cells]
    return "\n".join([line(list(columns)), rule, *body]) + "\n"
