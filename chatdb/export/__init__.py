"""Stream the application's tables into Arrow, Polars, DuckDB, Parquet and Ibis.

:func:`export_tables` writes several tables at once (Parquet, CSV or NDJSON files with a
``manifest.json``, or one DuckDB file): what ``chatdb export`` runs.

Every function here is built on :func:`read`, which scans the database in ordered batches
(``repo.scan_rows``: server-side cursors on SQL, a batched cursor on MongoDB; filters run in the
database) and converts each batch to Arrow in bulk, so no table is ever loaded into Python
objects or into memory at once. Column names and types are fixed (see :mod:`chatdb.export.schemas`
and ``docs/export.md``).

Rows written by other programs may hold invalid JSON or values of the wrong type: such a value is
exported as null (an exact number stored as a string is converted), the row is counted in
``ExportResult.skipped_rows`` and an :class:`ExportWarning` says how many rows were affected;
the export never stops for it.

Needs the ``analytics`` extra (pyarrow, polars, duckdb); :func:`to_ibis` also the ``ibis`` extra.
Missing ones raise :class:`~chatdb.errors.ConfigError` naming the ``pip install`` to run.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ValidationError
from ._files import EXPORT_FORMATS, ExportSummary, TableExport, export_tables
from ._stream import ExportWarning, Scan, interruptible, require
from .schemas import EXPORT_TABLES, schema

if TYPE_CHECKING:
    import duckdb
    import polars
    import pyarrow as pa

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_TABLES",
    "ExportResult",
    "ExportSummary",
    "ExportWarning",
    "TableExport",
    "export_tables",
    "read",
    "schema",
    "to_duckdb",
    "to_ibis",
    "to_parquet",
    "to_polars",
]

Mode = Literal["replace", "append"]
_LOAD_ORDER = ("users", "chats", "api_keys", "messages")


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`to_parquet` wrote: rows, files, rows with unreadable values, wall seconds."""

    rows: int
    files: int
    skipped_rows: int
    seconds: float


def read(
    repo: Any,
    table: str = "messages",
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    include_text: bool = False,
    include_extra: bool = False,
    batch_size: int = 50_000,
) -> pa.RecordBatchReader:
    """A stream of ``table`` as Arrow record batches in ``(created_at, id)`` order.

    ``since`` (inclusive) and ``until`` (exclusive) filter ``created_at``; ``user_id`` keeps
    one user's rows (a message's user is its chat's owner). ``include_text`` adds ``text`` (the
    message's text parts joined by newlines); ``include_extra`` adds ``metadata_extra``, a JSON
    object of the metadata keys without a column of their own. Rows are fetched as the reader is
    consumed, ``batch_size`` at a time; to stop early, drop the reader (``del reader``): its
    scan (cursor, transaction, SQLite child process) ends then -- pyarrow's ``close()`` alone
    keeps it until the reader is released. Raises ValidationError for a bad argument,
    ConfigError when pyarrow/duckdb are missing, BackendError when the database fails.
    """
    scan = Scan(
        repo,
        table,
        since=since,
        until=until,
        user_id=user_id,
        include_text=include_text,
        include_extra=include_extra,
        batch_size=batch_size,
    )
    return scan.reader()


def to_polars(repo: Any, table: str = "messages", **filters: Any) -> polars.DataFrame:
    """``table`` as a Polars DataFrame (one chunk per batch); options as for :func:`read`."""
    pl = require("polars")
    _check_options(filters)
    reader = read(repo, table, **filters)
    frame: polars.DataFrame = pl.from_arrow(reader.read_all(), rechunk=False)
    return frame


