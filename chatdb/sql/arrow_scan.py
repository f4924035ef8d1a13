"""Arrow-native scans for exports: the driver fills Arrow columns, no Python row objects.

MySQL/MariaDB is read with connectorx (in the ``analytics`` extra), one page of rows at a time
(keyset pagination on the scan's ``(created_at, id)`` order), the next page read in a thread
while this one is converted. Not its ``arrow_stream``: that reads the whole result ahead into
memory however slowly it is consumed, and holds the GIL while waiting for each batch. Each
connectorx read is its own connection, so each page is its own snapshot, and the owner lookup
is read apart: chats it lacks (created since) are read again when a page names them.

PostgreSQL is read with the ADBC PostgreSQL driver (``adbc-driver-postgresql``) in process:
libpq's binary protocol straight into Arrow, about twice as fast as psycopg's rows.

The ADBC SQLite driver (``adbc-driver-sqlite``, in the ``analytics`` extra) reads a query
straight into Arrow, about twice as fast as ``sqlite3`` rows turned into Arrow. It bundles its
own SQLite library, and two SQLite libraries in one process must never open the same file:
POSIX locks are per process, so one library closing the file drops the other's locks. The scan
therefore runs in a child process (``python -m chatdb._sqlite_arrow``) that only reads and
streams Arrow IPC to its parent; about 0.15 s of start-up, so only large scans take this path
(``SqlRepository.scan_arrow``). There the owner of each message comes from a lookup of the
chats read in the same transaction, not from a join SQLite would do row by row.

ADBC infers a column's type from its first batch, so a column NULL all through it would be
typed wrongly and fail later: the query selects each column that can be NULL as
``ifnull(column, NULL)`` with the sentinel below (a NUL character, which chatdb never stores in
these columns) and the child turns it back into a null.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from .. import _batches
from .._batches import can_start_child, child_env, child_failure, widen_pipe
from ..errors import BackendError, BackendUnavailableError

NULL = "\x00"
# Rows per batch inside the SQLite child, whatever the caller's batch size: the child holds
# about four at once (read, queued, parsed, written), so this bounds its memory (with the trim
# threshold below: ~205 MB at 25,000; 12,500 costs 10-20% more CPU); its batches are gathered
# again on this side.
CHILD_BATCH_ROWS = 25_000


class Lookup(NamedTuple):
    """A column added to a scan from a two-column (key, value) query, matched on ``key``;
    ``missing`` reads the (key, value) rows of given keys, for scans outside the lookup's
    snapshot (MySQL)."""

    statement: Any  # a Core SELECT of (key, value)
    key: str
    name: str
    position: int
    missing: Callable[[list[str]], list[tuple[Any, Any]]] | None = None


class NativeScan:
    """How one backend's Arrow-native driver runs a scan (the repository asks, it does not
    branch)."""

    def __init__(
        self,
        backend: str,
        module: str,
        *,
        null_as: str | None,
        start_up_cost: bool,
        slim_content: bool = False,
    ) -> None:
        self.backend = backend
        self.module = module
        self.null_as = null_as  # select ifnull(column, null_as): for drivers that infer types
        self.start_up_cost = start_up_cost  # small scans are cheaper without it
        self.slim_content = slim_content  # long content as parts' type and text (build_scan)

    def batches(
        self,
        url: Any,
        config: Any,
        scan: Callable[..., Any],
        batch_rows: int,
        location: str,
        lookup: Lookup | None = None,
        stage: Mapping[str, Any] | None = None,
        *,
        paged: bool = True,
    ) -> Iterator[Any] | None:
        """Arrow tables for the scan ``scan()`` builds (a Core SELECT in ``(created_at, id)``
        order; ``scan(after=(created_at, id))`` its rows after that key), read by this
        backend's driver, or None where it cannot take this scan; ``stage`` (see
        :mod:`chatdb._sqlite_arrow`) is applied to them where the scan runs in a child process
        (SQLite), and ignored otherwise. ``paged=False``: MySQL reads the scan in one query
        (for tables without a ``(created_at, id)`` index, where every page would sort the
        rows after it again)."""
        statement = scan()
        if self.backend == "mysql":
            from sqlalchemy.dialects.mysql import pymysql

            # connectorx takes no parameters: values are rendered as SQL literals (quotes and
            # backslashes escaped by SQLAlchemy); a control character sends the scan the DB-API way.
            values = statement.compile(dialect=pymysql.dialect()).params.values()
            if any(isinstance(value, str) and not value.isprintable() for value in values):
                return None
            if set(url.query) - {"charset"}:
                return None  # connection options (SSL, socket...) that only the DB-API driver gets
            literal = {"literal_binds": True}

            def page(after: tuple[str, str] | None, rows: int) -> str:
                selected = statement if after is None else scan(after=after)
                selected = selected.limit(rows) if paged else selected
                return str(selected.compile(dialect=pymysql.dialect(), compile_kwargs=literal))

            uri = url.set(drivername="mysql", query={}).render_as_string(hide_password=False)
            extra = _lookup_request(lookup, pymysql.dialect(), literal)
            if extra is not None and lookup is not None:
                extra["missing"] = lookup.missing
            return mysql_batches(uri, page, batch_rows, location, lookup=extra, paged=paged)
        if self.backend == "postgres":
            from sqlalchemy.dialects.postgresql import asyncpg  # renders $n parameters, as libpq wants

            dialect = asyncpg.dialect()  # type: ignore[no-untyped-call]
            compiled = statement.compile(dialect=dialect)
            params = tuple(compiled.params[name] for name in compiled.positiontup or ())
            uri = url.set(drivername="postgresql").render_as_string(hide_password=False)
            extra = _lookup_request(lookup, dialect)
            return postgres_batches(uri, str(compiled), params, batch_rows, location, lookup=extra)
        from sqlalchemy.dialects import sqlite

        compiled = statement.compile(dialect=sqlite.dialect())
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
        extra = _lookup_request(lookup, sqlite.dialect())
        return sqlite_batches(
            config.sqlite_path, str(compiled), params, batch_rows, lookup=extra, stage=stage
        )


def _lookup_request(lookup: Lookup | None, dialect: Any, compile_kwargs: Any = None) -> dict[str, Any] | None:
    if lookup is None:
        return None
    sql = str(lookup.statement.compile(dialect=dialect, compile_kwargs=compile_kwargs or {}))
    return {"sql": sql, "key": lookup.key, "name": lookup.name, "position": lookup.position}


_NATIVE = {
    "sqlite": NativeScan("sqlite", "adbc_driver_sqlite", null_as=NULL, start_up_cost=True, slim_content=True),
    "postgres": NativeScan("postgres", "adbc_driver_postgresql", null_as=None, start_up_cost=False),
    "mysql": NativeScan("mysql", "connectorx", null_as=None, start_up_cost=False),
}


def for_backend(backend: str) -> NativeScan | None:
    """The native scan for ``backend`` when its driver is installed, else None."""
    native = _NATIVE.get(backend)
    if native is None or any(importlib.util.find_spec(name) is None for name in (native.module, "pyarrow")):
        return None
    if backend == "sqlite" and not can_start_child():
        return None  # an embedded interpreter with no python to start the child process with
    return native


def postgres_batches(
    uri: str,
    sql: str,
    params: tuple[Any, ...],
    batch_rows: int,
    location: str,
    *,
    lookup: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """Arrow tables of at least ``batch_rows`` rows or BATCH_BYTES (see :func:`gather`) for
    ``sql`` (with ``$n`` parameters) on PostgreSQL; ``location`` (host and port) names the server in errors.
    ``lookup`` as in :mod:`chatdb._sqlite_arrow`, read in the same (repeatable-read) transaction:
    PostgreSQL plans the owner join as a parallel hash join and a sort of every message (425 ms
    for 200,000) where the index alone returns them in order (88 ms)."""
    # ADBC's low-level API: its DB-API layer imports pandas and Polars (0.6 s, 100 MB).
    import adbc_driver_manager
    import adbc_driver_postgresql
    import pyarrow as pa

    from .._batches import attach_lookup, lookup_table

    handles: list[Any] = []
    try:
        handles.append(adbc_driver_postgresql.connect(uri))
        handles.append(adbc_driver_manager.AdbcConnection(handles[-1]))
    except Exception as exc:
        _close(handles)
        raise BackendUnavailableError(f"cannot reach {location}: {_first_line(exc, uri)}") from None
    connection = handles[-1]

    def run(query: str, values: tuple[Any, ...] = ()) -> Any:
        statement = adbc_driver_manager.AdbcStatement(connection)
        handles.append(statement)
        statement.set_sql_query(query)
        if values:
            statement.bind(string_batch(values))
        stream, _ = statement.execute_query()
        return pa.RecordBatchReader._import_from_c(stream.address)

    try:
        keys = values = None
        if lookup is not None:
            run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").read_all()
            keys, values = lookup_table(run(lookup["sql"]).read_all())
        for table in gather(run(sql, params), batch_rows):
            yield table if lookup is None else attach_lookup(table, lookup, keys, values)
    except Exception as exc:
        if type(exc).__module__.startswith(("adbc_driver", "pyarrow")):
            raise BackendError(f"postgres error during export scan: {_first_line(exc, uri)}") from None
        raise
    finally:
        _close(handles)


def mysql_batches(
    uri: str,
    page: Callable[[tuple[str, str] | None, int], str],
    batch_rows: int,
    location: str,
    *,
    lookup: dict[str, Any] | None = None,
    paged: bool = True,
) -> Iterator[Any]:
    """Arrow tables of at most ``batch_rows`` rows on MySQL/MariaDB, read by connectorx (its
    own MySQL client, in Rust: about twice as fast as PyMySQL's rows) page by page: ``page(None,
    rows)`` is the SQL of the first ``rows`` rows, ``page((created_at, id), rows)`` of those
    after that key. The next page is read in a thread while the caller works on this one
    (connectorx releases the GIL), so at most three pages are held. Pages hold about
    BATCH_BYTES (:mod:`chatdb._batches`), up to ``batch_rows`` rows: the first has FIRST_ROWS,
    then each page's size sets the next one's row count (messages with images are MBs each), and a page too large for
    connectorx (2 GiB of text in one column: it panics) is read again in fewer rows. Not ``paged``: ``page(None, 0)`` is the
    whole scan, read at once and handed over in slices. ``lookup`` as in
    :mod:`chatdb._sqlite_arrow`, plus ``missing`` (see :class:`Lookup`): the lookup replaces a
    join that cost MariaDB a quarter of the scan's time."""
    import connectorx
    import pyarrow as pa

    from .._batches import attach_lookup, lookup_table, prefetch

    def read(query: str) -> Any:
        try:
            return connectorx.read_sql(uri, query, return_type="arrow")
        except BaseException as exc:  # a Rust panic is a BaseException (pyo3's PanicException)
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            message = _first_line(exc, uri)
            if "offset overflow" in message:
                raise _PageTooLarge(message) from None
            if any(word in message.lower() for word in ("connect", "refused", "timed out", "access denied")):
                raise BackendUnavailableError(f"cannot reach {location}: {message}") from None
            raise BackendError(f"mysql error during export scan: {message}") from None

    def pages() -> Iterator[Any]:
        if not paged:
            whole = read(page(None, 0))
            for start in range(0, whole.num_rows, batch_rows):
                yield whole.slice(start, batch_rows)
            return
        after = None
        rows = min(batch_rows, _batches.FIRST_ROWS)  # then as many as BATCH_BYTES holds
        while True:
            try:
                table = read(page(after, rows))
            except _PageTooLarge as exc:
                if rows == 1:
                    raise BackendError(f"mysql error during export scan: {exc}") from None
                rows = max(1, rows // 8)
                continue
            if table.num_rows:
                yield table
            if table.num_rows < rows:
                return
            after = (table.column("created_at")[-1].as_py(), table.column("id")[-1].as_py())
            rows = _batches.rows_within(_batches.BATCH_BYTES, table.num_rows, table.nbytes, batch_rows)
            del table

    keys = values = None
    if lookup is not None:
        keys, values = lookup_table(read(lookup["sql"]))
    absent: set[str] = set()  # keys asked for and not found (messages of deleted chats)
    for table in prefetch(pages):
        if lookup is not None:
            unknown = [key for key in _unknown_keys(table.column(lookup["key"]), keys) if key not in absent]
            if unknown and lookup.get("missing") is not None:
                found = lookup["missing"](unknown)
                absent.update(set(unknown) - {str(row[0]) for row in found})
                if found:
                    keys = pa.concat_arrays([keys, pa.array([str(row[0]) for row in found], pa.string())])
                    values = pa.concat_arrays([values, pa.array([row[1] for row in found], pa.string())])
            table = attach_lookup(table, lookup, keys, values)
        yield table


class _PageTooLarge(Exception):
    """connectorx could not hold a page in one Arrow column (2 GiB of text)."""


def _unknown_keys(column: Any, keys: Any) -> list[str]:
    """The distinct non-null values of ``column`` that are not among ``keys``."""
    import pyarrow.compute as pc

    unknown = column.filter(pc.invert(pc.is_in(column, value_set=keys)))
    return [str(value) for value in pc.unique(unknown.drop_null()).to_pylist()]


def gather(batches: Iterable[Any], rows: int) -> Iterator[Any]:
    """Record batches as Arrow tables of at least ``rows`` rows or BATCH_BYTES (the last may be
    smaller)."""
    import pyarrow as pa

    pending: list[Any] = []
    count = size = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        size += batch.nbytes
        if count >= rows or size >= _batches.BATCH_BYTES:
            yield pa.Table.from_batches(pending)
            pending, count, size = [], 0, 0
    if pending:
        yield pa.Table.from_batches(pending)


def _close(handles: list[Any]) -> None:
    for handle in reversed(handles):
        handle.close()


def string_batch(values: tuple[Any, ...]) -> Any:
    """Query parameters (all text here: ids and ISO timestamps) as a one-row record batch,
    built from buffers: ``pa.array()`` of a list imports pandas (0.6 s) to rule pandas out."""
    import pyarrow as pa

    arrays = []
    for value in values:
        data = str(value).encode()
        bounds = (0).to_bytes(4, "little") + len(data).to_bytes(4, "little")
        arrays.append(pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(bounds), pa.py_buffer(data)]))
    return pa.record_batch(arrays, names=[f"p{i}" for i in range(len(values))])


