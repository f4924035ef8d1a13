"""``chatdb init``, ``chatdb info`` and ``chatdb copy``: the database as a whole."""

from __future__ import annotations

from typing import Any

import click

from .. import admin
from .._base import TABLE_NAMES
from ..copy import COPY_ORDER, copy_database
from ._app import state
from .output import output_options, render


@click.command()
def init() -> None:
    """Create the tables and indexes (safe to run again)."""
    app = state()
    repo = app.open()
    repo.ensure_schema()
    app.note(f"schema ready: {repo.backend} {app.config().redacted_url}")


@click.command()
@output_options
def info(fmt: str) -> None:
    """Backend, URL (password hidden), rows per table and the messages' time range."""
    facts = admin.database_info(state().open())
    if fmt == "table":
        click.echo(f"backend   {facts.backend}\nurl       {facts.url}")
        if facts.first_message_at is not None:
            click.echo(f"messages  {_ts(facts.first_message_at)} .. {_ts(facts.last_message_at)}")
        click.echo()
        render(({"table": t, "rows": facts.counts.get(t, 0)} for t in TABLE_NAMES), ("table", "rows"), fmt)
        return
    row: dict[str, Any] = {"backend": facts.backend, "url": facts.url}
    row |= {f"{t}_rows": facts.counts.get(t, 0) for t in TABLE_NAMES}
    row |= {"first_message_at": facts.first_message_at, "last_message_at": facts.last_message_at}
    render([row], list(row), fmt)


def _ts(value: Any) -> str:
    from .._codec import format_ts

    return format_ts(value) if value is not None else ""


@click.command()
@click.option("--to", "target", required=True, metavar="URL", help="Database to copy into.")
@click.option("--from", "source", metavar="URL", help="Database to copy from (default: --db).")
@click.option("--batch-size", type=click.IntRange(1), default=5_000, show_default=True)
@output_options
def copy(target: str, source: str | None, batch_size: int, fmt: str) -> None:
    """Copy every user, chat, message and API key to another database.

    Rows keep their ids, timestamps and hashes; rows the target already has are skipped, so
    running it twice leaves one copy. Row counts are verified at the end.
    """
    app = state()
    source_repo, target_repo = app.open(source), app.open(target)
    total = sum(source_repo.count_rows()[t] for t in COPY_ORDER)
    with app.progress(total, "copying") as bar:
        result = copy_database(
            source_repo, target_repo, batch_size=batch_size, progress=lambda _t, n: bar.update(n)
        )
    rows = [vars(t) for t in result.tables.values()]
    render(rows, ("table", "read", "inserted", "already_present", "target_rows"), fmt)
    app.note(
        f"copied {result.inserted:,} of {result.read:,} rows from {source_repo.backend} to "
        f"{target_repo.backend} {app.config(target).redacted_url} in {result.seconds:.1f} s; counts verified"
    )


COMMANDS = [init, info, copy]
