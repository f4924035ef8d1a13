"""The streaming core every sink uses: scan in a background thread, convert, yield Arrow.

The database fetch (driver work) and the text stage of the conversion run in a producer
thread one batch ahead of the rest of the conversion and the writing (DuckDB and the writers
release the GIL), so the two overlap on two cores; the SQLite scan does its fetch and text
stage in a child process instead. At most a few batches are in memory at once, whatever the
table size. The producer opens, iterates and closes the scan itself, so a scan holding a
per-thread lock or cursor is never touched from two threads.

Errors are translated at this one boundary: whatever escapes a scan that is not a
:class:`~chatdb.errors.ChatDbError` already (pyarrow's plain ``OSError`` when a PostgreSQL
server restarts mid-export, a driver's own exception) becomes a ``BackendError`` -- or
``BackendUnavailableError`` when the connection was lost -- naming the backend; and DuckDB's
``RuntimeError("Query interrupted")``, which is how Ctrl-C surfaces inside a DuckDB query,
becomes the ``KeyboardInterrupt`` it was.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from .. import _batches
from .._base import SCAN_COLUMNS
from .._batches import apply_stage, interrupted, is_staged, prefetch, private_duckdb
from ..errors import BackendError, BackendUnavailableError, ChatDbError, ConfigError, ValidationError
from ._flatten import Flattener
from .schemas import EXPORT_TABLES

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["ExportWarning", "Scan", "interruptible", "require"]

# Rows fetched at a time, whatever the output batch size: a fetched chunk is held as Python
# objects (content included, often twice: decoded text and its UTF-8 copy) until it is Arrow,
# so this bounds peak memory. Chunks are then gathered to CONVERT_ROWS for one DuckDB query
# each, which amortises the query's fixed cost.
FETCH_ROWS = 2_500
CONVERT_ROWS = 25_000
# Rows per conversion of batches staged where they were read (see _Staged): without their
# content they take a fifth of the memory (100,000 was no faster on 1,000,000 messages and
# raised the peak RSS of to_parquet from 247 to 285 MB).
STAGED_ROWS = 50_000
_EXTRAS = {"pyarrow": "analytics", "polars": "analytics", "duckdb": "analytics", "ibis": "ibis"}


class ExportWarning(UserWarning):
    """Some exported rows held unreadable values (exported as null); the message says how many."""


def require(module: str) -> Any:
    """Import an optional dependency, or raise ConfigError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRAS.get(module, "analytics")
        raise ConfigError(f"chatdb.export needs {module}: pip install 'chatdb[{extra}]'") from None


