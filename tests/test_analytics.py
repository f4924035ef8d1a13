"""Usage analytics: the same answers from every source, checked against SQL computed independently."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import chatdb
from chatdb import analytics, demo
from chatdb._aggregate import RELATIVE_ERROR
from chatdb.analytics import plots, usage
from chatdb.errors import ValidationError

from .test_analytics_pushdown import assert_report_equal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

END = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    path = tmp_path_factory.mktemp("analytics") / "demo.db"
    with chatdb.create_repository(f"sqlite:///{path}") as repo:
        demo.generate(repo, users=4, chats=40, messages=1_500, days=21, seed=7, end=END)
        yield path, repo


@pytest.fixture(scope="module")
def frame(demo_db: tuple[Path, Any]) -> pl.DataFrame:
    return analytics.messages_frame(demo_db[1]).collect()


@pytest.fixture(scope="module")
def sources(
    demo_db: tuple[Path, Any], frame: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    parquet = tmp_path_factory.mktemp("parquet") / "messages.parquet"
    frame.drop("model_family").write_parquet(parquet)
    con = duckdb.connect()
    con.register("frame_view", frame.drop("model_family").to_arrow())
    con.execute("CREATE TABLE messages AS SELECT * FROM frame_view")
    return {"repository": demo_db[1], "polars": frame.drop("model_family"), "lazy": frame.lazy(),
            "parquet": parquet, "duckdb": con}  # fmt: skip


@pytest.mark.parametrize("by", ["hour", "day", "week", "month", "model", "user", "chat"])
def test_reports_agree_across_repository_polars_parquet_and_duckdb(sources: dict[str, Any], by: str) -> None:
    reports = {
        name: analytics.usage_report(source, by, timezone="America/New_York")
        for name, source in sources.items()
    }
    pushed = reports.pop("repository")
    expected = reports.pop("polars")
    assert expected.height > 0
    assert pushed.columns == expected.columns == [analytics.GROUPINGS[by], *analytics.REPORT_COLUMNS]
    for name, report in reports.items():
        try:
            assert_report_equal(report, expected)
        except AssertionError as exc:
            raise AssertionError(f"the {name} source disagrees with the Polars frame: {exc}") from None
    # The repository computes in the database: the same, but p95 comes from a histogram.
    assert_report_equal(pushed, expected, RELATIVE_ERROR)


def _close(got: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
    """Equal up to float rounding, or to the report's documented rounding (money to 6 decimal
    places, durations to 1); None (no value) only equals None."""

    def same(g: Any, w: Any) -> bool:
        if g is None or w is None:
            return g is w
        exact = pytest.approx(w, rel=1e-9, abs=1e-12)
        places = (usage.COST_DECIMALS, usage.DURATION_DECIMALS)
        return bool(g == exact or any(g == pytest.approx(round(w, p), abs=1e-12) for p in places))

    return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))


def _sqlite_prices(models: list[str]) -> str:
    """A VALUES table of each stored model name's price (the demo window is after every change)."""
    table = analytics.load_prices()
    rows = []
    for model in models:
        price = table.price_for(model, END)
        if price is not None:
            rows.append(
                f"('{model}', {price.input}, {price.output}, {price.cache_write}, {price.cache_read})"
            )
    return ", ".join(rows)


