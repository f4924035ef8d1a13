"""Messages in the export schema behind an Ibis table: Spark (``ibis.pyspark.connect``), DuckDB or
any engine Ibis compiles to.

:class:`IbisMessages` answers ``aggregate_messages`` (see :mod:`chatdb._aggregate`) with one Ibis
expression, a ``GROUP BY`` the engine runs where the data is; only the groups come back, and
:mod:`chatdb.analytics._groups` prices and rolls them up as for every other source. The expression
uses integer arithmetic on epoch seconds only (local buckets from the zone's offsets, months from
day numbers), so no engine's time-zone setting can move a period. Percentiles come from the
mergeable latency histogram (within ``RELATIVE_ERROR``), which no engine needs to keep the
durations for.

A source is an Ibis table in the ``messages`` export schema (``con.read_parquet(dataset)`` over
a dataset that ``export.to_parquet`` wrote), or an Ibis backend holding a ``messages`` table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from .._aggregate import DAY, EXACT_BELOW, LN_GAMMA, LOG_BASE, AggregateQuery
from ..errors import ValidationError

__all__ = ["IbisMessages", "is_ibis"]

_TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_TYPES = {
    "user_id": "string", "model": "string", **dict.fromkeys(_TOKENS, "int64"),
    "total_cost_usd": "float64", "duration_ms": "int64",
}  # fmt: skip
_BATCH = 50_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_ibis(source: Any) -> bool:
    """Whether ``source`` is an Ibis object (checked by its class's module: no import of Ibis)."""
    return type(source).__module__.partition(".")[0] == "ibis"


class IbisMessages:
    """The messages of ``table``, an Ibis table in the export schema."""

    exact_quantiles = False

    def __init__(self, table: Any) -> None:
        names = set(table.schema().names)
        missing = [name for name in ("chat_id", "created_at") if name not in names]
        if missing:
            raise ValidationError(f"source is not a messages table: missing {', '.join(missing)}")
        self.table = table
        self._names = names

    @classmethod
    def of(cls, source: Any) -> IbisMessages:
        """From an Ibis table, or an Ibis backend's ``messages`` table. Raises ValidationError."""
        import ibis.expr.types as ir

        if isinstance(source, ir.Table):
            return cls(source)
        if hasattr(source, "table"):
            from ibis.common.exceptions import TableNotFound

            try:
                return cls(source.table("messages"))
            except TableNotFound as exc:
                raise ValidationError(
                    "the Ibis backend has no 'messages' table: pass a table instead, such as "
                    "con.read_parquet(dataset) over a dataset written by chatdb.export.to_parquet"
                ) from exc
        raise ValidationError(f"an Ibis {type(source).__name__} is not a source: pass a table or a backend")

    def _column(self, name: str) -> Any:
        import ibis

        if name in self._names:
            return self.table[name].cast(_TYPES[name])
        return ibis.null().cast(_TYPES[name])

    def _epoch_ms(self) -> Any:
        """``created_at`` as epoch milliseconds. Times travel back as numbers: an engine's
        timestamps may come back through local wall-clock time (PySpark without Arrow does),
        which loses the hour a DST change repeats."""
        created = self.table["created_at"]
        return _epoch_seconds(created) * 1000 + created.millisecond().cast("int64")

    def message_time_range(self) -> tuple[datetime | None, datetime | None]:
        stamp = self._epoch_ms()
        row = self.table.aggregate(first=stamp.min(), last=stamp.max()).to_pyarrow().to_pylist()[0]
        return _utc(row["first"]), _utc(row["last"])

    def aggregate_messages(self, query: AggregateQuery) -> Iterator[list[tuple[Any, ...]]]:
        result = self.expression(query).to_pyarrow()
        rows = [tuple(row.values()) for row in result.to_pylist()]
        if not query.durations:
            first = 3  # GROUP_COLUMNS' "first": the export's text form, as the databases give it
            rows = [(*row[:first], _text(row[first]), *row[first + 1 :]) for row in rows]
        for start in range(0, len(rows), _BATCH):
            yield rows[start : start + _BATCH]

    def aggregate_columns(self, query: AggregateQuery) -> Any:
        """The groups of ``query`` (not ``durations``) as one Polars frame, GROUP_COLUMNS in order."""
        import polars as pl

        frame = cast(pl.DataFrame, pl.from_arrow(self.expression(query).to_pyarrow()))
        first = frame.columns[3]  # epoch ms -> the export's text form, as the databases give it
        text = pl.from_epoch(pl.col(first), time_unit="ms").dt.strftime("%Y-%m-%dT%H:%M:%S.%3fZ")
        return frame.with_columns(text.alias(first))

    def expression(self, query: AggregateQuery) -> Any:
        """The Ibis expression of ``query``: GROUP_COLUMNS rows, or HISTOGRAM_COLUMNS rows with
        ``durations``."""
        import ibis

        created = self.table["created_at"]
        epoch_ms = self._epoch_ms()
        key = {"user": self._column("user_id"), "chat": self.table["chat_id"].cast("string")}.get(
            query.key or "", ibis.null().cast("string")
        )
        rows = self.table.select(
            created_at=created,
            ms=epoch_ms,
            e=_epoch_seconds(created),
            gkey=key,
            user_id=self._column("user_id"),
            model=self._column("model"),
            **{name: self._column(name) for name in (*_TOKENS, "total_cost_usd", "duration_ms")},
        )
        where = []
        if query.since is not None:
            where.append(rows.created_at >= ibis.literal(query.since))
        if query.until is not None:
            where.append(rows.created_at < ibis.literal(query.until))
        if query.user_id is not None:
            where.append(rows.user_id == query.user_id)
        matches = [rows.model == name for name in query.models]
        matches += [rows.model.lower().contains(part) for part in query.model_like]
        if matches:
            where.append(ibis.or_(*matches))
        if where:
            rows = rows.filter(*where)
        rows = rows.mutate(tzoff=_offset(rows.e, query))
        rows = rows.mutate(bucket=(rows.e + rows.tzoff) // query.unit)
        if query.durations:
            return _histogram(rows, query)
        has_tokens = ibis.or_(*(rows[name].notnull() for name in _TOKENS))
        rows = rows.mutate(
            utc_day=rows.e // DAY, has_reported=rows.total_cost_usd.notnull(), has_tokens=has_tokens
        )
        grouped = rows.group_by("bucket", "tzoff", "utc_day", "model", "gkey", "has_reported", "has_tokens")
        sums = grouped.aggregate(
            first=rows.ms.min(),
            messages=rows.count(),
            **{name: rows[name].sum() for name in _TOKENS},
            reported_cost=rows.total_cost_usd.sum(),
            duration_sum=rows.duration_ms.sum(),
            duration_count=rows.duration_ms.count(),
            duration_max=rows.duration_ms.max(),
        )
        return sums.select(
            "bucket", "tzoff", "utc_day", "first", "model", "gkey", "has_reported", "has_tokens", "messages",
            *_TOKENS, "reported_cost", "duration_sum", "duration_count", "duration_max",
            unreadable=ibis.literal(0, "int64"),  # the export read every value already
        )  # fmt: skip


def _offset(epoch: Any, query: AggregateQuery) -> Any:
    """The zone's UTC offset (seconds) at each message, from ``query.shifts``."""
    import ibis

    if len(query.shifts) == 1:
        return ibis.literal(int(query.shifts[0][1]), "int64")
    branches = [
        (epoch < int(start or 0), ibis.literal(int(value), "int64"))
        for (_, value), (start, _) in zip(query.shifts, query.shifts[1:], strict=False)
    ]
    return ibis.cases(*branches, else_=ibis.literal(int(query.shifts[-1][1]), "int64"))


def _histogram(rows: Any, query: AggregateQuery) -> Any:
    """HISTOGRAM_COLUMNS rows: the count per latency bucket (see chatdb._aggregate)."""
    import ibis

    if query.period == "week":
        period = (rows.bucket + 3) // 7
    elif query.period == "month":
        period = _month_number((rows.e + rows.tzoff) // DAY)
    elif query.period in ("hour", "day"):
        period = rows.bucket
    else:
        period = ibis.literal(0, "int64")
    duration = rows.duration_ms
    log_bucket = LOG_BASE + (ibis.greatest(duration, 1).cast("float64").ln() / LN_GAMMA).floor().cast("int64")
    rows = rows.filter(duration.notnull()).mutate(
        period=period.cast("int64"),
        hoff=rows.tzoff if query.period == "hour" else ibis.literal(0, "int64"),
        gmodel=rows.model if query.per_model else ibis.null().cast("string"),
        dbucket=ibis.ifelse(duration < EXACT_BELOW, duration, log_bucket),
    )
    counts = rows.group_by("period", "hoff", "gmodel", "gkey", "dbucket").aggregate(count=rows.count())
    return counts.select("period", "hoff", "gmodel", "gkey", "dbucket", "count")


def _epoch_seconds(created: Any) -> Any:
    """Whole seconds since 1970 of a timestamp column, rounded down before 1970 too: Spark's
    ``unix_timestamp`` rounds towards zero (1969-12-31T23:59:59.999 is 0, not -1), where
    DuckDB's epoch keeps the fraction for floor(). An engine that returned whole seconds for
    a time with milliseconds before 1970 rounded up: one is taken off."""
    import ibis

    raw = created.epoch_seconds()
    whole = raw.floor().cast("int64")
    rounded_up = (raw == raw.floor()) & (created < ibis.literal(_EPOCH)) & (created.millisecond() > 0)
    return whole - ibis.ifelse(rounded_up, 1, 0).cast("int64")


def _month_number(days: Any) -> Any:
    """``year * 12 + month - 1`` of a day number (days since 1970-01-01), in integer arithmetic
    (H. Hinnant's civil_from_days), so no engine's calendar or time zone is involved."""
    import ibis

    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = ibis.ifelse(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + ibis.ifelse(month <= 2, 1, 0)
    return year * 12 + month - 1


def _utc(epoch_ms: int | None) -> datetime | None:
    return None if epoch_ms is None else _EPOCH + timedelta(milliseconds=epoch_ms)


def _text(value: Any) -> str | None:
    stamp = _utc(value)
    if stamp is None:
        return None
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