def to_parquet(
    repo: Any,
    path: str | os.PathLike[str],
    table: str = "messages",
    *,
    partition_by: str | None = None,
    mode: Mode = "replace",
    compression: str = "zstd",
    **filters: Any,
) -> ExportResult:
    """Stream ``table`` into Parquet at ``path`` and return what was written.

    A path ending in ``.parquet`` (without ``partition_by``) is one file; any other path is a
    dataset directory. ``partition_by="month"``/``"day"``/``"user_id"`` writes a hive-partitioned
    dataset (``month=2025-01/part-....parquet``) that DuckDB, Polars and Spark read directly.
    ``mode="replace"`` swaps the new export in atomically; ``mode="append"`` (messages only)
    adds only the messages after the newest one already exported, by ``(created_at,
    message_id)``, so a repeated job never duplicates or skips one. Other options as for
    :func:`read`. Raises ValidationError, ConfigError, BackendError.
    """
    from ._sinks import PARTITIONS, check_append_target, exclusive, parquet_watermark, write_parquet

    pa = require("pyarrow")
    if partition_by is not None and partition_by not in PARTITIONS:
        raise ValidationError(
            f"partition_by must be one of {', '.join(PARTITIONS)} or None, not {partition_by!r}"
        )
    _check_mode(mode, table)
    _check_compression(pa, compression)
    target = Path(path)
    started = time.perf_counter()
    scan = _scan(repo, table, filters)
    with exclusive(target):  # from the watermark to the swap: see _sinks
        if mode == "append":
            try:
                check_append_target(target, partition_by, scan.schema)
                scan.resume_after(parquet_watermark(target, partition_by))
            except (pa.ArrowInvalid, require("duckdb").Error) as exc:
                # A file cut short (by an export of chatdb before its appends were atomic, or by
                # another program): say which export, never guess which of its files to delete.
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ValidationError(
                    f"{target} holds a file that is not readable Parquet ({first}): remove that file, "
                    "or export anew with mode='replace'"
                ) from exc
        with interruptible():
            files = write_parquet(
                scan, target, partition_by=partition_by, append=mode == "append", compression=compression
            )
    _warn(scan)
    return ExportResult(scan.rows, files, scan.skipped_rows, time.perf_counter() - started)


def to_duckdb(
    repo: Any,
    con: duckdb.DuckDBPyConnection | str | os.PathLike[str] | None = None,
    tables: tuple[str, ...] | list[str] = ("messages", "chats", "users"),
    *,
    mode: Mode = "replace",
    **filters: Any,
) -> duckdb.DuckDBPyConnection:
    """Load ``tables`` into DuckDB (tables named as exported) and return the connection.

    ``con`` is a connection, a path to a DuckDB file, or None for a new in-memory database.
    The tables are created or replaced batch by batch, all in one transaction: a failure leaves
    every one as it was. With ``mode="append"``, ``messages`` only receives the messages after
    the newest one it holds (ValidationError if it holds other columns than this export); the
    other tables, whose rows change (titles, revocations), are replaced. ``since``/``until``
    filter messages only, so every exported message finds its chat; ``user_id`` filters all.
    Tables load in the order users, chats, api_keys, messages: a chat deleted during the
    export has no messages left to load, so none of them lacks its chat. A failed export into
    a new path leaves no file. Raises ValidationError (also for a path that is not a DuckDB
    database), ConfigError, BackendError, OSError when the system fails the file (disk full:
    the first error, also at COMMIT), and the target DuckDB's own errors otherwise.
    """
    connection, _ = _to_duckdb(repo, con, tables, mode, filters)
    return connection


