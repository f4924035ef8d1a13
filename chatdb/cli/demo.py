"""``chatdb demo``: fill the database with realistic synthetic data to try everything out."""

from __future__ import annotations

from datetime import datetime

import click

from ._app import DATETIME, localize, state

# The library's default, spelled out for --help (chatdb.demo.DEFAULT_END; a test keeps them equal).
DEFAULT_END_TEXT = "2026-12-01"


@click.command()
@click.option("--users", type=click.IntRange(0), default=20, show_default=True)
@click.option("--chats", type=click.IntRange(0), default=500, show_default=True)
@click.option("--messages", type=click.IntRange(0), default=20_000, show_default=True)
@click.option("--days", type=click.IntRange(1), default=90, show_default=True, help="Days of history.")
@click.option(
    "--end",
    type=DATETIME,
    default=DEFAULT_END_TEXT,
    show_default=True,
    help="Where the history ends (UTC unless a zone is given): a fixed date, not today, so the "
    "same options give the same rows on any day.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed and --end, same data.")
def demo(users: int, chats: int, messages: int, days: int, end: datetime, seed: int) -> None:
    """Write demo users, API keys, chats and messages (several Claude models, realistic tokens,
    costs and latencies; some messages without metadata or cost; some images).

    Parents are written first; a run that is interrupted is completed by running it again with
    the same options (rows already present are skipped)."""
    from .. import demo as demo_data

    app = state()
    repo = app.open(create=True)
    with app.progress(messages, "writing messages") as bar:
        summary = demo_data.generate(
            repo,
            users=users,
            chats=chats,
            messages=messages,
            days=days,
            seed=seed,
            end=localize(end),
            progress=bar.update,
        )
    click.echo(
        f"demo data (seed {summary.seed}, {summary.start:%Y-%m-%d} to {summary.end:%Y-%m-%d}): "
        f"{summary.users:,} users, {summary.api_keys:,} API keys, {summary.chats:,} chats, "
        f"{summary.messages:,} messages written in {summary.seconds:.1f} s"
    )


COMMANDS = [demo]
