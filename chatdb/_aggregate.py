"""Message aggregation in the database: what ``aggregate_messages`` is asked and returns (pure).

Usage reports (:mod:`chatdb.analytics.usage`) never read messages one by one from a repository:
they ask the backend for sums per *group* and price and roll the groups up afterwards. Prices are
linear in tokens and change at UTC midnight, so sums per (model, UTC day) price exactly; periods in
a report's time zone are exact because every message's time is first shifted by its zone's UTC
offset at that instant (the offsets and the instants they change at, over the queried range, are
passed in: :func:`zone_shifts`), then cut into local hours or days. No database needs time-zone
tables, and zones with 30/45-minute offsets or DST need nothing special.

A group row (:data:`GROUP_COLUMNS`) is::

    local bucket, offset (s), UTC day, first created_at, model, key, has_reported, has_tokens,
    messages, input/output/cache-write/cache-read token sums, reported cost sum,
    duration sum, duration count, duration max, unreadable

``has_reported``/``has_tokens`` split each group by whether its messages report a cost and any
token count, which is all cost modes need. With ``durations=True`` the rows are a latency
histogram instead (:data:`HISTOGRAM_COLUMNS`): the count per duration bucket
(:func:`duration_bucket`), mergeable across groups, read back by :func:`histogram_quantile`.
With ``histograms=True`` (on a backend whose ``aggregates_histograms`` is true) one call returns
both from one pass over the messages: the group rows, then the histogram rows, told apart by
their length. With ``packed_histograms`` too, a backend may return all of a histogram's buckets
as one row whose ``duration_bucket`` is None and whose ``count`` is the text
``"bucket:count,bucket:count,..."`` (the SQL backends' GROUP_CONCAT), which the caller expands
in bulk (a daily report over a year has about 240,000 buckets).

Values are read as the export path reads them (see :mod:`chatdb.export._flatten`): a field of an
unexpected JSON type is null (a number given as a JSON string is converted), negative counts are
null, metadata that is not a JSON object is no metadata; each such row counts as *unreadable*.
:class:`RowAggregator` is the same in Python, for a backend that cannot run the pipeline.
"""

from __future__ import annotations

import calendar
import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "DAY",
    "GROUP_COLUMNS",
    "EXACT_COLUMNS",
    "HISTOGRAM_COLUMNS",
    "HOUR",
    "RELATIVE_ERROR",
    "AggregateQuery",
    "PartSums",
    "RowAggregator",
    "duration_bucket",
    "floor_shift",
    "histogram_quantile",
    "month_starts",
    "zone_shifts",
]

HOUR = 3_600
DAY = 86_400
GROUP_COLUMNS = (
    "bucket", "offset", "utc_day", "first", "model", "key", "has_reported", "has_tokens", "messages",
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "reported_cost", "duration_sum", "duration_count", "duration_max", "unreadable",
)  # fmt: skip
# (``bucket`` is the report period here, numbered as AggregateQuery.period says; ``offset`` is
# kept for hours only, ``model`` only with ``per_model``.)
HISTOGRAM_COLUMNS = ("bucket", "offset", "model", "key", "duration_bucket", "count")
# What a backend that computes percentiles exactly returns instead (``exact_quantiles``): the
# report period (see AggregateQuery.period), the offset (hours only), the model (when
# ``per_model``), the key and the list of ``quantiles``.
EXACT_COLUMNS = ("period", "offset", "model", "key", "quantiles")

# The latency histogram: durations below EXACT_BELOW ms are their own bucket (exact); above,
# bucket i holds [GAMMA**i, GAMMA**(i+1)) and reads as 2 GAMMA**(i+1) / (GAMMA + 1), within
# ALPHA of every value in it. A quantile interpolates between two such values, so it is within
# ALPHA of the exact one too; the databases' floating-point logarithms may put a value lying on
# a bucket edge in the next bucket, which at most doubles that: RELATIVE_ERROR is the bound.
ALPHA = 0.004
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LN_GAMMA = math.log(GAMMA)
RELATIVE_ERROR = 2 * ALPHA + ALPHA**2  # < 1%
EXACT_BELOW = 256
LOG_BASE = 1_000_000  # bucket numbers at and above this are logarithmic ones

_INT64_MAX = 9.2e18
_META_KEYS = (
    ("model", "string"),
    ("inputTokens", "int"),
    ("outputTokens", "int"),
    ("cacheCreationInputTokens", "int"),
    ("cacheReadInputTokens", "int"),
    ("totalCostUsd", "float"),
    ("durationMs", "int"),
)