class Scan:
    """One export of one table: the filters, the schema, and counters filled while streaming."""

    def __init__(
        self,
        repo: Any,
        table: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: str | None = None,
        after: tuple[str, str] | None = None,
        include_text: bool = False,
        include_extra: bool = False,
        batch_size: int = 50_000,
    ) -> None:
        for module in ("pyarrow", "duckdb"):
            require(module)
        if table not in EXPORT_TABLES:
            raise ValidationError(f"table must be one of {', '.join(EXPORT_TABLES)}, not {table!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationError("batch_size must be an integer >= 1")
        for name, value in (("since", since), ("until", until)):
            if value is not None and not isinstance(value, datetime):
                raise ValidationError(f"{name} must be a datetime or None")
        if user_id is not None and not isinstance(user_id, str):
            raise ValidationError("user_id must be a string or None")
        for name, flag in (("include_text", include_text), ("include_extra", include_extra)):
            if not isinstance(flag, bool):
                raise ValidationError(f"{name} must be True or False, not {flag!r}")
        self.repo = repo
        self.table = table
        self.filters: dict[str, Any] = {"since": since, "until": until, "user_id": user_id, "after": after}
        self.batch_size = batch_size
        self.flattener = Flattener(
            table, SCAN_COLUMNS[table], include_text=include_text, include_extra=include_extra
        )
        self.rows = 0
        self.skipped_rows = 0

    @property
    def schema(self) -> pa.Schema:
        return self.flattener.schema

    def resume_after(self, key: tuple[str, str] | None) -> None:
        """Export only the rows after ``key`` = ``(created_at, id)``: an append's watermark,
        known only once the target is open; None exports every row."""
        self.filters["after"] = key

    def batches(self, *, warn: bool = True) -> Iterator[pa.RecordBatch]:
        """Record batches in ``(created_at, id)`` order; warns (ExportWarning) at the end when
        rows had unreadable values, unless the caller reports ``skipped_rows`` itself."""

        def scan() -> Iterator[pa.Table]:
            # A backend with an Arrow-native scan (ADBC, connectorx) hands over columns.
            # Otherwise Python objects live only in the producer thread: it fetches and turns
            # each batch into Arrow columns; the consumer's work (DuckDB, writers) runs
            # without the GIL.
            convert_rows = min(self.batch_size, CONVERT_ROWS)
            scan_arrow = getattr(self.repo, "scan_arrow", None)
            stage = self.flattener.stage
            native = (
                scan_arrow(self.table, batch_size=convert_rows, stage=stage, **self.filters)
                if scan_arrow
                else None
            )
            if native is None:
                fetch = min(self.batch_size, FETCH_ROWS)
                rows = self.repo.scan_rows(self.table, batch_size=fetch, **self.filters)
                native = _ArrowChunks(rows, self.flattener.to_arrow, convert_rows)
            # The text stage in this (producer) thread where the scan did not run it: the
            # two threads then share the conversion, DuckDB releasing the GIL in both.
            return _Staged(cast(Iterator["pa.Table"], native), stage) if stage else native

        # An in-memory SQLite database is one connection shared under a lock: a scan running in
        # another thread would hold that lock while this thread may need the repository.
        shared = getattr(getattr(self.repo, "config", None), "is_memory", False)
        pending: list[pa.Table] = []
        pending_rows = 0
        try:
            for source in _scan_errors(inline(scan) if shared else prefetch(scan), self.repo):
                with interruptible():
                    table, skipped = self.flattener.convert(source)
                self.rows += table.num_rows
                self.skipped_rows += skipped
                pending.append(table)
                pending_rows += table.num_rows
                if pending_rows >= self.batch_size:
                    joined = _join(pending)
                    full = pending_rows - pending_rows % self.batch_size
                    yield from joined.slice(0, full).to_batches(max_chunksize=self.batch_size)
                    pending, pending_rows = [joined.slice(full)], pending_rows - full
            if pending_rows:
                yield from _join(pending).to_batches()
        finally:
            self.flattener.close()
        if warn and self.skipped_rows:
            warnings.warn(self.warning(), ExportWarning, stacklevel=2)

    def warning(self) -> str:
        return (
            f"{self.skipped_rows} of {self.rows} {self.table} rows had unreadable values "
            "(invalid JSON, wrong types or timestamps); those values were exported as null"
        )

    def reader(self) -> pa.RecordBatchReader:
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.schema, self.batches())


@contextmanager
def interruptible() -> Generator[None, None, None]:
    """Ctrl-C inside DuckDB surfaces as an error of DuckDB's (see :func:`interrupted`):
    re-raise it as the KeyboardInterrupt it is."""
    try:
        yield
    except Exception as exc:
        if interrupted(exc):
            raise KeyboardInterrupt from exc
        raise


# Words in a driver's message that mean the connection went away, not that a query failed.
_LOST = ("connection", "connect", "closed", "terminat", "refused", "reset", "timed out", "broken pipe", "eof")


def _scan_errors(sources: Iterator[Any], repo: Any) -> Iterator[Any]:
    """``sources``, with what escapes the backend's scan made a ChatDbError naming the backend."""
    try:
        while True:
            try:
                source = next(sources)
            except StopIteration:
                return
            except (ChatDbError, TypeError, AttributeError, NameError, AssertionError):
                raise  # ours already, or a bug: not the backend's doing
            except Exception as exc:
                raise _backend_error(exc, repo) from exc
            yield source
    finally:
        close = getattr(sources, "close", None)
        if close is not None:
            close()


def _backend_error(exc: Exception, repo: Any) -> BackendError:
    backend = getattr(repo, "backend", "") or type(repo).__name__
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else type(exc).__name__
    for secret in _secrets(repo):
        message = message.replace(secret, "***")
    if isinstance(exc, OSError) or any(word in message.lower() for word in _LOST):
        return BackendUnavailableError(f"{backend} connection lost during export scan: {message}")
    return BackendError(f"{backend} error during export scan: {message}")


