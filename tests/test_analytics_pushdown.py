"""Reports computed in the database equal the Polars reference over every message, on every backend.

The reference (tests/_usage_reference.py) is the Polars implementation reports had before they
moved into the databases, run over the export of the same repository. Data: a small demo plus
rows made to catch edge cases (no metadata, unknown models, invalid JSON, wrong types, messages
either side of DST changes and of Asia/Kolkata and Asia/Kathmandu midnights).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from chatdb import analytics, demo, export
from chatdb._aggregate import RELATIVE_ERROR, duration_bucket, histogram_quantile
from chatdb.analytics import usage
from chatdb.repository import ChatRepository
from chatdb.sql import aggregate as sql_aggregate

from . import _usage_reference as reference

END = datetime(2026, 11, 3, tzinfo=UTC)
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")
BYS = ("hour", "day", "week", "month", "model", "user", "chat")
# Instants either side of: Berlin's DST end (2026-10-25 01:00 UTC), New York's (2026-11-01 06:00
# UTC), and Kolkata's (18:30 UTC) and Kathmandu's (18:15 UTC) midnights; and before 1970, where
# SQL's integer division rounds the other way (the last hour of 1969, a Monday, 1950).
EDGES = (
    "2026-10-25T00:59:59.999Z", "2026-10-25T01:00:00.000Z", "2026-10-25T01:30:00.000Z",
    "2026-11-01T05:59:59.999Z", "2026-11-01T06:00:00.000Z", "2026-11-01T06:30:00.000Z",
    "2026-10-30T18:14:59.999Z", "2026-10-30T18:15:00.000Z", "2026-10-30T18:29:59.999Z",
    "2026-10-30T18:30:00.000Z", "2026-10-31T23:59:59.999Z", "2026-11-01T00:00:00.000Z",
    "1969-12-31T23:30:00.000Z", "1969-12-29T00:00:00.000Z", "1950-03-01T00:10:00.000Z",
    "1969-12-31T23:59:59.999Z",
)  # fmt: skip
# (metadata as stored, whether it is unreadable)
ODD_METADATA = (
    ('{"model":"claude-sonnet-4-5-20250929","inputTokens":120,"outputTokens":30,"durationMs":900}', False),
    ('{"model":"my-local-model","inputTokens":50,"outputTokens":5,"durationMs":40}', False),
    # Models that differ only in case or by a trailing space are different models.
    ('{"model":"My-Local-Model","inputTokens":51,"outputTokens":6,"durationMs":41}', False),
    ('{"model":"my-local-model ","inputTokens":52,"outputTokens":7,"durationMs":42}', False),
    ('{"model":"Claude-Haiku-4-5","inputTokens":53,"outputTokens":8,"durationMs":43}', False),
    ('{"model":"claude-haiku-4-5","totalCostUsd":0.25}', False),
    ('{"model":"claude-opus-4-1","inputTokens":10.0,"outputTokens":0,"durationMs":12}', False),
    ("{not json", True),
    ("[1, 2]", True),
    ('{"model":5,"inputTokens":"12","outputTokens":true,"totalCostUsd":"0.5","durationMs":-3}', True),
    ('{"model":"claude-sonnet-4-5","inputTokens":-4,"cacheReadInputTokens":7.5,"totalCostUsd":"x"}', True),
    ('{"model":"claude-haiku-4-5","inputTokens":"12","outputTokens":3,"durationMs":"20"}', True),
    (
        '{"model":"claude-haiku-4-5","inputTokens":1,"outputTokens":true,"totalCostUsd":2,"durationMs":0}',
        True,
    ),
    ('{"model":"claude-haiku-4-5","inputTokens":1,"outputTokens":0,"totalCostUsd":2,"durationMs":1}', False),
    (
        '{"model":"claude-haiku-4-5","inputTokens":[5],"outputTokens":{"n":1},"totalCostUsd":[],"durationMs":null}',
        True,
    ),
    (None, False),
)


def _load(repo: ChatRepository) -> int:
    """A small demo plus the edge-case rows; returns how many of those are unreadable."""
    demo.generate(repo, users=3, chats=12, messages=260, days=12, seed=3, end=END)
    repo.import_rows("users", [{"id": "u-edge", "username": "edge", "password_hash": "x",
                                "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z"},
                               {"id": "u-idle", "username": "idle", "password_hash": "x",
                                "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z"}])  # fmt: skip
    repo.import_rows("chats", [{"id": "c-edge", "title": "edge", "session_id": None, "user_id": "u-edge",
                                "created_at": "2026-10-01T00:00:00.000Z", "updated_at": "2026-11-02T00:00:00.000Z"}])  # fmt: skip
    rows, unreadable = [], 0
    for i, stamp in enumerate(EDGES):
        for j, (metadata, bad) in enumerate(ODD_METADATA):
            if (i + j) % 3:
                continue
            unreadable += bad
            rows.append({"id": f"m-edge-{i:02d}-{j}", "chat_id": "c-edge", "role": "assistant",
                         "content": '[{"type":"text","text":"hi"}]', "created_at": stamp, "metadata": metadata})  # fmt: skip
    # A message whose chat is gone: no owner.
    rows.append({"id": "m-orphan", "chat_id": "c-gone", "role": "assistant", "content": "[]",
                 "created_at": "2026-10-28T12:00:00.000Z", "metadata": ODD_METADATA[0][0]})  # fmt: skip
    repo.import_rows("messages", rows)
    return unreadable


def _bound(repo: ChatRepository) -> float:
    """How far a percentile may be from the exact one: 0 where the database computes it."""
    return 1e-9 if getattr(repo, "exact_quantiles", False) else RELATIVE_ERROR


# What the report's rounding (money to 6 places, durations to 1) can move a value by, when the
# unrounded sums differ in their last bits.
_ROUNDING = {"cost_usd": 1e-6, "estimated_cost_usd": 1e-6, "avg_duration_ms": 0.1, "p95_duration_ms": 0.1}


def assert_report_equal(got: pl.DataFrame, want: pl.DataFrame, p95_bound: float = 1e-9) -> None:
    """Equal, up to float rounding and the report's documented rounding; ``p95_duration_ms``
    within ``p95_bound`` (relative) of ``want``'s."""
    assert got.columns == want.columns, (got.columns, want.columns)
    assert got.height == want.height, (got.height, want.height)
    for name in got.columns:
        g, w = got[name], want[name]
        if g.dtype.is_float() or w.dtype.is_float():
            for a, b in zip(g, w, strict=True):
                assert (a is None) == (b is None), (name, a, b)
                if b is not None:
                    rel = p95_bound if name == "p95_duration_ms" else 1e-9
                    assert abs(a - b) <= rel * abs(b) + _ROUNDING.get(name, 1e-9) + 1e-9, (name, a, b)
        else:
            assert g.to_list() == w.to_list(), name


