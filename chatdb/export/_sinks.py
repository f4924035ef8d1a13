"""Where exported batches go: Parquet files or datasets, DuckDB tables; and append watermarks.

Every writer consumes :class:`~chatdb.export._stream.Scan` batches one at a time, so memory
stays bounded by the batch size whatever the table size.

Replacing and appending are atomic, and survive a crash (kill -9, power loss) at any point:

* new data is written beside the target, in a staging file or directory named
  ``.<target>.<32 hex>.tmp`` that the writing process holds an ``flock`` on while it lives;
* a file is swapped in with ``os.replace``; a dataset directory with Linux's
  ``renameat2(RENAME_EXCHANGE)``, which swaps two directories in one step (an append stages the
  whole new dataset: hard links to the old files plus the new ones). Readers see the old
  export or the new one, never a file without its footer. Elsewhere two renames leave the
  path missing for an instant;
* each run first removes the staging files and directories that no live process holds (a
  crashed run's); they are never part of the export, so removing them is always safe;
* DuckDB loads run in one transaction: a crash leaves the database as it was;
* one export at a time writes to a path (:func:`exclusive`): two appends started together
  would read the same watermark and both add the same messages, or the later swap would drop
  the earlier one's rows.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
    "exclusive",
    "duckdb_watermark",
    "load_duckdb",
    "open_duckdb",
    "parquet_watermark",
    "remove_duckdb",
    "staging",
    "sweep",
    "target_error",
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


def _encodings(scan: Scan) -> dict[str, str]:
    """DELTA_BINARY_PACKED for the integer and timestamp columns (the others: dictionary or
    PLAIN). Same file size under zstd, and readers decode them faster than zstd-compressed
    PLAIN 64-bit values: a usage report over 5M messages decodes its columns in about 20% less
    CPU time in DuckDB (docs/benchmarks.md)."""
    import pyarrow as pa

    dictionary = set(_dictionary(scan))
    return {
        field.name: "DELTA_BINARY_PACKED"
        for field in scan.schema
        if field.name not in dictionary
        and (pa.types.is_integer(field.type) or pa.types.is_timestamp(field.type))
    }


def _write_file(scan: Scan, path: Path, *, append: bool, compression: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    with staging(path) as temporary:
        with pq.ParquetWriter(
            temporary,
            scan.schema,
            compression=compression,
            use_dictionary=_dictionary(scan),
            column_encoding=_encodings(scan),
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with staging(path, directory=True) as target:
        ds.write_dataset(
            ds.Scanner.from_batches(batches, schema=schema),
            target,
            format="parquet",
            partitioning=partitioning,
            basename_template=f"part-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            file_options=ds.ParquetFileFormat().make_write_options(
                compression=compression, use_dictionary=_dictionary(scan), column_encoding=_encodings(scan)
            ),
            max_rows_per_group=scan.batch_size,
            min_rows_per_group=min(scan.batch_size, 10_000),
            max_open_files=256,
            file_visitor=lambda written_file: written.append(written_file.path),
        )
        if not written and append:
            return 0  # nothing new: the dataset stays as it is
        if not written:
            # An empty export is still a readable dataset: one file with the schema, no rows.
            pq.write_table(schema.empty_table(), target / "part-empty.parquet", compression=compression)
            written.append(str(target / "part-empty.parquet"))
        if append and path.is_dir():
            _link_tree(path, target)  # the staged directory becomes the whole new dataset
        _swap_dir(target, path)
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


def _link_tree(source: Path, target: Path) -> None:
    """Hard links in ``target`` to every file under ``source`` (copies where the filesystem
    has no hard links). New part files have names of their own, so nothing collides."""
    for entry in source.rglob("*"):
        if entry.is_dir():
            continue
        link = target / entry.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(entry, link)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            shutil.copy2(entry, link)


def _swap_dir(new: Path, path: Path) -> None:
    """Put directory ``new`` at ``path``; afterwards ``new`` holds the old directory (or is
    gone), for the caller to remove."""
    if not path.exists():
        os.rename(new, path)
    elif not _exchange(new, path):
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        os.rename(path, aside)
        os.rename(new, path)
        os.rename(aside, new)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or filesystem cannot, and nothing was done."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            function = libc.renameat2
            function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = (function, ctypes.get_errno)
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    function, get_errno = _renameat2
    at_fdcwd, rename_exchange = -100, 2
    if function(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


_renameat2: Any = None  # (renameat2, get_errno) once looked up; False where there is none


# -- staging beside the target, and what crashed runs left ----------------------------------------


@contextmanager
def staging(path: Path, *, directory: bool = False) -> Iterator[Path]:
    """A new staging path beside ``path`` (an empty directory, or an empty file), locked for
    the life of this process and removed when the block ends, however it ends. What crashed
    runs left beside ``path`` is removed first (:func:`sweep`)."""
    sweep(path)
    token = uuid.uuid4().hex
    # Made and locked under a name sweep() ignores, then renamed (the lock stays with it): a
    # concurrent run's sweep never sees it unlocked.
    fresh = path.with_name(f".{path.name}.{token}.new")
    if directory:
        fresh.mkdir()
    else:
        fresh.touch(exist_ok=False)
    lock = _lock(fresh)
    temporary = path.with_name(f".{path.name}.{token}.tmp")
    try:
        os.rename(fresh, temporary)
        yield temporary
    finally:
        _remove(fresh)
        _remove(temporary)
        if lock is not None:
            os.close(lock)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive ``flock`` on the export at ``path`` (a file or a
    directory) for the block: concurrent exports to one path, from threads or processes, run
    one after another. A swap replaces the inode a waiting run locked, so the lock is taken
    again until it is on the path's current inode. A path that does not exist yet has nothing
    to lose: two first exports both write everything, and the later swap wins."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    while True:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)
    try:
        yield
    finally:
        os.close(descriptor)


def sweep(path: Path) -> list[Path]:
    """Remove the staging files and directories beside ``path`` that no live process holds
    (what crashed runs left; ``.old`` directories are earlier versions' leftovers) and return
    them. Where there is no ``flock`` (Windows) nothing can be told apart and nothing goes."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[0-9a-f]{32}\.(?:tmp|old)")
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        lock = _lock(entry)
        if lock is None:
            continue  # a live run's, or gone meanwhile
        try:
            _remove(entry)
            removed.append(entry)
        finally:
            os.close(lock)
    return removed


