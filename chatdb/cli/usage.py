"""``chatdb usage``: token and cost reports per period, model, user or chat."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from .. import admin
from ._app import DATETIME, check_range, localize, state
from .output import output_options, render

# Report names as ccusage has them, and every other spelling the library takes (singular,
# plural, any case) -> chatdb.analytics.usage_report(by=...).
REPORTS = {
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "models": "model",
    "users": "user",
    "chats": "chat",
}
_SPELLINGS = {
    **REPORTS,
    **{by: by for by in REPORTS.values()},
    **{by + "s": by for by in ("hour", "day", "week", "month")},
}


def _report(ctx: click.Context, param: click.Parameter, value: str) -> str:
    by = _SPELLINGS.get(value.strip().lower())
    if by is None:
        choices = ", ".join(REPORTS)
        raise click.BadParameter(f"{value!r} is not a report (choose from {choices}; singular works too)")
    return by


def _breakdown(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    if value.strip().lower() not in ("model", "models"):
        raise click.BadParameter(f"{value!r} is not a breakdown (use model)")
    return "model"


def _zone(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from .. import analytics
    from ..errors import ValidationError

    try:
        return str(analytics.resolve_timezone(value).key)
    except ValidationError:
        raise click.BadParameter(
            f"{value!r} is not an IANA time zone (e.g. Europe/Berlin, UTC; any case)"
        ) from None


@click.command()
@click.argument("report", metavar="[REPORT]", default="daily", callback=_report)
@click.option(
    "--breakdown", metavar="model", callback=_breakdown, help="Add per-model rows under each period."
)
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
    help="IANA zone in which hours, days and weeks are cut (any case; UTC or Z for UTC).",
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
    """Usage report: messages, tokens, cost (reported and estimated), latency and unpriced
    messages, with a totals row in tables.

    REPORT is hourly, daily (the default), weekly, monthly, models, users or chats; the
    singular (hour, day, model, ...) and any case work too."""
    from .. import analytics

    zone = ZoneInfo(tz)  # (already a canonical name: see _zone)
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
    if prices is not None:
        _warn_unknown_prices(prices, repo, options)
    # The report, its totals row and the chart are computed in the database (only groups come
    # back), so memory does not grow with the number of messages.
    source: Any = repo
    tabular = fmt in ("table", "markdown")  # with a totals row
    if tabular:  # the report and its totals row from one aggregation
        frame, totals_frame = analytics.usage_report_with_totals(
            source, report, breakdown=breakdown, order=order, **options
        )
    else:
        frame = analytics.usage_report(source, report, breakdown=breakdown, order=order, **options)
    if frame.height == 0:
        _say_empty(since, until, zone, user, model)
    keys = [c for c in frame.columns if c in ("period", "model", "user_id", "chat_id")]
    # A report by user or chat names them too (username, title): an id alone tells an operator
    # nothing.
    key, name = keys[0], _NAME_COLUMNS.get(keys[0])
    named, names = keys, None
    rows: Any = frame.iter_rows(named=True)
    if name is not None:
        named, names = [*keys, name], _names(repo, key)
        rows = ({**r, name: names.get(r[key])} for r in rows)
    columns = [*named, *analytics.REPORT_COLUMNS]
    if tabular and "model" in keys:
        rows = ({**r, "model": r["model"] or "(no model)"} for r in rows)
    if tabular and key == "user_id":  # (messages whose chat is gone have no user)
        rows = ({**r, "username": r["username"] or ("" if r["user_id"] else "(no user)")} for r in rows)
    if tabular and key == "chat_id":  # (a title of any length: its start, on one line)
        rows = ({**r, "title": _shortened(r["title"])} for r in rows)
    if tabular and frame.height:
        totals = totals_frame.row(0, named=True)
        rows = [*rows, {keys[0]: "Total", **totals}]
    render(rows, columns, fmt, compact=[*named, *COMPACT_COLUMNS])
    if plot is not None:
        from ..analytics import plots

        plots.plot_report(frame, path=plot, labels=names)
        state().note(f"chart written to {plot}")


# What a table keeps when the terminal is too narrow for every column (as ccusage does).
COMPACT_COLUMNS = ("messages", "input_tokens", "output_tokens", "cost_usd")


def _say_empty(
    since: datetime | None, until: datetime | None, zone: ZoneInfo, user: str | None, model: str | None
) -> None:
    """An empty report says so on stderr (stdout keeps its header, or [] for JSON)."""

    def when(value: datetime) -> str:
        return value.astimezone(zone).isoformat(sep=" ", timespec="minutes")

    what = " ".join(
        part
        for part in ("no messages", f"of {user}" if user else "", f"for model {model}" if model else "")
        if part
    )
    if since is not None and until is not None:
        what += f" between {when(since)} and {when(until)}"
    elif since is not None:
        what += f" since {when(since)}"
    elif until is not None:
        what += f" before {when(until)}"
    else:
        what += " in the database"
    click.echo(what, err=True)


def _warn_unknown_prices(path: Path, repo: Any, options: dict[str, Any]) -> None:
    """Warn about a model of the price file that is no known model and no message's model:
    most likely a typo, which would otherwise leave those messages priced from the bundled
    table (or unpriced) without a word."""
    from .. import analytics

    override = analytics.load_prices(path, replace=True)
    bundled = analytics.load_prices()
    unknown = [name for name in override.models if bundled.family(name) is None]
    if not unknown:
        return
    used = analytics.usage_report(repo, "model", **{**options, "model": None})["model"].to_list()
    matched = {override.family(name) for name in used}
    for name in unknown:
        if name not in matched:
            click.echo(
                f"Warning: {path} prices model {name!r}, which matches no known model and no "
                "message (a typo?); it is not used",
                err=True,
            )


_NAME_COLUMNS = {"user_id": "username", "chat_id": "title"}
_TITLE_WIDTH = 40  # a chat's title in a table: at most this many characters


def _shortened(title: str | None) -> str | None:
    if title is None or len(title) <= _TITLE_WIDTH:
        return title
    return title[: _TITLE_WIDTH - 1].rstrip() + "…"


def _names(repo: Any, key: str) -> dict[str, str]:
    """User ids -> usernames, or chat ids -> titles, for the report's column and the chart's
    labels (one read of the users or chats table)."""
    from .. import export

    if key == "user_id":
        users = export.to_polars(repo, "users")
        return dict(zip(users["user_id"].to_list(), users["username"].to_list(), strict=True))
    chats = export.to_polars(repo, "chats")
    return dict(zip(chats["chat_id"].to_list(), chats["title"].to_list(), strict=True))


COMMANDS = [usage]