def _same(got: pl.DataFrame, want: pl.DataFrame, what: str, bound: float = RELATIVE_ERROR) -> None:
    """Equal to the reference, rounded as reports are, with p95 within ``bound``."""
    if "cost_usd" in want.columns:
        want = usage._rounded(want)
    if "unreadable_messages" in got.columns and "unreadable_messages" not in want.columns:
        got = got.drop("unreadable_messages")
    try:
        assert_report_equal(got, want, bound)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}\ngot:\n{got}\nwant:\n{want}") from None


@pytest.mark.slow
def test_every_report_in_every_zone_equals_the_polars_reference(repo: ChatRepository) -> None:
    _load(repo)
    frame = export.to_polars(repo, "messages")
    for timezone in ZONES:
        for by in BYS:
            got = analytics.usage_report(repo, by, timezone=timezone)
            want = reference.usage_report(frame, by, timezone=timezone)
            assert got.height > 0
            _same(got, want, f"usage_report({by!r}, timezone={timezone!r})", _bound(repo))
    for by in ("day", "week", "hour"):
        got = analytics.usage_report(repo, by, timezone="Europe/Berlin", breakdown="model", order="desc")
        want = reference.usage_report(frame, by, timezone="Europe/Berlin", breakdown="model", order="desc")
        _same(got, want, f"usage_report({by!r}, breakdown='model', order='desc')", _bound(repo))


def test_a_breakdown_lists_each_periods_models_by_name_and_no_model_last(repo: ChatRepository) -> None:
    _load(repo)
    for source in (repo, export.to_polars(repo, "messages")):
        for order in ("asc", "desc"):
            report = analytics.usage_report(
                source, "day", timezone="Europe/Berlin", breakdown="model", order=order
            )
            periods = list(dict.fromkeys(report["period"]))
            assert len(periods) > 10 and periods == sorted(periods, reverse=order == "desc")
            for period in periods:
                models = report.filter(pl.col("period") == period)["model"].to_list()
                named = [m for m in models if m is not None]
                assert models == sorted(named) + [None] * (len(models) - len(named)), (order, period, models)
            edge_day = report.filter(pl.col("period") == "2026-10-25")["model"].to_list()
            assert edge_day[-1] is None and len(edge_day) > 3, edge_day


def test_cost_modes_filters_and_the_other_reports_equal_the_reference(repo: ChatRepository) -> None:
    _load(repo)
    frame = export.to_polars(repo, "messages")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("day", {"cost_mode": "calculate"}),
        ("model", {"cost_mode": "display"}),
        ("model", {"model": "claude-sonnet-4-5-20250929"}),  # a snapshot name matches its family
        ("day", {"model": "my-local-model"}),
        ("user", {"user_id": "u-edge"}),
        ("day", {"user_id": "u-idle"}),  # a user with no messages
        # since/until on period edges, read in the zone: the Kolkata and Berlin midnights.
        ("day", {"timezone": "Asia/Kolkata", "since": date(2026, 10, 31), "until": date(2026, 11, 1)}),
        ("hour", {"timezone": "Europe/Berlin", "since": "2026-10-25T02:00", "until": "2026-10-25T03:00"}),
        ("month", {"timezone": "Asia/Kathmandu", "since": datetime(2026, 10, 30, 18, 15, tzinfo=UTC)}),
    ]
    for by, options in cases:
        _same(analytics.usage_report(repo, by, **options), reference.usage_report(frame, by, **options),
              f"usage_report({by!r}, {options})", _bound(repo))  # fmt: skip
        _same(analytics.usage_totals(repo, **options), reference.usage_totals(frame, **options),
              f"usage_totals({options})", _bound(repo))  # fmt: skip
    idle = analytics.usage_totals(repo, user_id="u-idle")
    assert idle["messages"].item() == 0 and idle["cost_usd"].item() == 0
    for by in ("day", "model"):
        _same(analytics.cost_reported_vs_estimated(repo, by, timezone="America/New_York"),
              reference.cost_reported_vs_estimated(frame, by, timezone="America/New_York"), "reported vs estimated")  # fmt: skip
        got = analytics.latency_percentiles(repo, by)
        want = reference.latency_percentiles(frame, by)
        exact = ["messages", "mean_ms", "max_ms"]
        assert_frame_equal(
            got.select(got.columns[0], *exact), want.select(want.columns[0], *exact), rel_tol=1e-9
        )
        for column in ("p50_ms", "p90_ms", "p95_ms", "p99_ms"):
            for g, w in zip(got[column], want[column], strict=True):
                assert abs(g - w) <= _bound(repo) * w + 1e-9, (column, g, w)
    _same(analytics.top_users(repo, 2), reference.top_users(frame, 2), "top_users")
    _same(analytics.token_mix(repo), reference.token_mix(frame), "token_mix")


