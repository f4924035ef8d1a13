"""Reports from group sums: the repository path of :mod:`chatdb.analytics.usage`.

The repository computes sums per (local bucket, UTC offset, UTC day, model, key, has reported
cost, has tokens) in the database (``aggregate_messages``, see :mod:`chatdb._aggregate`); this
module prices each group at its model's price on its UTC day (prices are linear in tokens, so a
group's estimate is exactly the sum of its messages' estimates), rolls the buckets up into the
report's periods and merges the latency histograms. Nothing here grows with the number of
messages: only with the number of groups. A source whose ``coarse_groups`` is true (DuckDB over
Parquet) is also told what the report reads of its groups (:class:`GroupNeeds`) and cuts them
no finer: by the spans between price changes rather than by UTC day, by period only for a
report by period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from .._aggregate import (
    DAY,
    GAMMA,
    GROUP_COLUMNS,
    HISTOGRAM_COLUMNS,
    HOUR,
    LOG_BASE,
    AggregateQuery,
    month_starts,
    zone_shifts,
)
from .pricing import PriceTable

__all__ = ["Groups", "fetch_groups"]

_EPOCH_DAY = date(1970, 1, 1)
_TOKENS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_SCHEMA: dict[str, pl.DataType] = {
    "bucket": pl.Int64(), "offset": pl.Int64(), "utc_day": pl.Int64(), "first": pl.String(),
    "model": pl.String(), "key": pl.String(), "has_reported": pl.Boolean(), "has_tokens": pl.Boolean(),
    "messages": pl.Int64(), **{name: pl.Int64() for name in _TOKENS}, "reported_cost": pl.Float64(),
    "duration_sum": pl.Float64(), "duration_count": pl.Int64(), "duration_max": pl.Float64(),
    "unreadable": pl.Int64(),
}  # fmt: skip
_KEYS = {"user": "user", "chat": "chat"}


@dataclass(frozen=True)
class GroupNeeds:
    """What a report reads of its groups, for a source that can group no finer than that
    (``aggregate_columns(query, needs)``: DuckDB): ``periods`` — the local bucket (and, for
    hours, the offset), else they come back 0; ``price_days`` — the UTC days (since the epoch)
    any price changes on: messages between two such days share their prices, so their groups
    need not be cut by UTC day (``utc_day`` is then a day of theirs); ``max_duration`` — the
    longest duration, else it comes back null; ``first_times`` — each group's first message
    (rows by period and model are ordered by it), else ``first`` is the start of the group's
    period, which orders periods alike."""

    periods: bool
    price_days: tuple[int, ...]
    max_duration: bool
    first_times: bool


class Groups:
    """The groups of one query, and the latency histograms per group when asked for."""

    def __init__(
        self,
        frame: pl.DataFrame,
        histograms: list[tuple[Any, ...]] | None,
        unit: int,
        exact: list[tuple[Any, ...]] | pl.DataFrame | None = None,
    ) -> None:
        self.frame = frame
        self.histograms = histograms
        self.unit = unit
        self.exact = exact  # EXACT_COLUMNS rows, from a backend that computes quantiles itself


def _model_filter(model: str | None, table: PriceTable) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(exact names, lower-case substrings): a superset of the stored names that ``model``
    matches, for the database to narrow the rows with; the exact match is applied after."""
    if model is None:
        return (), ()
    family = table.family(model)
    if family is None:
        return (model,), ()
    aliases = [alias for alias, target in table.aliases.items() if target == family]
    return (model,), (family, *aliases)


def _matches(model: str | None, table: PriceTable) -> pl.Expr | None:
    if model is None:
        return None
    family = table.family(model)
    wanted = pl.col("model") == model
    if family is None:
        return wanted
    names = pl.col("model").map_elements(table.family, return_dtype=pl.String())
    return wanted | (names == family)


def _range(repo: Any, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime] | None:
    """The queried range, the messages' range where open; None when there are no messages."""
    if start is None or end is None:
        first, last = repo.message_time_range()
        if first is None or last is None:
            return None
        start = start or first
        end = end or last + timedelta(seconds=1)
    if end <= start:
        return None
    return start, end


def _is_utc(zone: ZoneInfo) -> bool:
    return str(zone.key) in ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Universal", "Zulu", "Etc/Universal")


