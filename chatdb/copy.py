"""Copy every row from one backend to another (SQLite to PostgreSQL when a team outgrows one
machine, or back), streaming in batches.

Rows travel in their stored form (ids, timestamps and hashes unchanged, message JSON as stored,
unreadable text included), so users keep their passwords and API keys keep working. A producer
thread reads the source a batch ahead while the target writes each batch through its bulk path
(``import_values``: import_rows without a mapping per row; COPY on PostgreSQL, multi-row INSERTs
on MySQL/MariaDB, a prepared transaction on SQLite, unordered ``insert_many`` on MongoDB).
Tables go owners first (users, chats, messages, API keys), so a reader of the target never sees a
message without its chat. The target skips ids it already holds: copying twice leaves one copy,
and a copy killed at any moment is finished, exactly, by running it again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._base import IMPORT_COLUMNS, RepositoryBase
from ._batches import prefetch
from .config import DbConfig
from .errors import BackendError, ConfigError
from .repository import ChatRepository

__all__ = ["COPY_ORDER", "CopyResult", "TableCopy", "copy_database", "same_database"]

# Owners before what they own, so a reader of the target never sees a chat without its user.
COPY_ORDER = ("users", "chats", "messages", "api_keys")


@dataclass(frozen=True)
class TableCopy:
    """One table: rows read from the source, rows newly written, rows the target already had,
    the target's rows at the end, and the seconds the table took."""

    table: str
    read: int
    inserted: int
    already_present: int
    target_rows: int
    seconds: float = 0.0


@dataclass(frozen=True)
class CopyResult:
    tables: dict[str, TableCopy] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def read(self) -> int:
        return sum(t.read for t in self.tables.values())

    @property
    def inserted(self) -> int:
        return sum(t.inserted for t in self.tables.values())


def copy_database(
    source_repo: ChatRepository,
    target_repo: ChatRepository,
    *,
    batch_size: int = 5_000,
    progress: Callable[[str, int], None] | None = None,
    tables: tuple[str, ...] = COPY_ORDER,
) -> CopyResult:
    """Copy ``tables`` from source to target and verify the counts; returns a :class:`CopyResult`.

    ``batch_size`` is the rows per read of the source (reads of messages also end at about
    32 MB); the target writes each batch as it comes (in one transaction on SQL).
    ``progress(table, rows)`` is called after each batch with the rows just read. Raises
    ConfigError when both sides are the same database, BackendError when the verification
    finds the target short of rows, and the backends' errors as they occur.
    """
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    source_config, target_config = getattr(source_repo, "config", None), getattr(target_repo, "config", None)
    if (
        source_config is not None
        and target_config is not None
        and same_database(source_config, target_config)
    ):
        raise ConfigError(f"source and target are the same database: {source_config.redacted_url}")
    started = time.perf_counter()
    target_repo.ensure_schema()
    before = target_repo.count_rows()
    read: dict[str, list[int]] = {}  # one-element lists the row stream counts into
    seconds: dict[str, float] = {}
    for table in tables:
        read[table] = [0]
        table_started = time.perf_counter()
        batches = _stored_batches(source_repo, table, batch_size, read[table], progress)
        if isinstance(target_repo, RepositoryBase):  # (every backend: no mapping per row)
            target_repo.import_values(table, batches)
        else:
            columns = IMPORT_COLUMNS[table]
            target_repo.import_rows(
                table, (dict(zip(columns, row, strict=True)) for b in batches for row in b)
            )
        seconds[table] = time.perf_counter() - table_started
    after = target_repo.count_rows()
    result = {}
    for table in tables:
        # Counted rather than taken from import_rows: drivers differ in what rowcount reports.
        got, added = read[table][0], after[table] - before[table]
        if after[table] < got or not 0 <= added <= got:
            raise BackendError(
                f"copy verification failed for {table}: read {got} rows from the source, "
                f"but the target went from {before[table]} to {after[table]} rows"
            )
        result[table] = TableCopy(table, got, added, got - added, after[table], round(seconds[table], 3))
    return CopyResult(result, time.perf_counter() - started)


def same_database(first: DbConfig, second: DbConfig) -> bool:
    """Whether two configurations name the same database: SQLite files are compared by their
    resolved paths (``sqlite:///data/chat.db`` is ``./data/chat.db``), servers by URL and
    database name. Two ``:memory:`` databases are never the same."""
    if first.driver != second.driver:
        return False
    if first.driver == "sqlite":
        if first.is_memory or second.is_memory:
            return False
        return _resolved(first.sqlite_path) == _resolved(second.sqlite_path)
    return first == second


def _resolved(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _stored_batches(
    repo: ChatRepository,
    table: str,
    batch_size: int,
    counter: list[int],
    progress: Callable[[str, int], None] | None,
) -> Iterator[list[tuple[Any, ...]]]:
    """The table's stored rows in batches (value tuples in ``IMPORT_COLUMNS`` order), as
    import_values takes them; the source is read one batch ahead in a producer thread (its
    driver mostly waits on I/O or runs in C without the GIL)."""
    for batch in prefetch(lambda: repo.scan_rows(table, batch_size=batch_size, stored=True)):
        counter[0] += len(batch)
        yield batch
        if progress is not None:
            progress(table, len(batch))