def _mid_range_prices() -> Any:
    """The bundled prices, with Sonnet's and Haiku's changing inside the data of :func:`_load`:
    on Berlin's DST day and the day before New York's."""
    from chatdb.analytics.pricing import Price, PriceTable, load_prices

    changes = PriceTable(
        (
            Price("claude-sonnet-4-5", date(2025, 9, 29), 3.0, 15.0, 3.75, 0.3),
            Price("claude-sonnet-4-5", date(2026, 10, 25), 2.0, 10.0, 2.5, 0.2),
            Price("claude-haiku-4-5", date(2025, 10, 15), 1.0, 5.0, 1.25, 0.1),
            Price("claude-haiku-4-5", date(2026, 10, 31), 0.5, 2.5, 0.6, 0.05),
        )
    )
    return load_prices(None).merged(changes)


def test_reports_not_by_period_price_each_message_at_its_day_when_prices_change_mid_range(
    repo: ChatRepository,
) -> None:
    """Groups of a report by model, user or chat (and of a total) are cut by the spans between
    price changes, not by day (AggregateQuery.price_days): every message is still priced at
    its own day, and a report by period (cut by day) agrees."""
    _load(repo)
    frame = export.to_polars(repo, "messages")
    prices = _mid_range_prices()
    for by in ("model", "user", "chat", "day", "month"):
        for mode in ("auto", "calculate"):
            options: dict[str, Any] = {"prices": prices, "cost_mode": mode}
            _same(analytics.usage_report(repo, by, **options), reference.usage_report(frame, by, **options),
                  f"usage_report({by!r}, {mode})", _bound(repo))  # fmt: skip
        _same(analytics.cost_reported_vs_estimated(repo, by, prices=prices),
              reference.cost_reported_vs_estimated(frame, by, prices=prices), f"reported vs estimated {by}")  # fmt: skip
    options = {"prices": prices, "cost_mode": "calculate", "model": "claude-sonnet-4-5"}
    _same(analytics.usage_report(repo, "user", **options), reference.usage_report(frame, "user", **options),
          "usage_report('user', sonnet)", _bound(repo))  # fmt: skip
    _same(
        analytics.usage_totals(repo, **options),
        reference.usage_totals(frame, **options),
        "usage_totals",
        _bound(repo),
    )
    total = analytics.usage_totals(repo, prices=prices, cost_mode="calculate")["cost_usd"].item()
    by_day = analytics.usage_report(repo, "day", prices=prices, cost_mode="calculate")["cost_usd"].sum()
    assert total == pytest.approx(by_day, abs=1e-5) and total > 0
    # The changes move the estimate: a report priced at one day for all would differ.
    assert total != pytest.approx(analytics.usage_totals(repo, cost_mode="calculate")["cost_usd"].item())
    # A price history of more changes than a report cuts its groups by: grouped by day, the same.
    from chatdb.analytics import _groups
    from chatdb.analytics.pricing import Price, PriceTable

    daily = [
        Price("claude-haiku-4-5", date(2026, 8, 1) + timedelta(days=i), 1.0 + i / 10, 5.0, 1.25, 0.1)
        for i in range(100)
    ]
    history = prices.merged(PriceTable(tuple(daily)))
    assert _groups._price_spans(prices) is not None and _groups._price_spans(history) is None
    for by in ("user", "model"):
        options = {"prices": history, "cost_mode": "calculate"}
        _same(analytics.usage_report(repo, by, **options), reference.usage_report(frame, by, **options),
              f"usage_report({by!r}, a long price history)", _bound(repo))  # fmt: skip


def test_week_and_month_groups_are_cut_by_period_and_price_span_in_any_zone(repo: ChatRepository) -> None:
    """A report by week or month asks for groups by period and price span, not by day
    (AggregateQuery.price_days): PostgreSQL and MariaDB return one group row per period's first
    day and span, and every message is still priced at its own day, whatever the zone's offsets."""
    from chatdb.sql.repository import SqlRepository

    _load(repo)
    frame = export.to_polars(repo, "messages")
    prices = _mid_range_prices()
    asked: list[Any] = []
    real = repo.aggregate_messages

    def aggregate(query: Any) -> Any:
        batches = list(real(query))
        asked.append((query, [row for batch in batches for row in batch if len(row) > 6]))
        return iter(batches)

    repo.aggregate_messages = aggregate  # type: ignore[method-assign]
    cases = [
        ("month", "UTC"),
        ("month", "Europe/Berlin"),
        ("week", "Asia/Kathmandu"),
        ("month", "America/New_York"),
    ]
    for by, zone in cases:
        for mode in ("auto", "calculate"):
            asked.clear()
            options: dict[str, Any] = {"prices": prices, "cost_mode": mode, "timezone": zone}
            _same(analytics.usage_report(repo, by, **options), reference.usage_report(frame, by, **options),
                  f"usage_report({by!r}, {zone}, {mode})", _bound(repo))  # fmt: skip
            [(query, groups)] = asked
            assert query.price_days and query.period == by and groups, (by, zone)
            # (SQLite groups by day still: cheaper there)
            if isinstance(repo, SqlRepository) and repo.backend != "sqlite":
                firsts = {datetime.fromtimestamp(row[0] * 86_400, UTC) for row in groups}
                if by == "month":
                    assert {day.day for day in firsts} == {1}, firsts
                else:
                    assert {day.weekday() for day in firsts} == {0}, firsts
                assert len({(row[0], row[2]) for row in groups}) < len(firsts) + len(query.price_days) + 1