def test_daily_report_equals_straight_sql_over_the_sqlite_database(demo_db: tuple[Path, Any]) -> None:
    path, repo = demo_db
    con = sqlite3.connect(path)
    models = [
        r[0] for r in con.execute("SELECT DISTINCT json_extract(metadata, '$.model') FROM messages") if r[0]
    ]
    sql = f"""
        WITH p(model, pin, pout, pcw, pcr) AS (VALUES {_sqlite_prices(models)}),
        m AS (
            SELECT substr(created_at, 1, 10) AS day,
                   json_extract(metadata, '$.model') AS model,
                   json_extract(metadata, '$.inputTokens') AS tin,
                   json_extract(metadata, '$.outputTokens') AS tout,
                   json_extract(metadata, '$.cacheCreationInputTokens') AS tcw,
                   json_extract(metadata, '$.cacheReadInputTokens') AS tcr,
                   json_extract(metadata, '$.totalCostUsd') AS reported,
                   json_extract(metadata, '$.durationMs') AS duration
            FROM messages
        ),
        c AS (
            SELECT m.*,
                   (tin IS NOT NULL OR tout IS NOT NULL OR tcw IS NOT NULL OR tcr IS NOT NULL) AS has_tokens,
                   CASE WHEN p.model IS NOT NULL THEN
                       (coalesce(tin, 0) * pin + coalesce(tout, 0) * pout + coalesce(tcw, 0) * pcw
                        + coalesce(tcr, 0) * pcr) / 1e6 END AS estimate
            FROM m LEFT JOIN p ON p.model = m.model
        )
        SELECT day, count(*), total(tin), total(tout), total(tcw), total(tcr),
               CASE WHEN count(cost) = 0 AND sum(unpriced) > 0 THEN NULL ELSE total(cost) END,
               total(CASE WHEN reported IS NULL AND has_tokens THEN estimate END),
               avg(duration),
               sum(unpriced)
        FROM (
            SELECT c.*, coalesce(reported, CASE WHEN has_tokens THEN estimate END) AS cost,
                   (has_tokens OR reported IS NOT NULL) AND reported IS NULL
                   AND (estimate IS NULL OR NOT has_tokens) AS unpriced
            FROM c
        ) GROUP BY day ORDER BY day
    """
    expected = con.execute(sql).fetchall()
    report = analytics.usage_report(repo, "day")
    columns = ["period", "messages", "input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens", "cost_usd", "estimated_cost_usd", "avg_duration_ms",
               "unpriced_messages"]  # fmt: skip
    actual = report.select(columns).rows()
    assert len(actual) == len(expected) > 15
    for got, want in zip(actual, expected, strict=True):
        assert got[:6] == tuple(int(v) if isinstance(v, float) else v for v in want[:6])
        assert _close(got[6:9], want[6:9])
        assert got[9] == want[9]
    # The demo has messages of every kind that makes cost estimation matter.
    assert report["unpriced_messages"].sum() > 0 and report["estimated_cost_usd"].sum() > 0


def test_model_report_and_latency_percentiles_equal_duckdb_sql(frame: pl.DataFrame) -> None:
    con = duckdb.connect()
    con.register("m", frame.to_arrow())
    expected = con.execute(
        """
        SELECT model, count(*)::BIGINT, sum(input_tokens)::BIGINT, sum(output_tokens)::BIGINT,
               sum(cache_read_input_tokens)::BIGINT, avg(duration_ms), quantile_cont(duration_ms, 0.95),
               quantile_cont(duration_ms, 0.5)
        FROM m GROUP BY model ORDER BY model NULLS LAST
        """
    ).fetchall()
    report = analytics.usage_report(frame, "model")
    actual = report.select(
        "model", "messages", "input_tokens", "output_tokens", "cache_read_input_tokens",
        "avg_duration_ms", "p95_duration_ms",
    ).rows()  # fmt: skip
    for got, want in zip(actual, expected, strict=True):
        assert got[:5] == tuple(0 if w is None and i > 1 else w for i, w in enumerate(want[:5]))
        assert _close(got[5:], want[5:7])
    latency = analytics.latency_percentiles(frame).rows_by_key("model", named=True, unique=True)
    for want in expected:
        if want[0] is not None:
            assert latency[want[0]]["p50_ms"] == pytest.approx(want[7])
            assert latency[want[0]]["p95_ms"] == pytest.approx(want[6])


def _timed(*stamps: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "message_id": [f"m{i}" for i in range(len(stamps))],
            "chat_id": "c",
            "user_id": "u",
            "role": "assistant",
            "created_at": [datetime.fromisoformat(s) for s in stamps],
            "model": "claude-haiku-4-5",
            "input_tokens": 1_000_000,
        }
    )