def fetch_groups(
    repo: Any,
    *,
    kind: str,
    zone: ZoneInfo,
    since: datetime | None,
    until: datetime | None,
    user_id: str | None,
    model: str | None,
    table: PriceTable,
    histograms: bool,
    quantiles: Sequence[float] = (),
    per_model: bool = False,
    max_duration: bool = True,
) -> Groups:
    """Run the aggregation (and the latency histogram) for a report grouped by ``kind``;
    ``max_duration=False`` when the report does not read the longest duration."""
    period = kind in ("hour", "day", "week", "month")
    unit = HOUR if kind == "hour" else DAY
    models, like = _model_filter(model, table)
    empty = pl.DataFrame(schema=_SCHEMA)
    shifts: tuple[tuple[int | None, int], ...] = ((None, 0),)
    months: tuple[tuple[int, int], ...] = ()
    if period and (kind == "month" or not _is_utc(zone)):
        found_range = _range(repo, since, until)
        if found_range is None:
            return Groups(empty, [] if histograms else None, unit)
        if not _is_utc(zone):
            shifts = zone_shifts(zone, *found_range)
        if kind == "month":
            months = month_starts(zone, *found_range)
    query = AggregateQuery(
        since=since,
        until=until,
        user_id=user_id,
        models=models,
        model_like=like,
        key=_KEYS.get(kind),
        unit=unit,
        shifts=shifts,
        month_starts=months,
        # (only rows by period and model are ordered by their first message: see GroupNeeds)
        first_times=period and per_model,
        # (a report not by period reads its groups' days only to price them)
        price_days=None if period else _price_spans(table),
    )
    one_pass = (
        histograms
        and getattr(repo, "aggregates_histograms", False)
        and not (getattr(repo, "exact_quantiles", False) and quantiles)
    )
    if one_pass:
        # Groups and latency histogram from one read of the messages. With a model filter the
        # histogram is kept per model, so the models the database matched loosely (the family
        # superset) can be dropped here like the groups are.
        query = replace(
            query, histograms=True, period=kind if period else None, per_model=per_model or model is not None,
            packed_histograms=True,
        )  # fmt: skip
        if kind in ("week", "month") and not query.first_times:
            # (groups by period and price span, not by day: see AggregateQuery.price_days)
            query = replace(query, price_days=_price_spans(table))
    found: list[tuple[Any, ...]] | None = [] if one_pass else None
    columnar = None if one_pass else getattr(repo, "aggregate_columns", None)
    coarse = columnar is not None and getattr(repo, "coarse_groups", False)
    if columnar is not None and coarse:
        needs = GroupNeeds(
            periods=period,
            price_days=_price_days(table),
            max_duration=max_duration,
            first_times=period and per_model,
        )
        frame = _clean_columns(columnar(query, needs))
    elif columnar is not None:
        frame = _clean_columns(columnar(query))
    else:
        rows: list[tuple[Any, ...]] = []
        histogram_width = len(HISTOGRAM_COLUMNS)
        for batch in repo.aggregate_messages(query):
            for row in batch:
                if found is not None and len(row) == histogram_width:
                    found.append(row)
                else:
                    rows.append(_clean_group(row))
        frame = (
            pl.DataFrame(rows, schema=list(GROUP_COLUMNS), orient="row", infer_schema_length=None)
            if rows
            else empty
        )
    frame = frame.cast(_SCHEMA)  # type: ignore[arg-type]
    if period and not query.first_times and frame.height:
        # Where the backend left ``first`` out: the start of the group's local bucket, which
        # orders the periods as their first messages do (as GroupNeeds says).
        start = pl.from_epoch(pl.col("bucket") * unit - pl.col("offset"), time_unit="s")
        frame = frame.with_columns(pl.col("first").fill_null(start.dt.strftime("%Y-%m-%dT%H:%M:%SZ")))
    wanted = _matches(model, table)
    if wanted is not None and frame.height:
        frame = frame.filter(wanted)
    exact: list[tuple[Any, ...]] | pl.DataFrame | None = None
    if one_pass:
        if model is not None and found:
            matched = set(frame.get_column("model").unique().to_list())
            found = [row for row in found if row[2] in matched]
            if not per_model:
                found = [(*row[:2], None, *row[3:]) for row in found]
        return Groups(frame, found, unit)
    if histograms:
        found = []
        names = tuple(name for name in frame.get_column("model").unique().to_list() if name is not None)
        if model is not None and not names:
            return Groups(frame, found, unit)
        # The models found, by name: the exact selection, never the superset asked for.
        durations = replace(
            query, durations=True, models=names if model is not None else (), model_like=(),
            period=kind if period else None, per_model=per_model,
        )  # fmt: skip
        if getattr(repo, "exact_quantiles", False) and quantiles:
            durations = replace(durations, quantiles=tuple(quantiles))
            if coarse and columnar is not None:
                exact = columnar(durations)
                return Groups(frame, found, unit, exact)
            exact = [
                (int(p), int(o), name, key, [None if v is None else float(v) for v in values])
                for batch in repo.aggregate_messages(durations)
                for p, o, name, key, values in batch
            ]
        else:
            for batch in repo.aggregate_messages(durations):
                found.extend(batch)
    return Groups(frame, found, unit, exact)