def test_a_report_with_its_totals_from_one_aggregation_equals_the_two_calls(repo: ChatRepository) -> None:
    # (chatdb usage prints a report and its totals row: one aggregation serves both.)
    _load(repo)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("month", {}),
        ("day", {"timezone": "Asia/Kathmandu", "cost_mode": "calculate"}),
        ("hour", {"timezone": "Europe/Berlin", "breakdown": "model", "order": "desc"}),
        ("model", {"model": "claude-sonnet-4-5-20250929"}),
        ("user", {"since": date(2026, 10, 31)}),
        ("chat", {"user_id": "u-edge"}),
        ("day", {"user_id": "u-idle"}),  # a user with no messages: an empty report, a zero total
    ]
    for by, options in cases:
        report, totals = analytics.usage_report_with_totals(repo, by, **options)
        assert_report_equal(report, analytics.usage_report(repo, by, **options))
        plain = {k: v for k, v in options.items() if k not in ("breakdown", "order")}
        assert_report_equal(totals, analytics.usage_totals(repo, **plain))
    with pytest.raises(TypeError, match="colour"):
        analytics.usage_report_with_totals(repo, "day", colour="red")


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_computes_exact_percentiles_when_a_repository_asks_for_them(repo: ChatRepository) -> None:
    # (docs/analytics.md: percentile_cont where a repository's exact_quantiles is set)
    _load(repo)
    repo.exact_quantiles = True  # type: ignore[attr-defined]
    frame = export.to_polars(repo, "messages")
    for by in ("day", "model"):
        got, want = analytics.latency_percentiles(repo, by), reference.latency_percentiles(frame, by)
        for column in ("p50_ms", "p90_ms", "p95_ms", "p99_ms"):
            for g, w in zip(got[column], want[column], strict=True):
                assert abs(g - w) <= 1e-9 * w + 1e-9, (by, column, g, w)
        _same(analytics.usage_report(repo, by), reference.usage_report(frame, by), f"exact {by}", 1e-9)


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_reports_over_a_large_table_aggregate_by_hash_and_equal_the_reference(
    repo: ChatRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past PG_SORTED_GROUPING_UP_TO messages (the table's estimate), reports by day, week or
    # user take the month's partial hash aggregation instead of GROUPING SETS: here, every table.
    # Hours and chats keep the sort.
    _load(repo)
    frame = export.to_polars(repo, "messages")
    statements: list[str] = []
    build = sql_aggregate.build

    def recorded(*args: Any, **options: Any) -> Any:
        built = build(*args, **options)
        statements.extend(built[0])
        return built

    monkeypatch.setattr(sql_aggregate, "build", recorded)
    cases = (
        ("day", "Asia/Kolkata"),
        ("week", "UTC"),
        ("user", "UTC"),
        ("hour", "Europe/Berlin"),
        ("chat", "UTC"),
    )
    for large in (False, True):
        if large:
            monkeypatch.setattr(sql_aggregate, "PG_SORTED_GROUPING_UP_TO", -1)
        for by, timezone in cases:
            statements.clear()
            got = analytics.usage_report(repo, by, timezone=timezone)
            want = reference.usage_report(frame, by, timezone=timezone)
            _same(got, want, f"{by}, large={large}", _bound(repo))
            hashed = large and by in ("day", "week", "user")
            assert any("GROUPING SETS" in s for s in statements) != hashed, (by, large)
            assert any("CROSS JOIN LATERAL" in s for s in statements) == hashed, (by, large)


# The backends that read a large table as parts at once.
in_parts_backends = pytest.mark.parametrize(
    "backend",
    [pytest.param("sqlite", marks=pytest.mark.sqlite), pytest.param("mysql", marks=pytest.mark.mysql)],
    indirect=True,
)


def _in_parts(repo: ChatRepository, count: int) -> list[int]:
    """Make ``repo`` read every table as ``count`` parts; returns the number of parts each
    aggregation then ran as, appended as they run."""
    split: list[int] = []
    real = repo._aggregate_parts  # type: ignore[attr-defined]

    def parts(query: Any) -> list[tuple[Any, Any]]:
        found: list[tuple[Any, Any]] = real(query)
        split.append(len(found))
        return found

    repo.aggregate_parts, repo.aggregate_parts_min_rows = count, 1  # type: ignore[attr-defined]
    repo._aggregate_parts = parts  # type: ignore[attr-defined]
    return split


@in_parts_backends
def test_a_report_read_in_parallel_parts_equals_the_reference(repo: ChatRepository) -> None:
    # (SQLite and MySQL/MariaDB read a large table as parts at once, each on its own
    # connection: here every table is large enough, in 3 parts.)
    _load(repo)
    frame = export.to_polars(repo, "messages")
    split = _in_parts(repo, 3)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("month", {}),
        ("day", {"timezone": "Asia/Kathmandu"}),
        ("hour", {"timezone": "Europe/Berlin", "breakdown": "model"}),
        ("user", {"model": "claude-sonnet-4-5-20250929"}),
        ("chat", {"since": date(2026, 10, 31), "user_id": "u-edge"}),
    ]
    for by, options in cases:
        _same(analytics.usage_report(repo, by, **options), reference.usage_report(frame, by, **options),
              f"usage_report({by!r}, {options}) in parts", _bound(repo))  # fmt: skip
    _same(analytics.usage_totals(repo), reference.usage_totals(frame), "usage_totals in parts", _bound(repo))
    assert split and set(split) == {3}
    # (on SQLite each part ran in a child process of its own: chatdb._sqlite_aggregate)
    assert repo._parts_in_processes == (repo.backend == "sqlite")  # type: ignore[attr-defined]


@in_parts_backends
def test_mariadb_runs_three_parts_a_core_up_to_six_and_sqlite_one_up_to_four(repo: ChatRepository) -> None:
    # (a MariaDB part's thread waits on its reads and its temporary tables' writes: three a
    # core keep the cores busy; SQLite's child processes keep theirs busy alone)
    _load(repo)
    cores = len(os.sched_getaffinity(0))
    split = _in_parts(repo, repo.aggregate_parts)  # type: ignore[attr-defined]
    analytics.usage_report(repo, "month")
    assert split == [min(6, cores * 3) if repo.backend == "mysql" else min(4, cores)]


@in_parts_backends
def test_parts_return_each_group_and_bucket_once_with_one_statements_sums(repo: ChatRepository) -> None:
    # (each part's groups are added up as it ends: the caller holds one part's worth of rows)
    from chatdb._aggregate import AggregateQuery

    _load(repo)
    query = AggregateQuery(histograms=True, key="user")

    def totals(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[Any]]:
        out: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            if len(row) == 6:  # a histogram bucket: its count
                out.setdefault(row[:5], [0])[0] += row[5]
                continue
            have = out.setdefault(row[:3] + row[4:8], [None, *[0] * 9, None])
            first, dmax = row[3], row[16]
            have[0] = first if have[0] is None else min(have[0], first)
            for k, v in enumerate(row[8:16], start=1):
                have[k] += round(v or 0, 9)
            have[9] += row[17] or 0
            have[10] = dmax if have[10] is None else max(have[10], dmax or 0)
        return {k: [round(v, 6) if isinstance(v, float) else v for v in vs] for k, vs in out.items()}

    def rows() -> list[tuple[Any, ...]]:
        return [row for batch in repo.aggregate_messages(query) for row in batch]

    repo.aggregate_parts = 1  # type: ignore[attr-defined]
    whole = rows()
    split = _in_parts(repo, 3)
    parts = rows()
    assert split == [3] and totals(parts) == totals(whole)
    groups = [row[:3] + row[4:8] for row in parts if len(row) > 6]
    buckets = [row[:5] for row in parts if len(row) == 6]
    assert len(set(groups)) == len(groups) and len(set(buckets)) == len(buckets)


def test_group_sums_come_back_as_python_ints_on_every_backend(repo: ChatRepository) -> None:
    # (the servers' SUMs of integers are DECIMAL / numeric: a Decimal takes three times an
    # int's memory, and four parts' groups are held at once)
    from decimal import Decimal

    from chatdb._aggregate import AggregateQuery

    _load(repo)
    rows = [row for batch in repo.aggregate_messages(AggregateQuery(histograms=True)) for row in batch]
    assert rows and not [v for row in rows for v in row if isinstance(v, Decimal)]
    assert sum(row[8] for row in rows if len(row) > 8) == repo.count_rows()["messages"]


@pytest.mark.parametrize("backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)], indirect=True)
def test_sqlite_parts_run_on_threads_where_the_child_script_is_no_file(
    repo: ChatRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (chatdb imported from a zip: the parts' child script cannot be run, the threads can)
    from chatdb.sql import repository as sql_repository

    _load(repo)
    frame = export.to_polars(repo, "messages")
    split = _in_parts(repo, 2)
    monkeypatch.setattr(sql_repository, "_AGGREGATE_CHILD", "/nonexistent/chatdb/_sqlite_aggregate.py")
    assert not repo._parts_in_processes  # type: ignore[attr-defined]
    _same(
        analytics.usage_report(repo, "user"),
        reference.usage_report(frame, "user"),
        "user on threads",
        _bound(repo),
    )
    assert split == [2]


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_a_mysql_report_leaves_the_session_settings_as_it_found_them(
    repo: ChatRepository,
) -> None:
    # (A report changes the SQL mode, GROUP_CONCAT's length and the in-memory temporary tables'
    # sizes for its statements; the connection stays with this thread for the next call.)
    _load(repo)
    names = ("sql_mode", "group_concat_max_len", "tmp_table_size", "max_heap_table_size")
    session = "SELECT " + ", ".join(f"@@SESSION.{n}" for n in names)

    def settings(tx: Any) -> tuple[Any, ...]:
        tx.cursor.execute(session)
        return tuple(tx.cursor.fetchone())

    executor = repo._executor  # type: ignore[attr-defined]
    executor.run(lambda tx: tx.cursor.execute("SET SESSION tmp_table_size = 20000000"))
    found = executor.run(settings)
    for by in ("month", "user"):
        analytics.usage_report(repo, by)
        assert executor.run(settings) == found, by
    assert 19_000_000 < found[2] <= 20_000_000  # (the server rounds it to its block size)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("mysql_node", marks=[pytest.mark.mysql, pytest.mark.node_schema]),
    ],
    indirect=True,
)
def test_a_mariadb_report_by_user_is_the_same_with_owners_from_memory_or_from_the_chats(
    repo: ChatRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (up to MYSQL_OWNER_TABLES_UP_TO chats, by the server's estimate, each message's owner is
    # a number from a memory table made first; past it, each is looked up in the chats; also
    # under the Node app's case-insensitive collation)
    from chatdb._aggregate import AggregateQuery

    _load(repo)
    frame = export.to_polars(repo, "messages")
    limit, query = sql_aggregate.MYSQL_OWNER_TABLES_UP_TO, AggregateQuery(histograms=True, key="user")
    in_memory = sql_aggregate.build("mysql", query, chats=limit)[0]
    from_chats = sql_aggregate.build("mysql", query, chats=limit + 1)[0]
    assert any("ENGINE=MEMORY" in s for s in in_memory) and not any("ENGINE=MEMORY" in s for s in from_chats)
    split = _in_parts(repo, 2)
    for up_to in (limit, -1):
        monkeypatch.setattr(sql_aggregate, "MYSQL_OWNER_TABLES_UP_TO", up_to)
        _same(analytics.usage_report(repo, "user"), reference.usage_report(frame, "user"),
              f"user, owner tables up to {up_to} chats", _bound(repo))  # fmt: skip
        _same(analytics.top_users(repo, 2, since=date(2026, 10, 31)),
              reference.top_users(frame, 2, since=date(2026, 10, 31)),
              f"top users, owner tables up to {up_to} chats", _bound(repo))  # fmt: skip
    assert split == [2, 2, 2, 2]


@pytest.mark.parametrize(
    "make_id",
    [lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)), lambda r: f"msg-{r.randrange(10**9):09d}"],
)
def test_mysql_parts_are_even_stretches_of_the_ids_whatever_their_alphabet(
    make_id: Callable[[random.Random], str],
) -> None:
    """MariaDB reads each part as a range of primary keys (its own stretch of the table, where
    every part of CRC-32 classes read all of it): bounds from the smallest and largest ids and
    the ids 16 index seeks find, as the dialect does it."""
    from chatdb.sql.dialects import id_bounds

    rng = random.Random(7)
    ids = sorted({make_id(rng) for _ in range(50_000)})
    probes = id_bounds(ids[0], ids[-1], 17)
    seen = [ids[min(len(ids) - 1, bisect.bisect_left(ids, probe))] for probe in probes]
    for count in (2, 3, 4):
        bounds = id_bounds(ids[0], ids[-1], count, seen)
        assert len(bounds) == count - 1 and bounds == sorted(set(bounds))
        sizes = [
            b - a for a, b in itertools.pairwise([0, *(bisect.bisect_left(ids, x) for x in bounds), len(ids)])
        ]
        assert max(sizes) < 1.1 * len(ids) / count, sizes
    # Nothing to cut: one statement. Ids outside printable ASCII: bounds, if any, still cut.
    assert id_bounds("a", "a", 2) == []
    for bound in id_bounds("ä-1", "ü-9", 3, ["ö-5"]):
        assert "ä-1" < bound <= "ü-9"


@pytest.mark.parametrize(
    "backend", [pytest.param("mysql_node", marks=[pytest.mark.mysql, pytest.mark.node_schema])], indirect=True
)
def test_mysql_parts_count_each_message_once_under_a_case_insensitive_collation(
    backend: Any, repo: ChatRepository
) -> None:
    # The Node app's MySQL ids compare under utf8mb4_general_ci, where 'k' < 'V' though
    # Python has 'V' < 'k': bounds cut in Python's order made overlapping parts there. (Ids
    # from '0...' to 'z...', no 'Z' first: the column's smallest and largest are Python's too.)
    rng = random.Random(11)
    digits, upper, lower = "0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
    ids = sorted(
        {rng.choice(digits + upper[:-1] + lower) + "".join(rng.choice(digits + upper + lower) for _ in range(11))
         for _ in range(3_000)}
    )  # fmt: skip
    chat = repo.create_chat(repo.create_user("parts", "x").id).id
    rows = [{"id": i, "chat_id": chat, "role": "assistant", "content": "[]", "created_at": "2026-11-01T12:00:00.000Z",
             "metadata": ODD_METADATA[0][0]} for i in ids]  # fmt: skip
    repo.import_rows("messages", rows)
    with backend.admin.begin() as conn:  # (the row estimate the parts start from)
        conn.exec_driver_sql("ANALYZE TABLE messages")
    split = _in_parts(repo, 4)
    assert analytics.usage_totals(repo)["messages"].item() == len(ids)
    assert analytics.usage_report(repo, "day")["messages"].sum() == len(ids)
    assert split == [4, 4]


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt meanwhile, also in a test run started in the background
    (where a shell starts it with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _part_processes() -> list[str]:
    """This process's children running a SQLite aggregation part (Linux: from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            status = (entry / "status").read_text()
            parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
            if int(parent) == os.getpid() and b"_sqlite_aggregate" in (entry / "cmdline").read_bytes():
                found.append(entry.name)
    return found


@pytest.mark.timeout(120)
@in_parts_backends
def test_ctrl_c_stops_every_part_of_a_report_instead_of_waiting_for_them(
    repo: ChatRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A report over a large database runs in parts on threads; Ctrl-C must stop their
    # statements, not wait for them. Each part here runs a statement that would take 100 s.
    _load(repo)
    repo.aggregate_parts, repo.aggregate_parts_min_rows = 2, 1  # type: ignore[attr-defined]
    slow = {
        "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        "mysql": "SELECT SLEEP(100)",
    }[repo.backend]
    monkeypatch.setattr(sql_aggregate, "build", lambda *args, **options: ([slow], {}))
    running: list[str] = []

    def stop() -> None:
        running.extend(_part_processes())
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    ctrl_c = threading.Timer(1.0, stop)
    started = time.monotonic()
    with interruptible(), pytest.raises(KeyboardInterrupt):
        ctrl_c.start()
        analytics.usage_report(repo, "month")
    assert time.monotonic() - started < 30
    assert not [t for t in threading.enumerate() if t.name.startswith("chatdb-aggregate")]
    # (SQLite's parts run in child processes: there while the report ran, killed, not left)
    assert len(running) == (2 if repo.backend == "sqlite" else 0)
    assert not _part_processes()
    monkeypatch.undo()  # and the repository answers the next report
    assert analytics.usage_totals(repo)["messages"].item() > 0


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_a_reporting_account_without_temporary_tables_gets_the_same_reports(backend: Any) -> None:
    # MariaDB's aggregation writes its rows to a temporary table; a read-only account (SELECT
    # only) runs the one-statement form instead, with the same result.
    from sqlalchemy import text

    import chatdb

    with backend.new_repo() as owner:
        _load(owner)
        frame = export.to_polars(owner, "messages")
    user, password = f"ro{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    database = backend.admin.url.database
    with backend.admin.connect() as conn:
        conn.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        conn.execute(text(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'"))
    try:
        url = backend.admin.url.set(username=user, password=password).render_as_string(hide_password=False)
        with chatdb.create_repository(url) as reader:
            with pytest.raises(Exception, match="denied"), reader.engine.connect() as conn:  # type: ignore[attr-defined]
                conn.execute(text("CREATE TEMPORARY TABLE probe (x int)"))
            reader.aggregate_parts = 2  # type: ignore[attr-defined]
            reader.aggregate_parts_min_rows = 1  # type: ignore[attr-defined]
            cases: list[tuple[str, dict[str, Any]]] = [
                ("month", {}),
                ("day", {"timezone": "Asia/Kolkata"}),
                ("user", {}),
            ]
            for by, options in cases:
                _same(analytics.usage_report(reader, by, **options), reference.usage_report(frame, by, **options),
                      f"read-only usage_report({by!r}, {options})", _bound(reader))  # fmt: skip
    finally:
        with backend.admin.connect() as conn:
            conn.execute(text(f"DROP USER '{user}'@'%'"))


def test_unreadable_rows_are_counted_and_cost_like_the_export(repo: ChatRepository) -> None:
    unreadable = _load(repo)
    totals = analytics.usage_totals(repo)
    assert unreadable > 0
    assert totals["unreadable_messages"].item() == unreadable
    report = analytics.usage_report(repo, "day")
    assert report["unreadable_messages"].sum() == unreadable
    # The export counts the same rows as unreadable (and warns); its frame has nothing left to be.
    with pytest.warns(export.ExportWarning, match=rf"^{unreadable} of \d+ messages rows had unreadable"):
        frame = export.to_polars(repo, "messages")
    assert analytics.usage_totals(frame)["unreadable_messages"].item() == 0


@pytest.mark.parametrize("draw", [lambda r: r.lognormvariate(8, 1.2), lambda r: r.uniform(0, 400),
                                  lambda r: r.choice([0, 1, 5, 250, 257, 10**7])])  # fmt: skip
def test_histogram_percentiles_stay_within_the_stated_bound(draw: Callable[[random.Random], float]) -> None:
    rng = random.Random(11)
    values = sorted(int(draw(rng)) for _ in range(5_001))
    counts: dict[int, int] = {}
    for value in values:
        counts[duration_bucket(value)] = counts.get(duration_bucket(value), 0) + 1
    series = pl.Series(values, dtype=pl.Float64())
    assert RELATIVE_ERROR < 0.01
    for q in (0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = series.quantile(q, "linear")
        got = histogram_quantile(counts, q)
        assert exact is not None and got is not None
        assert math.isclose(got, exact, rel_tol=RELATIVE_ERROR, abs_tol=1e-9), (q, got, exact)
    assert histogram_quantile({}, 0.5) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_groups_that_need_no_first_times_read_created_at_only_for_the_time(backend: str) -> None:
    """Each row's text is carried to the grouping only for ``min(created_at)``: without it the
    column is read just for its epoch second and the filters."""
    from chatdb._aggregate import AggregateQuery

    since = datetime(2026, 1, 1, tzinfo=UTC)
    for histograms, key in ((True, None), (False, "user"), (True, "chat")):
        query = AggregateQuery(since=since, key=key, histograms=histograms, period="month")
        wanted, _ = sql_aggregate.build(backend, query)
        spared, _ = sql_aggregate.build(backend, replace(query, first_times=False))
        assert "min(created_at)" in " ".join(wanted)
        text = " ".join(spared).replace("messages.created_at >= :since", "")
        epoch = sql_aggregate._Ops(backend).epoch("messages.created_at")
        assert text.count("created_at") == text.count(epoch) * epoch.count("created_at") > 0


def test_times_far_from_1970_fall_in_their_second_on_every_backend(repo: ChatRepository) -> None:
    """PostgreSQL reads a time between 1800 and 2200 as a float's seconds (exact there to the
    microsecond), others from a numeric: either side of both years, a millisecond before a
    second (and sub-millisecond fractions SQLite before 3.42 does not round up: see
    docs/analytics.md), a report by hour and by day equals the reference."""
    _load(repo)
    stamps = (
        "1799-12-31T23:59:59.999Z", "1800-01-01T00:00:00.000Z", "2199-12-31T23:59:59.999Z",
        "2200-01-01T00:00:00.000Z", "2250-06-15T12:00:00.000Z", "1600-03-01T00:00:00.000Z",
        "2199-12-31T22:59:59.999499Z", "2026-10-31T22:59:59.9994+00:00",
    )  # fmt: skip
    repo.import_rows(
        "messages",
        [
            {"id": f"m-far-{i}", "chat_id": "c-edge", "role": "assistant", "content": "[]",
             "created_at": stamp, "metadata": ODD_METADATA[0][0] if i % 2 else None}
            for i, stamp in enumerate(stamps)
        ],
    )  # fmt: skip
    frame = export.to_polars(repo, "messages")
    for by in ("hour", "day"):
        got = analytics.usage_report(repo, by)
        _same(got, reference.usage_report(frame, by), f"usage_report({by!r})", _bound(repo))
        assert {"2199-12-31T23:00+00:00", "2199-12-31"} & set(got["period"])


def test_periods_are_exact_at_every_offset() -> None:
    from zoneinfo import ZoneInfo

    from chatdb._aggregate import zone_shifts

    berlin = zone_shifts(
        ZoneInfo("Europe/Berlin"), datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert berlin == (
        (None, 3600),
        (int(datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp()), 7200),
        (int(datetime(2026, 10, 25, 1, tzinfo=UTC).timestamp()), 3600),
    )
    kathmandu = zone_shifts(
        ZoneInfo("Asia/Kathmandu"), datetime(2026, 1, 1, tzinfo=UTC), END + timedelta(days=1)
    )
    assert kathmandu == ((None, 5 * 3600 + 45 * 60),)


@pytest.mark.sqlite
def test_parquet_datasets_and_arrow_streams_are_aggregated_by_duckdb(tmp_path: Any) -> None:
    """Sources that are not repositories aggregate in DuckDB too (exact percentiles there)."""
    import chatdb

    with chatdb.create_repository(f"sqlite:///{tmp_path / 'demo.db'}") as repo:
        _load(repo)
        frame = export.to_polars(repo, "messages")
        export.to_parquet(repo, tmp_path / "dataset", partition_by="month")
        for by, timezone in (
            ("day", "Asia/Kathmandu"),
            ("hour", "Europe/Berlin"),
            ("user", "UTC"),
            ("month", "UTC"),
            ("week", "Asia/Kolkata"),
        ):
            want = reference.usage_report(frame, by, timezone=timezone)
            _same(
                analytics.usage_report(tmp_path / "dataset", by, timezone=timezone),
                want,
                f"parquet {by}",
                1e-9,
            )
            stream = export.read(repo, "messages", batch_size=64)
            _same(analytics.usage_report(stream, by, timezone=timezone), want, f"stream {by}", 1e-9)
        got = analytics.latency_percentiles(tmp_path / "dataset", "model")
        assert_frame_equal(got, reference.latency_percentiles(frame, "model"), rel_tol=1e-9)


@pytest.mark.sqlite
def test_every_report_over_a_parquet_dataset_equals_the_reference_when_prices_change_mid_range(
    tmp_path: Any,
) -> None:
    """DuckDB groups a dataset's messages only as finely as a report reads them (by the spans
    between price changes, not by UTC day; by period only for periods): prices that change
    inside the data, on a DST day and at a zone's midnight, still price every message at its day."""
    import chatdb

    prices = _mid_range_prices()
    with chatdb.create_repository(f"sqlite:///{tmp_path / 'demo.db'}") as repo:
        _load(repo)
        frame = export.to_polars(repo, "messages")
        export.to_parquet(repo, tmp_path / "dataset", partition_by="month")
    dataset = tmp_path / "dataset"
    for timezone in ZONES:
        for by in BYS:
            options: dict[str, Any] = {"timezone": timezone, "prices": prices}
            _same(analytics.usage_report(dataset, by, **options), reference.usage_report(frame, by, **options),
                  f"usage_report({by!r}, {timezone})", 1e-9)  # fmt: skip
            _same(analytics.cost_reported_vs_estimated(dataset, by, **options),
                  reference.cost_reported_vs_estimated(frame, by, **options), f"reported vs estimated {by}")  # fmt: skip
            got = analytics.latency_percentiles(dataset, by, timezone=timezone)
            assert_frame_equal(got, reference.latency_percentiles(frame, by, timezone=timezone), rel_tol=1e-9)
        for by in ("hour", "day", "week", "month"):
            options = {"timezone": timezone, "prices": prices, "breakdown": "model", "order": "desc"}
            _same(analytics.usage_report(dataset, by, **options), reference.usage_report(frame, by, **options),
                  f"usage_report({by!r}, {timezone}, breakdown)", 1e-9)  # fmt: skip
    for mode in ("auto", "calculate", "display"):
        for by in ("day", "model", "chat"):
            options = {"cost_mode": mode, "prices": prices, "model": "claude-sonnet-4-5"}
            _same(analytics.usage_report(dataset, by, **options), reference.usage_report(frame, by, **options),
                  f"usage_report({by!r}, {mode})", 1e-9)  # fmt: skip
        _same(analytics.usage_totals(dataset, cost_mode=mode, prices=prices),
              reference.usage_totals(frame, cost_mode=mode, prices=prices), f"usage_totals({mode})", 1e-9)  # fmt: skip


def test_a_parquet_time_range_comes_from_the_footers_or_else_a_scan(tmp_path: Any) -> None:
    """Month and zone reports need the data's time range: read from the row groups' statistics,
    and from the rows where a file was written without them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from chatdb.analytics._duckdb import DuckDbMessages

    stamps = [datetime(2026, 3, 29, 0, 59, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), None]
    table = pa.table(
        {"chat_id": ["c1", "c2", "c3"], "created_at": pa.array(stamps, pa.timestamp("ms", "UTC"))}
    )
    pq.write_table(table, tmp_path / "with.parquet", row_group_size=1)
    pq.write_table(table, tmp_path / "without.parquet", write_statistics=False)
    want = (stamps[1], stamps[0])
    with_stats = DuckDbMessages.parquet(tmp_path / "with.parquet")
    assert with_stats._footer_time_range() == want
    without = DuckDbMessages.parquet(tmp_path / "without.parquet")
    assert without._footer_time_range() is None
    assert without.message_time_range() == want


def test_a_parquet_file_rewritten_in_place_is_read_anew(tmp_path: Any) -> None:
    """Parquet sources share one DuckDB database whose object cache keeps footers between
    reports: a file written again at the same path (at once, within the same second) must not
    be answered from the old footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(count: int, cost: float) -> None:
        stamps = pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * count, pa.timestamp("ms", "UTC"))
        table = pa.table({"chat_id": ["c"] * count, "created_at": stamps, "total_cost_usd": [cost] * count})
        pq.write_table(table, tmp_path / "messages.parquet")

    for count, cost in ((3, 1.0), (5, 2.0), (2, 2.0)):
        write(count, cost)
        totals = analytics.usage_totals(tmp_path / "messages.parquet")
        assert totals.select("messages", "cost_usd").row(0) == (count, count * cost)
