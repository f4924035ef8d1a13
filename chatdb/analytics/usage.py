"""Usage reports over the ``messages`` export schema, computed where the data lives (no row loops).

A *source* is a repository (aggregated in its database: ``aggregate_messages``), a Polars
``DataFrame`` or ``LazyFrame`` or Arrow table in the ``messages`` export schema, a Parquet file or (hive-partitioned)
dataset directory written by ``export.to_parquet``, a DuckDB connection with a ``messages``
table (as ``export.to_duckdb`` makes it), an Arrow stream, or an Ibis table in the export schema
(or an Ibis backend with a ``messages`` table: Spark through ``ibis.pyspark.connect``).

Definitions every report shares:

- ``messages`` counts every message in the group, whatever its role; a message with no model is
  grouped under ``model = null`` by ``by="model"``.
- A message is *billable* when it reports any token count or a cost. Its cost, by ``cost_mode``:
  ``auto`` — the reported ``totalCostUsd``, else an estimate from the price table at the
  message's date; ``calculate`` — always the estimate; ``display`` — only the reported cost.
- ``unpriced_messages`` counts billable messages left without a cost (no price for the model, or
  nothing reported in ``display`` mode). They are never counted as $0: ``cost_usd`` is a lower
  bound whenever ``unpriced_messages > 0``, and null when no message of the group has a cost.
- ``estimated_cost_usd`` is the part of ``cost_usd`` that came from the price table.
- Durations: mean and 95th percentile (linear interpolation, as DuckDB's ``quantile_cont``) of
  ``duration_ms`` over the messages that report one.
- ``since`` is inclusive, ``until`` exclusive; a date or a naive datetime is read in ``timezone``
  (an IANA name in any case; ``UTC``, ``utc`` and ``Z`` are UTC).
- Reports round money (``cost_usd``, ``estimated_cost_usd``) to 6 decimal places and durations
  (``avg_duration_ms``, ``p95_duration_ms``) to 1, so the same data gives byte-identical
  reports on every backend.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from ..errors import ValidationError
from .pricing import PriceTable, load_prices

if TYPE_CHECKING:
    from ._groups import Groups

__all__ = [
    "GROUPINGS",
    "REPORT_COLUMNS",
    "cost_reported_vs_estimated",
    "latency_percentiles",
    "messages_frame",
    "resolve_timezone",
    "token_mix",
    "top_chats",
    "top_users",
    "usage_report",
    "usage_totals",
]

REPORT_COLUMNS = (
    "messages",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "total_tokens",
    "cost_usd",
    "estimated_cost_usd",
    "avg_duration_ms",
    "p95_duration_ms",
    "unpriced_messages",
    "unreadable_messages",
)
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# by= value -> grouping key column
GROUPINGS: dict[str, str] = {
    "hour": "period",
    "day": "period",
    "week": "period",
    "month": "period",
    "model": "model",
    "user": "user_id",
    "chat": "chat_id",
}
_ALIASES = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month", "models": "model",
            "users": "user", "chats": "chat", "user_id": "user", "chat_id": "chat", "hours": "hour",
            "days": "day", "weeks": "week", "months": "month"}  # fmt: skip
_TRUNCATE = {"hour": "1h", "day": "1d", "week": "1w", "month": "1mo"}
_PERIOD_FORMAT = {"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%Y-%m"}

# The columns analytics reads, with the export schema's Polars types.
_SCHEMA: dict[str, pl.DataType] = {
    "message_id": pl.String(),
    "chat_id": pl.String(),
    "user_id": pl.String(),
    "role": pl.String(),
    "created_at": pl.Datetime("ms", "UTC"),
    "model": pl.String(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "cache_creation_input_tokens": pl.Int64(),
    "cache_read_input_tokens": pl.Int64(),
    "total_cost_usd": pl.Float64(),
    "duration_ms": pl.Int64(),
}
_REQUIRED = ("chat_id", "created_at")

Source = Any
When = datetime | date | str | None
CostMode = Literal["auto", "calculate", "display"]
_Frame = TypeVar("_Frame", pl.DataFrame, pl.LazyFrame)


# A frame in the export schema has been read already: whatever was unreadable is null there.
_NONE_UNREADABLE = pl.lit(0, pl.Int64()).alias("unreadable_messages")


# -- reading a source -------------------------------------------------------------------------------


def resolve_timezone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` names, in any case (``europe/berlin``); ``UTC``, ``utc`` and ``Z``
    are UTC. Raises ValidationError for a name that is no zone."""
    text = str(name).strip()
    if text.upper() in ("Z", "UTC"):
        return ZoneInfo("UTC")
    canonical = _zone_names().get(text.lower(), text)
    try:
        return ZoneInfo(canonical)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown timezone {name!r} (use an IANA name such as Europe/Berlin)") from None


