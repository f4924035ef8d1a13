"""Sources in the export schema that DuckDB reads without loading them: a Parquet file or dataset,
a DuckDB database's ``messages`` table, an Arrow stream.

:class:`DuckDbMessages` answers ``aggregate_messages`` (see :mod:`chatdb._aggregate`) with one
DuckDB ``GROUP BY`` over the source, so the reports in :mod:`chatdb.analytics.usage` treat it like
a repository: DuckDB streams the rows through its aggregation and only groups come back (as
columns, ``aggregate_columns``: no Python object per group). Its
percentiles are exact (``quantile_cont``, which keeps each group's durations: 8 bytes a message
with a duration, the one thing here that grows with the data). An Arrow stream can be read once
only, so it is first copied (the columns reports need) into a temporary DuckDB file on disk.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from .._aggregate import DAY, AggregateQuery

__all__ = ["DuckDbMessages"]

_COLUMNS = (
    "chat_id", "user_id", "created_at", "model", "input_tokens", "output_tokens",
    "cache_creation_input_tokens", "cache_read_input_tokens", "total_cost_usd", "duration_ms",
)  # fmt: skip


class DuckDbMessages:
    """Messages in the export schema, read by DuckDB from ``relation`` (SQL naming a table or a
    table function) over ``con``."""

    exact_quantiles = True

    def __init__(self, con: Any, relation: str, keep: Any = None) -> None:
        self.con = con
        self.relation = relation
        self._keep = keep  # what must live as long as this (a temporary directory)
        names = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
        missing = [name for name in ("chat_id", "created_at") if name not in names]
        if missing:
            from ..errors import ValidationError

            raise ValidationError(f"source is not a messages table: missing {', '.join(missing)}")
        self._names = names

    @classmethod
    def parquet(cls, path: Path) -> DuckDbMessages:
        import duckdb

        pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
        hive = "true" if path.is_dir() else "false"
        relation = f"read_parquet('{_quote(pattern)}', hive_partitioning = {hive}, union_by_name = true)"
        return cls(duckdb.connect(), relation)

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
        row = self.con.execute(
            f"SELECT min(created_at), max(created_at) FROM (SELECT {self._created()} AS created_at "
            f"FROM {self.relation})"
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def _created(self) -> str:
        return "CAST(created_at AS TIMESTAMPTZ)"

    def aggregate_messages(self, query: AggregateQuery) -> Iterator[list[tuple[Any, ...]]]:
        sql, params = self._sql(query)
        cursor = self.con.cursor()
        try:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(50_000):
                yield rows
        finally:
            cursor.close()

    def aggregate_columns(self, query: AggregateQuery) -> Any:
        """The groups of ``query`` (not ``durations``) as one Polars frame, GROUP_COLUMNS in order."""
        sql, params = self._sql(query)
        cursor = self.con.cursor()
        try:
            return cursor.sql(sql, params=params).pl()
        finally:
            cursor.close()

    def _sql(self, query: AggregateQuery) -> tuple[str, list[Any]]:
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
            + ", ".join(f"{column(name, 'BIGINT')} AS {name}" for name in _COLUMNS[4:8])
            + f", {column('total_cost_usd', 'DOUBLE')} AS total_cost_usd, "
            f"{column('duration_ms', 'BIGINT')} AS duration_ms FROM {self.relation}"
        )
        # Epoch seconds and the zone's offset are computed once a row, in an inner query: the
        # CASE over the zone's shifts is the costliest expression of the scan.
        epoch = "epoch_ms(created_at) // 1000"
        filtered = f"SELECT *, {epoch} AS e, {key} AS gkey FROM ({rows})" + (
            f" WHERE {' AND '.join(where)}" if where else ""
        )
        base = f"SELECT *, {_offset(query)} AS e_offset FROM ({filtered})"
        offset = "e_offset"
        local = f"((e + {offset}) // {query.unit})"
        if query.durations:
            if query.period == "week":
                period = f"(({local} + 3) // 7)"
            elif query.period == "month":
                stamp = f"make_timestamp((e + {offset}) * 1000000)"
                period = f"(year({stamp}) * 12 + month({stamp}) - 1)"
            elif query.period in ("hour", "day"):
                period = local
            else:
                period = "0"
            tzoff = offset if query.period == "hour" else "0"
            model = "model" if query.per_model else "CAST(NULL AS VARCHAR)"
            qs = ", ".join(repr(float(q)) for q in query.quantiles)
            sql = (
                f"SELECT {period} AS period, {tzoff} AS tzoff, {model} AS gmodel, gkey, "
                f"quantile_cont(CAST(duration_ms AS DOUBLE), [{qs}]) FROM ({base}) "
                "WHERE duration_ms IS NOT NULL GROUP BY ALL"
            )
            return sql, params
        tokens = ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"]
        has_tokens = " OR ".join(f"{name} IS NOT NULL" for name in tokens)
        sql = (
            f"SELECT {local} AS bucket, {offset} AS tzoff, e // {DAY} AS utc_day, "
            "strftime(min(created_at) AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%g') || 'Z', model, gkey, "
            f"total_cost_usd IS NOT NULL AS has_reported, ({has_tokens}) AS has_tokens, count(*), "
            + ", ".join(f"sum({name})" for name in tokens)
            + ", sum(total_cost_usd), sum(duration_ms), count(duration_ms), max(duration_ms), 0 "
            f"FROM ({base}) GROUP BY bucket, tzoff, utc_day, model, gkey, has_reported, has_tokens"
        )
        return sql, params


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