def _to_duckdb(
    repo: Any,
    con: duckdb.DuckDBPyConnection | str | os.PathLike[str] | None,
    tables: tuple[str, ...] | list[str],
    mode: Mode,
    filters: dict[str, Any],
) -> tuple[duckdb.DuckDBPyConnection, dict[str, Scan]]:
    """:func:`to_duckdb`, and the scans it ran (their ``rows``: what each table received)."""
    from ._sinks import duckdb_watermark, load_duckdb, open_duckdb, remove_duckdb, target_error

    duckdb_module = require("duckdb")
    names = _tables(tables)
    _check_mode(mode, "messages")
    # Every option is checked (the scans are built) before the database is opened or any table
    # replaced: a bad one must not leave a new file behind, or users replaced and messages not.
    scans = {
        name: _scan(repo, name, filters if name == "messages" else _owner_filters(filters)) for name in names
    }
    if "messages" not in scans:
        _scan(repo, "messages", filters)  # the message options too, though unused here
    connection: duckdb.DuckDBPyConnection | None = None
    path: Path | None = None
    created = False
    try:
        if con is None:
            connection = duckdb_module.connect()
        elif isinstance(con, (str, os.PathLike)):
            path = Path(con)
            created = not path.exists()
            connection = open_duckdb(duckdb_module, path)
        else:
            connection = con
        with interruptible():
            append = mode == "append" and "messages" in scans
            if append:
                messages = scans["messages"]
                messages.resume_after(duckdb_watermark(connection, "messages", messages.schema))
            load_duckdb(connection, [(scan, append and name == "messages") for name, scan in scans.items()])
    except BaseException as exc:
        if path is not None:
            if connection is not None:
                connection.close()
            if created:  # a failed export into a new path leaves no (empty) database behind
                remove_duckdb(path)
        if path is not None and isinstance(exc, duckdb_module.Error):
            error = target_error(exc, path)
            if error is not exc:
                raise error from exc
        raise
    for scan in scans.values():
        _warn(scan, stacklevel=4)
    return connection, scans


def to_ibis(
    repo: Any,
    table: str = "messages",
    *,
    con: duckdb.DuckDBPyConnection | str | os.PathLike[str] | None = None,
    **filters: Any,
) -> Any:
    """``table`` as an Ibis table expression over an in-process DuckDB holding the export.

    Needs the ``ibis`` extra (ConfigError naming ``pip install 'chatdb[ibis]'`` otherwise).
    The DuckDB database also holds chats and users, to join with.
    """
    ibis = require("ibis")
    names = tuple(dict.fromkeys((table, "chats", "users")))
    connection = to_duckdb(repo, con, names, **filters)
    backend = ibis.duckdb.from_connection(connection)
    return backend.table(table)


# -- helpers -------------------------------------------------------------------------------------


_OPTIONS = ("since", "until", "user_id", "include_text", "include_extra", "batch_size")


def _check_options(filters: dict[str, Any]) -> None:
    unknown = sorted(set(filters) - set(_OPTIONS))
    if unknown:
        raise ValidationError(f"unknown export option(s): {', '.join(unknown)}")


def _scan(repo: Any, table: str, filters: dict[str, Any]) -> Scan:
    """The scan of ``table`` (ValidationError for an unknown option or a bad value)."""
    _check_options(filters)
    return Scan(repo, table, **filters)


def _check_compression(pa: Any, compression: Any) -> None:
    """Parquet's codecs by name (any case), or ``none``."""
    try:
        known = isinstance(compression, str) and (
            compression.lower() == "none" or bool(pa.Codec.is_available(compression))
        )
    except ValueError:
        known = False
    if not known:
        raise ValidationError(
            f"compression must be zstd, snappy, gzip, brotli, lz4 or none, not {compression!r}"
        )


def _owner_filters(filters: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in filters.items() if key in ("user_id", "batch_size")}


def _tables(tables: tuple[str, ...] | list[str]) -> list[str]:
    if isinstance(tables, str):
        tables = (tables,)
    for name in tables:
        if name not in EXPORT_TABLES:
            raise ValidationError(f"tables must be among {', '.join(EXPORT_TABLES)}, not {name!r}")
    return sorted(set(tables), key=_LOAD_ORDER.index)


def _check_mode(mode: str, table: str) -> None:
    if mode not in ("replace", "append"):
        raise ValidationError(f"mode must be 'replace' or 'append', not {mode!r}")
    if mode == "append" and table != "messages":
        raise ValidationError("mode='append' is for messages; other tables change in place, replace them")


def _warn(scan: Scan, stacklevel: int = 3) -> None:
    if scan.skipped_rows:
        warnings.warn(scan.warning(), ExportWarning, stacklevel=stacklevel)