@functools.cache
def _zone_names() -> dict[str, str]:
    return {zone.lower(): zone for zone in zoneinfo.available_timezones()}


def _zone(timezone: str) -> ZoneInfo:
    return resolve_timezone(timezone)


def _instant(value: When, zone: ZoneInfo, what: str) -> datetime | None:
    """``value`` as an aware UTC datetime; dates and naive datetimes are read in ``zone``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"{what} must be a date or ISO datetime, not {value!r}") from None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(), zone)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(ZoneInfo("UTC"))


def _normalize(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Exactly the columns of ``_SCHEMA`` with its types; absent optional columns become null."""
    names = frame.collect_schema()
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        raise ValidationError(f"source is not a messages table: missing {', '.join(missing)}")
    columns = []
    for name, dtype in _SCHEMA.items():
        if name not in names:
            columns.append(pl.lit(None, dtype).alias(name))
        elif name == "created_at":
            current = names[name]
            column = pl.col(name)
            if isinstance(current, pl.String):
                column = column.str.to_datetime(time_unit="ms", time_zone="UTC")
            elif isinstance(current, pl.Datetime) and current.time_zone is None:
                column = column.dt.replace_time_zone("UTC")
            columns.append(column.dt.convert_time_zone("UTC").dt.cast_time_unit("ms").alias(name))
        else:
            columns.append(pl.col(name).cast(dtype).alias(name))
    return frame.select(columns)


