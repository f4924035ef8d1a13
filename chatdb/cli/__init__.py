"""The ``chatdb`` command line: thin over the library, one module per command group.

Every command parses its options, makes one library call and renders the result with
:func:`chatdb.cli.output.render`. Which database: ``--db URL`` (or ``CHATDB_URL``), else the Node
app's variables (``DB_DRIVER``, ``SQLITE_PATH``, ``POSTGRES_URL``, ...), else ``./data/chat.db``.
"""

from __future__ import annotations

import click

from .. import __version__
from ._app import AppState, ChatDbGroup, accept_global_options

__all__ = ["cli", "main"]


@click.group(cls=ChatDbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_url",
    envvar="CHATDB_URL",
    metavar="URL",
    help="Database URL (env CHATDB_URL), e.g. sqlite:///data/chat.db or postgresql://user@host/db. "
    "Default: the DB_DRIVER/SQLITE_PATH/... variables if set, else sqlite:///./data/chat.db.",
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary lines.")
@click.version_option(__version__, prog_name="chatdb")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, debug: bool, quiet: bool) -> None:
    """Work with a chat application's database: usage reports, exports, demo data,
    users and API keys, and copies between SQLite, PostgreSQL, MySQL and MongoDB.

    The options below may also follow the command (chatdb info --db URL)."""
    ctx.obj = AppState(db_url=db_url, debug=debug, quiet=quiet)


def _register() -> None:
    from .admin import COMMANDS as admin_commands
    from .chats import COMMANDS as chat_commands
    from .database import COMMANDS as database_commands
    from .demo import COMMANDS as demo_commands
    from .export import COMMANDS as export_commands
    from .usage import COMMANDS as usage_commands

    for commands in (
        database_commands,
        demo_commands,
        export_commands,
        usage_commands,
        admin_commands,
        chat_commands,
    ):
        for command in commands:
            accept_global_options(command)
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="chatdb")