def test_days_and_weeks_are_cut_in_the_report_timezone() -> None:
    # Sunday 2026-10-25, 22:30 and 23:30 UTC: the second is already Monday in Berlin.
    frame = _timed("2026-10-25T22:30:00+00:00", "2026-10-25T23:30:00+00:00")
    assert analytics.usage_report(frame, "day")["period"].to_list() == ["2026-10-25"]
    berlin = analytics.usage_report(frame, "day", timezone="Europe/Berlin")
    assert berlin.select("period", "messages").rows() == [("2026-10-25", 1), ("2026-10-26", 1)]
    assert analytics.usage_report(frame, "week")["period"].to_list() == ["2026-10-19"]
    assert analytics.usage_report(frame, "week", timezone="Europe/Berlin")["period"].to_list() == [
        "2026-10-19",
        "2026-10-26",
    ]
    kolkata = analytics.usage_report(_timed("2026-10-25T18:20:00+00:00", "2026-10-25T18:40:00+00:00"), "hour",
                                     timezone="Asia/Kolkata")  # fmt: skip
    assert kolkata["period"].to_list() == ["2026-10-25T23:00+05:30", "2026-10-26T00:00+05:30"]


def test_the_repeated_hour_when_clocks_go_back_stays_two_periods() -> None:
    frame = _timed("2026-10-25T00:30:00+00:00", "2026-10-25T01:30:00+00:00")  # 02:30 CEST, then 02:30 CET
    report = analytics.usage_report(frame, "hour", timezone="Europe/Berlin")
    assert report["period"].to_list() == ["2026-10-25T02:00+02:00", "2026-10-25T02:00+01:00"]
    assert analytics.usage_report(frame, "hour", timezone="Europe/Berlin", order="desc")[
        "period"
    ].to_list() == [
        "2026-10-25T02:00+01:00",
        "2026-10-25T02:00+02:00",
    ]


def test_dates_in_filters_are_read_in_the_report_timezone() -> None:
    frame = _timed("2026-10-25T22:30:00+00:00", "2026-10-25T23:30:00+00:00")
    assert analytics.usage_totals(frame, since=date(2026, 10, 26))["messages"].item() == 0
    assert (
        analytics.usage_totals(frame, since=date(2026, 10, 26), timezone="Europe/Berlin")["messages"].item()
        == 1
    )
    assert analytics.usage_totals(frame, until="2026-10-25T23:00:00Z")["messages"].item() == 1


def test_filters_match_a_direct_query(demo_db: tuple[Path, Any], frame: pl.DataFrame) -> None:
    path, repo = demo_db
    con = sqlite3.connect(path)
    user = con.execute("SELECT user_id FROM chats GROUP BY user_id ORDER BY count(*) DESC").fetchone()[0]
    by_user = analytics.usage_report(repo, "user").rows_by_key("user_id", named=True, unique=True)
    filtered = analytics.usage_totals(repo, user_id=user).row(0, named=True)
    want = {k: v for k, v in by_user[user].items() if k != "user_id"}
    assert _close(tuple(filtered.values()), tuple(want.values()))
    count = con.execute(
        "SELECT count(*) FROM messages WHERE created_at >= '2026-10-20T00:00:00.000Z'"
        " AND created_at < '2026-10-25T00:00:00.000Z'"
    ).fetchone()[0]
    assert analytics.usage_totals(repo, since="2026-10-20", until="2026-10-25")["messages"].item() == count
    sonnet = con.execute(
        "SELECT count(*) FROM messages WHERE json_extract(metadata, '$.model') LIKE 'claude-sonnet-4-5-%'"
    ).fetchone()[0]
    assert sonnet > 0
    assert analytics.usage_totals(frame, model="claude-sonnet-4-5")["messages"].item() == sonnet
    assert analytics.usage_totals(frame, model="claude-sonnet-4-5-20250929")["messages"].item() == sonnet


