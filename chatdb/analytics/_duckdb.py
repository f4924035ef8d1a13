"""Sources in the export schema that DuckDB reads without loading them: a Parquet file or dataset,
a DuckDB database's ``messages`` table, an Arrow stream.

:class:`DuckDbMessages` answers ``aggregate_messages`` (see :mod:`chatdb._aggregate`) with one
DuckDB ``GROUP BY`` over the source, so the reports in :mod:`chatdb.analytics.usage` treat it like
a repository: DuckDB streams the rows through its aggregation and only groups come back (as
columns, ``aggregate_columns``: no Python object per group). The groups are cut no finer than the
report reads them (:class:`chatdb.analytics._groups.GroupNeeds`: by price era rather than UTC day,
by period only for reports by period, on one packed integer key): hashing rows into groups is,
after decoding the columns, most of a report's time. Its
percentiles are exact (``quantile_cont``, which keeps each group's durations: 8 bytes a message
with a duration, the one thing here that grows with the data). An Arrow stream can be read once
only, so it is first copied (the columns reports need) into a temporary DuckDB file on disk.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._aggregate import DAY, HOUR, AggregateQuery, floor_shift

if TYPE_CHECKING:
    from ._groups import GroupNeeds

__all__ = ["DuckDbMessages"]

_COLUMNS = (
    "chat_id", "user_id", "created_at", "model", "input_tokens", "output_tokens",
    "cache_creation_input_tokens", "cache_read_input_tokens", "total_cost_usd", "duration_ms",
)  # fmt: skip


class DuckDbMessages:
    """Messages in the export schema, read by DuckDB from ``relation`` (SQL naming a table or a
    table function) over ``con``."""

    exact_quantiles = True
    coarse_groups = True  # aggregate_columns takes GroupNeeds

    def __init__(self, con: Any, relation: str, keep: Any = None, files: str | None = None) -> None:
        self.con = con
        self.relation = relation
        self._keep = keep  # what must live as long as this (a temporary directory)
        self._files = files  # the Parquet glob, whose footers hold the time range
        names = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
        missing = [name for name in ("chat_id", "created_at") if name not in names]
        if missing:
            from ..errors import ValidationError

            raise ValidationError(f"source is not a messages table: missing {', '.join(missing)}")
        self._names = names

    @classmethod
    def parquet(cls, path: Path) -> DuckDbMessages:

        pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
        hive = "true" if path.is_dir() else "false"
        relation = f"read_parquet('{_quote(pattern)}', hive_partitioning = {hive}, union_by_name = true)"
        return cls(_shared_cursor(), relation, files=pattern)

    @classmethod
    def stream(cls, reader: Any) -> DuckDbMessages:
        """An Arrow RecordBatchReader, copied once to a temporary DuckDB file (then deleted)."""
        import duckdb

        folder = tempfile.mkdtemp(prefix="chatdb-usage-")
        con = duckdb.connect(str(Path(folder) / "messages.duckdb"))
        con.execute("SET preserve_insertion_order = false")
        keep = weakref.finalize(con, shutil.rmtree, folder, ignore_errors=True)
        available = {field.name for field in reader.schema}
        columns = ", ".join(name for name in _COLUMNS if name in available)
        con.register("arrow_stream", reader)
        con.execute(f"CREATE TABLE messages AS SELECT {columns} FROM arrow_stream")
        con.unregister("arrow_stream")
        return cls(con, "messages", keep)

    def _column(self, name: str, sql_type: str) -> str:
        return name if name in self._names else f"CAST(NULL AS {sql_type})"

    def message_time_range(self) -> tuple[datetime | None, datetime | None]:
        found = self._footer_time_range()
        if found is not None:
            return found
        row = self.con.execute(
            f"SELECT min(created_at), max(created_at) FROM (SELECT {self._created()} AS created_at "
            f"FROM {self.relation})"
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def _footer_time_range(self) -> tuple[datetime | None, datetime | None] | None:
        """The range from the Parquet footers' statistics (pyarrow: ~1 ms a file), without
        reading a row: None, for a scan, when a row group with times has no statistics or the
        times are not UTC timestamps."""
        if self._files is None:
            return None
        import pyarrow.parquet as pq

        first: datetime | None = None
        last: datetime | None = None
        for (name,) in self.con.execute("SELECT file FROM glob(?)", [self._files]).fetchall():
            metadata = pq.read_metadata(name)
            names = metadata.schema.names
            if "created_at" not in names:
                continue  # (its rows have no time: union_by_name reads them as null)
            index = names.index("created_at")
            for group in range(metadata.num_row_groups):
                stats = metadata.row_group(group).column(index).statistics
                if stats is None or not (
                    stats.has_min_max or (stats.has_null_count and stats.num_values == 0)
                ):
                    return None
                if not stats.has_min_max:
                    continue
                low, high = stats.min, stats.max
                if not (
                    isinstance(low, datetime) and isinstance(high, datetime) and low.tzinfo and high.tzinfo
                ):
                    return None
                first = low if first is None else min(first, low)
                last = high if last is None else max(last, high)
        return first, last

    def _created(self) -> str:
        return f"CAST(created_at AS {_STAMP})"

    def aggregate_messages(self, query: AggregateQuery) -> Iterator[list[tuple[Any, ...]]]:
        sql, params = self._sql(query)
        cursor = self.con.cursor()
        try:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(50_000):
                yield rows
        finally:
            cursor.close()

    def aggregate_columns(self, query: AggregateQuery, needs: GroupNeeds | None = None) -> Any:
        """The groups of ``query`` as one Polars frame, GROUP_COLUMNS in order; with
        ``durations``, the exact percentiles (EXACT_COLUMNS, the quantiles as one list column).

        ``needs`` says what the report reads of the groups (see
        :class:`chatdb.analytics._groups.GroupNeeds`): the groups are then cut only as finely as
        that, which is most of this query's time (the number of groups, not of messages)."""
        sql, params = self._coarse_sql(query, needs) if needs and not query.durations else self._sql(query)
        cursor = self.con.cursor()
        try:
            return cursor.sql(sql, params=params).pl()
        finally:
            cursor.close()

    def _rows(self, query: AggregateQuery) -> tuple[str, list[Any]]:
        """The messages ``query`` selects, with ``e`` (epoch seconds) and ``gkey``."""
        column = self._column
        where: list[str] = []
        params: list[Any] = []
        if query.since is not None:
            where.append("created_at >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("created_at < ?")
            params.append(query.until)
        if query.user_id is not None:
            where.append("user_id = ?")
            params.append(query.user_id)
        models = ["model = ?" for _ in query.models] + ["lower(model) LIKE ?" for _ in query.model_like]
        params += [*query.models, *(f"%{part}%" for part in query.model_like)]
        if models:
            where.append(f"({' OR '.join(models)})")
        key = {"user": "user_id", "chat": "chat_id"}.get(query.key or "", "CAST(NULL AS VARCHAR)")
        rows = (
            f"SELECT {self._created()} AS created_at, {column('user_id', 'VARCHAR')} AS user_id, chat_id, "
            f"{column('model', 'VARCHAR')} AS model, "
            + ", ".join(f"{column(name, 'BIGINT')} AS {name}" for name in _TOKENS)
            + f", {column('total_cost_usd', 'DOUBLE')} AS total_cost_usd, "
            f"{column('duration_ms', 'BIGINT')} AS duration_ms FROM {self.relation}"
        )
        epoch = _floor_div("epoch_us(created_at)", 1_000_000, 1_000_000)  # (epoch_ms: twice as long)
        filtered = f"SELECT *, {epoch} AS e, {key} AS gkey FROM ({rows})" + (
            f" WHERE {' AND '.join(where)}" if where else ""
        )
        return filtered, params

    def _sql(self, query: AggregateQuery) -> tuple[str, list[Any]]:
        filtered, params = self._rows(query)
        # The zone's offset is computed once a row, in an inner query: the CASE over the zone's
        # shifts is the costliest expression of the scan.
        base = f"SELECT *, {_offset(query)} AS e_offset FROM ({filtered})"
        offset = "e_offset"
        local = _floor_div(f"e + {offset}", query.unit)
        if query.durations:
            if query.period == "week":
                period = _floor_div(f"{local} + 3", 7)
            elif query.period == "month":
                stamp = f"make_timestamp((e + {offset}) * 1000000)"
                period = f"(year({stamp}) * 12 + month({stamp}) - 1)"
            elif query.period in ("hour", "day"):
                period = local
            else:
                period = "0"
            tzoff = offset if query.period == "hour" else "0"
            model = "model" if query.per_model else "CAST(NULL AS VARCHAR)"
            key = "gkey" if query.key else "CAST(NULL AS VARCHAR)"  # a constant is not hashed
            qs = ", ".join(repr(float(q)) for q in query.quantiles)
            sql = (
                f"SELECT {period} AS period, {tzoff} AS tzoff, {model} AS gmodel, {key} AS gkey, "
                f"quantile_cont(CAST(duration_ms AS DOUBLE), [{qs}]) FROM ({base}) "
                "WHERE duration_ms IS NOT NULL GROUP BY ALL"
            )
            return sql, params
        sql = (
            f"SELECT {local} AS bucket, {offset} AS tzoff, {_floor_div('e', DAY)} AS utc_day, "
            "strftime(min(created_at) AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%g') || 'Z', model, gkey, "
            f"total_cost_usd IS NOT NULL AS has_reported, ({_HAS_TOKENS}) AS has_tokens, {_SUMS}, "
            f"max(duration_ms), 0 FROM ({base}) "
            "GROUP BY bucket, tzoff, utc_day, model, gkey, has_reported, has_tokens"
        )
        return sql, params

    def _coarse_sql(self, query: AggregateQuery, needs: GroupNeeds) -> tuple[str, list[Any]]:
        """GROUP_COLUMNS grouped only by what ``needs`` reads, on one packed integer beside the
        model and key (one BIGINT hashes and compares faster than five columns):

        ``g = ((bucket * OFFSETS + offset + OFFSET_BIAS) * eras + era) * 4 + flags``

        where the local bucket and offset are left out for a report not by period (and the
        offset unless it cuts hours in a zone with more than one), ``era`` numbers the spans
        between the days any price changes (a group's messages share their prices) unless the
        UTC day follows from the bucket, and ``flags`` are has_reported, has_tokens. Each
        group's ``utc_day`` is then a day its messages' prices apply on, and ``first`` the
        start of its period (UTC, or local for day-long buckets in a zone with changing
        offsets): text that sorts the periods like their first messages, null for a report not
        by period."""
        filtered, params = self._rows(query)
        unit = query.unit
        offsets = {int(value) for _, value in query.shifts}
        periods = needs.periods
        keep_offset = periods and unit == HOUR and len(offsets) > 1
        utc_from_bucket = periods and all(value % unit == 0 for value in offsets)
        days = () if utc_from_bucket else tuple(sorted(set(needs.price_days)))
        eras = len(days) + 1
        base = f"({filtered})"
        if periods and len(offsets) > 1:
            base = f"(SELECT *, {_offset(query)} AS e_offset FROM {base})"
            offset = "e_offset"
        else:
            offset = str(next(iter(offsets)) if periods else 0)
        # (the bucket counted from before year 1, not from 1970: never negative, so // and % unpack it)
        since_year_1 = floor_shift(unit) // unit
        packed = f"((e + {offset} + {floor_shift(unit)}) // {unit})" if periods else "0"
        if keep_offset:
            packed = f"({packed} * {_OFFSETS} + {offset} + {_OFFSET_BIAS})"
        if eras > 1:
            # Newest first: most messages are past the last change, decided by one comparison.
            # Without periods the epoch seconds are not needed: compare the times themselves.
            since = (lambda day: f"e >= {day * DAY}") if periods else _since_day
            era = " ".join(f"WHEN {since(day)} THEN {i + 1}" for i, day in reversed(list(enumerate(days))))
            packed = f"({packed} * {eras} + CASE {era} ELSE 0 END)"
        packed = f"({packed} * 4 + (total_cost_usd IS NOT NULL)::INTEGER * 2 + ({_HAS_TOKENS})::INTEGER)"
        rest = f"(g // 4 // {eras})"
        if keep_offset:
            bucket = f"({rest} // {_OFFSETS} - {since_year_1})"
            tzoff = f"{rest} % {_OFFSETS} - {_OFFSET_BIAS}"
        elif periods:
            bucket, tzoff = f"({rest} - {since_year_1})", offset if len(offsets) == 1 else "0"
        else:
            bucket, tzoff = "0", "0"
        if utc_from_bucket:
            utc_day = _floor_div(f"({bucket}) * {unit} - ({tzoff})", DAY)
        else:
            # A day of the group's era: the era's first, or the day before the first change.
            representatives = [days[0] - 1, *days] if days else [0]
            utc_day = f"{representatives}[g // 4 % {eras} + 1]"
        if needs.first_times:
            first = "strftime(first_at AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%g') || 'Z'"
        elif periods:
            first = f"strftime(make_timestamp((({bucket}) * {unit} - ({tzoff})) * 1000000), '%Y-%m-%dT%H:%M:%S') || 'Z'"
        else:
            first = "CAST(NULL AS VARCHAR)"
        first_at = ", min(created_at) AS first_at" if needs.first_times else ", NULL AS first_at"
        maximum = "max(duration_ms)" if needs.max_duration else "CAST(NULL AS BIGINT)"
        # (a key that is null for every row is no column to hash)
        keys = "g, model, gkey" if query.key else "g, model"
        sql = (
            f"SELECT {bucket}, {tzoff}, {utc_day}, {first}, model, "
            f"{'gkey' if query.key else 'CAST(NULL AS VARCHAR)'}, g % 4 >= 2, g % 2 = 1, "
            f"* EXCLUDE ({keys}, first_at) FROM (SELECT {keys}{first_at}, {_SUMS}, "
            f"{maximum}, 0 FROM (SELECT *, {packed} AS g FROM {base}) GROUP BY {keys})"
        )
        return sql, params


_STAMP = "TIMESTAMPTZ"
_DATABASE: Any = None
_DATABASE_LOCK = threading.Lock()


def _shared_cursor() -> Any:
    """A new cursor (a connection of its own) on the one in-memory DuckDB this process keeps
    for Parquet sources: opening a database costs 20-40 ms, a cursor almost nothing. Its object
    cache keeps the Parquet footers between queries and reports (DuckDB reads a file's footer
    again when the file changed), so DESCRIBE, the time range, the groups and the percentiles
    do not each open every file. Made under a lock: a connection is not shared across threads."""
    global _DATABASE
    with _DATABASE_LOCK:
        if _DATABASE is None:
            import duckdb

            _DATABASE = duckdb.connect(config={"enable_object_cache": True})
        return _DATABASE.cursor()


def _since_day(day: int) -> str:
    stamp = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
    return f"created_at >= TIMESTAMPTZ '{stamp} 00:00:00+00'"


_TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_HAS_TOKENS = " OR ".join(f"{name} IS NOT NULL" for name in _TOKENS)
_SUMS = (
    "count(*), "
    + ", ".join(f"sum({name})" for name in _TOKENS)
    + ", sum(total_cost_usd), sum(duration_ms), count(duration_ms)"
)
# An offset (seconds, within a day either side) packed into the group key.
_OFFSETS = 4 * DAY
_OFFSET_BIAS = 2 * DAY


def _floor_div(a: str, b: int, per_second: int = 1) -> str:
    """``a // b`` rounded down, for times before 1970 too (DuckDB's ``//`` truncates);
    ``a`` counts ``1 / per_second`` seconds."""
    shift = floor_shift(b, per_second)
    return f"(({a} + {shift}) // {b} - {shift // b})"


def _offset(query: AggregateQuery) -> str:
    if len(query.shifts) == 1:
        return str(int(query.shifts[0][1]))
    cases = [
        f"WHEN e < {int(start or 0)} THEN {int(value)}"
        for (_, value), (start, _) in zip(query.shifts, query.shifts[1:], strict=False)
    ]
    return f"CASE {' '.join(cases)} ELSE {int(query.shifts[-1][1])} END"


def _quote(text: str) -> str:
    return text.replace("'", "''")
