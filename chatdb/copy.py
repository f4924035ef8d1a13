"""Copy every row from one backend to another (SQLite to PostgreSQL when a team outgrows one
machine, or back), streaming in batches.

Rows travel in their stored form (ids, timestamps and hashes unchanged), so users keep their
passwords and API keys keep working. The target skips ids it already holds: copying twice leaves
one copy, and an interrupted copy is finished by running it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._base import IMPORT_COLUMNS
from .errors import BackendError, ConfigError
from .repository import ChatRepository

__all__ = ["COPY_ORDER", "CopyResult", "TableCopy", "copy_database"]

# Owners before what they own, so a reader of the target never sees a chat without its user.
COPY_ORDER = ("users", "chats", "messages", "api_keys")


@dataclass(frozen=True)
class TableCopy:
    """One table: rows read from the source, rows newly written, rows the target already had."""

    table: str
    read: int
    inserted: int
    already_present: int
    target_rows: int


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

    ``progress(table, rows)`` is called after each batch with the rows just read. Raises
    ConfigError when both sides are the same database, BackendError when the verification
    finds the target short of rows, and the backends' errors as they occur.
    """
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    source_config, target_config = getattr(source_repo, "config", None), getattr(target_repo, "config", None)
    if source_config is not None and source_config == target_config and not source_config.is_memory:
        raise ConfigError(f"source and target are the same database: {source_config.redacted_url}")
    started = time.perf_counter()
    target_repo.ensure_schema()
    before = target_repo.count_rows()
    read: dict[str, list[int]] = {}  # one-element lists the row stream counts into
    for table in tables:
        read[table] = [0]
        rows = _stored_rows(source_repo, table, batch_size, read[table], progress)
        target_repo.import_rows(table, rows, batch_size=batch_size)
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
        result[table] = TableCopy(table, got, added, got - added, after[table])
    return CopyResult(result, time.perf_counter() - started)


def _stored_rows(
    repo: ChatRepository,
    table: str,
    batch_size: int,
    counter: list[int],
    progress: Callable[[str, int], None] | None,
) -> Iterator[dict[str, Any]]:
    columns = IMPORT_COLUMNS[table]
    for batch in repo.scan_rows(table, batch_size=batch_size, stored=True):
        counter[0] += len(batch)
        yield from (dict(zip(columns, row, strict=True)) for row in batch)
        if progress is not None:
            progress(table, len(batch))
