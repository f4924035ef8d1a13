"""``chatdb usage``: token and cost reports per period, model, user or chat."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from .. import admin
from ._app import DATETIME, check_range, localize, state
from .output import output_options, render

# Subcommand-style report names (as ccusage has them) -> chatdb.analytics.usage_report(by=...)
REPORTS = {
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "models": "model",
    "users": "user",
    "chats": "chat",
}


def _zone(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    return value


@click.command()
@click.argument("report", type=click.Choice(list(REPORTS)), default="daily")
@click.option("--breakdown", type=click.Choice(["model"]), help="Add per-model rows under each period.")
@click.option("--since", type=DATETIME, help="From this date/time (inclusive; in --timezone).")
@click.option("--until", type=DATETIME, help="Up to this date/time (exclusive; in --timezone).")
@click.option("--user", help="Only this user's messages (username or id).")
@click.option("--model", help="Only this model (a dated snapshot name matches its family).")
@click.option(
    "--timezone",
    "tz",
    default="UTC",
    show_default=True,
    callback=_zone,
    help="IANA zone in which hours, days and weeks are cut.",
)
@click.option("--order", type=click.Choice(["asc", "desc"]), default="asc", show_default=True)
@click.option(
    "--cost-mode",
    type=click.Choice(["auto", "calculate", "display"]),
    default="auto",
    show_default=True,
    help="auto: reported cost, else estimated from prices; calculate: always estimate; "
    "display: reported cost only.",
)
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Price table (JSON or CSV) overriding the bundled one.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the matching chart as a PNG.",
)
@output_options
def usage(
    report: str,
    breakdown: str | None,
    since: datetime | None,
    until: datetime | None,
    user: str | None,
    model: str | None,
    tz: str,
    order: str,
    cost_mode: str,
    prices: Path | None,
    plot: Path | None,
    fmt: str,
) -> None:
    """Usage report (REPORT: daily by default): messages, tokens, cost (reported and
    estimated), latency and unpriced messages, with a totals row in tables."""
    from .. import analytics

    zone = ZoneInfo(tz)
    since, until = localize(since, zone), localize(until, zone)
    check_range(since, until)
    repo = state().open()
    user_id = admin.resolve_user(repo, user).id if user is not None else None
    options: dict[str, Any] = {
        "timezone": tz,
        "since": since,
        "until": until,
        "user_id": user_id,
        "model": model,
        "cost_mode": cost_mode,
        "prices": analytics.load_prices(prices) if prices is not None else None,
    }
    source: Any = repo
    tabular = fmt in ("table", "markdown")  # with a totals row
    if tabular:
        # The totals row is a second pass (exact over the messages: a p95 of p95s would not be);
        # both read one export of the messages instead of the database twice.
        from .. import export

        source = export.to_polars(repo, "messages", since=since, until=until, user_id=user_id)
    frame = analytics.usage_report(source, REPORTS[report], breakdown=breakdown, order=order, **options)
    keys = [c for c in ("period", "model", "user_id", "chat_id") if c in frame.columns]
    columns = [*keys, *analytics.REPORT_COLUMNS]
    rows: Any = frame.iter_rows(named=True)
    if tabular and "model" in keys:
        rows = ({**r, "model": r["model"] or "(no model)"} for r in rows)
    if tabular and frame.height:
        totals = analytics.usage_totals(source, **options).row(0, named=True)
        rows = [*rows, {keys[0]: "Total", **totals}]
    render(rows, columns, fmt)
    if plot is not None:
        from ..analytics import plots

        plots.plot_report(frame, path=plot)
        state().note(f"chart written to {plot}")


COMMANDS = [usage]
