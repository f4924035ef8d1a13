"""The Node application's tables, as one SQLAlchemy Core schema for every SQL dialect.

Column names and meanings are exactly the seed's (timestamps and JSON are TEXT). Dialect
differences live in :class:`ExactText`: plain TEXT on SQLite and PostgreSQL; on MySQL/MariaDB a
VARCHAR of the seed's length (LONGTEXT for content and metadata, which must hold 10 MB images) in a
binary, no-pad utf8mb4 collation so that "alice", "Alice" and "alice " stay three users.

chatdb adds the indexes the seed lacks; they are named so that an existing database can be
checked for them and upgraded in place. Their shape depends on the database they go into
(:func:`index_sql`): on SQLite the messages' (chat_id, created_at) index leaves ties to the
implicit rowid, so the Node app, which orders by ``created_at`` alone, keeps showing its own
same-millisecond messages in insertion order; on a Node-created MySQL table, where timestamps,
``title`` and ``role`` are TEXT, an index takes a prefix of those columns.

A Node-created MySQL/MariaDB schema also limits two promises (TEXT content, a case-insensitive
collation): :func:`mysql_limits` says which, and :func:`upgrade_plan` builds the explicit
upgrade to chatdb's schema (``chatdb upgrade``), never run implicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Index, MetaData, Table, Text
from sqlalchemy.dialects.mysql import LONGTEXT, VARCHAR
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "TABLES",
    "ColumnFact",
    "ExactText",
    "IndexFact",
    "MARIADB_EXACT_COLLATION",
    "UpgradeCheck",
    "api_keys",
    "chats",
    "exact_collation",
    "index_sql",
    "messages",
    "metadata",
    "mysql_limits",
    "upgrade_plan",
    "users",
]


MARIADB_EXACT_COLLATION = "utf8mb4_nopad_bin"


def exact_collation(dialect: Dialect) -> str:
    """MySQL/MariaDB's utf8mb4 collation that compares text byte for byte: MariaDB's
    utf8mb4_bin pads spaces ("alice" = "alice "); the nopad collations do not."""
    return MARIADB_EXACT_COLLATION if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


class ExactText(TypeDecorator[str]):
    """TEXT compared byte for byte on every dialect; ``length`` bounds it on MySQL only."""

    impl = Text
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            collation = exact_collation(dialect)
            if self.length is None:
                return dialect.type_descriptor(LONGTEXT(charset="utf8mb4", collation=collation))
            return dialect.type_descriptor(VARCHAR(self.length, charset="utf8mb4", collation=collation))
        return dialect.type_descriptor(Text())


ID = 36
TS = 32  # "2026-11-26T10:57:38.123Z" is 24; room for other writers' offsets

metadata = MetaData()

chats = Table(
    "chats",
    metadata,
    Column("id", ExactText(ID), primary_key=True),
    Column("title", ExactText(), nullable=False),
    Column("session_id", ExactText(255)),
    Column("user_id", ExactText(255), nullable=False, server_default="system"),
    Column("created_at", ExactText(TS), nullable=False),
    Column("updated_at", ExactText(TS), nullable=False),
    Index("idx_chats_user_updated", "user_id", "updated_at", "id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

messages = Table(
    "messages",
    metadata,
    Column("id", ExactText(ID), primary_key=True),
    Column("chat_id", ExactText(ID), nullable=False),
    Column("role", ExactText(32), nullable=False),
    Column("content", ExactText(), nullable=False),
    Column("created_at", ExactText(TS), nullable=False),
    Column("metadata", ExactText()),
    Index("idx_messages_chat_created", "chat_id", "created_at", "id"),
    Index("idx_messages_created", "created_at", "id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

users = Table(
    "users",
    metadata,
    Column("id", ExactText(ID), primary_key=True),
    Column("username", ExactText(255), nullable=False, unique=True),
    Column("password_hash", ExactText(), nullable=False),
    Column("created_at", ExactText(TS), nullable=False),
    Column("updated_at", ExactText(TS), nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", ExactText(ID), primary_key=True),
    Column("user_id", ExactText(255), nullable=False),
    Column("key_hash", ExactText(128), nullable=False, unique=True),
    Column("key_prefix", ExactText(20), nullable=False),
    Column("name", ExactText(255), nullable=False),
    Column("created_at", ExactText(TS), nullable=False),
    Column("last_used_at", ExactText(TS)),
    Column("revoked_at", ExactText(TS)),
    Index("idx_api_keys_user", "user_id", "created_at"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

TABLES = {"chats": chats, "messages": messages, "users": users, "api_keys": api_keys}


# -- what a database already has, and what chatdb makes of it ---------------------------------------

# MySQL/MariaDB TEXT types and the bytes they hold.
MYSQL_TEXT_BYTES = {"tinytext": 255, "text": 65_535, "mediumtext": 16_777_215, "longtext": 4_294_967_295}
# Columns an index may cover only in part on a TEXT column: the longest value chatdb writes there.
_PREFIX_DEFAULT = 255


@dataclass(frozen=True)
class ColumnFact:
    """One column as the catalog describes it (MySQL/MariaDB's information_schema)."""

    table: str
    column: str
    data_type: str  # lower case: "text", "varchar", "longtext", ...
    collation: str | None
    max_chars: int | None


@dataclass(frozen=True)
class IndexFact:
    """One index as the database has it: its columns in order, and whether any is a prefix."""

    table: str
    name: str
    columns: tuple[str, ...]
    prefixed: bool = False


@dataclass(frozen=True)
class UpgradeCheck:
    """A query that must return no rows before the upgrade may run; each row it returns names
    a row the upgrade would break (``problem`` says how)."""

    problem: str
    sql: str


def index_columns(index: Index, backend: str) -> tuple[str, ...]:
    """The columns chatdb gives ``index`` on ``backend``. SQLite: the messages' (chat_id,
    created_at) index leaves ties to the rowid (insertion order), which is what the Node app's
    ``ORDER BY created_at`` then shows; chatdb's own pages still order ties by id."""
    names = tuple(column.name for column in index.columns)
    if backend == "sqlite" and index.name == "idx_messages_chat_created":
        return names[:-1]
    return names


def index_sql(index: Index, backend: str, text_columns: Iterable[str] = ()) -> str:
    """CREATE INDEX for ``index`` on ``backend``. ``text_columns``: the columns of its table that
    are MySQL TEXT (a Node-created table), which an index can hold only as a prefix (error
    1071/1170 otherwise); the prefix is the longest value chatdb writes there, so the index
    still finds a chat's messages and a user's chats (the sort of a page then runs over those
    rows only; after ``chatdb upgrade`` the columns are VARCHAR and the index is whole)."""
    table = index.table
    assert table is not None
    prefixed = set(text_columns)
    parts = []
    for name in index_columns(index, backend):
        if backend == "mysql" and name in prefixed:
            length = getattr(table.c[name].type, "length", None) or _PREFIX_DEFAULT
            parts.append(f"{name}({length})")
        else:
            parts.append(name)
    exists = "" if backend == "mysql" else "IF NOT EXISTS "
    return f"CREATE INDEX {exists}{index.name} ON {table.name} ({', '.join(parts)})"


# Unique text columns whose collation decides what counts as a duplicate.
_UNIQUE_NAMES = {
    "users.username": ("usernames", "create_user('Alice') after 'alice' raises DuplicateUsernameError"),
    "api_keys.key_hash": ("key hashes", "a hash in upper case collides with its lower-case twin"),
}


def _is_binary(collation: str | None) -> bool:
    return collation is None or collation.endswith("_bin")


def mysql_limits(columns: Iterable[ColumnFact]) -> tuple[dict[str, int], list[str]]:
    """What a MySQL/MariaDB schema cannot hold of chatdb's promises: the byte capacity of
    ``messages.content``/``messages.metadata`` where they are smaller than LONGTEXT (keyed
    ``"table.column"``), and one warning per limited promise naming the table, the column and
    the fix. Empty for chatdb's own schema."""
    capacity: dict[str, int] = {}
    warnings: list[str] = []
    for fact in columns:
        where = f"{fact.table}.{fact.column}"
        if fact.table == "messages" and fact.column in ("content", "metadata"):
            size = MYSQL_TEXT_BYTES.get(fact.data_type)
            if size is not None and size < MYSQL_TEXT_BYTES["longtext"]:
                capacity[where] = size
                warnings.append(
                    f"{where} is {fact.data_type.upper()} (at most {size:,} bytes) in this database, as "
                    f"the Node app created it: a larger message raises ValidationError instead of being "
                    f"stored. Fix: `chatdb upgrade` (makes it LONGTEXT)."
                )
        elif where in _UNIQUE_NAMES and not _is_binary(fact.collation):
            what, example = _UNIQUE_NAMES[where]
            warnings.append(
                f"{where} uses collation {fact.collation} in this database, as the Node app "
                f"created it: {what} that differ only in case (or trailing spaces) are one here, so "
                f"{example}. Lookups stay exact. Fix: `chatdb upgrade` (switches to a binary collation)."
            )
    return capacity, warnings


def _wanted_type(column: Column[Any], dialect: Dialect) -> str:
    ddl = column.type.compile(dialect=dialect)
    if not column.nullable:
        ddl += " NOT NULL"
    if column.server_default is not None:
        ddl += f" DEFAULT '{getattr(column.server_default, 'arg', '')}'"
    return ddl


def _column_matches(column: Column[Any], fact: ColumnFact, dialect: Dialect) -> bool:
    wanted = column.type.dialect_impl(dialect)
    length = getattr(wanted, "length", None)
    kind = "varchar" if length is not None else "longtext"
    return (
        fact.data_type == kind
        and (length is None or (fact.max_chars or 0) >= length)
        and _is_binary(fact.collation)
    )


def upgrade_plan(
    backend: str,
    dialect: Dialect,
    columns: Sequence[ColumnFact],
    indexes: Sequence[IndexFact],
    text_columns: Mapping[str, set[str]],
) -> tuple[list[UpgradeCheck], list[str]]:
    """The checks and statements that bring an existing database (a Node-created one) to
    chatdb's schema: on MySQL/MariaDB each column chatdb declares differently becomes its
    VARCHAR/LONGTEXT in a binary collation (one ALTER TABLE per table), then every chatdb index
    that is missing, a prefix, or of another shape is (re)built whole. Column names and
    meanings stay, so the Node app's queries keep working. Pure: the caller runs the checks
    (each must return no rows), then the statements."""
    checks: list[UpgradeCheck] = []
    statements: list[str] = []
    by_column = {(fact.table, fact.column): fact for fact in columns}
    changed: dict[str, set[str]] = {}
    for table in TABLES.values():
        modify = []
        for column in table.c:
            fact = by_column.get((table.name, column.name))
            if backend != "mysql" or fact is None or _column_matches(column, fact, dialect):
                continue
            changed.setdefault(table.name, set()).add(column.name)
            modify.append(f"MODIFY {column.name} {_wanted_type(column, dialect)}")
            length = getattr(column.type, "length", None)
            if length is not None:
                checks.append(
                    UpgradeCheck(
                        f"{table.name}.{column.name} longer than {length} characters",
                        f"SELECT id, CHAR_LENGTH({column.name}) FROM {table.name} "
                        f"WHERE CHAR_LENGTH({column.name}) > {length} LIMIT 20",
                    )
                )
            if column.unique or column.primary_key:
                collation = column.type.dialect_impl(dialect).collation  # type: ignore[attr-defined]
                checks.append(
                    UpgradeCheck(
                        f"{table.name}.{column.name} values equal under {collation}",
                        f"SELECT {column.name} COLLATE {collation}, COUNT(*) FROM {table.name} "
                        f"GROUP BY {column.name} COLLATE {collation} HAVING COUNT(*) > 1 LIMIT 20",
                    )
                )
        if modify:
            statements.append(f"ALTER TABLE {table.name} " + ", ".join(modify))
    existing = {(fact.table, fact.name): fact for fact in indexes}
    for table in TABLES.values():
        # After the ALTERs no chatdb column is TEXT any more, except those left as they were.
        still_text = text_columns.get(table.name, set()) - changed.get(table.name, set())
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            present = existing.get((table.name, str(index.name)))
            wanted = index_columns(index, backend)
            whole = not still_text.intersection(wanted)  # it can be whole now
            if present is not None and present.columns == wanted and not (present.prefixed and whole):
                continue
            if present is not None:
                on_table = f" ON {table.name}" if backend == "mysql" else ""
                statements.append(f"DROP INDEX {index.name}{on_table}")
            statements.append(index_sql(index, backend, still_text))
    return checks, statements