@dataclass(frozen=True)
class AggregateQuery:
    """What to aggregate: messages with ``since <= created_at < until`` of ``user_id`` (chat
    owner), whose model is one of ``models`` exactly or contains one of ``model_like``
    (lower-cased; a superset the caller narrows) when either is given; grouped by local
    ``unit``-second buckets (``HOUR`` or ``DAY``) after shifting each time by ``shifts``
    (``(from epoch second, offset seconds)``, ascending, the first from None), by UTC day, model
    and ``key`` (None, ``"user"`` or ``"chat"``)."""

    since: datetime | None = None
    until: datetime | None = None
    user_id: str | None = None
    models: tuple[str, ...] = ()
    model_like: tuple[str, ...] = ()
    key: str | None = None
    unit: int = DAY
    shifts: tuple[tuple[int | None, int], ...] = ((None, 0),)
    durations: bool = False
    # For backends that compute percentiles exactly (PostgreSQL's percentile_cont): the
    # quantiles wanted, the report period (hour/day/week/month or None: periods are then
    # ``bucket`` for hours and days, the Monday week number ``(day + 3) // 7``, or
    # ``year * 12 + month - 1``) and whether to group by model too.
    quantiles: tuple[float, ...] = ()
    period: str | None = None
    per_model: bool = True
    # The group rows and the latency histogram (per ``period`` and, with ``per_model``, model)
    # from one pass: a report reads its messages once.
    histograms: bool = False
    # Optional, for ``period="month"``: ``(local epoch second, year * 12 + month - 1)`` of each
    # month's first second over the queried range, ascending, the last one the month after it.
    month_starts: tuple[tuple[int, int], ...] = ()
    # Whether a group row's ``first`` must be its first message's ``created_at``. False: a
    # backend may return NULL there (the caller orders periods by their start instead), which
    # spares the SQL backends carrying every row's text to the grouping (about 7% of a report).
    first_times: bool = True
    # With ``histograms``: whether histogram rows may come packed (see the module docstring).
    packed_histograms: bool = False
    # Optional, for groups that are read by neither period nor time (a report by model, user or
    # chat, or a total; ``unit`` a day, one offset, no ``period``): the UTC days (since the
    # epoch) any price changes on. A backend may then cut the groups by the spans between those
    # days instead of by day (the messages of a span share their prices): a group's
    # ``utc_day`` and ``bucket`` are then a day of its span (its first, or the day before the
    # first change), its ``offset`` 0. By user over a year, a day's groups were 23,500 a part
    # at 1M messages, to fetch, convert and price one by one. Also for a ``period`` of "week" or
    # "month" (``unit`` a day, any shifts): the groups are then cut by period and span, a
    # group's ``bucket`` is the first local day of its period and its ``utc_day`` a day of its
    # span (a month report's 365 days of groups become about 13 months' and a few spans').
    price_days: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.price_days is not None and (
            self.unit != DAY or (self.period is None and len(self.shifts) > 1)
            or self.period not in (None, "week", "month")
        ):  # fmt: skip
            raise ValueError("price_days is for groups read by no period, a week or a month")

    def offset_at(self, epoch: int) -> int:
        offset = self.shifts[0][1]
        for start, value in self.shifts[1:]:
            if start is not None and epoch >= start:
                offset = value
        return offset

    def wants_model(self, model: str | None) -> bool:
        if not self.models and not self.model_like:
            return True
        if model is None:
            return False
        lowered = model.lower()
        return model in self.models or any(part in lowered for part in self.model_like)


