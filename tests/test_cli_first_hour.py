"""What a new user meets in the first hour: every chart renders and can be read, tables fit the
terminal, empty reports and unknown price models say so, the README's report is today's demo."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from matplotlib.figure import Figure

import chatdb
from chatdb import analytics, export
from chatdb.analytics import plots
from chatdb.cli import output

from .cli_support import invoke, ok

SMALL_DEMO = ("demo", "--users", "6", "--chats", "40", "--messages", "1500", "--days", "91", "--seed", "5")
REPORTS = ("hourly", "daily", "weekly", "monthly", "models", "users", "chats")
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('first_hour') / 'chat.db'}"
    ok(url, *SMALL_DEMO)
    return url


# -- charts ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("breakdown", [(), ("--breakdown", "model")], ids=["plain", "by-model"])
@pytest.mark.parametrize("report", REPORTS)
def test_every_report_and_breakdown_writes_its_chart(
    demo_url: str, report: str, breakdown: tuple[str, ...], tmp_path: Path
) -> None:
    png = tmp_path / "chart.png"
    result = invoke(demo_url, "usage", report, *breakdown, "--plot", str(png), "--json")
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def _overlaps(figure: Figure) -> list[tuple[str, str]]:
    """Pairs of tick labels (either axis) whose rendered boxes overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # type: ignore[no-untyped-call]
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]
    clashes = []
    for ax in figure.axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            shown = [t for t in labels if t.get_visible() and t.get_text()]
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in shown]
            clashes += [
                (a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)
            ]
    return clashes


def _tallest_is_inside(figure: Figure) -> bool:
    ax = figure.axes[0]
    top = max((p.get_y() + p.get_height() for p in ax.patches), default=0.0)  # type: ignore[attr-defined]
    return top < ax.get_ylim()[1] * 0.97


@pytest.fixture(scope="module")
def messages(demo_url: str) -> pl.DataFrame:
    with chatdb.create_repository(demo_url) as repo:
        return export.to_polars(repo, "messages")


@pytest.mark.slow
@pytest.mark.parametrize("breakdown", [None, "model"])
@pytest.mark.parametrize("report", REPORTS)
def test_chart_tick_labels_do_not_overlap(
    messages: pl.DataFrame, demo_url: str, report: str, breakdown: str | None
) -> None:
    frame = analytics.usage_report(messages, report, breakdown=breakdown)
    labels = None
    if report in ("users", "chats"):
        with chatdb.create_repository(demo_url) as repo:
            table = export.to_polars(repo, report)
        key, name = ("user_id", "username") if report == "users" else ("chat_id", "title")
        labels = dict(table.select(key, name).iter_rows())
    figure = plots.plot_report(frame, labels=labels)
    assert _overlaps(figure) == []
    if frame.columns[0] == "period":
        assert _tallest_is_inside(figure)  # the y-range is padded
    else:
        ticks = [t.get_text() for t in figure.axes[0].get_yticklabels()]
        # Names, not 8-character id prefixes: usernames and chat titles, in full or with "…".
        assert all(len(t) > 8 or not re.fullmatch(r"[0-9a-f]{8}", t) for t in ticks)
        if labels is not None:
            assert {t.removesuffix("…").split(" (")[0][:20] for t in ticks} <= {
                str(v)[:20] for v in labels.values()
            } | {t[:20] for t in ticks if t.endswith("…")}


@pytest.mark.slow
def test_the_other_charts_are_readable(messages: pl.DataFrame) -> None:
    users = {
        uid: f"user-with-a-rather-long-name-{i:02d}" for i, uid in enumerate(messages["user_id"].unique())
    }
    figures = {
        "daily": plots.daily_cost_by_model(messages),
        "cumulative": plots.cumulative_spend(messages),
        "tokens": plots.tokens_per_user(messages, usernames=users),
        "latency": plots.latency_by_model(messages),
    }
    for name, figure in figures.items():
        assert _overlaps(figure) == [], name
    assert _tallest_is_inside(figures["daily"])
    ticks = [t.get_text() for t in figures["tokens"].axes[0].get_yticklabels()]
    assert ticks and all(t.startswith("user-with-a-rather-long-name-") for t in ticks)


def test_names_are_shown_in_full_or_with_an_ellipsis() -> None:
    report = pl.DataFrame(
        {"chat_id": ["c1", "c2", "c3"], "cost_usd": [3.0, 2.0, 1.0]},
    )
    long_title = "A very long chat title that goes on and on and on"
    figure = plots.plot_report(report, labels={"c1": "Short", "c2": long_title, "c3": "Short"})
    ticks = {t.get_text() for t in figure.axes[0].get_yticklabels()}
    assert ticks == {"Short (c1)", "Short (c3)", long_title[:31] + "…"}


# -- tables, empty reports, prices ----------------------------------------------------------------


def test_a_table_fits_a_narrow_terminal_and_wide_or_piped_shows_everything(
    demo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    piped = ok(demo_url, "usage").stdout
    assert "cache_read_input_tokens" in piped  # not a terminal: every column
    monkeypatch.setattr(output, "terminal_width", lambda: 80)
    narrow = invoke(demo_url, "usage")
    assert narrow.exit_code == 0
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    assert "cost_usd" in narrow.stdout and "cache_read_input_tokens" not in narrow.stdout
    assert "--wide" in narrow.stderr
    wide = invoke(demo_url, "usage", "--wide")
    assert wide.stdout == piped


def test_an_empty_report_says_so_on_stderr(demo_url: str) -> None:
    result = invoke(demo_url, "usage", "--since", "2020-01-01", "--until", "2020-02-01")
    assert result.exit_code == 0
    assert result.stderr.strip() == "no messages between 2020-01-01 00:00+00:00 and 2020-02-01 00:00+00:00"
    as_json = invoke(demo_url, "usage", "--since", "2020-01-01", "--until", "2020-02-01", "--json")
    assert json.loads(as_json.stdout) == [] and "no messages between" in as_json.stderr
    since = invoke(demo_url, "usage", "--since", "2031-01-01T10:00", "--timezone", "Europe/Berlin")
    assert since.stderr.strip() == "no messages since 2031-01-01 10:00+01:00"
    nobody = invoke(demo_url, "usage", "--model", "no-such-model")
    assert nobody.stderr.strip() == "no messages for model no-such-model in the database"


def test_an_unknown_model_in_a_price_file_is_named_in_a_warning(demo_url: str, tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text(
        "model,from,input,output\nclaude-sonet-4-5,2025-01-01,3,15\nclaude-haiku-4-5,2025-01-01,1,5\n"
    )
    result = invoke(demo_url, "usage", "models", "--prices", str(prices), "--json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "'claude-sonet-4-5'" in warnings[0]


# -- the README ------------------------------------------------------------------------------------


def _readme_report() -> tuple[list[str], list[list[str]]]:
    text = README.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("| period  |")]
    start = text.splitlines().index(lines[0])
    table = []
    for line in text.splitlines()[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table[0], [row for row in table[2:]]


@pytest.mark.slow
def test_the_readme_report_is_what_todays_demo_produces(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chat.db'}"
    ok(url, "demo")
    produced = ok(url, "usage", "monthly", "--format", "markdown").stdout.splitlines()
    columns = [c.strip() for c in produced[0].strip("|").split("|")]
    rows: list[dict[str, Any]] = [
        dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in produced[2:]
    ]
    header, expected = _readme_report()
    assert [[row[c] for c in header] for row in rows] == expected