def _first_line(exc: BaseException, uri: str) -> str:
    from ..config import redact_text

    text = redact_text(str(exc), uri).strip().splitlines()
    return text[0] if text else type(exc).__name__


def sqlite_batches(
    path: str,
    sql: str,
    params: tuple[Any, ...],
    batch_rows: int,
    *,
    lookup: dict[str, Any] | None = None,
    stage: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Arrow tables of at least ``batch_rows`` rows (the last may be smaller) for ``sql`` over
    the SQLite file at ``path``, read by a child process in one transaction (one consistent
    snapshot); ``lookup`` and ``stage`` as in :mod:`chatdb._sqlite_arrow`."""
    import pyarrow as pa

    request: dict[str, Any] = {
        "path": path,
        "sql": sql,
        "params": list(params),
        "batch_rows": min(batch_rows, CHILD_BATCH_ROWS),
        "null": NULL,
    }
    if lookup is not None:
        request["lookup"] = lookup
    if stage is not None:
        request["stage"] = dict(stage)
    child = subprocess.Popen(
        # -P: the working directory is not on the child's path (a chatdb, or a pyarrow.py, in
        # it would shadow the one this process runs; see _batches.child_env).
        [sys.executable, "-P", "-m", "chatdb._sqlite_arrow"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert child.stdin is not None and child.stdout is not None
    widen_pipe(child.stdout)
    finished = False
    try:
        child.stdin.write(json.dumps(request).encode())
        child.stdin.close()
        try:
            reader = pa.ipc.open_stream(child.stdout, memory_pool=pa.system_memory_pool())
            yield from gather(reader, batch_rows)
        except pa.ArrowInvalid:
            pass  # the child failed before or while streaming: its exit status says why
        finished = child.wait() == 0
        if not finished:
            failure = child_failure(child.stderr.read() if child.stderr else b"", child.returncode)
            raise BackendError(f"sqlite error during export scan: {failure}")
    finally:
        if not finished:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