def floor_shift(b: int, per_second: int = 1) -> int:
    """A multiple of ``b`` above the time from year 1 to 1970 (stored times are years
    0001-9999), counted in units of ``1 / per_second`` seconds: what SQL adds to a time before
    it truncates a division by ``b``, and takes off after, so that times before 1970 round
    down like Python's ``//`` (SQL's integer divisions round towards zero)."""
    return b * ((per_second << 36) // b + 1)


def zone_shifts(zone: ZoneInfo, start: datetime, end: datetime) -> tuple[tuple[int | None, int], ...]:
    """The UTC offsets (seconds) of ``zone`` between ``start`` and ``end`` and the epoch seconds
    they begin at: ``((None, first), (t1, second), ...)``. Transitions are found day by day and
    then to the second, so none is missed (none is less than a day apart from the next)."""

    def offset(at: datetime) -> int:
        delta = at.astimezone(zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    at = start.astimezone(UTC)
    current = offset(at)
    shifts: list[tuple[int | None, int]] = [(None, current)]
    end = end.astimezone(UTC)
    step = timedelta(days=1)
    while at < end:
        nxt = min(at + step, end)
        value = offset(nxt)
        if value != current:
            low, high = at, nxt  # offset(low) == current, offset(high) != current
            while high - low > timedelta(seconds=1):
                mid = low + (high - low) / 2
                if offset(mid) == current:
                    low = mid
                else:
                    high = mid
            edge = high.replace(microsecond=0)
            if offset(edge) == current:
                edge += timedelta(seconds=1)
            shifts.append((int(edge.timestamp()), value))
            current = value
        at = nxt
    return tuple(shifts)


def month_starts(zone: ZoneInfo, start: datetime, end: datetime) -> tuple[tuple[int, int], ...]:
    """:attr:`AggregateQuery.month_starts` for the instants ``start`` to ``end`` in ``zone``."""
    first, last = start.astimezone(zone), end.astimezone(zone)
    year, month = first.year, first.month
    starts = []
    while (year, month) <= (last.year, last.month):
        starts.append((calendar.timegm((year, month, 1, 0, 0, 0)), year * 12 + month - 1))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    starts.append((calendar.timegm((year, month, 1, 0, 0, 0)), year * 12 + month - 1))
    return tuple(starts)


def duration_bucket(duration: int) -> int:
    """The histogram bucket of a duration in ms (>= 0): itself below EXACT_BELOW, else
    LOG_BASE + floor(ln(duration) / ln(GAMMA)). The SQL backends compute the same expression."""
    if duration < EXACT_BELOW:
        return duration
    return LOG_BASE + math.floor(math.log(duration) / LN_GAMMA)


def bucket_value(bucket: int) -> float:
    """The value a bucket stands for (exact below EXACT_BELOW)."""
    if bucket < LOG_BASE:
        return float(bucket)
    return 2 * GAMMA ** (bucket - LOG_BASE + 1) / (GAMMA + 1)


def histogram_quantile(counts: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile with linear interpolation between order statistics (DuckDB's
    ``quantile_cont``) of a histogram ``{bucket: count}``; None when it is empty. Within
    RELATIVE_ERROR of the exact value."""
    total = sum(counts.values())
    if total == 0:
        return None
    position = (total - 1) * q
    low = math.floor(position)
    fraction = position - low
    wanted = (low, min(low + 1, total - 1))
    found: list[float] = []
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        while len(found) < 2 and wanted[len(found)] < seen:
            found.append(bucket_value(bucket))
        if len(found) == 2:
            break
    return found[0] + fraction * (found[1] - found[0])


# -- the same in Python -----------------------------------------------------------------------------


def _exact_int(number: float) -> int | None:
    if 0 <= number < _INT64_MAX and number == math.trunc(number):
        return int(number)
    return None


def _text_number(value: str) -> float | None:
    try:
        return float(value.strip())
    except ValueError:
        return None


def read_field(value: Any, kind: str) -> tuple[Any, bool]:
    """(the value as the export reads it, whether the row is unreadable because of it)."""
    if value is None:
        return None, False
    if kind == "string":
        return (value, False) if isinstance(value, str) else (None, True)
    if isinstance(value, bool):
        return None, True
    if isinstance(value, str):
        number = _text_number(value)
        if number is None or not math.isfinite(number) or number < 0:
            return None, True
        return (_exact_int(number) if kind == "int" else number), True
    if isinstance(value, int):
        if kind == "int":
            return (value, False) if 0 <= value < 2**63 else (None, True)
        return (float(value), False) if value >= 0 else (None, True)
    if isinstance(value, float):
        if kind == "int":
            read = _exact_int(value)
            return read, read is None
        ok = value >= 0 and math.isfinite(value)
        return (value if ok else None), not ok
    return None, True


def read_metadata(metadata: Any) -> tuple[list[Any], bool]:
    """The seven usage fields of a message's decoded metadata and whether any was unreadable."""
    if metadata is None:
        return [None] * len(_META_KEYS), False
    if not isinstance(metadata, dict):
        return [None] * len(_META_KEYS), True
    values, bad = [], False
    for key, kind in _META_KEYS:
        value, unreadable = read_field(metadata.get(key), kind)
        values.append(value)
        bad = bad or unreadable
    return values, bad


def _period(query: AggregateQuery, bucket: int, local_seconds: int) -> int:
    """The report period of a local time, as the SQL backends number it."""
    if query.period == "week":
        return (bucket + 3) // 7
    if query.period == "month":
        local = datetime.fromtimestamp(local_seconds, UTC)
        return local.year * 12 + local.month - 1
    if query.period in ("hour", "day"):
        return bucket
    return 0


def _epoch(created_at: str) -> int:
    return math.floor(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())


class PartSums:
    """The rows of the parts of one aggregation (run at once on threads), added up per group
    and per histogram bucket as each part ends: what the rows of one statement over every
    message would be, up to the order of the rows and of float additions. The caller then holds
    one part's worth of groups, not one per part: four MariaDB parts of a month report at 1M
    messages returned 20,000 group rows (each day's groups once a part), which are 5,400
    groups. Packed histogram rows pass as they are (the caller adds up their buckets)."""

    _KEY = (0, 1, 2, 4, 5, 6, 7)  # GROUP_COLUMNS' keys: all but first and the sums
    _SUMS = (*range(8, 16), 17)  # messages ... duration_count, unreadable
    _FIRST, _MAX = 3, 16

    def __init__(self) -> None:
        self._groups: dict[tuple[Any, ...], list[Any]] = {}
        self._buckets: dict[tuple[Any, ...], int] = {}
        self._packed: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def add(self, rows: Iterable[tuple[Any, ...]]) -> None:
        with self._lock:
            for row in rows:
                if len(row) == len(HISTOGRAM_COLUMNS):
                    if row[4] is None:
                        self._packed.append(row)
                    else:
                        key = row[:5]
                        self._buckets[key] = self._buckets.get(key, 0) + row[5]
                    continue
                group = tuple(row[i] for i in self._KEY)
                have = self._groups.get(group)
                if have is None:
                    self._groups[group] = list(row)
                    continue
                for i in self._SUMS:
                    have[i] = row[i] if have[i] is None else have[i] if row[i] is None else have[i] + row[i]
                for i, pick in ((self._FIRST, min), (self._MAX, max)):
                    have[i] = (
                        row[i] if have[i] is None else have[i] if row[i] is None else pick(have[i], row[i])
                    )

    def rows(self) -> list[tuple[Any, ...]]:
        """The group rows, then the histogram rows."""
        return [
            *(tuple(row) for row in self._groups.values()),
            *((*key, count) for key, count in self._buckets.items()),
            *self._packed,
        ]


@dataclass
class RowAggregator:
    """``aggregate_messages`` in Python over ``(created_at, key, metadata)`` rows (metadata as
    decoded JSON): for a backend whose server cannot run the pipeline. Memory grows with the
    number of groups, never with the number of messages."""

    query: AggregateQuery
    groups: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    histogram: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def add(self, rows: Iterable[tuple[str, Any, Any]]) -> None:
        query = self.query
        for created_at, key, metadata in rows:
            (model, tin, tout, tcw, tcr, cost, duration), bad = read_metadata(metadata)
            if not query.wants_model(model):
                continue
            epoch = _epoch(created_at)
            offset = query.offset_at(epoch)
            bucket = (epoch + offset) // query.unit
            if query.durations or query.histograms:
                if duration is not None:
                    period = _period(query, bucket, epoch + offset)
                    histogram = (
                        period, offset if query.period == "hour" else 0, model if query.per_model else None,
                        key, duration_bucket(duration),
                    )  # fmt: skip
                    self.histogram[histogram] = self.histogram.get(histogram, 0) + 1
                if query.durations:
                    continue
            has_tokens = not (tin is None and tout is None and tcw is None and tcr is None)
            group = (bucket, offset, epoch // DAY, model, key, cost is not None, has_tokens)
            sums = self.groups.get(group)
            if sums is None:
                sums = self.groups[group] = [created_at, 0, 0, 0, 0, 0, 0.0, 0, 0, None, 0]
            sums[0] = min(sums[0], created_at)
            sums[1] += 1
            sums[2] += tin or 0
            sums[3] += tout or 0
            sums[4] += tcw or 0
            sums[5] += tcr or 0
            sums[6] += cost or 0.0
            if duration is not None:
                sums[7] += duration
                sums[8] += 1
                sums[9] = duration if sums[9] is None else max(sums[9], duration)
            sums[10] += bad

    def rows(self) -> Iterator[tuple[Any, ...]]:
        if not self.query.durations:
            for group, sums in self.groups.items():
                yield (*group[:3], sums[0], *group[3:], *sums[1:])
        for histogram, count in self.histogram.items():
            yield (*histogram, count)