# At most this many price changes cut a report's groups by span (AggregateQuery.price_days): the
# SQL compares each row's time with the changes, newest first, and a longer price history groups
# by day instead.
_PRICE_SPANS_MAX = 64


def _price_spans(table: PriceTable) -> tuple[int, ...] | None:
    days = _price_days(table)
    return days if len(days) <= _PRICE_SPANS_MAX else None


def _price_days(table: PriceTable) -> tuple[int, ...]:
    """The days (since the epoch) on which any price of ``table`` changes."""
    days = {price.effective_from for history in table.history.values() for price in history}
    return tuple(sorted((day - _EPOCH_DAY).days for day in days))


def _clean_group(row: Sequence[Any]) -> tuple[Any, ...]:
    """Driver values as Python ones: Decimal sums (PostgreSQL, MySQL) and 0/1 flags."""
    (bucket, offset, utc_day, first, model, key, reported, tokens, messages, tin, tout, tcw, tcr,
     cost, dsum, dcount, dmax, bad) = row  # fmt: skip
    return (
        int(bucket), int(offset), int(utc_day), first, model, key, bool(reported), bool(tokens),
        int(messages), int(tin or 0), int(tout or 0), int(tcw or 0), int(tcr or 0),
        float(cost or 0), float(dsum or 0), int(dcount or 0), None if dmax is None else float(dmax),
        int(bad or 0),
    )  # fmt: skip


def _clean_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """The groups of a source that returns them as columns (``aggregate_columns``: DuckDB,
    Ibis engines), cleaned as :func:`_clean_group` cleans rows, without a Python loop: at
    hourly buckets a year holds tens of thousands of groups."""
    frame = frame.rename(dict(zip(frame.columns, GROUP_COLUMNS, strict=True)))
    zero = ("messages", *_TOKENS, "reported_cost", "duration_sum", "duration_count", "unreadable")
    return frame.with_columns(pl.col(name).fill_null(0) for name in zero)


# -- prices -----------------------------------------------------------------------------------------


def with_costs(frame: pl.LazyFrame | pl.DataFrame, table: PriceTable, cost_mode: str) -> pl.DataFrame:
    """Each group with ``_cost``, ``_estimated``, ``_calculated`` (every billable message
    priced), ``_costed`` and ``_unpriced`` (message counts), by ``cost_mode``."""
    groups = frame.lazy().collect() if isinstance(frame, pl.LazyFrame) else frame
    pairs = groups.select("model", "utc_day").unique().drop_nulls("model").rows()
    rates: list[tuple[Any, ...]] = []
    for name, day in pairs:
        price = table.price_for(name, _EPOCH_DAY + timedelta(days=int(day)))
        if price is not None:
            rates.append((name, day, price.input, price.output, price.cache_write, price.cache_read))
    prices = pl.DataFrame(
        rates,
        schema={"model": pl.String(), "utc_day": pl.Int64(), "_rin": pl.Float64(), "_rout": pl.Float64(),
                "_rcw": pl.Float64(), "_rcr": pl.Float64()},
        orient="row",
    )  # fmt: skip
    groups = groups.join(
        prices, on=["model", "utc_day"], how="left", nulls_equal=False, maintain_order="left"
    )
    tokens, reported = pl.col("has_tokens"), pl.col("has_reported")
    priced = pl.col("_rin").is_not_null()
    estimate = pl.when(tokens & priced).then(
        (
            pl.col("input_tokens") * pl.col("_rin")
            + pl.col("output_tokens") * pl.col("_rout")
            + pl.col("cache_creation_input_tokens") * pl.col("_rcw")
            + pl.col("cache_read_input_tokens") * pl.col("_rcr")
        )
        / 1_000_000
    )
    billable = tokens | reported
    if cost_mode == "auto":
        estimated: pl.Expr = pl.when(~reported).then(estimate)
        cost = pl.when(reported).then(pl.col("reported_cost")).otherwise(estimated)
    elif cost_mode == "calculate":
        estimated = estimate
        cost = estimate
    else:
        estimated = pl.lit(None, pl.Float64())
        cost = pl.when(reported).then(pl.col("reported_cost"))
    messages = pl.col("messages")
    return groups.with_columns(
        _cost=cost,
        _estimated=estimated,
        _calculated=pl.when(billable).then(estimate),
        _estimated_n=pl.when(estimated.is_not_null()).then(messages).otherwise(0),
        _reported_n=pl.when(reported).then(messages).otherwise(0),
        _costed=pl.when(cost.is_not_null()).then(messages).otherwise(0),
        _unpriced=pl.when(billable & cost.is_null()).then(messages).otherwise(0),
    )