def _duckdb_frame(
    con: Any, since: datetime | None, until: datetime | None, user_id: str | None
) -> pl.LazyFrame:
    tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "messages" not in tables:
        raise ValidationError("the DuckDB connection has no 'messages' table (see chatdb.export.to_duckdb)")
    clauses, params = [], []
    for clause, value in (("created_at >= ?", since), ("created_at < ?", until), ("user_id = ?", user_id)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return pl.from_arrow(con.sql(f"SELECT * FROM messages{where}", params=params).to_arrow_table()).lazy()  # type: ignore[union-attr]


def _repository_frame(
    repo: Any, since: datetime | None, until: datetime | None, user_id: str | None
) -> pl.LazyFrame:
    """Messages through the export layer (native scans, metadata flattened, bad values null)."""
    from .. import export

    frame: pl.DataFrame = export.to_polars(repo, "messages", since=since, until=until, user_id=user_id)
    return frame.lazy()


def _source_frame(
    source: Source, since: datetime | None, until: datetime | None, user_id: str | None
) -> pl.LazyFrame:
    if isinstance(source, pl.LazyFrame):
        return source
    if isinstance(source, pl.DataFrame):
        return source.lazy()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ValidationError(f"no Parquet file or dataset at {str(path)!r}")
        pattern = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
        return pl.scan_parquet(pattern, hive_partitioning=path.is_dir(), missing_columns="insert")
    if hasattr(source, "scan_rows") and hasattr(source, "import_rows"):
        return _repository_frame(source, since, until, user_id)
    if type(source).__name__ == "DuckDBPyConnection":
        return _duckdb_frame(source, since, until, user_id)
    try:
        import pyarrow as pa

        if isinstance(source, pa.RecordBatchReader):
            source = source.read_all()
        if isinstance(source, (pa.Table, pa.RecordBatch)):
            return pl.from_arrow(source).lazy()  # type: ignore[union-attr]
    except ImportError:  # pragma: no cover - pyarrow ships with the analytics extra
        pass
    raise ValidationError(
        f"unsupported source {type(source).__name__}: pass a repository, a Polars frame, "
        "a Parquet path or a DuckDB connection"
    )


def messages_frame(
    source: Source,
    *,
    since: When = None,
    until: When = None,
    user_id: str | None = None,
    model: str | None = None,
    timezone: str = "UTC",
    prices: PriceTable | str | Path | None = None,
) -> pl.LazyFrame:
    """The source's messages in the export schema, filtered, as a LazyFrame (``_SCHEMA`` columns
    plus ``model_family``: the priced family of ``model``, null when it has no price).

    ``model`` matches the stored name or, when it names a priced family or snapshot, every
    message of that family. Raises ValidationError for a bad source, timezone or date."""
    zone = _zone(timezone)
    start, end = _instant(since, zone, "since"), _instant(until, zone, "until")
    table = _price_table(prices)
    frame = _normalize(_source_frame(source, start, end, user_id))
    if start is not None:
        frame = frame.filter(pl.col("created_at") >= start)
    if end is not None:
        frame = frame.filter(pl.col("created_at") < end)
    if user_id is not None:
        frame = frame.filter(pl.col("user_id") == user_id)
    frame = _with_family(frame, table)
    if model is not None:
        family = table.family(model)
        wanted = pl.col("model") == model
        frame = frame.filter(wanted | (pl.col("model_family") == family) if family else wanted)
    return frame


def _price_table(prices: PriceTable | str | Path | None) -> PriceTable:
    return prices if isinstance(prices, PriceTable) else load_prices(prices)


def _with_family(frame: pl.LazyFrame, table: PriceTable) -> pl.LazyFrame:
    """Resolve model names to families once per distinct name (a handful), then join: cheap."""
    names = frame.select(pl.col("model").unique()).collect().to_series().drop_nulls().to_list()
    mapping = pl.DataFrame(
        {"model": names, "model_family": [table.family(name) for name in names]},
        schema={"model": pl.String(), "model_family": pl.String()},
    )
    return frame.join(mapping.lazy(), on="model", how="left", nulls_equal=False, maintain_order="left")


# -- cost -------------------------------------------------------------------------------------------


def _rate(table: PriceTable, field: str) -> pl.Expr:
    """USD per million tokens of ``field`` for each row's family at its created_at; null if none."""
    expr: pl.Expr = pl.lit(None, pl.Float64())
    for family, history in table.history.items():
        for price in history:  # oldest first, so the newest applicable price wraps outermost
            since = datetime.combine(price.effective_from, time(), ZoneInfo("UTC"))
            applies = (pl.col("model_family") == family) & (pl.col("created_at") >= since)
            expr = pl.when(applies).then(pl.lit(float(getattr(price, field)))).otherwise(expr)
    return expr


def _with_cost(frame: pl.LazyFrame, table: PriceTable, cost_mode: str) -> pl.LazyFrame:
    """Add ``cost`` (what the report sums), ``estimated`` (its price-table part), ``unpriced``."""
    if cost_mode not in ("auto", "calculate", "display"):
        raise ValidationError(f"cost_mode must be auto, calculate or display, not {cost_mode!r}")
    tokens = [pl.col(name) for name in TOKEN_COLUMNS]
    has_tokens = pl.any_horizontal([t.is_not_null() for t in tokens])
    reported = pl.col("total_cost_usd")
    billable = has_tokens | reported.is_not_null()
    rates = [_rate(table, field) for field in ("input", "output", "cache_write", "cache_read")]
    estimate: pl.Expr = pl.when(has_tokens & rates[0].is_not_null()).then(
        pl.sum_horizontal([t.fill_null(0) * r for t, r in zip(tokens, rates, strict=True)]) / 1_000_000
    )
    frame = frame.with_columns(_billable=billable, _estimate=estimate)
    billable, estimate = pl.col("_billable"), pl.col("_estimate")
    if cost_mode == "auto":
        estimated: pl.Expr = pl.when(reported.is_null() & billable).then(estimate)
        cost = pl.coalesce(reported, estimated)
    elif cost_mode == "calculate":
        estimated = pl.when(billable).then(estimate)
        cost = estimated
    else:
        estimated = pl.lit(None, pl.Float64())
        cost = reported
    frame = frame.with_columns(_cost=cost, _estimated=estimated)
    return frame.with_columns(_unpriced=pl.col("_billable") & pl.col("_cost").is_null())


def _aggregations() -> list[pl.Expr]:
    tokens = [pl.col(name).sum().cast(pl.Int64()).alias(name) for name in TOKEN_COLUMNS]
    unpriced = pl.col("_unpriced").sum().cast(pl.Int64())
    costed = pl.col("_cost").is_not_null().sum()
    return [
        pl.len().cast(pl.Int64()).alias("messages"),
        *tokens,
        pl.sum_horizontal([pl.col(n).fill_null(0) for n in TOKEN_COLUMNS])
        .sum()
        .cast(pl.Int64())
        .alias("total_tokens"),
        pl.when((costed == 0) & (unpriced > 0)).then(None).otherwise(pl.col("_cost").sum()).alias("cost_usd"),
        pl.col("_estimated").sum().cast(pl.Float64()).alias("estimated_cost_usd"),
        pl.col("duration_ms").mean().alias("avg_duration_ms"),
        pl.col("duration_ms").cast(pl.Float64()).quantile(0.95, "linear").alias("p95_duration_ms"),
        unpriced.alias("unpriced_messages"),
    ]


def _canonical_by(by: str) -> str:
    folded = str(by).strip().lower()
    name = _ALIASES.get(folded, folded)
    if name not in GROUPINGS:
        choices = ", ".join(sorted(set(GROUPINGS) | set(_ALIASES)))
        raise ValidationError(f"cannot group usage by {by!r}; choose one of {choices}")
    return name


def _with_period(frame: pl.LazyFrame, by: str, timezone: str) -> pl.LazyFrame:
    """Add ``_bucket`` (local wall-clock start of the period) and, for hours, ``_offset``, so the
    repeated hour when clocks go back stays two periods."""
    local = pl.col("created_at").dt.convert_time_zone(resolve_timezone(timezone).key)
    frame = frame.with_columns(_bucket=local.dt.replace_time_zone(None).dt.truncate(_TRUNCATE[by]))
    if by == "hour":
        offset = (local.dt.base_utc_offset() + local.dt.dst_offset()).dt.total_minutes()
        frame = frame.with_columns(_offset=offset)
    return frame


def _format_period(by: str) -> pl.Expr:
    text = pl.col("_bucket").dt.strftime(_PERIOD_FORMAT[by])
    if by != "hour":
        return text
    minutes = pl.col("_offset")
    sign = pl.when(minutes < 0).then(pl.lit("-")).otherwise(pl.lit("+"))
    hours = (minutes.abs() // 60).cast(pl.String()).str.zfill(2)
    rest = (minutes.abs() % 60).cast(pl.String()).str.zfill(2)
    return pl.concat_str([text, sign, hours, pl.lit(":"), rest])


def usage_report(
    source: Source,
    by: str = "day",
    *,
    timezone: str = "UTC",
    since: When = None,
    until: When = None,
    user_id: str | None = None,
    model: str | None = None,
    breakdown: str | None = None,
    order: str = "asc",
    cost_mode: CostMode = "auto",
    prices: PriceTable | str | Path | None = None,
) -> pl.DataFrame:
    """One row per period, model, user or chat, with :data:`REPORT_COLUMNS`.

    ``by``: ``hour``/``day``/``week``/``month`` (key ``period``, cut in ``timezone``: hours as
    ``2026-10-25T02:00+01:00``, days and weeks (starting Monday) as ``2026-10-19``, months as
    ``2026-10``), ``model``, ``user`` or ``chat`` (keys ``model``, ``user_id``, ``chat_id``;
    ``daily``-style and plural names are accepted too, in any case). ``breakdown="model"`` adds a ``model``
    column with one row per model under each period. Rows are ordered by key (chronologically
    for periods), ``order="desc"`` reverses; a period's models follow it by name either way,
    messages without a model last. ``prices`` is a table or a price file path (see
    :func:`load_prices`). Raises ValidationError for bad options, ConfigError for a bad price file.
    """
    kind, by_model = _report_shape(by, breakdown, order)
    breakdown = "model" if by_model else None
    table = _price_table(prices)
    pushed = _pushed_source(source)
    if pushed is not None:
        return _pushed_report(
            pushed, kind, by_model, order, timezone, since, until, user_id, model, cost_mode, table
        )
    frame = messages_frame(
        source, since=since, until=until, user_id=user_id, model=model, timezone=timezone, prices=table
    )
    frame = _with_cost(frame, table, cost_mode)
    key = GROUPINGS[kind]
    extra = ["model"] if breakdown else []
    if key == "period":
        frame = _with_period(frame, kind, timezone)
        keys = ["_bucket", *(["_offset"] if kind == "hour" else []), *extra]
        grouped = frame.group_by(keys).agg(*_aggregations(), _first=pl.col("created_at").min())
        grouped = _in_report_order(grouped, keys[: len(keys) - len(extra)], extra, order)
        grouped = grouped.with_columns(_format_period(kind).alias("period"))
    else:
        grouped = frame.group_by([key, *extra]).agg(*_aggregations())
        grouped = grouped.sort([key, *extra], descending=order == "desc", nulls_last=True)
    return _rounded(grouped.select(key, *extra, *REPORT_COLUMNS[:-1], _NONE_UNREADABLE).collect())


def usage_report_with_totals(
    source: Source,
    by: str = "day",
    *,
    timezone: str = "UTC",
    since: When = None,
    until: When = None,
    user_id: str | None = None,
    model: str | None = None,
    breakdown: str | None = None,
    order: str = "asc",
    cost_mode: CostMode = "auto",
    prices: PriceTable | str | Path | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(usage_report(source, by, ...), usage_totals(source, ...))`` with the same options,
    from one aggregation where the source computes reports itself (a repository, DuckDB,
    Parquet, Ibis): the totals are the report's groups added up, so a report with its totals
    row (as ``chatdb usage`` prints it) reads the messages once, not twice. Raises as
    :func:`usage_report`."""
    filters: dict[str, Any] = {
        "timezone": timezone,
        "since": since,
        "until": until,
        "user_id": user_id,
        "model": model,
    }
    kind, by_model = _report_shape(by, breakdown, order)
    table = _price_table(prices)
    pushed = _pushed_source(source)
    if pushed is None:
        report = usage_report(
            source, by, breakdown=breakdown, order=order, cost_mode=cost_mode, prices=table, **filters
        )
        return report, usage_totals(source, cost_mode=cost_mode, prices=table, **filters)
    groups = _pushed_groups(pushed, kind, by_model, cost_mode, filters, table)
    report = _report_from_groups(groups, kind, by_model, order, cost_mode, table)
    if groups.exact is not None:  # exact percentiles per report key do not merge into a total
        return report, usage_totals(source, cost_mode=cost_mode, prices=table, **filters)
    return report, _report_from_groups(groups, "total", False, "asc", cost_mode, table).select(REPORT_COLUMNS)


def _in_report_order(grouped: _Frame, period: list[str], extra: list[str], order: str) -> _Frame:
    """A report by period (a frame or lazy frame with ``_first``, each group's first message),
    its periods in time order (``order="desc"``: newest first) and, with a breakdown, each
    period's models by name under it, messages without a model last, in either order (by
    their first messages, each month listed its models in another order)."""
    if not extra:
        return grouped.sort("_first", descending=order == "desc", nulls_last=True)
    starts = pl.col("_first").min().over(period)
    return grouped.sort(
        [starts, *extra], descending=[order == "desc", *(False for _ in extra)], nulls_last=True
    )


def _report_shape(by: str, breakdown: str | None, order: str) -> tuple[str, bool]:
    """(the canonical report kind, whether rows break down by model), checked."""
    kind = _canonical_by(by)
    if breakdown is not None and str(breakdown).strip().lower() in ("model", "models"):
        breakdown = "model"
    if breakdown not in (None, "model"):
        raise ValidationError(f"breakdown must be 'model' or None, not {breakdown!r}")
    if order not in ("asc", "desc"):
        raise ValidationError(f"order must be asc or desc, not {order!r}")
    return kind, breakdown == "model" and kind != "model"


def usage_totals(
    source: Source,
    *,
    timezone: str = "UTC",
    since: When = None,
    until: When = None,
    user_id: str | None = None,
    model: str | None = None,
    cost_mode: CostMode = "auto",
    prices: PriceTable | str | Path | None = None,
    by: str | None = None,
    breakdown: str | None = None,
    order: str | None = None,
) -> pl.DataFrame:
    """The totals row for the report with the same options: one row of :data:`REPORT_COLUMNS`,
    computed over the messages themselves (so the latency percentile is exact, not averaged).
    Report-only options (``by``, ``breakdown``, ``order``) are accepted and ignored, so one set
    of options serves both calls; any other name is a TypeError, not silently dropped."""
    table = _price_table(prices)
    pushed = _pushed_source(source)
    if pushed is not None:
        report = _pushed_report(
            pushed, "total", False, "asc", timezone, since, until, user_id, model, cost_mode, table
        )
        return report.select(REPORT_COLUMNS)
    frame = messages_frame(
        source, since=since, until=until, user_id=user_id, model=model, timezone=timezone, prices=table
    )
    costed = _with_cost(frame, table, cost_mode).select(_aggregations())
    return _rounded(costed.select(*REPORT_COLUMNS[:-1], _NONE_UNREADABLE).collect())


# Money to a millionth of a dollar, durations to a tenth of a millisecond: float sums differ in
# their last bits with the order of the rows and the backend that stored them (0.797189 vs
# 0.7971889999999999); rounded, the same data gives the same report everywhere.
COST_DECIMALS = 6
DURATION_DECIMALS = 1


def _rounded(frame: pl.DataFrame) -> pl.DataFrame:
    rounding = {"cost_usd": COST_DECIMALS, "estimated_cost_usd": COST_DECIMALS,
                "avg_duration_ms": DURATION_DECIMALS, "p95_duration_ms": DURATION_DECIMALS}  # fmt: skip
    return frame.with_columns(
        pl.col(name).cast(pl.Float64()).round(places)
        for name, places in rounding.items()
        if name in frame.columns
    )


# -- questions analysts ask -------------------------------------------------------------------------


def _filters(options: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"timezone", "since", "until", "user_id", "model", "prices", "cost_mode"}
    unknown = set(options) - allowed
    if unknown:
        raise ValidationError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return dict(options)


def cost_reported_vs_estimated(source: Source, by: str = "day", **options: Any) -> pl.DataFrame:
    """Per group (as :func:`usage_report`'s ``by``): how much of the cost was reported by the
    application and how much had to be estimated from prices, and what prices alone would say.

    Columns: the key, ``reported_cost_usd``, ``estimated_cost_usd``, ``cost_usd`` (their sum),
    ``calculated_cost_usd`` (every billable message priced from the table), ``reported_messages``,
    ``estimated_messages``, ``unpriced_messages``, ``estimated_share`` (of cost_usd)."""
    opts = _filters(options)
    opts.pop("cost_mode", None)
    kind = _canonical_by(by)
    table = _price_table(opts.pop("prices", None))
    timezone = opts.get("timezone", "UTC")
    pushed = _pushed_source(source)
    if pushed is not None:
        return _pushed_reported_vs_estimated(pushed, kind, table, opts)
    frame = _with_cost(messages_frame(source, prices=table, **opts), table, "auto")
    frame = frame.with_columns(_calculated=pl.when(pl.col("_billable")).then(pl.col("_estimate")))
    key = GROUPINGS[kind]
    aggs = [
        pl.col("total_cost_usd").sum().alias("reported_cost_usd"),
        pl.col("_estimated").sum().cast(pl.Float64()).alias("estimated_cost_usd"),
        pl.when(pl.col("_cost").is_not_null().any() | ~pl.col("_unpriced").any())
        .then(pl.col("_cost").sum())
        .alias("cost_usd"),
        pl.col("_calculated").sum().cast(pl.Float64()).alias("calculated_cost_usd"),
        pl.col("total_cost_usd").is_not_null().sum().cast(pl.Int64()).alias("reported_messages"),
        pl.col("_estimated").is_not_null().sum().cast(pl.Int64()).alias("estimated_messages"),
        pl.col("_unpriced").sum().cast(pl.Int64()).alias("unpriced_messages"),
    ]
    if key == "period":
        frame = _with_period(frame, kind, timezone)
        keys = ["_bucket", *(["_offset"] if kind == "hour" else [])]
        grouped = frame.group_by(keys).agg(*aggs, _first=pl.col("created_at").min()).sort("_first")
        grouped = grouped.with_columns(_format_period(kind).alias("period"))
    else:
        grouped = frame.group_by(key).agg(*aggs).sort(key, nulls_last=True)
    share = pl.when(pl.col("cost_usd") > 0).then(pl.col("estimated_cost_usd") / pl.col("cost_usd"))
    names = [a.meta.output_name() for a in aggs]
    return grouped.select(key, *names, share.alias("estimated_share")).collect()


def latency_percentiles(
    source: Source,
    by: str = "model",
    percentiles: Sequence[float] = (0.5, 0.9, 0.95, 0.99),
    **options: Any,
) -> pl.DataFrame:
    """Per model (or other ``by``): ``messages`` with a duration, ``mean_ms``, one ``pNN_ms`` column
    per percentile (linear interpolation, as DuckDB's ``quantile_cont``) and ``max_ms``; groups
    without any duration are left out."""
    opts = _filters(options)
    opts.pop("cost_mode", None)
    kind = _canonical_by(by)
    if any(not 0 <= q <= 1 for q in percentiles):
        raise ValidationError("percentiles must lie between 0 and 1")
    pushed = _pushed_source(source)
    if pushed is not None:
        return _pushed_latency(pushed, kind, percentiles, opts)
    frame = messages_frame(source, **opts).filter(pl.col("duration_ms").is_not_null())
    key = GROUPINGS[kind]
    if key == "period":
        frame = _with_period(frame, kind, opts.get("timezone", "UTC")).with_columns(
            period=_format_period(kind)
        )
    duration = pl.col("duration_ms").cast(pl.Float64())
    aggs = [
        pl.len().cast(pl.Int64()).alias("messages"),
        duration.mean().alias("mean_ms"),
        *(duration.quantile(q, "linear").alias(f"p{round(q * 100):02d}_ms") for q in percentiles),
        duration.max().alias("max_ms"),
    ]
    return frame.group_by(key).agg(aggs).sort(key, nulls_last=True).collect()


def _top(source: Source, by: str, n: int, options: Mapping[str, Any]) -> pl.DataFrame:
    if n < 1:
        raise ValidationError("n must be at least 1")
    report = usage_report(source, by, **_filters(options))
    key = GROUPINGS[by]
    return report.sort(["cost_usd", key], descending=[True, False], nulls_last=True).head(n)


def top_users(source: Source, n: int = 10, **options: Any) -> pl.DataFrame:
    """The ``n`` users with the highest ``cost_usd`` (usage report rows, most expensive first)."""
    return _top(source, "user", n, options)


def top_chats(source: Source, n: int = 10, **options: Any) -> pl.DataFrame:
    """The ``n`` chats with the highest ``cost_usd`` (usage report rows, most expensive first)."""
    return _top(source, "chat", n, options)


def token_mix(source: Source, by: str = "model", **options: Any) -> pl.DataFrame:
    """Per group: the four token kinds, ``total_tokens`` and each kind's share of the total
    (``input_share``, ``output_share``, ``cache_creation_share``, ``cache_read_share``)."""
    report = usage_report(source, by, **_filters(options))
    key = GROUPINGS[_canonical_by(by)]
    total = pl.col("total_tokens")
    shares = {
        "input_share": "input_tokens",
        "output_share": "output_tokens",
        "cache_creation_share": "cache_creation_input_tokens",
        "cache_read_share": "cache_read_input_tokens",
    }
    return report.select(
        key,
        *TOKEN_COLUMNS,
        "total_tokens",
        *(pl.when(total > 0).then(pl.col(col) / total).alias(name) for name, col in shares.items()),
    )


# -- computed in the database -----------------------------------------------------------------------
#
# A repository answers with group sums (``aggregate_messages``, see chatdb._aggregate): the
# reports below price and roll them up (chatdb.analytics._groups). Latency percentiles come from
# mergeable log-bucket histograms, within chatdb._aggregate.RELATIVE_ERROR (< 1%) of the exact
# value; means, sums, counts and maxima are exact.


def _pushed_source(source: Source) -> Any:
    """What answers ``aggregate_messages`` for ``source``: a repository itself, the engine behind
    an Ibis table or backend (Spark, ...), DuckDB over a Parquet path, a DuckDB connection's
    ``messages`` table or an Arrow stream; None for a frame (already in memory: computed in
    Polars)."""
    if hasattr(source, "aggregate_messages"):
        return source
    from ._ibis import IbisMessages, is_ibis

    if is_ibis(source):
        return IbisMessages.of(source)
    from ._duckdb import DuckDbMessages

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ValidationError(f"no Parquet file or dataset at {str(path)!r}")
        return DuckDbMessages.parquet(path)
    if type(source).__name__ == "DuckDBPyConnection":
        tables = {
            row[0] for row in source.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        if "messages" not in tables:
            raise ValidationError(
                "the DuckDB connection has no 'messages' table (see chatdb.export.to_duckdb)"
            )
        return DuckDbMessages(source, "messages")
    if type(source).__name__ == "RecordBatchReader":
        return DuckDbMessages.stream(source)
    return None


def _groups_for(
    repo: Any,
    kind: str,
    options: Mapping[str, Any],
    table: PriceTable,
    histograms: bool,
    quantiles: Sequence[float] = (),
    per_model: bool = False,
    max_duration: bool = False,
) -> Groups:
    from ._groups import fetch_groups

    zone = _zone(options.get("timezone", "UTC"))
    return fetch_groups(
        repo,
        kind=kind,
        zone=zone,
        since=_instant(options.get("since"), zone, "since"),
        until=_instant(options.get("until"), zone, "until"),
        user_id=options.get("user_id"),
        model=options.get("model"),
        table=table,
        histograms=histograms,
        quantiles=quantiles,
        per_model=per_model,
        max_duration=max_duration,
    )


def _group_key(groups: Groups, kind: str) -> tuple[str, pl.Expr | None]:
    """(report key column, its expression over the groups; None for a report without a key)."""
    from ._groups import period_label

    if kind in ("hour", "day", "week", "month"):
        return "period", period_label(kind, groups.unit)
    if kind == "model":
        return "model", pl.col("model")
    if kind == "total":
        return "_all", None
    return GROUPINGS[kind], pl.col("key")


def _pushed_report(
    repo: Any,
    kind: str,
    breakdown: bool,
    order: str,
    timezone: str,
    since: When,
    until: When,
    user_id: str | None,
    model: str | None,
    cost_mode: str,
    table: PriceTable,
) -> pl.DataFrame:
    options = {"timezone": timezone, "since": since, "until": until, "user_id": user_id, "model": model}
    groups = _pushed_groups(repo, kind, breakdown, cost_mode, options, table)
    return _report_from_groups(groups, kind, breakdown, order, cost_mode, table)


def _pushed_groups(
    repo: Any, kind: str, breakdown: bool, cost_mode: str, options: Mapping[str, Any], table: PriceTable
) -> Groups:
    """The groups (with latency histograms) a report of ``kind`` is made of; a total's are
    fetched per model (any grouping adds up to the same total)."""
    if cost_mode not in ("auto", "calculate", "display"):
        raise ValidationError(f"cost_mode must be auto, calculate or display, not {cost_mode!r}")
    return _groups_for(
        repo, "model" if kind == "total" else kind, options, table, histograms=True, quantiles=(0.95,),
        per_model=breakdown or kind == "model",
    )  # fmt: skip


def _report_from_groups(
    groups: Groups, kind: str, breakdown: bool, order: str, cost_mode: str, table: PriceTable
) -> pl.DataFrame:
    """The report of ``kind`` from group sums fetched for it, or (``kind="total"``) for any
    report: sums add up and latency histograms merge, whatever the groups were cut by."""
    from ._groups import quantile_frame, with_costs

    key, expr = _group_key(groups, kind)
    extra = ["model"] if breakdown else []
    frame = with_costs(groups.frame, table, cost_mode)
    frame = frame.with_columns((expr if expr is not None else pl.lit("")).alias(key))
    costed, unpriced = pl.col("_costed").sum(), pl.col("_unpriced").sum()
    duration_count = pl.col("duration_count").sum()
    aggs = [
        pl.col("messages").sum().cast(pl.Int64()).alias("messages"),
        *(pl.col(name).sum().cast(pl.Int64()).alias(name) for name in TOKEN_COLUMNS),
        pl.sum_horizontal([pl.col(n) for n in TOKEN_COLUMNS]).sum().cast(pl.Int64()).alias("total_tokens"),
        pl.when((costed == 0) & (unpriced > 0)).then(None).otherwise(pl.col("_cost").sum()).alias("cost_usd"),
        pl.col("_estimated").sum().cast(pl.Float64()).alias("estimated_cost_usd"),
        pl.when(duration_count > 0)
        .then(pl.col("duration_sum").sum() / duration_count)
        .alias("avg_duration_ms"),
        unpriced.cast(pl.Int64()).alias("unpriced_messages"),
        pl.col("unreadable").sum().cast(pl.Int64()).alias("unreadable_messages"),
        pl.col("first").min().alias("_first"),
    ]
    grouped = frame.group_by([key, *extra]).agg(aggs)
    if kind == "total" and grouped.height == 0:
        grouped = pl.DataFrame({key: [""]}).join(grouped, on=key, how="left").with_columns(
            *(pl.col(n).fill_null(0) for n in ("messages", *TOKEN_COLUMNS, "total_tokens", "unpriced_messages",
                                               "unreadable_messages", "estimated_cost_usd")),
            pl.col("cost_usd").fill_null(0.0),
        )  # fmt: skip
    p95 = quantile_frame(groups, kind, [key, *extra], [0.95], bool(extra))
    p95 = p95.rename({"_q0": "p95_duration_ms"})
    grouped = grouped.join(p95, on=[key, *extra], how="left", nulls_equal=True)
    if key == "period":
        grouped = _in_report_order(grouped, [key], extra, order)
    else:
        grouped = grouped.sort([key, *extra], descending=order == "desc", nulls_last=True)
    return _rounded(
        grouped.select(key, *extra, *REPORT_COLUMNS) if kind != "total" else grouped.select(REPORT_COLUMNS)
    )


def _pushed_reported_vs_estimated(
    repo: Any, kind: str, table: PriceTable, options: Mapping[str, Any]
) -> pl.DataFrame:
    from ._groups import with_costs

    groups = _groups_for(repo, kind, options, table, histograms=False)
    key, expr = _group_key(groups, kind)
    frame = with_costs(groups.frame, table, "auto").with_columns(
        expr.alias(key) if expr is not None else pl.lit("")
    )
    costed, unpriced = pl.col("_costed").sum(), pl.col("_unpriced").sum()
    aggs = [
        pl.when(pl.col("has_reported")).then(pl.col("reported_cost")).sum().alias("reported_cost_usd"),
        pl.col("_estimated").sum().cast(pl.Float64()).alias("estimated_cost_usd"),
        pl.when((costed > 0) | (unpriced == 0)).then(pl.col("_cost").sum()).alias("cost_usd"),
        pl.col("_calculated").sum().cast(pl.Float64()).alias("calculated_cost_usd"),
        pl.col("_reported_n").sum().cast(pl.Int64()).alias("reported_messages"),
        pl.col("_estimated_n").sum().cast(pl.Int64()).alias("estimated_messages"),
        unpriced.cast(pl.Int64()).alias("unpriced_messages"),
    ]
    grouped = frame.group_by(key).agg(*aggs, _first=pl.col("first").min())
    grouped = grouped.sort("_first" if key == "period" else key, nulls_last=True)
    share = pl.when(pl.col("cost_usd") > 0).then(pl.col("estimated_cost_usd") / pl.col("cost_usd"))
    names = [a.meta.output_name() for a in aggs]
    return grouped.select(key, *names, share.alias("estimated_share"))


def _pushed_latency(
    repo: Any, kind: str, percentiles: Sequence[float], options: Mapping[str, Any]
) -> pl.DataFrame:
    from ._groups import quantile_frame

    table = _price_table(options.get("prices"))
    groups = _groups_for(
        repo, kind, options, table, histograms=True, quantiles=percentiles, per_model=kind == "model",
        max_duration=True,
    )  # fmt: skip
    key, expr = _group_key(groups, kind)
    frame = groups.frame.with_columns(expr.alias(key) if expr is not None else pl.lit(""))
    count = pl.col("duration_count").sum()
    stats = (
        frame.group_by(key)
        .agg(
            count.cast(pl.Int64()).alias("messages"),
            (pl.col("duration_sum").sum() / count).alias("mean_ms"),
            pl.col("duration_max").max().cast(pl.Float64()).alias("max_ms"),
        )
        .filter(pl.col("messages") > 0)
    )
    names = [f"p{round(q * 100):02d}_ms" for q in percentiles]
    values = quantile_frame(groups, kind, [key], percentiles, False)
    values = values.rename({f"_q{i}": n for i, n in enumerate(names)})
    joined = stats.join(values, on=key, how="left", nulls_equal=True)
    return joined.select(key, "messages", "mean_ms", *names, "max_ms").sort(key, nulls_last=True)