def _secrets(repo: Any) -> list[str]:
    """The password in the repository's URL, never to be shown in a message."""
    from urllib.parse import unquote, urlsplit

    url = getattr(getattr(repo, "config", None), "url", None)
    try:
        password = urlsplit(url).password if isinstance(url, str) else None
    except ValueError:
        return []
    return [text for text in {password, unquote(password)} if text] if password else []


def _join(tables: list[pa.Table]) -> pa.Table:
    """Converted chunks as one contiguous table (output batches are slices of it)."""
    import pyarrow as pa

    # The system allocator: the default pool (mimalloc) caches what a stream of batches frees.
    return pa.concat_tables(tables).combine_chunks(memory_pool=pa.system_memory_pool())


class _ArrowChunks:
    """Fetched row lists turned into Arrow tables of at least ``min_rows`` rows or
    BATCH_BYTES (:mod:`chatdb._batches`; the last one may be smaller, and so may one whose successor has other
    columns: a chunk staged as it was converted, see ``Flattener.to_arrow``); closing it
    closes the scan (releasing its cursor and locks)."""

    def __init__(self, scan: Iterable[Any], to_arrow: Callable[[Any], pa.Table], min_rows: int) -> None:
        self._scan = iter(scan)
        self._to_arrow = to_arrow
        self._min_rows = min_rows
        self._held: pa.Table | None = None  # converted, for the next table

    def __iter__(self) -> Iterator[pa.Table]:
        return self

    def __next__(self) -> pa.Table:
        import pyarrow as pa

        parts: list[pa.Table] = []
        count = size = 0
        while count < self._min_rows and size < _batches.BATCH_BYTES:
            table, self._held = self._held, None
            if table is None:
                rows = next(self._scan, None)
                if rows is None:
                    break
                table = self._to_arrow(rows)
            if parts and table.schema != parts[0].schema:
                self._held = table
                break
            parts.append(table)
            count += table.num_rows
            size += table.nbytes
        if not parts:
            raise StopIteration
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def close(self) -> None:
        close = getattr(self._scan, "close", None)
        if close is not None:
            close()


class _Staged:
    """Tables with a text stage applied where the scan did not apply it (in a private
    DuckDB, created and used in the iterating thread); closing it closes the scan. Tables the
    scan staged already (the SQLite child's: small, their content parsed away) are gathered to
    STAGED_ROWS: each conversion query has a fixed cost (~10 ms), which 40 batches of 25,000
    rows paid 40 times on 1,000,000 messages."""

    def __init__(self, tables: Iterator[pa.Table], stage: Mapping[str, Any]) -> None:
        self._tables = tables
        self._stage = stage
        self._con: Any = None
        self._held: pa.Table | None = None  # read ahead while gathering, for the next table

    def __iter__(self) -> Iterator[pa.Table]:
        return self

    def __next__(self) -> pa.Table:
        import pyarrow as pa

        table, self._held = self._held, None
        if table is None:
            table = next(self._tables)
        if table.num_rows == 0:
            return table
        if not is_staged(self._stage, table):
            if self._con is None:
                self._con = private_duckdb()
            return _owned(apply_stage(self._con, self._stage, table))
        parts = [table]
        count = table.num_rows
        while count < STAGED_ROWS:
            more = next(self._tables, None)
            if more is None:
                break
            if more.schema != table.schema or not is_staged(self._stage, more):
                self._held = more
                break
            parts.append(more)
            count += more.num_rows
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def close(self) -> None:
        self._held = None
        if self._con is not None:
            self._con.close()
            self._con = None
        close = getattr(self._tables, "close", None)
        if close is not None:
            close()


def _owned(table: pa.Table) -> pa.Table:
    """``table`` in buffers of its own. The columns a stage keeps (ids, metadata) share memory
    with the batch they were read in, and a batch a driver hands over (ADBC, connectorx) is
    freed only as a whole: kept, they kept its content too -- 2.4 GB held for 23,000 messages
    with images, waiting for an output batch of 50,000 rows."""
    import pyarrow as pa

    columns = [pa.concat_arrays(column.chunks) if column.num_chunks else column for column in table.columns]
    return pa.table(columns, names=table.column_names)


def inline(open_scan: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    """Iterate ``open_scan()`` in this thread, closing it however the consumer stops."""
    source = open_scan()
    try:
        yield from source
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