def test_totals_and_the_model_breakdown_add_up_to_the_report(frame: pl.DataFrame) -> None:
    daily = analytics.usage_report(frame, "day")
    totals = analytics.usage_totals(frame).row(0, named=True)
    for column in ("messages", "input_tokens", "total_tokens", "unpriced_messages"):
        assert daily[column].sum() == totals[column]
    assert daily["cost_usd"].sum() == pytest.approx(totals["cost_usd"])
    split = analytics.usage_report(frame, "day", breakdown="model")
    assert split.columns[:2] == ["period", "model"]
    merged = split.group_by("period").agg(pl.col("messages").sum(), pl.col("cost_usd").sum()).sort("period")
    assert merged["messages"].to_list() == daily["messages"].to_list()
    # A day whose only billable messages are unpriced has no cost (null), never $0.
    assert merged["cost_usd"].to_list() == pytest.approx(daily["cost_usd"].fill_null(0.0).to_list())
    assert (
        analytics.usage_report(frame, "day", order="desc")["period"].to_list()
        == daily["period"].to_list()[::-1]
    )


def test_reported_versus_estimated_and_top_lists(frame: pl.DataFrame) -> None:
    split = analytics.cost_reported_vs_estimated(frame, "model")
    assert split["cost_usd"].sum() == pytest.approx(
        float(split["reported_cost_usd"].sum()) + float(split["estimated_cost_usd"].sum())
    )
    assert analytics.usage_totals(frame)["cost_usd"].item() == pytest.approx(split["cost_usd"].sum())
    top = analytics.top_users(frame, n=2)
    assert top.height == 2 and top["cost_usd"].to_list() == sorted(top["cost_usd"].to_list(), reverse=True)
    assert top["cost_usd"][0] == analytics.usage_report(frame, "user")["cost_usd"].max()
    chats = analytics.top_chats(frame, n=5)
    assert chats.height == 5 and chats.columns[0] == "chat_id"
    mix = analytics.token_mix(frame).filter(pl.col("total_tokens") > 0)
    shares = mix.select(pl.sum_horizontal(pl.col("^.*_share$")))
    assert shares.to_series().to_list() == pytest.approx([1.0] * mix.height)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: analytics.usage_report(f, "fortnight"), "cannot group usage by"),
        (lambda f: analytics.usage_report(f, timezone="Mars/Olympus"), "unknown timezone"),
        (lambda f: analytics.usage_report(f, order="up"), "order must be"),
        (lambda f: analytics.usage_report(f, cost_mode="guess"), "cost_mode must be"),  # type: ignore[arg-type]
        (lambda f: analytics.usage_report(f, since="last tuesday"), "since must be"),
        (lambda f: analytics.usage_report(42), "unsupported source"),
        (lambda f: analytics.usage_report(pl.DataFrame({"x": [1]})), "not a messages table"),
    ],
)
def test_bad_options_are_validation_errors(frame: pl.DataFrame, call: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        call(frame)


def test_charts_render_to_png_without_a_display(frame: pl.DataFrame, tmp_path: Path) -> None:
    charts: dict[str, Callable[[Path], Figure]] = {
        "daily": lambda p: plots.daily_cost_by_model(frame, timezone="Europe/Berlin", path=p),
        "tokens": lambda p: plots.tokens_per_user(frame, path=p),
        "latency": lambda p: plots.latency_by_model(frame, path=p),
        "cumulative": lambda p: plots.cumulative_spend(frame, path=p),
        "report": lambda p: plots.plot_report(
            analytics.usage_report(frame, "week", breakdown="model"), path=p
        ),
        "users": lambda p: plots.plot_report(analytics.usage_report(frame, "user"), path=p),
    }
    for name, draw in charts.items():
        path = tmp_path / f"{name}.png"
        figure = draw(path)
        assert figure.axes, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with pytest.raises(ValidationError):
        plots.plot_report(frame)


def test_usage_totals_takes_the_report_options_and_rejects_unknown_ones(frame: pl.DataFrame) -> None:
    same = analytics.usage_totals(frame, by="model", breakdown="model", order="desc")
    # (Float sums may differ in the last bit: Polars adds in parallel.)
    assert_frame_equal(same, analytics.usage_totals(frame), check_exact=False)
    with pytest.raises(TypeError):
        analytics.usage_totals(frame, sinse=date(2026, 10, 26))  # type: ignore[call-arg]