# -- periods ----------------------------------------------------------------------------------------

_PERIOD_FORMAT = {"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%Y-%m"}


def period_label(kind: str, unit: int) -> pl.Expr:
    """The report's period text from ``bucket`` (local ``unit``-second bucket) and ``offset``."""
    local = pl.from_epoch(pl.col("bucket") * unit, time_unit="s")
    if kind == "week":
        local = local.dt.truncate("1w")
    text = local.dt.strftime(_PERIOD_FORMAT[kind])
    if kind != "hour":
        return text
    minutes = pl.col("offset") // 60
    sign = pl.when(minutes < 0).then(pl.lit("-")).otherwise(pl.lit("+"))
    hours = (minutes.abs() // 60).cast(pl.String()).str.zfill(2)
    rest = (minutes.abs() % 60).cast(pl.String()).str.zfill(2)
    return pl.concat_str([text, sign, hours, pl.lit(":"), rest])


def _label(kind: str, unit: int, bucket: int, offset: int) -> str:
    local = datetime.fromtimestamp(bucket * unit, UTC).replace(tzinfo=None)
    if kind == "week":
        local -= timedelta(days=local.weekday())
    text = local.strftime(_PERIOD_FORMAT[kind])
    if kind != "hour":
        return text
    minutes = offset // 60
    sign = "-" if minutes < 0 else "+"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def quantile_frame(
    groups: Groups, kind: str, names: list[str], qs: Sequence[float], extra: bool
) -> pl.DataFrame:
    """One row per report key (``names``: the key, then ``model`` with ``extra``) with a column
    ``_q<i>`` per quantile: the database's exact ones, else read from the merged histograms."""
    if isinstance(groups.exact, pl.DataFrame):
        return _exact_frame(groups.exact, kind, names, len(qs), extra)
    if groups.exact is not None:
        rows = []
        for period, offset, model, key, values in groups.exact:
            if kind in _PERIOD_FORMAT:
                label: Any = _exact_label(kind, period, offset)
            else:
                label = model if kind == "model" else key if kind in ("user", "chat") else ""
            rows.append((label, *([model] if extra else []), *values))
    else:
        return _histogram_quantiles(groups.histograms or [], kind, names, qs, extra)
    schema: dict[str, pl.DataType] = {name: pl.String() for name in names}
    schema.update({f"_q{i}": pl.Float64() for i in range(len(qs))})
    return pl.DataFrame(rows, schema=schema, orient="row")


_HISTOGRAM_SCHEMA: dict[str, pl.DataType] = {
    "bucket": pl.Int64(), "offset": pl.Int64(), "model": pl.String(), "key": pl.String(),
    "dbucket": pl.Int64(), "count": pl.Int64(),
}  # fmt: skip


def _histogram_frame(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    """HISTOGRAM_COLUMNS rows as columns (the servers' Decimal counts cast), packed rows (a
    histogram's buckets as ``"bucket:count,..."``, see AggregateQuery.packed_histograms)
    expanded by Polars."""
    plain = [row for row in rows if row[4] is not None]
    packed = [row for row in rows if row[4] is None]
    frames = [_columns(plain, _HISTOGRAM_SCHEMA)] if plain or not packed else []
    if packed:
        text_schema = {**_HISTOGRAM_SCHEMA, "dbucket": pl.Null(), "count": pl.String()}
        pairs = (
            _columns(packed, text_schema)
            .drop("dbucket")
            .with_columns(pl.col("count").str.split(","))
            .explode("count")
            .with_columns(pl.col("count").str.split_exact(":", 1).struct.rename_fields(["dbucket", "count"]))
            .unnest("count")
        )
        frames.append(pairs.select(list(_HISTOGRAM_SCHEMA)).cast(_HISTOGRAM_SCHEMA))  # type: ignore[arg-type]
    return pl.concat(frames) if len(frames) > 1 else frames[0]


def _columns(rows: list[tuple[Any, ...]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=schema)
    columns = zip(*rows, strict=True)
    series = [pl.Series(name, column, strict=False) for name, column in zip(schema, columns, strict=True)]
    return pl.DataFrame(series).cast(schema)  # type: ignore[arg-type]


def _bucket_value(bucket: pl.Expr) -> pl.Expr:
    """:func:`chatdb._aggregate.bucket_value` as an expression."""
    logarithmic = 2 * pl.lit(GAMMA).pow(bucket - LOG_BASE + 1) / (GAMMA + 1)
    return pl.when(bucket < LOG_BASE).then(bucket.cast(pl.Float64())).otherwise(logarithmic)


def _histogram_quantiles(
    histograms: list[tuple[Any, ...]], kind: str, names: list[str], qs: Sequence[float], extra: bool
) -> pl.DataFrame:
    """:func:`quantile_frame` from histogram rows: merged per report key and read as
    :func:`chatdb._aggregate.histogram_quantile` reads one, in Polars. (A day report over a
    year holds about 240,000 histogram rows per part: a Python loop over them cost a tenth of
    the report on SQLite.)"""
    frame = _histogram_frame(histograms)
    if kind in _PERIOD_FORMAT:
        pairs = frame.select("bucket", "offset").unique()
        labels = [_exact_label(kind, bucket, offset) for bucket, offset in pairs.iter_rows()]
        frame = frame.join(
            pairs.with_columns(label=pl.Series(labels, dtype=pl.String())), on=["bucket", "offset"]
        )
        label = pl.col("label")
    elif kind == "model":
        label = pl.col("model")
    elif kind == "total":
        label = pl.lit("", dtype=pl.String())
    else:
        label = pl.col("key")
    keys = [label.alias(names[0]), *([pl.col("model").alias(names[1])] if extra else [])]
    merged = (
        frame.group_by([*keys, "dbucket"])
        .agg(pl.col("count").sum())
        .sort([*names, "dbucket"], nulls_last=True)
        .with_columns(
            cum=pl.col("count").cum_sum().over(names),
            total=pl.col("count").sum().over(names),
        )
    )
    quantiles = []
    for i, q in enumerate(qs):
        position = (pl.col("total") - 1) * q
        low = position.floor()
        high = pl.min_horizontal(low + 1, pl.col("total") - 1)
        first = _bucket_value(pl.col("dbucket").filter(pl.col("cum") > low).first())
        second = _bucket_value(pl.col("dbucket").filter(pl.col("cum") > high).first())
        fraction = (position - low).first()
        quantiles.append((first + fraction * (second - first)).alias(f"_q{i}"))
    result = merged.group_by(names).agg(quantiles) if qs else merged.select(names).unique()
    schema: dict[str, pl.DataType] = {name: pl.String() for name in names}
    schema.update({f"_q{i}": pl.Float64() for i in range(len(qs))})
    return result.cast(schema).select(list(schema))  # type: ignore[arg-type]


def _exact_frame(exact: pl.DataFrame, kind: str, names: list[str], count: int, extra: bool) -> pl.DataFrame:
    """:func:`quantile_frame` from EXACT_COLUMNS as columns (the quantiles in one list column),
    labelled by Polars expressions that give what :func:`_exact_label` gives, without a row loop."""
    period, offset, model, key, values = (pl.col(name) for name in exact.columns)
    label: pl.Expr
    if kind == "hour":
        label = period_label("hour", HOUR)
        exact = exact.with_columns(bucket=period, offset=offset)
    elif kind in ("day", "week"):
        label = period_label("day", DAY)
        exact = exact.with_columns(bucket=period if kind == "day" else period * 7 - 3)
    elif kind == "month":
        label = pl.concat_str(
            (period // 12).cast(pl.String()).str.zfill(4),
            pl.lit("-"),
            (period % 12 + 1).cast(pl.String()).str.zfill(2),
        )
    elif kind == "model":
        label = model
    elif kind in ("user", "chat"):
        label = key
    else:
        label = pl.lit("")
    columns = [label.cast(pl.String()).alias(names[0])]
    if extra:
        columns.append(model.cast(pl.String()).alias(names[1]))
    columns += [values.list.get(i).cast(pl.Float64()).alias(f"_q{i}") for i in range(count)]
    return exact.select(columns)


def _exact_label(kind: str, period: int, offset: int) -> str:
    if kind == "hour":
        return _label("hour", HOUR, period, offset)
    if kind == "day":
        return _label("day", DAY, period, 0)
    if kind == "week":
        return _label("day", DAY, period * 7 - 3, 0)
    return f"{period // 12:04d}-{period % 12 + 1:02d}"
