"""The child process of one part of a SQLite aggregation (the parent side:
``SqlRepository._aggregate_in_parts``).

A large aggregation runs as one part per core. As threads of one process the parts were slowed
by SQLite itself: with its memory accounting on (``SQLITE_CONFIG_MEMSTATUS``, the default of
most builds) every allocation takes one process-wide mutex, and two parts on two threads used
1.5-1.8x the CPU of the same two parts run one after the other (1M messages, monthly and daily
reports). A process per part shares no mutex with the others; and here, before any connection
exists, the accounting is switched off, as SQLite's documentation recommends for speed (a part
then takes about a tenth less time). Nothing else runs SQLite in this process, so nothing
else sees the change.

The request (JSON on stdin): ``path``, ``before`` (PRAGMAs), ``statements``: a list of
``[sql, params]`` with positional parameters, run in order in one read transaction. The rows
of all statements are written to stdout with :mod:`marshal` (tuples of numbers, text and
NULLs). An error exits with status 1, its message the last line on stderr. The parent runs
this file as a script without site-packages (``python -S -P``): it imports the standard library
only (never chatdb), and starts in about 0.02 s.
"""

from __future__ import annotations

import ctypes
import json
import marshal
import sqlite3
import sys
from typing import Any

_SQLITE_CONFIG_MEMSTATUS = 9


def _memory_accounting_off() -> None:
    """Best effort: the library ``sqlite3`` runs on, reconfigured while nothing uses it."""
    try:
        import _sqlite3

        library = ctypes.CDLL(_sqlite3.__file__)  # (its symbols include the SQLite it links to)
        library.sqlite3_shutdown()
        library.sqlite3_config(_SQLITE_CONFIG_MEMSTATUS, ctypes.c_int(0))
        library.sqlite3_initialize()
    except (OSError, AttributeError):  # a build that links SQLite in privately: left as it is
        pass


def run(request: dict[str, Any]) -> list[Any]:
    connection = sqlite3.connect(request["path"], isolation_level=None)
    try:
        cursor = connection.cursor()
        cursor.execute("PRAGMA query_only=1")
        cursor.execute("PRAGMA busy_timeout=30000")
        for statement in request["before"]:
            cursor.execute(statement)
        rows: list[Any] = []
        cursor.execute("BEGIN")  # one snapshot for every statement
        for sql, params in request["statements"]:
            cursor.execute(sql, params)
            if cursor.description is not None:
                rows.extend(cursor.fetchall())
        cursor.execute("COMMIT")
        return rows
    finally:
        connection.close()


def main() -> int:
    _memory_accounting_off()
    try:
        rows = run(json.loads(sys.stdin.buffer.read()))
    except sqlite3.Error as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    marshal.dump(rows, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
