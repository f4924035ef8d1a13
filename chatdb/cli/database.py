"""``chatdb init``, ``info``, ``copy`` and ``upgrade``: the database as a whole."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from .. import admin
from ..copy import copy_database
from ._app import AppState, state
from .output import format_ts, output_options, render, render_one


@click.command()
def init() -> None:
    """Create the tables and indexes (safe to run again)."""
    app = state()
    repo = app.open(create=True)
    repo.ensure_schema()
    app.note(f"schema ready: {repo.backend} {app.config().redacted_url}")


@click.command()
@click.option("--dry-run", is_flag=True, help="Print the statements without running them.")
def upgrade(dry_run: bool) -> None:
    """Upgrade a schema the Node app created to chatdb's (never done implicitly).

    MySQL/MariaDB: LONGTEXT content, binary collations (usernames compare exactly), whole
    indexes. Every SQL backend: chatdb's indexes in their current shape. Column names stay, so
    the Node app keeps working. Refuses, naming the rows, when a change would fail or merge data.
    """
    app = state()
    result = admin.upgrade_schema(app.open(create=True), dry_run=dry_run)
    for statement in result.statements:
        click.echo(statement + ";")
    if not result.statements:
        app.note(f"nothing to upgrade: {result.backend} {app.config().redacted_url}")
    elif result.applied:
        app.note(
            f"upgraded with {len(result.statements)} statements: {result.backend} {app.config().redacted_url}"
        )
    else:
        app.note(f"dry run: {len(result.statements)} statements, none run")


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
        render(({"table": t, "rows": n} for t, n in facts.counts.items()), ("table", "rows"), fmt)
        return
    row: dict[str, Any] = {"backend": facts.backend, "url": facts.url}
    row |= {f"{t}_rows": n for t, n in facts.counts.items()}
    row |= {"first_message_at": facts.first_message_at, "last_message_at": facts.last_message_at}
    render_one(row, fmt)


def _ts(value: Any) -> str:
    return format_ts(value) if value is not None else ""


@click.command()
@click.option("--to", "target", required=True, metavar="URL", help="Database to copy into.")
@click.option("--from", "source", metavar="URL", help="Database to copy from (default: --db).")
@click.option("--batch-size", type=click.IntRange(1), default=5_000, show_default=True, help="Rows per read.")
@output_options
def copy(target: str, source: str | None, batch_size: int, fmt: str) -> None:
    """Copy every user, chat, message and API key to another database.

    Rows keep their ids, timestamps and hashes; rows the target already has are skipped, so
    running it twice leaves one copy and an interrupted copy is finished by running it again.
    Tables are copied owners first (no message without its chat); row counts are verified at
    the end. On a terminal, a progress bar per table shows rows and rows/s (not with --quiet).
    """
    app = state()
    source_repo, target_repo = app.open(source), app.open(target, create=True)
    with _TableProgress(app, source_repo.count_rows()) as progress:
        result = copy_database(source_repo, target_repo, batch_size=batch_size, progress=progress)
    rows = [vars(t) for t in result.tables.values()]
    render(rows, ("table", "read", "inserted", "already_present", "target_rows", "seconds"), fmt)
    app.note(
        f"copied {result.inserted:,} of {result.read:,} rows from {source_repo.backend} to "
        f"{target_repo.backend} {app.config(target).redacted_url} in {result.seconds:.1f} s; counts verified"
    )


class _TableProgress:
    """One progress bar per table (rows of the source's count, and rows/s), on stderr; hidden
    when stdout is not a terminal or with --quiet."""

    def __init__(self, app: AppState, totals: dict[str, int]) -> None:
        self.hidden = not app.show_progress()
        self.totals = totals
        self.table: str | None = None
        self.bar: Any = None
        self.started = 0.0
        self.done = 0

    def __enter__(self) -> _TableProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def __call__(self, table: str, rows: int) -> None:
        if table != self.table:
            self._close()
            self.table, self.started, self.done = table, time.perf_counter(), 0
            self.bar = click.progressbar(
                length=max(self.totals.get(table, 0), 1),
                label=f"{table:<9}",
                hidden=self.hidden,
                file=sys.stderr,
                show_pos=True,
                show_eta=False,
                item_show_func=self._rate,
            )
            self.bar.__enter__()
        self.done += rows
        self.bar.update(rows, current_item=table)

    def _rate(self, _item: str | None) -> str:
        elapsed = time.perf_counter() - self.started
        return f"{self.done / elapsed:,.0f} rows/s" if elapsed > 0 and self.done else ""

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


COMMANDS = [init, info, copy, upgrade]
