"""Charts of usage, as matplotlib figures that render headless (Agg), in notebooks and in CI.

Every function takes a source (as :func:`chatdb.analytics.usage_report` does) and its filters,
returns a :class:`matplotlib.figure.Figure` and, with ``path=``, also writes it (PNG, SVG or PDF by
the file's suffix). Figures are built without ``pyplot``: no global state, no display needed, and
nothing left open when a script makes hundreds of them.

:func:`plot_report` draws the chart that matches an already computed usage report (what
``chatdb usage --plot FILE.png`` writes).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from matplotlib.figure import Figure

from ..errors import ConfigError, ValidationError
from . import usage

__all__ = [
    "cumulative_spend",
    "daily_cost_by_model",
    "latency_by_model",
    "plot_report",
    "save",
    "tokens_per_user",
]

_SIZE = (11.0, 5.0)
_TOKEN_LABELS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache write",
    "cache_read_input_tokens": "cache read",
}


def save(figure: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Write ``figure`` to ``path`` (format from the suffix); ConfigError when it cannot be written."""
    target = Path(path)
    try:
        figure.savefig(target, dpi=dpi, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot write the chart to {str(target)!r}: {exc}") from None
    return target


def _finish(figure: Figure, path: str | Path | None) -> Figure:
    figure.tight_layout()
    if path is not None:
        save(figure, path)
    return figure


def _colors(names: Sequence[Any]) -> dict[Any, Any]:
    """A stable colour per name (sorted), so a model keeps its colour across charts."""
    from matplotlib import colormaps

    palette = colormaps["tab20" if len(names) > 10 else "tab10"]
    return {name: palette(i % palette.N) for i, name in enumerate(sorted(names, key=str))}


def _label(name: Any) -> str:
    return "(no model)" if name is None else str(name)


_NAME_CHARS = 32


def _short(name: str, limit: int = _NAME_CHARS) -> str:
    """A name in full, or cut with an ellipsis when longer than ``limit`` characters."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _names(ids: Sequence[Any], labels: Mapping[str, str] | None, missing: str) -> list[str]:
    """What to call each id on an axis: its label (a username, a chat title) or the id itself,
    in full or ellipsized; two ids with the same label keep apart by their id's start."""
    shown = [_short(str((labels or {}).get(i) or i)) if i is not None else missing for i in ids]
    taken = Counter(shown)
    return [
        _short(f"{name} ({str(i)[:8]})", _NAME_CHARS + 11) if taken[name] > 1 and i is not None else name
        for name, i in zip(shown, ids, strict=True)
    ]


def _period_dates(frame: pl.DataFrame) -> list[Any]:  # datetimes; matplotlib stubs want floats
    """The start of each ``period`` (``2026-10``, ``2026-10-19``, ``2026-10-25T02:00+01:00``) as
    a naive wall-clock datetime, which is what the period's label shows."""
    text = frame["period"].str.slice(0, 16)
    parsed = (
        pl.when(text.str.len_chars() == 7)
        .then(pl.concat_str([text, pl.lit("-01T00:00")]))
        .when(text.str.len_chars() == 10)
        .then(pl.concat_str([text, pl.lit("T00:00")]))
        .otherwise(text)
    )
    return (
        pl.select(parsed.str.to_datetime("%Y-%m-%dT%H:%M", time_unit="ms").alias("x")).to_series().to_list()
    )


def _period_kind(frame: pl.DataFrame) -> str | None:
    first = str(frame["period"][0]) if frame.height else ""
    return "month" if len(first) == 7 else "hour" if "T" in first else None


def _bar_width(x: Sequence[Any], period: str | None = None) -> float:
    """Bar width in days: 80% of the shortest step between periods (a day when there is one)."""
    steps = [(b - a).total_seconds() / 86_400 for a, b in itertools.pairwise(x) if b > a]
    step = min(steps) if steps else {"month": 30.0, "week": 7.0, "hour": 1 / 24}.get(period or "", 1.0)
    return 0.8 * min(step, 31.0)


def _date_axis(ax: Any) -> None:
    """Ticks thinned to what fits (matplotlib's AutoDateLocator) and labelled concisely: the
    year or month once, where it changes, instead of on every tick."""
    from matplotlib import dates

    locator = dates.AutoDateLocator(minticks=3, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _pad_y(ax: Any) -> None:
    """Room above the tallest bar, which otherwise touches the frame (a stacked segment of zero
    on top of it pins matplotlib's margins there)."""
    top = float(ax.dataLim.y1)
    ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)


def _stacked_bars(figure: Figure, report: pl.DataFrame, value: str, ylabel: str, title: str) -> Figure:
    """Bars per period stacked by model from a ``breakdown="model"`` report."""
    ax = figure.add_subplot()
    wide = (
        report.with_columns(pl.col("model").fill_null("(no model)"), pl.col(value).fill_null(0.0))
        .pivot(on="model", index="period", values=value, aggregate_function="sum")
        .fill_null(0.0)
        .sort("period")
    )
    models = [c for c in wide.columns if c != "period"]
    # Biggest spenders at the bottom, where their bars are easiest to compare.
    models.sort(key=lambda m: -float(wide[m].sum()))
    colors = _colors(models)
    x = _period_dates(wide) if wide.height else []
    width = _bar_width(x, _period_kind(wide))
    bottom = [0.0] * wide.height
    for model in models:
        values = wide[model].to_list()
        if not any(values):
            continue
        ax.bar(x, values, bottom=bottom, label=_short(model), color=colors[model], width=width, align="edge")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if models:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _date_axis(ax)
    _pad_y(ax)
    ax.grid(axis="y", alpha=0.3)
    return figure


def daily_cost_by_model(
    source: Any, *, timezone: str = "UTC", path: str | Path | None = None, **filters: Any
) -> Figure:
    """Cost per day (cut in ``timezone``), stacked by model. Unpriced messages add nothing; the
    title says how many there were, so a gap is never mistaken for $0."""
    report = usage.usage_report(source, "day", timezone=timezone, breakdown="model", **filters)
    figure = Figure(figsize=_SIZE)
    unpriced = int(report["unpriced_messages"].sum()) if report.height else 0
    title = f"Daily cost by model ({timezone})"
    if unpriced:
        title += f" — {unpriced:,} unpriced messages not included"
    _stacked_bars(figure, report, "cost_usd", "USD", title)
    return _finish(figure, path)


def tokens_per_user(
    source: Any,
    *,
    n: int = 15,
    usernames: dict[str, str] | None = None,
    path: str | Path | None = None,
    **filters: Any,
) -> Figure:
    """The ``n`` users with the most tokens, as horizontal bars split by token kind.
    ``usernames`` maps user ids to the names shown (else the ids; both in full up to 32
    characters, then ellipsized)."""
    report = usage.usage_report(source, "user", **filters)
    top = report.sort("total_tokens", descending=True).head(n).reverse()
    figure = Figure(figsize=(10.0, max(3.0, 0.4 * top.height + 1.5)))
    ax = figure.add_subplot()
    names = _names(top["user_id"].to_list(), usernames, "(no user)")
    left = [0.0] * top.height
    colors = _colors(list(_TOKEN_LABELS.values()))
    for column, label in _TOKEN_LABELS.items():
        values = [float(v or 0) / 1e6 for v in top[column].to_list()]
        ax.barh(names, values, left=left, label=label, color=colors[label])
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("million tokens")
    ax.set_title(f"Tokens per user (top {top.height})")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _finish(figure, path)


def latency_by_model(source: Any, *, path: str | Path | None = None, **filters: Any) -> Figure:
    """Distribution of ``duration_ms`` per model: box plots (median, quartiles, 5th-95th
    percentile whiskers), models ordered by median; only messages that report a duration. The
    percentiles come from :func:`~chatdb.analytics.latency_percentiles`, so a repository or a
    dataset computes them where the data is."""
    stats = usage.latency_percentiles(source, "model", percentiles=(0.05, 0.25, 0.5, 0.75, 0.95), **filters)
    stats = stats.sort("p50_ms", nulls_last=True)
    boxes = [
        {"label": _label(row["model"]),
         "whislo": row["p05_ms"] / 1000, "q1": row["p25_ms"] / 1000, "med": row["p50_ms"] / 1000,
         "q3": row["p75_ms"] / 1000, "whishi": row["p95_ms"] / 1000}
        for row in stats.iter_rows(named=True)
    ]  # fmt: skip
    figure = Figure(figsize=(10.0, max(3.0, 0.5 * len(boxes) + 1.5)))
    ax = figure.add_subplot()
    if boxes:
        ax.bxp(boxes, orientation="horizontal", showfliers=False)
    ax.set_xlabel("seconds (whiskers: 5th-95th percentile)")
    ax.set_title("Response time by model")
    ax.grid(axis="x", alpha=0.3)
    return _finish(figure, path)


def cumulative_spend(
    source: Any, *, timezone: str = "UTC", path: str | Path | None = None, **filters: Any
) -> Figure:
    """Running total of cost per day, with the reported and estimated parts drawn separately."""
    report = usage.usage_report(source, "day", timezone=timezone, **filters)
    report = report.with_columns(
        total=pl.col("cost_usd").fill_null(0.0).cum_sum(),
        estimated=pl.col("estimated_cost_usd").fill_null(0.0).cum_sum(),
    )
    figure = Figure(figsize=_SIZE)
    ax = figure.add_subplot()
    x = _period_dates(report) if report.height else []
    reported = [t - e for t, e in zip(report["total"].to_list(), report["estimated"].to_list(), strict=True)]
    ax.stackplot(x, reported, report["estimated"].to_list(), labels=["reported", "estimated from prices"],
                 alpha=0.8)  # fmt: skip
    ax.plot(x, report["total"].to_list(), color="black", linewidth=1.2, label="total")
    ax.set_ylabel("USD")
    ax.set_title(f"Cumulative spend ({timezone})")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    _date_axis(ax)
    _pad_y(ax)
    return _finish(figure, path)


def plot_report(
    report: pl.DataFrame,
    *,
    path: str | Path | None = None,
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """The chart for a :func:`~chatdb.analytics.usage_report` result: cost per period (stacked
    by model when the report has a model breakdown), or the costliest models/users/chats as bars.
    ``labels`` maps user or chat ids to the names shown (usernames, chat titles; else the ids),
    in full up to 32 characters, then ellipsized. Raises ValidationError when ``report`` is not a
    usage report."""
    keys = [k for k in report.columns if k in ("period", "model", "user_id", "chat_id")]
    if not keys or "cost_usd" not in report.columns:
        raise ValidationError(
            "plot_report needs a usage_report result (a period, model, user_id or chat_id column)"
        )
    figure = Figure(figsize=_SIZE)
    if keys[0] == "period":
        if "model" in report.columns:
            return _finish(
                _stacked_bars(figure, report, "cost_usd", "USD", title or "Cost by period and model"), path
            )
        ax = figure.add_subplot()
        ordered = report.sort("period")
        x = _period_dates(ordered) if ordered.height else []
        costs = ordered["cost_usd"].fill_null(0.0).to_list()
        ax.bar(x, costs, color="tab:blue", width=_bar_width(x, _period_kind(ordered)), align="edge")
        ax.set_ylabel("USD")
        ax.set_title(title or "Cost by period")
        _date_axis(ax)
        _pad_y(ax)
        ax.grid(axis="y", alpha=0.3)
        return _finish(figure, path)
    key = keys[0]
    if len(keys) > 1:  # a model breakdown of users or chats: one bar per user or chat
        report = report.group_by(key).agg(pl.col("cost_usd").sum())
    top = report.sort(["cost_usd", key], descending=[True, False], nulls_last=True).head(20).reverse()
    ids = top[key].to_list()
    names = [_short(_label(v)) for v in ids] if key == "model" else _names(ids, labels, f"(no {key[:-3]})")
    figure.set_size_inches(_SIZE[0], max(3.0, 0.3 * top.height + 1.5))
    ax = figure.add_subplot()
    ax.barh(names, top["cost_usd"].fill_null(0.0).to_list(), color="tab:blue")
    ax.set_xlabel("USD")
    ax.set_title(title or f"Cost by {key.removesuffix('_id')} (top {top.height})")
    ax.margins(x=0.05)
    ax.grid(axis="x", alpha=0.3)
    return _finish(figure, path)