def _lock(entry: Path) -> int | None:
    """A descriptor holding an exclusive ``flock`` on ``entry``; None when another descriptor
    holds one, the entry is gone, or the system has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        descriptor = os.open(entry, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


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
    and a messages load that fails leaves no chats replaced). The error raised is the first
    one: a COMMIT that fails (disk full) has ended the transaction already, and the ROLLBACK's
    own complaint ("no transaction is active") would hide why."""
    import duckdb

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
        # No transaction may be left to roll back (a failed COMMIT ends it): nothing was kept.
        with suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise


def open_duckdb(duckdb_module: Any, path: Path) -> duckdb.DuckDBPyConnection:
    """A connection to the DuckDB file at ``path`` (created when missing). ValidationError when
    ``path`` exists and is not a DuckDB database (nothing is written to it); OSError when the
    file cannot be opened or created."""
    existed = path.exists()
    try:
        connection: duckdb.DuckDBPyConnection = duckdb_module.connect(os.fspath(path))
    except duckdb_module.Error as exc:
        if existed and "not a valid DuckDB database" in _first_line(exc):
            raise ValidationError(
                f"{path} exists and is not a DuckDB database: choose another path for the export"
            ) from None
        raise target_error(exc, path) from exc
    return connection


def remove_duckdb(path: Path) -> None:
    """Remove a DuckDB file this export created, with its write-ahead log."""
    for leftover in (path, path.with_name(path.name + ".wal")):
        leftover.unlink(missing_ok=True)


# Errors of the system that DuckDB reports as text: "Could not write file "x": No space left on
# device". They become OSError with their errno, as pyarrow's own I/O errors are.
_SYSTEM_ERRORS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.ENOENT,
    errno.EISDIR,
    errno.ENOTDIR,
)


def target_error(exc: BaseException, path: Path) -> BaseException:
    """An error of the target DuckDB as OSError when the system caused it (disk full, no
    permission, a lock held by another process): one line, the file named. Any other error is
    DuckDB's own and returned as it is."""
    message = _first_line(exc)
    for code in _SYSTEM_ERRORS:
        if os.strerror(code) in message:
            return OSError(code, os.strerror(code), str(path))
    if "Could not set lock on file" in message:
        return OSError(errno.EAGAIN, "another process has the DuckDB file open", str(path))
    return exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
