"""Stored rows → Arrow record batches, vectorised (pure: no repository, no I/O).

A batch of stored columns (Arrow text; ``scan_rows`` tuples are turned column-wise into it) is
converted by DuckDB, in process, over the Arrow batch without copying it: every JSON value is
parsed in bulk, types are checked and the derived columns computed. Building a Python object
per row is what makes the naive way slow, and this never does it for text values.

Two steps, so that they can run in two places at once:

* the text stage (:func:`text_stage`) parses ``content`` -- most of the bytes -- keeping
  only each part's ``type`` and ``text`` (a 10 MB base64 image is skipped by the parser), and
  ``created_at``, and replaces them by ``content_chars``/``content_parts``/``has_image``/
  ``text`` and the timestamp. The SQLite scan runs it in its child process, other scans in the
  export's producer thread;
* the rest (metadata): a fast query (:func:`clean_messages_sql`) where every value
  has its expected JSON type, which is nearly always, else the exact one
  (:func:`messages_sql`), which converts what can be converted and flags the row.

Lenient by design: a value that cannot be read becomes null and its row is flagged, so one bad
row written by another program never stops an export.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._batches import interrupted, is_staged, private_duckdb
from .._codec import format_ts
from .schemas import METADATA_COLUMNS, schema

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = ["Flattener", "clean_messages_sql", "text_stage", "messages_sql", "table_sql"]

# scan_rows column → exported column, for the tables without JSON.
_RENAMES: dict[str, dict[str, str]] = {
    "chats": {"id": "chat_id"},
    "users": {"id": "user_id"},
    "api_keys": {"id": "key_id"},
}
_TIMESTAMPS = {"created_at", "updated_at", "last_used_at", "revoked_at"}
_INT64_MAX = 9.2e18  # below 2**63: larger values cannot be int64 and are unreadable
_PARTS_SCHEMA = '[{"type":"VARCHAR","text":"VARCHAR"}]'
# The metadata fields' JSON paths, and the struct type reading each as its expected type.
_META_PATHS = ", ".join(f"'$.{key}'" for _, key, _ in METADATA_COLUMNS)
_META_TYPED = (
    "{"
    + ",".join(
        f'"{key}":"{ {"string": "VARCHAR", "int": "UBIGINT", "float": "DOUBLE"}[kind] }"'
        for _, key, kind in METADATA_COLUMNS
    )
    + "}"
)


def _timestamp(column: str) -> tuple[str, str]:
    """(value, is-bad) SQL for a stored ISO timestamp: milliseconds since the epoch (UTC,
    rounded down; Arrow casts them to the schema's timestamp for free). Integer arithmetic:
    ``date_trunc`` took twice the time of the parse, and ``epoch_ms`` rounds to nearest."""
    parsed = f"try_cast({column} AS TIMESTAMPTZ)"
    micros = f"epoch_us({parsed})"
    value = f"({micros} // 1000 - CASE WHEN {micros} % 1000 < 0 THEN 1 ELSE 0 END)"
    return value, f"({column} IS NOT NULL AND {parsed} IS NULL)"


def _exact_int(d: str) -> str:
    return f"CASE WHEN {d} >= 0 AND {d} < {_INT64_MAX} AND {d} = trunc({d}) THEN CAST({d} AS BIGINT) END"


def _finite(d: str) -> str:
    return f"CASE WHEN {d} >= 0 AND isfinite({d}) THEN {d} END"


def _metadata_field(index: int, key: str, kind: str) -> str:
    """SQL for one metadata field, from the fast typed read when the stored JSON type is the
    expected one, else (rare rows only: CASE evaluates a branch only for the rows taking it)
    from its text: an exact number in a JSON string is converted (and flags the row, see
    ``_bad_field``); a fraction where an integer belongs, a negative number or a bool is null."""
    found = f"meta_kinds[{index}]"
    typed = f"meta_typed.{key}"
    text_number = f"try_cast(json_extract_string(metadata, '$.{key}') AS DOUBLE)"
    if kind == "string":
        return f"CASE WHEN {found} = 'VARCHAR' THEN {typed} END"
    if kind == "int":
        return (
            f"CASE WHEN {found} = 'UBIGINT' THEN try_cast({typed} AS BIGINT) "
            f"WHEN {found} IN ('DOUBLE', 'VARCHAR') THEN {_exact_int(text_number)} END"
        )
    return (
        f"CASE WHEN {found} IN ('UBIGINT', 'DOUBLE') THEN {_finite(typed)} "
        f"WHEN {found} = 'VARCHAR' THEN {_finite(text_number)} END"
    )


def _bad_field(index: int, name: str, kind: str) -> str:
    """A present, non-null value that was unreadable (null) or converted from a string."""
    found = f"meta_kinds[{index}]"
    if kind == "string":
        return f"({found} IS NOT NULL AND {found} NOT IN ('NULL', 'VARCHAR'))"
    return f"({found} IS NOT NULL AND {found} <> 'NULL' AND ({name} IS NULL OR {found} = 'VARCHAR'))"


def _text_derived(include_text: bool) -> list[str]:
    """What ``messages`` derives from ``content``, over its parsed ``parts`` (type and text of
    each part, parsed once; a 10 MB base64 image is skipped by the parser), and from
    ``created_at`` (parsed: ``created_ts``, ``created_bad``)."""
    text_lengths = (
        "list_transform(parts, lambda p: "
        "CASE WHEN p.type = 'text' THEN coalesce(length(p.text), 0) ELSE 0 END)"
    )
    derived = [
        # BIGINT: a sum is HUGEINT in DuckDB, a 128-bit decimal in Arrow.
        f"CASE WHEN parts IS NOT NULL THEN CAST(coalesce(list_sum({text_lengths}), 0) AS BIGINT) END "
        "AS content_chars",
        "len(parts) AS content_parts",
        "list_contains(list_transform(parts, lambda p: p.type), 'image') AS has_image",
    ]
    if include_text:
        texts = (
            "list_transform(list_filter(parts, lambda p: p.type = 'text' AND p.text IS NOT NULL), "
            "lambda p: p.text)"
        )
        derived.append(f"CASE WHEN parts IS NOT NULL THEN array_to_string({texts}, chr(10)) END AS text")
    derived.append("(content IS NOT NULL AND parts IS NULL) AS content_bad")
    created, created_bad = _timestamp("created_at")
    derived += [f"{created} AS created_ts", f"{created_bad} AS created_bad"]
    return derived


def _parts(*, lenient: bool) -> str:
    parsed = f"json_transform(content, '{_PARTS_SCHEMA}')"
    return f"TRY({parsed})" if lenient else parsed


def text_stage(*, include_text: bool) -> dict[str, Any]:
    """The first stage of ``messages`` as a scan may run it before handing batches over: the
    ``columns`` it reads (``content``, ``created_at``) are replaced by what the first of its
    ``queries`` (DuckDB SQL over a relation ``batch`` of those columns) that does not raise
    returns: ``content_chars``, ``content_parts``, ``has_image``, optionally ``text``, the flag
    ``content_bad``, and ``created_ts``/``created_bad``. The first query is strict (and
    faster), the second reads invalid JSON as null. Content is the bulk of the bytes and of the
    parsing, so a scan reading in another process runs this there (see
    :mod:`chatdb._sqlite_arrow`) and sends only the result."""
    derived = ", ".join(_text_derived(include_text))
    queries = [
        f"SELECT {derived} FROM (SELECT content, created_at, {_parts(lenient=lenient)} AS parts FROM batch)"
        for lenient in (False, True)
    ]
    return {"columns": ["content", "created_at"], "queries": queries}


def _inline_stage(include_text: bool) -> str:
    """The batch with the text stage applied, as a subquery (for batches not staged)."""
    derived = ", ".join(_text_derived(include_text))
    return (
        f"(SELECT * EXCLUDE (content, created_at, parts), {derived} FROM ("
        f"SELECT *, {_parts(lenient=True)} AS parts FROM batch))"
    )


def messages_sql(*, include_text: bool, include_extra: bool, staged: bool = False) -> str:
    """The query turning a batch of stored message columns into the ``messages`` schema plus a
    boolean ``_bad`` column (the row had an unreadable or converted value). With ``staged``,
    the batch has been through :func:`text_stage` already.

    Each JSON value is parsed a few times at most, all in DuckDB's vectorised JSON reader:
    metadata once for its kind, once for the JSON type of every field, once typed; content once
    (see :func:`text_stage`).
    """
    paths, typed = _META_PATHS, _META_TYPED
    fields = [
        f"{_metadata_field(i, key, kind)} AS {name}"
        for i, (name, key, kind) in enumerate(METADATA_COLUMNS, start=1)
    ]
    if include_extra:
        rest = "metadata"
        for _, key, _ in METADATA_COLUMNS:
            rest = f"json_remove({rest}, '$.{key}')"
        fields.append(
            f"CASE WHEN meta_kind = 'OBJECT' THEN nullif(CAST({rest} AS VARCHAR), '{{}}') END "
            "AS metadata_extra"
        )
    bads = [
        "created_bad",
        "(metadata IS NOT NULL AND (meta_kind IS NULL OR meta_kind NOT IN ('OBJECT', 'NULL')))",
        "content_bad",
        *(_bad_field(i, name, kind) for i, (name, _, kind) in enumerate(METADATA_COLUMNS, start=1)),
    ]
    output = ["message_id", "chat_id", "user_id", "role", "created_ts AS created_at"]
    output += [name for name, _, _ in METADATA_COLUMNS]
    output += ["content_chars", "content_parts", "has_image"]
    output += ["text"] * include_text + ["metadata_extra"] * include_extra
    source = "batch" if staged else _inline_stage(include_text)
    return (
        f"SELECT {', '.join(output)}, ({' OR '.join(bads)}) AS _bad FROM ("
        f"SELECT id AS message_id, chat_id, user_id, role, created_ts, created_bad, "
        f"metadata, meta_kind, meta_kinds, content_chars, content_parts, has_image, content_bad, "
        f"{'text, ' * include_text}{', '.join(fields)} FROM ("
        f"SELECT *, CASE WHEN meta_kind = 'OBJECT' THEN json_type(metadata, [{paths}]) END AS meta_kinds, "
        f"CASE WHEN meta_kind = 'OBJECT' THEN json_transform(metadata, '{typed}') END AS meta_typed "
        f"FROM (SELECT *, TRY(json_type(metadata)) AS meta_kind FROM {source})))"
    )


def clean_messages_sql(*, include_text: bool, staged: bool = False) -> str:
    """The fast query for batches where every value is of the expected JSON type (nearly all):
    each metadata field straight from one typed parse, and a column ``_ok`` saying whether the
    row was such a row. It reads only :func:`fast_inputs` and returns only what it computes;
    the other columns are taken from the batch as they are. Where a row is not, or the batch
    holds invalid JSON (the query then raises), :func:`messages_sql` converts the batch
    instead, with exactly the values it gives here for the rows that are. Half the time of
    :func:`messages_sql`, whose per-field conversions of unexpected types are what costs.

    The checks read the fields once extracted (an outer query): written over the parsed
    struct, they took a third of the query's time."""
    paths, typed = _META_PATHS, _META_TYPED
    values, kinds, checks = [], [], []
    for i, (name, key, kind) in enumerate(METADATA_COLUMNS, start=1):
        found, value = f"_k{i}", f"meta_typed.{key}"
        kinds.append(f"meta_kinds[{i}] AS {found}")
        if kind == "string":
            values.append(f"{value} AS {name}")
            checks.append(f"({found} IS NULL OR {found} IN ('NULL', 'VARCHAR'))")
        elif kind == "int":
            # try_cast is null exactly for an unsigned value beyond BIGINT.
            values.append(f"try_cast({value} AS BIGINT) AS {name}")
            checks.append(
                f"({found} IS NULL OR {found} = 'NULL' OR ({found} = 'UBIGINT' AND {name} IS NOT NULL))"
            )
        else:
            values.append(f"{value} AS {name}")
            checks.append(
                f"({found} IS NULL OR {found} = 'NULL' "
                f"OR ({found} IN ('UBIGINT', 'DOUBLE') AND {name} >= 0 AND isfinite({name})))"
            )
    checks += [
        # An object: valid JSON (else the parses below raise) that starts with '{' -- a string
        # test, not a fourth parse. Leading whitespace only sends the batch the exact way.
        "(metadata IS NULL OR starts_with(metadata, '{') OR metadata = 'null')",
        "NOT created_bad",
        "NOT content_bad",
    ]
    names = [name for name, _, _ in METADATA_COLUMNS]
    derived = [] if staged else ["content_chars", "content_parts", "has_image"] + ["text"] * include_text
    output = ["created_ts AS created_at", *names, *derived]
    source = "batch" if staged else _inline_stage(include_text)
    return (
        f"SELECT {', '.join(output)}, coalesce({' AND '.join(checks)}, false) AS _ok FROM ("
        f"SELECT metadata, created_ts, created_bad, content_bad, {', '.join([*derived, *values, *kinds])} FROM ("
        f"SELECT *, json_type(metadata, [{paths}]) AS meta_kinds, "
        f"json_transform(metadata, '{typed}') AS meta_typed FROM {source}))"
    )


def fast_inputs(*, staged: bool) -> list[str]:
    """The columns :func:`clean_messages_sql` reads."""
    if staged:
        return ["created_ts", "created_bad", "metadata", "content_bad"]
    return ["created_at", "metadata", "content"]


def table_sql(table: str, columns: Sequence[str]) -> str:
    """The query for a table without JSON: renames, timestamps parsed, ``_bad`` flag."""
    selects, bads = [], []
    for column in columns:
        name = _RENAMES.get(table, {}).get(column, column)
        if column in _TIMESTAMPS:
            value, bad = _timestamp(column)
            selects.append(f"{value} AS {name}")
            bads.append(bad)
        else:
            selects.append(f"{column} AS {name}")
    return f"SELECT {', '.join(selects)}, ({' OR '.join(bads) or 'false'}) AS _bad FROM batch"


class Flattener:
    """Converts batches of one table's ``scan_rows`` tuples; owns a private in-process DuckDB."""

    def __init__(self, table: str, columns: Sequence[str], *, include_text: bool, include_extra: bool):
        self.table = table
        self.columns = tuple(columns)
        self.include_text = include_text
        self.schema = schema(table, include_text=include_text, include_extra=include_extra)
        # What a scan may apply to each batch before handing it over (None: nothing).
        self.stage: dict[str, Any] | None = None
        # (fast query or None, exact query) for batches as scanned, and as staged.
        self._queries: dict[bool, tuple[str | None, str]] = {}
        if table == "messages":
            self.stage = text_stage(include_text=include_text)
            for staged in (False, True):
                fast = None if include_extra else clean_messages_sql(include_text=include_text, staged=staged)
                exact = messages_sql(include_text=include_text, include_extra=include_extra, staged=staged)
                self._queries[staged] = (fast, exact)
        else:
            self._queries[False] = (None, table_sql(table, self.columns))
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = private_duckdb()
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def to_arrow(self, rows: Sequence[Sequence[Any]]) -> pa.Table:
        """Stored values as Arrow text columns: the only step that touches Python objects.
        Decoded message content (MongoDB's) is read as it is instead, where every row allows
        (see :func:`decoded_stage`): the batch then comes out staged, and with its decoded
        metadata read the same way (:func:`decoded_metadata`), complete."""
        import pyarrow as pa

        columns = list(zip(*rows, strict=True)) if rows else [()] * len(self.columns)
        values = dict(zip(self.columns, columns, strict=True))
        staged = None
        replaced: list[str] = []
        if self.stage is not None and rows and not isinstance(values["content"][0], str):
            staged = decoded_stage(values["content"], values["created_at"], include_text=self.include_text)
        if staged is not None and self.stage is not None:
            replaced += self.stage["columns"]
            # Decoded metadata too, once the batch is staged (a complete batch needs no DuckDB);
            # metadata_extra keeps the JSON way, which writes what is left of each object.
            fields = None if "metadata_extra" in self.schema.names else decoded_metadata(values["metadata"])
            if fields is not None:
                staged = pa.table(
                    [*staged.columns, *fields.columns], names=[*staged.column_names, *fields.column_names]
                )
                replaced.append("metadata")
        names = [name for name in self.columns if name not in replaced]
        arrays = [_string_array(name, values[name]) for name in names]
        table = pa.table(arrays, names=names)
        if staged is not None:
            for name in staged.column_names:
                table = table.append_column(name, staged.column(name))
        return table

    def convert(self, source: pa.Table) -> tuple[pa.Table, int]:
        """The batch in the table's schema and how many of its rows had unreadable values."""
        import pyarrow.compute as pc

        if source.num_rows == 0:
            return self.schema.empty_table(), 0
        # A scan that ran the text stage already hands over its result instead of its input.
        staged = self.stage is not None and is_staged(self.stage, source)
        if staged and "metadata" not in source.column_names:
            return self._complete(source)
        fast, exact = self._queries[staged]
        with self._lock:
            con = self._connection()
            try:
                if fast is not None:
                    quick = self._fast(con, fast, source, staged)
                    if quick is not None:
                        return quick, 0
                con.register("batch", source)
                result = con.sql(exact).to_arrow_table()
            finally:
                con.unregister("batch")
        skipped = int(pc.sum(result.column("_bad")).as_py() or 0)
        return result.drop_columns(["_bad"]).cast(self.schema), skipped

    def _complete(self, source: pa.Table) -> tuple[pa.Table, int]:
        """A batch converted already (decoded content and metadata, see :meth:`to_arrow`):
        only renamed and cast into the schema."""
        import pyarrow as pa
        import pyarrow.compute as pc

        renamed = {"message_id": "id", "created_at": "created_ts"}
        columns = [
            source.column(renamed.get(field.name, field.name)).cast(field.type) for field in self.schema
        ]
        bad = pc.or_(source.column("content_bad"), source.column("created_bad"))
        return pa.Table.from_arrays(columns, schema=self.schema), int(pc.sum(bad).as_py() or 0)

    def _fast(
        self, con: duckdb.DuckDBPyConnection, sql: str, source: pa.Table, staged: bool
    ) -> pa.Table | None:
        """The batch converted by the fast query, or None where a row needs the exact one.
        Only the columns it reads go through DuckDB; the rest are taken from ``source``."""
        import duckdb
        import pyarrow as pa
        import pyarrow.compute as pc

        con.register("batch", source.select(fast_inputs(staged=staged)))
        try:
            result = con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            if interrupted(exc):
                raise KeyboardInterrupt from exc
            return None  # invalid JSON somewhere in the batch
        if not pc.all(result.column("_ok")).as_py():
            return None
        columns = []
        for field in self.schema:
            name = "id" if field.name == "message_id" else field.name
            column = result.column(name) if name in result.column_names else source.column(name)
            columns.append(column.cast(field.type))
        return pa.Table.from_arrays(columns, schema=self.schema)


def decoded_stage(contents: Sequence[Any], stamps: Sequence[Any], *, include_text: bool) -> pa.Table | None:
    """What :func:`text_stage` makes of ``content``/``created_at``, computed from content the
    driver decoded already (MongoDB's lists of parts): writing it as JSON for DuckDB to parse
    again was most of a MongoDB export's own time. Only where every value is plain -- content
    a list of dicts whose ``type`` is a string and ``text`` a string or absent (or no content),
    timestamps in the form Arrow parses -- else None, and the batch takes the JSON way, which
    gives the same values for such rows (tested)."""
    import pyarrow as pa

    chars: list[int | None] = []
    counts: list[int | None] = []
    images: list[bool | None] = []
    texts: list[str | None] = []
    for content in contents:
        if content is None:
            for column in (chars, counts, images, texts):
                column.append(None)
            continue
        if not isinstance(content, list):
            return None
        total, image, joined = 0, False, []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            text = part.get("text") if isinstance(part, dict) else None
            if not isinstance(kind, str) or not (text is None or isinstance(text, str)):
                return None
            if kind == "text" and text is not None:
                total += len(text)
                joined.append(text)
            image = image or kind == "image"
        chars.append(total)
        counts.append(len(content))
        images.append(image)
        if include_text:
            texts.append("\n".join(joined))
    # Arrow parses only ISO-8601 with an offset (``...T12:00:00.123Z``, as stored), and where it
    # parses a value DuckDB's cast agrees (tested); anything else is left to DuckDB, lenient.
    try:
        created = pa.array(stamps, pa.string()).cast(pa.timestamp("ms", "UTC"))
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # not that form, or not text (datetimes: the JSON way formats them)
    columns = {
        "content_chars": pa.array(chars, pa.int64()),
        "content_parts": pa.array(counts, pa.int64()),
        "has_image": pa.array(images, pa.bool_()),
    }
    if include_text:
        columns["text"] = pa.array(texts, pa.large_string())
    columns["content_bad"] = pa.array([False] * len(chars), pa.bool_())
    columns["created_ts"] = created.cast(pa.int64())
    columns["created_bad"] = pa.array([False] * len(chars), pa.bool_())
    return pa.table(columns)


_INT64_LIMIT = 1 << 63


def decoded_metadata(values: Sequence[Any]) -> pa.Table | None:
    """The metadata columns from metadata the driver decoded already (MongoDB's dicts), with
    the values :func:`clean_messages_sql` gives their JSON, or None unless every value is plain:
    None or a dict whose known fields are absent, None or of their type (text; an integer in
    [0, 2**63); a finite number >= 0; never a bool) -- anything else takes the JSON way,
    which converts or flags it (tested against it)."""
    import pyarrow as pa

    columns: list[list[Any]] = [[] for _ in METADATA_COLUMNS]
    for meta in values:
        if meta is None:
            for column in columns:
                column.append(None)
            continue
        if not isinstance(meta, dict):
            return None
        for column, (_, key, kind) in zip(columns, METADATA_COLUMNS, strict=True):
            value = meta.get(key)
            if value is None:
                column.append(None)
            elif kind == "string":
                if not isinstance(value, str):
                    return None
                column.append(value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            elif kind == "int":
                if not isinstance(value, int) or not 0 <= value < _INT64_LIMIT:
                    return None
                column.append(int(value))
            elif isinstance(value, int) and not 0 <= value < _INT64_LIMIT:
                return None
            else:
                number = float(value)
                if not (number >= 0 and math.isfinite(number)):
                    return None
                column.append(number)
    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}
    return pa.table(
        [
            pa.array(column, types[kind])
            for column, (_, _, kind) in zip(columns, METADATA_COLUMNS, strict=True)
        ],
        names=[name for name, _, _ in METADATA_COLUMNS],
    )


def _string_array(name: str, values: Sequence[Any]) -> pa.Array:
    """One scanned column as Arrow text; decoded values (MongoDB) are encoded back to JSON text,
    image payloads left out, so the same query reads every backend."""
    import pyarrow as pa

    kind = pa.large_string() if name == "content" else pa.string()
    # The system allocator hands freed batch buffers back at once; the default pool caches them,
    # which costs tens of MB of peak memory when batches are allocated and freed in a stream.
    pool = pa.system_memory_pool()
    try:
        return pa.array(values, type=kind, memory_pool=pool)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([_as_text(name, value) for value in values], type=kind, memory_pool=pool)


def _as_text(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if name == "content" and isinstance(value, list):
        value = [_without_payload(part) for part in value]
    try:
        return _JSON.encode(value)
    except (TypeError, ValueError):
        return None


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def _without_payload(part: Any) -> Any:
    if isinstance(part, dict) and part.get("type") == "image":
        return {key: value for key, value in part.items() if key != "imageData"}
    return part
