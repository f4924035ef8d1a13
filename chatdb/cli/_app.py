"""What every command shares: which database, how errors look, dates, users and progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, NoReturn

import click

from ..config import DEFAULT_SQLITE_PATH, DbConfig
from ..errors import ChatDbError, NotFoundError, SchemaError
from ..repository import ChatRepository

# The Node application's settings; any of them set means "use them" (DbConfig.from_env).
SEED_ENV_VARS = ("DB_DRIVER", "SQLITE_PATH", "POSTGRES_URL", "MYSQL_URL", "MONGODB_URL", "MONGODB_DB_NAME")


@dataclass
class AppState:
    """The global options, kept on the click context for the subcommands."""

    db_url: str | None = None
    debug: bool = False
    quiet: bool = False
    _config: DbConfig | None = field(default=None, repr=False)

    def config(self, url: str | None = None) -> DbConfig:
        """``url`` if given, else ``--db``/``CHATDB_URL``, else the seed's env vars, else
        SQLite at ./data/chat.db. Raises ConfigError for a bad URL."""
        if url is not None:
            return DbConfig.from_url(url)
        if self._config is None:
            if self.db_url:
                self._config = DbConfig.from_url(self.db_url)
            elif any(os.environ.get(name) for name in SEED_ENV_VARS):
                self._config = DbConfig.from_env()
            else:
                self._config = DbConfig(driver="sqlite", sqlite_path=DEFAULT_SQLITE_PATH)
        return self._config

    def open(self, url: str | None = None, *, create: bool = False) -> ChatRepository:
        """A repository for this command, closed when the command ends.

        Reading commands (the default) open what is there and create nothing: a SQLite file
        that does not exist, or a database without chatdb's tables, is an error saying how to
        make one. ``create=True`` (init, demo, users create, copy's target) is for commands
        that write: their first write creates the file, its folder and the tables.
        """
        from ..factory import create_repository

        config = self.config(url)
        repo = click.get_current_context().with_resource(create_repository(config))
        if create:
            return repo
        where = config.redacted_url
        if config.driver == "sqlite" and not config.is_memory:
            path = Path(config.sqlite_path)
            if not path.exists():
                raise NotFoundError(
                    f"no database at {path}; run `chatdb demo` to make one with demo data, "
                    "or `chatdb init` for an empty one (or pick another with --db)"
                )
            where = str(path)
        if not repo.has_schema():
            raise SchemaError(f"no chatdb tables in {where}; run `chatdb init` to create them")
        return repo

    def show_progress(self) -> bool:
        return not self.quiet and sys.stdout.isatty()

    @contextmanager
    def progress(self, total: int | None, label: str) -> Iterator[Any]:
        """A progress bar on stderr, hidden when stdout is not a terminal or with --quiet."""
        with click.progressbar(
            length=total or 0,
            label=label,
            hidden=not self.show_progress() or not total,
            file=sys.stderr,
            show_pos=True,
        ) as bar:
            yield bar

    def page_footer(self, what: str, offset: int, shown: int, total: int) -> None:
        """Say when a listing is one page of more (on stderr, so stdout stays parseable)."""
        if total == 0:
            self.note(f"no {what}")
        elif offset + shown < total or offset > 0:
            self.note(f"{what} {offset + 1}-{offset + shown} of {total} (use --offset/--limit for more)")

    def note(self, message: str) -> None:
        """A line for people (summaries, page footers) on stderr, unless --quiet."""
        if not self.quiet:
            click.echo(message, err=True)


def state() -> AppState:
    return click.get_current_context().ensure_object(AppState)


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None or value is False or param.name is None:
        return
    setattr(ctx.ensure_object(AppState), param.name, value)


def accept_global_options(command: click.Command) -> None:
    """Let ``--db``, ``--debug`` and ``--quiet`` also follow the subcommand
    (``chatdb info --db URL``); hidden from its help, which the group's already lists."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_global_options(sub)
        return
    command.params += [
        click.Option(
            ["--db", "db_url"], metavar="URL", hidden=True, expose_value=False, callback=_set_global
        ),
        click.Option(["--debug"], is_flag=True, hidden=True, expose_value=False, callback=_set_global),
        click.Option(["-q", "--quiet"], is_flag=True, hidden=True, expose_value=False, callback=_set_global),
    ]


def describe(exc: BaseException) -> str:
    """The one line shown for an expected error."""
    if isinstance(exc, OSError) and not isinstance(exc, ChatDbError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class ChatDbGroup(click.Group):
    """The top-level group: library errors become one line on stderr, exit 1; usage errors one
    line, exit 2; ``--debug`` lets the traceback through."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise
        except (ChatDbError, OSError) as exc:
            if ctx.find_object(AppState) is not None and ctx.find_object(AppState).debug:  # type: ignore[union-attr]
                raise
            raise click.ClickException(describe(exc)) from exc

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(f"Error: {exc.format_message()}{hint}", exc.exit_code)
        except click.ClickException as exc:
            _fail(f"Error: {exc.format_message()}", exc.exit_code)
        except click.Abort as exc:
            # Click turns Ctrl-C into Abort (after a newline): still the 130 of a SIGINT.
            _fail("Aborted.", 130 if isinstance(exc.__cause__, KeyboardInterrupt) else 1)
        except (EOFError, KeyboardInterrupt):
            _fail("\nAborted.", 130)
        except BrokenPipeError:
            # The reader (head, less) went away: stop quietly, and keep Python's final flush quiet.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


# -- parameter types -------------------------------------------------------------------------------


class DateTimeType(click.ParamType):  # type: ignore[type-arg]
    """``2026-05-01``, ``2026-05-01T12:30``, ``2026-05-01T12:30:00Z``, ``...+02:00``; a value
    without a zone is read as UTC unless the command knows a timezone (see :func:`localize`)."""

    name = "datetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            return datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            self.fail(f"{text!r} is not a date (use YYYY-MM-DD or an ISO 8601 date and time)", param, ctx)


DATETIME = DateTimeType()


def localize(value: datetime | None, zone: tzinfo = UTC) -> datetime | None:
    """A datetime without a zone is wall time in ``zone``; the result is in UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise click.BadParameter("--until must be after --since", param_hint="'--until'")
