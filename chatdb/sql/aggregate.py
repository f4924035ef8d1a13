"""The SQL behind ``SqlRepository.aggregate_messages`` (pure: builds text, runs nothing).

One statement per call, over the stored JSON, in three layers:

1. the rows (filters on ``created_at`` and the owner use the existing indexes), each usage field
   read from the metadata once, as the dialect's JSON functions return it;
2. each field typed as the export reads it (see :mod:`chatdb._aggregate`), and whether the row
   is unreadable. A well-formed value takes a *fast path* of a few comparisons (on SQLite a
   JSON integer ``>= 2`` is an integer, not a boolean: ``json_extract`` returns ``true`` as 1);
   anything else (booleans, numbers written as strings, negative or fractional counts,
   objects...) takes the exact path, which asks the value's JSON type. ``CASE`` is lazy, so a
   well-formed row pays for one read per field. On SQLite a layer between 1 and 2 flags the rows
   whose fields all take their fast path, tested once (:attr:`_Ops.flags_fast_rows`); on
   PostgreSQL a layer above 2 tells the unreadable rows by their typed values
   (:attr:`_Ops.bad_from_values`);
3. the groups, and with ``query.histograms`` the latency histogram from the same rows: on
   PostgreSQL one ``GROUPING SETS`` scan (for a month's or a model's few histograms, and over a
   large table, each row twice into one ``GROUP BY``, which parallel workers aggregate
   partially), on SQLite a materialized common table expression read
   by two ``GROUP BY``\\ s, on MariaDB (which computes a common table expression once per
   reference) a temporary table read by two statements (by user, each chat's owner a number
   from a memory table made first: see :data:`MYSQL_OWNER_TABLES_UP_TO`). The histogram
   rows have the group rows' columns with NULLs; the repository cuts them back to
   ``HISTOGRAM_COLUMNS`` (:func:`split_rows`).

Messages without metadata (about half: user messages) skip layers 1-2: a second, light
``GROUP BY`` (``UNION ALL``) counts them per group with no JSON read; except on MariaDB, whose
temporary table takes them as they are (their fields NULL: reading them again cost more).

Each layer is a subquery fenced against merging (``LIMIT -1 OFFSET 0`` on SQLite, a volatile
column on PostgreSQL; MariaDB materializes a derived table with a LIMIT): merged, every
reference to a column would evaluate the JSON functions behind it again (:meth:`_Ops.fenced`). What differs between SQLite,
PostgreSQL and MySQL/MariaDB — JSON functions, type names, the epoch of an ISO text — is the
:class:`_Ops` of each, here and nowhere else.

PostgreSQL has no "try" cast of text to ``jsonb`` before version 16: the query casts strictly
(once per row), and when a stored value is not JSON (SQLSTATE 22P02) :func:`build` is asked
again with ``lenient=True``, which casts through a session-temporary function (slower, rare).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from .._aggregate import (
    DAY,
    EXACT_BELOW,
    GROUP_COLUMNS,
    HISTOGRAM_COLUMNS,
    LN_GAMMA,
    LOG_BASE,
    AggregateQuery,
    floor_shift,
)
from .schema import MARIADB_EXACT_COLLATION

__all__ = [
    "MYSQL_OWNER_TABLES_UP_TO",
    "PG_SORTED_GROUPING_UP_TO",
    "PG_TRY_JSONB",
    "ROWS_TABLE",
    "build",
    "estimated",
    "settings",
    "split_rows",
]

PG_TRY_JSONB = (
    "CREATE OR REPLACE FUNCTION pg_temp.chatdb_try_jsonb(value text) RETURNS jsonb "
    "LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN value::jsonb; "
    "EXCEPTION WHEN others THEN RETURN NULL; END $$"
)
_FIELDS = (
    ("model", "model", "string"),
    ("tin", "inputTokens", "int"),
    ("tout", "outputTokens", "int"),
    ("tcw", "cacheCreationInputTokens", "int"),
    ("tcr", "cacheReadInputTokens", "int"),
    ("cost", "totalCostUsd", "float"),
    ("dur", "durationMs", "int"),
)
_HAS_TOKENS = "tin IS NOT NULL OR tout IS NOT NULL OR tcw IS NOT NULL OR tcr IS NOT NULL"
_NUMBER_TEXT = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
_DOUBLE_MAX = "1.7976931348623157e308"


@dataclass(frozen=True)
class _Ops:
    backend: str
    collation: str = MARIADB_EXACT_COLLATION  # MySQL/MariaDB: see build()
    owners: bool = False  # MySQL/MariaDB: the chats' owners from _OWNER_TABLES

    def epoch(self, column: str) -> str:
        if self.backend == "sqlite":
            # (SQLite before 3.42 rounds a fraction of a second to milliseconds: a time written
            # with microseconds, 23:59:59.9996, is the next second. Node and chatdb write
            # milliseconds; the correction cost SQLite's reports 5-7%: see docs/analytics.md.)
            return f"unixepoch({column})"
        if self.backend == "postgres":
            # extract() computes a numeric; date_part() a float, (microseconds since 1970) / 1e6,
            # whose floor is the second exactly while half its spacing is under a microsecond:
            # for any time between the years 1800 and 2200 (told apart by the text, cheaply).
            # Other times take the numeric. The scan of 1M messages: 0.44 -> 0.36 s.
            stamp = f"CAST({column} AS timestamptz)"
            return (
                f"CASE WHEN {column} COLLATE \"C\" >= '1800' AND {column} COLLATE \"C\" < '2200' "
                f"THEN CAST(floor(date_part('epoch', {stamp})) AS bigint) "
                f"ELSE CAST(floor(extract(epoch FROM {stamp})) AS bigint) END"
            )
        return f"TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', CAST(LEFT({column}, 19) AS DATETIME))"

    def div(self, a: str, b: int) -> str:
        """``a // b`` of a non-negative ``a`` (the dialects' integer divisions truncate)."""
        if self.backend == "mysql":
            return f"({a}) DIV {b}"
        return f"CAST(({a}) / {b} AS {'INTEGER' if self.backend == 'sqlite' else 'bigint'})"

    def floor_div(self, a: str, b: int) -> str:
        """``a // b`` rounded down, for an ``a`` that may be negative (times before 1970, in
        seconds or days): see :func:`floor_shift` (two integer additions, where floor()
        would take a float division)."""
        shift = floor_shift(b)
        return f"({self.div(f'({a}) + {shift}', b)} - {shift // b})"

    @property
    def integer(self) -> str:
        return {"sqlite": "INTEGER", "postgres": "bigint", "mysql": "SIGNED"}[self.backend]

    def document(self, lenient: bool) -> str:
        """The stored metadata as the JSON functions take it (PostgreSQL: parsed once, here)."""
        if self.backend == "postgres":
            return (
                "pg_temp.chatdb_try_jsonb(messages.metadata)"
                if lenient
                else "CAST(messages.metadata AS jsonb)"
            )
        return "messages.metadata"

    def read(self, doc: str, key: str) -> str:
        """A metadata key as the JSON functions return it, from the document ``doc``; NULL
        where it is missing, and where ``doc`` is not JSON or not an object."""
        if self.backend == "sqlite":
            # json_extract raises on text that is not JSON; json_valid's parse is cached for it.
            return f"CASE WHEN json_valid({doc}) THEN json_extract({doc}, '$.{key}') END"
        if self.backend == "postgres":
            return f"({doc} -> '{key}')"
        return f"JSON_EXTRACT({doc}, '$.{key}')"  # NULL (and a warning) where doc is not JSON

    def fast(self, kind: str, v: str) -> tuple[str, str]:
        """(``v`` is a well-formed value of ``kind``, its typed value): the common case, in a
        few comparisons; a value that fails it takes the exact path."""
        if self.backend == "sqlite":
            # json_extract: JSON integers (within 64 bits) and booleans (true = 1) are INTEGER,
            # other numbers REAL, strings TEXT, objects/arrays their JSON TEXT. An INTEGER of 2
            # or more is a count; 0 and 1 may be booleans, so they take the exact path.
            if kind == "int":
                return f"typeof({v}) = 'integer' AND {v} >= 2", v
            if kind == "float":
                return f"typeof({v}) = 'real' AND {v} >= 0 AND {v} <= {_DOUBLE_MAX}", v
            return f"{v} >= '' AND {v} < '{{' AND ({v} < '[' OR {v} >= '\\')", v
        if self.backend == "postgres":
            # jsonb orders strings before numbers before booleans, arrays and objects (and an
            # empty array before null): between two numbers, a value is a number, compared
            # as numeric without a cast (a third less time than casting it for each test).
            if kind == "int":
                return (
                    f"{v} >= '0'::jsonb AND {v} < '9.2e18'::jsonb AND scale(CAST({v} AS numeric)) = 0",
                    f"CAST({v} AS bigint)",
                )
            if kind == "float":
                return (
                    f"{v} >= '0'::jsonb AND {v} <= '{_DOUBLE_MAX}'::jsonb",
                    f"CAST({v} AS double precision)",
                )
            return f"jsonb_typeof({v}) = 'string'", f"({v} #>> '{{}}')"
        # MariaDB/MySQL: JSON_EXTRACT returns the value's JSON text; a non-negative number
        # starts with a digit, a string with a quote.
        if kind == "int":
            return f"CAST(CAST({v} AS UNSIGNED) AS CHAR) = {v} AND LENGTH({v}) < 19", f"CAST({v} AS SIGNED)"
        if kind == "float":
            return (
                f"LEFT({v}, 1) BETWEEN '0' AND '9' AND CAST({v} AS DOUBLE) <= {_DOUBLE_MAX}",
                f"CAST({v} AS DOUBLE)",
            )
        return f"LEFT({v}, 1) = '\"'", self.model_text(f"JSON_UNQUOTE({v})")

    def model_text(self, v: str) -> str:
        """MySQL/MariaDB: the text ``v`` as a model name is grouped and compared: byte for byte
        (the connection's default collation took "claude-x", "Claude-X" and "claude-x " for one
        model), and as a CHAR (MariaDB groups a LONGTEXT key in an on-disk temporary table; a
        CHAR stays in memory)."""
        return f"CAST({v} AS CHAR(512)) COLLATE {self.collation}"

    def json_type(self, key: str, v: str) -> str:
        """The JSON type name of ``v`` (read from key ``key``), for the exact path."""
        if self.backend == "sqlite":
            return f"json_type(m, '$.{key}')"
        if self.backend == "postgres":
            return f"jsonb_typeof({v})"
        return f"JSON_TYPE({v})"

    def scalar(self, v: str) -> str:
        """``v`` as an SQL scalar (a string unquoted), for the exact path."""
        if self.backend == "sqlite":
            return v
        if self.backend == "postgres":
            return f"({v} #>> '{{}}')"
        return f"JSON_UNQUOTE({v})"

    @property
    def document_kind(self) -> str:
        """The JSON type of the document ``m`` (NULL or 'bad' where it is not JSON)."""
        if self.backend == "sqlite":
            return "CASE WHEN json_valid(m) THEN json_type(m) ELSE 'bad' END"
        if self.backend == "postgres":
            return "jsonb_typeof(m)"
        return "CASE WHEN JSON_VALID(m) THEN JSON_TYPE(m) ELSE 'bad' END"

    @property
    def object_kind(self) -> str:
        return {"sqlite": "'object'", "postgres": "'object'", "mysql": "'OBJECT'"}[self.backend]

    @property
    def null_kind(self) -> str:
        return {"sqlite": "'null'", "postgres": "'null'", "mysql": "'NULL'"}[self.backend]

    @property
    def string_kind(self) -> str:
        return {"sqlite": "'text'", "postgres": "'string'", "mysql": "'STRING'"}[self.backend]

    def text_number(self, v: str) -> str:
        """A number written as JSON text, else NULL."""
        if self.backend == "sqlite":
            return (
                f"CASE WHEN json_valid({v}) AND json_type({v}) IN ('integer', 'real') "
                f"THEN CAST({v} AS REAL) END"
            )
        if self.backend == "postgres":
            return f"CASE WHEN {v} ~ '{_NUMBER_TEXT}' THEN CAST({v} AS numeric) END"
        return f"CASE WHEN {v} REGEXP '{_NUMBER_TEXT}' THEN CAST({v} AS DOUBLE) END"

    def native_number(self, t: str, v: str) -> tuple[str, str]:
        """(is a non-negative integer literal: its value, is any number: its value)."""
        if self.backend == "sqlite":
            return f"CASE WHEN {t} = 'integer' AND {v} >= 0 THEN {v} END", (
                f"CASE WHEN {t} IN ('integer', 'real') THEN {v} END"
            )
        if self.backend == "postgres":
            return f"CASE WHEN {t} = 'number' AND {v} ~ '^[0-9]{{1,18}}$' THEN CAST({v} AS bigint) END", (
                f"CASE WHEN {t} = 'number' THEN CAST({v} AS numeric) END"
            )
        ints = "('INTEGER', 'UNSIGNED INTEGER')"
        return f"CASE WHEN {t} IN {ints} AND CAST({v} AS DOUBLE) >= 0 AND CAST({v} AS DOUBLE) < 9.2e18 " \
            f"THEN CAST({v} AS SIGNED) END", (
            f"CASE WHEN {t} IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL') THEN CAST({v} AS DOUBLE) END"
        )  # fmt: skip

    def whole(self, d: str) -> str:
        """``floor(d)`` of a non-negative ``d``, as an integer. (SQLAlchemy replaces SQLite's
        floor() by a Python function: slow, and it raises on NULL; CAST truncates.)"""
        if self.backend == "sqlite":
            return f"CAST({d} AS INTEGER)"
        return f"CAST(floor({d}) AS {self.integer})"

    def exact_int(self, d: str) -> str:
        return f"CASE WHEN {d} >= 0 AND {d} < 9.2e18 AND {d} = {self.whole(d)} THEN CAST({d} AS {self.integer}) END"

    def finite(self, d: str) -> str:
        if self.backend == "postgres":
            return f"CASE WHEN {d} >= 0 AND {d} <= {_DOUBLE_MAX} THEN CAST({d} AS double precision) END"
        return f"CASE WHEN {d} >= 0 AND {d} <= {_DOUBLE_MAX} THEN {d} END"

    def part_condition(self, params: dict[str, Any]) -> str:
        """The messages of one part (:func:`build`), ``params["part_lo"]`` to
        ``params["part_hi"]`` (removed where None: no bound): on SQLite a stretch of rowids,
        on MySQL/MariaDB of primary keys (InnoDB stores rows in its order): a stretch of the
        table that the part alone scans."""
        column = "messages.rowid" if self.backend == "sqlite" else "messages.id"
        bounds = []
        for name, op in (("part_lo", ">="), ("part_hi", "<")):
            if params.get(name) is None:
                params.pop(name, None)
            else:
                bounds.append(f"{column} {op} :{name}")
        return " AND ".join(bounds) or "1 = 1"

    def fenced(self, columns: str, rest: str) -> str:
        """``SELECT columns FROM rest`` as a subquery the planner keeps whole (see the module
        docstring): SQLite and MariaDB with a LIMIT that takes every row; PostgreSQL with a
        volatile column (``clock_timestamp()``, never read), which keeps a subquery from being
        pulled up as an ``OFFSET 0`` does, but unlike it lets the scan under it run in parallel
        workers (a LIMIT or OFFSET must be applied by one process)."""
        if self.backend == "postgres":
            return f"SELECT {columns}, clock_timestamp() AS fence FROM {rest}"
        limit = " LIMIT -1 OFFSET 0" if self.backend == "sqlite" else " LIMIT 18446744073709551615"
        return f"SELECT {columns} FROM {rest}{limit}"

    @property
    def bad_from_values(self) -> bool:
        """Whether :func:`_rows` tells an unreadable row by its typed values, in the layer
        above them (PostgreSQL: it keeps no common subexpressions, so ``bad`` over the JSON
        tested every fast path a second time; the month report's statement took 17% less
        time without that. MariaDB would materialize the wider layer: 20% more.)"""
        return self.backend == "postgres"

    @property
    def cuts_periods_by_span(self) -> bool:
        """Whether a week's or month's groups are cut by period and price span where the query
        allows it (``AggregateQuery.price_days``), rather than by day. MariaDB: a month report's
        parts returned 5,100 group rows each, not 220; 1M messages, best of 3 alternating: month
        6.16 -> 5.54 s, week 6.15 -> 5.79 s. PostgreSQL: the same time (month 2.51 -> 2.48 s)
        for fewer rows. SQLite: the period's first day and the span, both a CASE a row, cost
        more than grouping by day saves (month 1.56 -> 1.65 s)."""
        return self.backend != "sqlite"

    @property
    def flags_fast_rows(self) -> bool:
        """Whether :func:`_rows` flags the rows whose fields all take their fast path in a layer
        of their own (SQLite: a fenced layer is a co-routine, and testing the fast paths twice,
        for the values and for ``bad``, cost a tenth of a report; MariaDB would materialize the
        layer, and PostgreSQL's reads are cheaper than the layer)."""
        return self.backend == "sqlite"

    @property
    def bucket_counts(self) -> str:
        """The grouped rows' ``dbucket:n`` as one text, comma-separated (see :func:`split_rows`)."""
        if self.backend == "sqlite":
            return "group_concat(dbucket || ':' || n)"
        return "GROUP_CONCAT(CONCAT(dbucket, ':', n))"  # (settings() make room for every bucket)

    def boolean(self, condition: str) -> str:
        return f"CASE WHEN {condition} THEN 1 ELSE 0 END"

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})" if self.backend == "sqlite" else f"GREATEST({a}, {b})"

    def month(self, seconds: str) -> str:
        """``year * 12 + month - 1`` of a time given as epoch seconds."""
        if self.backend == "sqlite":
            yyyymm = f"CAST(strftime('%Y%m', {seconds}, 'unixepoch') AS INTEGER)"
            return f"({yyyymm} / 100 * 12 + {yyyymm} % 100 - 1)"
        if self.backend == "postgres":
            stamp = f"(to_timestamp({seconds}) AT TIME ZONE 'UTC')"
            return f"CAST(extract(year FROM {stamp}) * 12 + extract(month FROM {stamp}) - 1 AS bigint)"
        months = f"EXTRACT(YEAR_MONTH FROM DATE_ADD('1970-01-01', INTERVAL {seconds} SECOND))"
        return f"(({months}) DIV 100 * 12 + ({months}) % 100 - 1)"


def _exact_value(ops: _Ops, kind: str, t: str, v: str) -> str:
    """The typed value of a field the fast path refused, from its JSON type ``t`` and its
    scalar ``v``: exactly as the export reads it."""
    if kind == "string":
        text = ops.model_text(v) if ops.backend == "mysql" else v
        return f"CASE WHEN {t} = {ops.string_kind} THEN {text} END"
    integer, number = ops.native_number(t, v)
    from_text = ops.text_number(v)
    if kind == "int":
        return (
            f"CASE WHEN {t} = {ops.string_kind} THEN {ops.exact_int(from_text)} "
            f"ELSE coalesce({integer}, {ops.exact_int(number)}) END"
        )
    return f"CASE WHEN {t} = {ops.string_kind} THEN {ops.finite(from_text)} ELSE {ops.finite(number)} END"


def _typed(ops: _Ops, key: str, kind: str) -> tuple[str, str, str, str]:
    """(the typed value, the fast-path condition, the value on the fast path, the unreadable
    flag of the exact path) of a field, over layer 1's ``v_<name>``."""
    name = next(n for n, k, _ in _FIELDS if k == key)
    v = f"v_{name}"
    fast, fast_value = ops.fast(kind, v)
    t = ops.json_type(key, v)
    exact = _exact_value(ops, kind, t, ops.scalar(v))
    value = f"CASE WHEN {v} IS NULL THEN NULL WHEN {fast} THEN {fast_value} ELSE {exact} END"
    if kind == "string":
        bad = f"({v} IS NOT NULL AND {t} NOT IN ({ops.null_kind}, {ops.string_kind}))"
    else:
        bad = f"({v} IS NOT NULL AND {t} <> {ops.null_kind} AND ({exact} IS NULL OR {t} = {ops.string_kind}))"
    return value, fast, fast_value, bad


def _bad_of_value(name: str, kind: str) -> str:
    """PostgreSQL (:attr:`_Ops.bad_from_values`): :func:`_typed`'s unreadable flag, from the
    typed value ``name`` beside its ``jsonb`` ``v_<name>``, in jsonb comparisons (each of the
    two jsonb_typeof() a field took allocated its text: the month report's rows took 6% less
    time without them). A field is unreadable where it holds anything but JSON null and has no
    typed value, or where its number was read from a string: a typed number is either a JSON
    number, never negative, or a string, and jsonb orders every string before every number."""
    v = f"v_{name}"
    if kind == "string":
        return f"({v} IS NOT NULL AND {name} IS NULL AND {v} <> 'null'::jsonb)"
    return f"(CASE WHEN {name} IS NOT NULL THEN {v} < '0'::jsonb ELSE {v} IS NOT NULL AND {v} <> 'null'::jsonb END)"


def _offset(query: AggregateQuery) -> str:
    """The zone's UTC offset at epoch second ``e``."""
    if len(query.shifts) == 1:
        return str(int(query.shifts[0][1]))
    cases = []
    for (_, value), (start, _) in zip(query.shifts, query.shifts[1:], strict=False):
        cases.append(f"WHEN e < {int(start or 0)} THEN {int(value)}")
    return f"CASE {' '.join(cases)} ELSE {int(query.shifts[-1][1])} END"


def _source(
    ops: _Ops, query: AggregateQuery, params: dict[str, Any], metadata: bool | None, chats: bool = False
) -> tuple[str, str, str]:
    """(columns ``created_at`` (with ``query.first_times``), ``e, gkey``, FROM source, WHERE
    clause) of the messages selected,
    those with metadata, (``metadata=False``) those without, or (None) all; with ``params["part_lo"]`` and
    ``params["part_hi"]``, only that part of the table (see :func:`build`)."""
    where = (
        []
        if metadata is None
        else ["messages.metadata IS NOT NULL" if metadata else "messages.metadata IS NULL"]
    )
    if "part_lo" in params or "part_hi" in params:
        where.append(ops.part_condition(params))
    if query.since is not None:
        where.append("messages.created_at >= :since")
        params["since"] = _ts(query.since)
    if query.until is not None:
        where.append("messages.created_at < :until")
        params["until"] = _ts(query.until)
    if query.user_id is not None:
        where.append("messages.chat_id IN (SELECT id FROM chats WHERE chats.user_id = :user_id)")
        params["user_id"] = query.user_id
    source = "messages"
    key = "NULL"
    if query.key == "chat" or (query.key == "user" and chats):
        key = "messages.chat_id"  # (``chats``: the caller finds each chat's owner)
    elif query.key == "user" and ops.owners:
        source = f"messages LEFT JOIN {_CHAT_OWNERS} o ON o.id = messages.chat_id"
        key = "o.owner"
    elif query.key == "user":
        source = "messages LEFT JOIN chats ON chats.id = messages.chat_id"
        key = "chats.user_id"
    carried = "messages.created_at AS created_at, " if query.first_times else ""
    # (messages without metadata, cut by price spans and no period, are all in one: their times
    # are not read)
    epoch = "0" if metadata is False and _spans_only(query) else ops.epoch("messages.created_at")
    columns = f"{carried}{epoch} AS e, {key} AS gkey"
    return columns, source, f" WHERE {' AND '.join(where)}" if where else ""


def _local(ops: _Ops, query: AggregateQuery, inner: str, values: str) -> str:
    """Over ``inner`` (with ``e, gkey`` and maybe ``created_at``, see :func:`_source`): the same
    ``created_at``, ``e, le`` (epoch seconds, UTC and local), ``tzoff, gkey`` and ``values``."""
    offset = _offset(query)
    tzoff = offset if query.unit != DAY else "0"
    carried = _first(query)[1]
    return ops.fenced(f"{carried}e, e + {offset} AS le, {tzoff} AS tzoff, gkey{values}", f"({inner}) r")


def _rows(
    ops: _Ops,
    query: AggregateQuery,
    params: dict[str, Any],
    lenient: bool,
    only: tuple[str, ...] = (),
    bare: bool = False,
) -> str:
    """Layers 1 and 2 over the messages with metadata (``bare``: and those without, which
    are readable, all fields NULL): ``created_at, e, le, tzoff, gkey`` (see :func:`_local`),
    the typed fields and ``bad``, one row per message; with ``only``, just those fields (no
    ``bad``)."""
    fields = [field for field in _FIELDS if not only or field[0] in only]
    columns, source, filters = _source(ops, query, params, metadata=None if bare else True)
    if ops.backend != "postgres":
        # JSON functions straight on the table's text (SQLite's JSON parse cache serves its
        # json_extract calls; a layer carrying the text would only copy it, into a temporary
        # table on MariaDB).
        reads = ", ".join(f"{ops.read('messages.metadata', k)} AS v_{name}" for name, k, _ in fields)
        layer1 = ops.fenced(f"{columns}, messages.metadata AS m, {reads}", f"{source}{filters}")
    else:
        reads = ", ".join(f"{ops.read('m', k)} AS v_{name}" for name, k, _ in fields)
        parsed = ops.fenced(f"{columns}, {ops.document(lenient)} AS m", f"{source}{filters}")
        layer1 = ops.fenced(f"{_first(query)[1]}e, gkey, m, {reads}", f"({parsed}) p")
    values, fasts, bads, flagged = [], [], [], []
    for name, k, kind in fields:
        value, fast, fast_value, bad = _typed(ops, k, kind)
        values.append(f"{value} AS {name}")
        fasts.append(f"(v_{name} IS NULL OR ({fast}))")
        bads.append(bad)
        flagged.append(f"CASE WHEN f = 1 THEN {fast_value} ELSE {value} END AS {name}")
    if not only:
        kind = ops.document_kind
        # (a kind of NULL: not JSON)
        document_bad = f"coalesce(({kind}) NOT IN ({ops.object_kind}, {ops.null_kind}), true)"
        bare_case = "WHEN m IS NULL THEN 0 " if bare else ""
        if ops.bad_from_values:
            # The values, the document and the fields' JSON up a layer, and ``bad`` from them.
            carried = [*values, "m", *(f"v_{name}" for name, _, _ in _FIELDS)]
            local = _local(ops, query, layer1, ", " + ", ".join(carried))
            value_bad = " OR ".join(_bad_of_value(name, kind) for name, _, kind in _FIELDS)
            bad = f"CASE {bare_case}WHEN {document_bad} OR {value_bad} THEN 1 ELSE 0 END"
            return f"SELECT *, {bad} AS bad FROM ({local}) x"
        present = " OR ".join(f"v_{name} IS NOT NULL" for name, _, _ in _FIELDS)
        all_fast = f"({present}) AND {' AND '.join(fasts)}"
        exact_bad = f"{document_bad} OR " + " OR ".join(bads)
        if ops.flags_fast_rows:
            # Whether every field takes its fast path, worked out once per row: the typed values
            # and ``bad`` then read the flag instead of each testing the fast paths again.
            layer1 = ops.fenced(f"*, CASE WHEN {all_fast} THEN 1 ELSE 0 END AS f", f"({layer1}) w")
            values = [*flagged, f"CASE WHEN f = 1 THEN 0 WHEN {exact_bad} THEN 1 ELSE 0 END AS bad"]
        else:
            values.append(f"CASE {bare_case}WHEN {all_fast} THEN 0 WHEN {exact_bad} THEN 1 ELSE 0 END AS bad")
    return _local(ops, query, layer1, ", " + ", ".join(values))


def _bare_groups(
    ops: _Ops, query: AggregateQuery, params: dict[str, Any], flag: str, packed: bool = False
) -> str:
    """The group rows (:data:`GROUP_COLUMNS`, after ``flag`` when not empty) of the messages
    without metadata (user messages, about half of them): counted with no JSON read at all.
    ``packed``: grouped by :func:`_pack_group`'s key (the combined layout only)."""
    first, carried = _first(query)
    if query.key == "user" and _spans_only(query) and not query.first_times:
        rows, count, counted = _bare_owners(ops, query, params), f"CAST(sum(n) AS {ops.integer})", ", n"
    else:
        columns, source, filters = _source(ops, query, params, metadata=False)
        rows, count, counted = (
            _local(ops, query, ops.fenced(columns, f"{source}{filters}"), ""),
            "count(*)",
            "",
        )
    # After the count: no token, cost or duration sums, no durations (0), no maximum, 0 unreadable.
    tail = "NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL, 0"
    if packed:
        key, unpacked = _pack_group(ops, query, bare=True)
        return (
            f"SELECT {flag}, {unpacked}, NULL, NULL, NULL, NULL, {first}, {count}, {tail} "
            f"FROM (SELECT {carried}{key} AS gk, gkey{counted} FROM ({rows}) b) d GROUP BY gk, gkey"
        )
    day = _day(ops, query, bare=True)
    keys = f"{_bucket(ops, query, day)} AS bucket, tzoff, {day} AS utc_day, gkey{counted}"
    if flag:
        # (the combined layout: flag, the group keys, the histogram keys, first, count, sums)
        select = f"{flag}, bucket, tzoff, utc_day, NULL, gkey, 0, 0, NULL, NULL, NULL, NULL, {first}, {count}"
    else:
        select = f"bucket, tzoff, utc_day, {first}, NULL, gkey, 0, 0, {count}"
    return (
        f"SELECT {select}, {tail} FROM (SELECT {carried}{keys} FROM ({rows}) b) d "
        "GROUP BY bucket, tzoff, utc_day, gkey"
    )


def _bare_owners(ops: _Ops, query: AggregateQuery, params: dict[str, Any]) -> str:
    """:func:`_bare_groups`' rows by user, cut by price span (``query.price_days``, no first
    times), whose keys are constants: ``e, le, tzoff`` 0, each owner (``gkey``) and its
    messages (``n``). They are counted per chat, and each chat's owner joined once, not once a
    message (SQLite: 3% of a report by user)."""
    _, source, filters = _source(ops, query, params, metadata=False, chats=True)
    per_chat = (
        f"SELECT messages.chat_id AS chat, count(*) AS n FROM {source}{filters} GROUP BY messages.chat_id"
    )
    return (
        f"SELECT 0 AS e, 0 AS le, 0 AS tzoff, chats.user_id AS gkey, sum(n) AS n "
        f"FROM ({per_chat}) c LEFT JOIN chats ON chats.id = c.chat GROUP BY chats.user_id"
    )


# Packed keys: fields of a fixed number of bits each, every one made non-negative first, so
# that division and remainder (which truncate) take them apart again in any of the dialects.
_DAYS_FROM = 1 << 22  # added to a UTC day number: days back to about 9500 BC
_OFFSET_FROM = 1 << 17  # added to a UTC offset in seconds (+-36 h)
_PERIOD_FROM = 1 << 30  # added to a report period number
_DURATION_BITS = 13  # compact duration buckets: exact below EXACT_BELOW, then logarithmic


def _pack_group(ops: _Ops, query: AggregateQuery, bare: bool = False, key: str = "gkey") -> tuple[str, str]:
    """(an integer over a row's ``le``, ``e``, ``tzoff``, ``cost`` and token fields that is
    one per (local bucket, UTC offset, UTC day, has_reported, has_tokens); the group columns
    over it as ``gk``, ``bucket`` to ``has_tokens`` of :data:`GROUP_COLUMNS` without ``first``,
    for the select list of a grouping by it). ``bare``: rows without metadata, so no model and
    both flags 0. Fields, low bits first: the two flags (2 bits), the offset (18), the local
    bucket counted from the UTC day's first (7: a day is 24 hours, an offset at most a day and
    a half), the UTC day. ``key``: the group's key column as selected (see :func:`_owner`)."""
    per_day = DAY // query.unit
    utc_day = _day(ops, query, bare)
    bucket = _bucket(ops, query, utc_day)
    flag_bits, model, reported, tokens = "0", "NULL", "0", "0"
    if not bare:
        flag_bits = f"{ops.boolean('cost IS NOT NULL')} * 2 + {ops.boolean(_HAS_TOKENS)}"
        model, reported, tokens = "model", f"{ops.div('gk', 2)} % 2", "gk % 2"
    packed = (
        f"((({utc_day} + {_DAYS_FROM}) * 128 + {bucket} - ({utc_day}) * {per_day} + 64) * {1 << 18} "
        f"+ tzoff + {_OFFSET_FROM}) * 4 + {flag_bits}"
    )
    day = f"{ops.div('gk', 128 << 20)} - {_DAYS_FROM}"
    columns = (
        f"({day}) * {per_day} + {ops.div('gk', 1 << 20)} % 128 - 64 AS bucket, "
        f"{ops.div('gk', 4)} % {1 << 18} - {_OFFSET_FROM} AS tzoff, {day} AS utc_day, {model}, {key}, "
        f"{reported} AS has_reported, {tokens} AS has_tokens"
    )
    return packed, columns


def _pack_histogram(ops: _Ops, query: AggregateQuery, period: str) -> str:
    """An integer that is one per (report period, offset, duration bucket), NULL without a
    duration. Fields, low bits first: the duration bucket, compact (13 bits: below EXACT_BELOW
    the duration, then EXACT_BELOW + the logarithmic bucket, which is below 5,500 for any
    64-bit duration), the offset (18), the period."""
    tzoff = "tzoff" if query.period == "hour" else "0"
    compact = (
        f"CASE WHEN dur < {EXACT_BELOW} THEN dur "
        f"WHEN dur >= {EXACT_BELOW} THEN {EXACT_BELOW} + {ops.whole(f'ln(dur) / {LN_GAMMA!r}')} END"
    )
    return f"((({period}) + {_PERIOD_FROM}) * {1 << 18} + {tzoff} + {_OFFSET_FROM}) * {1 << _DURATION_BITS} + {compact}"


def settings(backend: str, parts: int = 1) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(statements to run before the aggregation, in its transaction; statements to run after
    it), for one of ``parts`` run at once. PostgreSQL: no JIT (its compile of these long
    expressions took longer than the whole scan: 1.6 s of 2.9 s at 200k rows) and room to group
    in memory (hash aggregation, not a sort spilling to disk). SQLite: 4 MB of page cache
    between the parts while they run (the connection's 64 MB filled with the scanned table and
    sorted rows, 90 MB of the process's peak at 200k messages; a single scan gains nothing from
    it; and SQLite sizes its sorters by it: a statement took 24 MB at 4 MB of cache, 11 MB at
    1 MB), then the usual one again."""
    if backend == "postgres":
        return ("SET LOCAL jit = off", "SET LOCAL work_mem = '64MB'"), ()
    if backend == "sqlite":
        from .dialects import _SQLITE_CACHE

        cache = _SQLITE_AGGREGATE_CACHE // max(1, parts)
        return (f"PRAGMA cache_size={cache}",), (f"PRAGMA cache_size={_SQLITE_CACHE}",)
    # MariaDB: the temporary table of build(). Its CREATE ... SELECT runs outside strict mode,
    # where the JSON functions' complaints about a stored value stay warnings, as in a SELECT
    # (strict mode makes them errors in a statement that writes).
    drop = f"DROP TEMPORARY TABLE IF EXISTS {ROWS_TABLE}, {_OWNERS}, {_CHAT_OWNERS}"
    # And GROUP_CONCAT's room for a period's duration buckets (at most 8192, ~150 kB as text;
    # MySQL's default is 1 kB, and a longer text is cut short, with only a warning).
    # (And the sizes of in-memory temporary tables, which build() raises for the groupings.)
    lenient_mode = (
        "SET @chatdb_sql_mode = @@SESSION.sql_mode, SESSION sql_mode = "
        "REPLACE(REPLACE(@@SESSION.sql_mode, 'STRICT_TRANS_TABLES', ''), 'STRICT_ALL_TABLES', ''), "
        "@chatdb_concat_len = @@SESSION.group_concat_max_len, SESSION group_concat_max_len = 4194304, "
        "@chatdb_tmp_size = @@SESSION.tmp_table_size, @chatdb_heap_size = @@SESSION.max_heap_table_size"
    )
    restore = (
        "SET SESSION sql_mode = @chatdb_sql_mode, SESSION group_concat_max_len = @chatdb_concat_len, "
        "SESSION tmp_table_size = @chatdb_tmp_size, SESSION max_heap_table_size = @chatdb_heap_size"
    )
    return (drop, lenient_mode), (drop, restore)


_SQLITE_AGGREGATE_CACHE = -4096  # KiB: 4 MB
# MariaDB, after the rows are in their temporary table: room to group them in memory. A
# group's row is about 3 kB there (MEMORY rows are fixed width: the model's CHAR(512) and the
# key's VARCHAR(255), 4 bytes a character), so the default 16 MB held 5,000 groups, and a report
# by user (40,000 groups a part at 1M messages) grouped in on-disk Aria tables: 12.0 s a part
# instead of 10.0 s. The memory is taken as groups come and given back with the table. (Raised
# for the CREATE too, the month took 7.0 s -> 9.2 s: its derived tables went to memory first.)
_MYSQL_GROUPING_MEMORY = (
    "SET SESSION tmp_table_size = GREATEST(@@SESSION.tmp_table_size, 268435456), "
    "SESSION max_heap_table_size = GREATEST(@@SESSION.max_heap_table_size, 268435456)"
)
ROWS_TABLE = "chatdb_aggregate_rows"  # MariaDB's temporary table (per connection)
# MariaDB, a report by user: each chat's owner as a number, from two temporary tables made
# before the rows' (one snapshot of the chats: READ COMMITTED would let two reads differ).
# ``_OWNERS`` numbers the users (MyISAM, keyed by number: a group's user is looked up there);
# ``_CHAT_OWNERS`` holds each chat's number in memory, hashed by chat id: each message's owner
# is looked up there, not in the chats' InnoDB tree, and the groupings sort numbers, not the
# users' VARCHAR(255) ids. 250,000 messages (a part of 1M): 3.5-3.9 s -> 3.0-3.3 s, the
# lookups 0.3-0.4 s and the groupings 0.3 s less, for 0.16 s making the tables (20,000
# chats); the report by user at 1M messages 7.76 s -> 7.09 s (best of 3). A memory row takes
# about 180 bytes; past MYSQL_OWNER_TABLES_UP_TO chats (by the server's estimate) each
# message's owner is looked up in the chats' table instead.
_OWNERS = "chatdb_aggregate_owners"
_CHAT_OWNERS = "chatdb_aggregate_chat_owners"
MYSQL_OWNER_TABLES_UP_TO = 200_000
_OWNER_TABLES = (
    f"CREATE TEMPORARY TABLE {_OWNERS} (KEY (owner)) ENGINE=MyISAM "
    "AS SELECT id, user_id, DENSE_RANK() OVER (ORDER BY user_id) AS owner FROM chats",
    # (a memory table's size is bounded when it is made: room for an estimate that is short)
    "SET SESSION max_heap_table_size = GREATEST(@@SESSION.max_heap_table_size, 268435456)",
    f"CREATE TEMPORARY TABLE {_CHAT_OWNERS} (PRIMARY KEY USING HASH (id)) ENGINE=MEMORY "
    f"AS SELECT id, owner FROM {_OWNERS}",
    "SET SESSION max_heap_table_size = @chatdb_heap_size",
)


def _owner(number: str) -> str:
    """The user of the owner ``number`` (see _OWNERS), NULL for a message whose chat is gone."""
    return f"(SELECT user_id FROM {_OWNERS} WHERE owner = {number} LIMIT 1)"


def estimated(backend: str, query: AggregateQuery) -> tuple[str, ...]:
    """The tables whose row estimates :func:`build` takes for ``query`` (by their names)."""
    if backend == "postgres":
        return ("messages",)
    if backend == "mysql" and query.key == "user" and query.histograms and not query.durations:
        return ("chats",)
    return ()


# PostgreSQL, reports by day, week or user (many histograms: a day's or a user's): up to this
# many messages in the table, the GROUPING SETS statement, whose sort is faster than hash tables
# holding about as many histogram buckets as rows (1M messages, day 1.88 s against 2.18 s, user
# 1.66 s against 1.87 s); beyond it, the partial hash aggregation of the month's report: the
# sort no longer fits in work_mem and spills to disk (5M: day 11.0 s against 9.6 s, user 16.0 s
# against 8.7 s). The table's size bounds what a report reads; a narrow since/until over a
# large table aggregates by hash, a little slower than it might. (Hours and chats, with a
# histogram bucket for nearly every row, keep the sort: not measured at that size.)
PG_SORTED_GROUPING_UP_TO = 2_000_000


def build(
    backend: str,
    query: AggregateQuery,
    *,
    lenient: bool = False,
    part: tuple[Any, Any] | None = None,
    temporary: bool = True,
    messages: int = 0,
    chats: int = 0,
    collation: str = MARIADB_EXACT_COLLATION,
) -> tuple[list[str], dict[str, Any]]:
    """The statements of one aggregation, to run in order in one transaction (their rows, in
    order, are its rows: see :func:`split_rows`), with named parameters (``:name``), and the
    parameters; usually one statement;
    with ``part``, over one part of the messages only (:meth:`_Ops.part_condition`; not on
    PostgreSQL, which runs one statement in parallel itself). The rows of all parts together
    are the rows of the whole: each is a sum (count, minimum, maximum) of its part's messages,
    which the reports add up per key as they do the rows of one statement. ``temporary=False``:
    MariaDB without its temporary table (for a user not allowed to create one), as SQLite.
    ``messages``: about how many messages the table holds (PostgreSQL: see
    :data:`PG_SORTED_GROUPING_UP_TO`), 0 where unknown; ``chats`` likewise (MySQL/MariaDB: see
    :data:`MYSQL_OWNER_TABLES_UP_TO`); :func:`estimated` names those a query needs.
    ``collation``: MySQL/MariaDB's utf8mb4 collation that compares byte for byte
    (:func:`chatdb.sql.schema.exact_collation`: MariaDB's is the default), which model names
    are grouped and filtered by."""
    params: dict[str, Any] = {}
    if part is not None:
        params["part_lo"], params["part_hi"] = part
    model_filter = _model_filter(query, params)
    # MariaDB writes a report's rows into a temporary table (below), the messages without
    # metadata too: a second statement for them scanned the table (and joined the chats) a
    # second time, which took longer than writing their rows.
    folded = (
        backend == "mysql" and temporary and query.histograms and not query.durations and not model_filter
    )
    owners = folded and query.key == "user" and chats <= MYSQL_OWNER_TABLES_UP_TO
    ops = _Ops(backend, collation, owners)
    if query.price_days is not None and query.period and not ops.cuts_periods_by_span:
        query = replace(query, price_days=None)
    rows = _rows(ops, query, params, lenient, bare=folded)
    if query.durations and query.quantiles and backend == "postgres":
        return [_exact_quantiles(ops, query, rows, model_filter)], params
    where = f" WHERE {model_filter}" if model_filter else ""
    day = _day(ops, query)
    sums_keys = {
        "bucket": _bucket(ops, query, day), "tzoff": "tzoff", "utc_day": day,
        "model": "model", "gkey": "gkey", "has_reported": ops.boolean("cost IS NOT NULL"),
        "has_tokens": ops.boolean(_HAS_TOKENS),
    }  # fmt: skip
    first, carried = _first(query)
    sums = _sums(query)
    histogram_keys = {
        "hbucket": _period(ops, query), "htzoff": "tzoff" if query.period == "hour" else "0",
        "hmodel": "model" if query.per_model else "NULL", "gkey": "gkey",
        "dbucket": f"CASE WHEN dur < {EXACT_BELOW} THEN dur "
                   f"WHEN dur >= {EXACT_BELOW} THEN {LOG_BASE} + {ops.whole(f'ln(dur) / {LN_GAMMA!r}')} END",
    }  # fmt: skip
    if query.durations:
        # Per report period (and model only when the report has one): a histogram per day and
        # model would hold about as many rows as there are messages.
        needed = ("model", "dur") if query.per_model or model_filter else ("dur",)
        rows = _rows(ops, query, params, lenient, needed)
        inner = f"SELECT {_select(histogram_keys)} FROM ({rows}) t WHERE dur IS NOT NULL" + (
            f" AND {model_filter}" if model_filter else ""
        )
        names = ", ".join(histogram_keys)
        return [f"SELECT {names}, count(*) FROM ({inner}) d GROUP BY {names}"], params
    if not query.histograms:
        inner = f"SELECT {_select(sums_keys)}, {carried}tin, tout, tcw, tcr, cost, dur, bad FROM ({rows}) t{where}"
        names = ", ".join(sums_keys)
        ordered = f"bucket, tzoff, utc_day, {first}, model, gkey, has_reported, has_tokens"  # GROUP_COLUMNS
        sql = f"SELECT {ordered}, {sums.removeprefix(f'{first}, ')} FROM ({inner}) d GROUP BY {names}"
        if not model_filter:
            sql += f" UNION ALL {_bare_groups(ops, query, params, '')}"
        return [sql], params
    if backend == "postgres":
        # One scan, two groupings, told apart by the first column.
        keys = {**sums_keys, **{k: v for k, v in histogram_keys.items() if k != "gkey"}}
        inner = f"SELECT {_select(keys)}, {carried}tin, tout, tcw, tcr, cost, dur, bad FROM ({rows}) t{where}"
        statements: list[str] = []
        few_histograms = query.key is None and query.period in (None, "month")
        large = messages > PG_SORTED_GROUPING_UP_TO and (
            query.key == "user" or query.period in ("day", "week")
        )
        if few_histograms or large:
            # Few histograms (a month's, a model's): each row twice (a LATERAL VALUES), keyed
            # once as its group (histogram = 1) and once as its histogram's bucket (0, where
            # it has a duration), into one plain GROUP BY that each parallel worker aggregates
            # partially, in a hash table: GROUPING SETS has no partial aggregation, and every
            # row went sorted through the leader, alone. The month report's statement: 15.2-15.4
            # s -> 12.7-14.4 s at 5M messages, the same at 1M. By day or user, see
            # PG_SORTED_GROUPING_UP_TO.
            keyed = ["d.gkey" if k == "gkey" else f"CASE WHEN v.s = 1 THEN d.{k} END" for k in sums_keys] + [
                f"CASE WHEN v.s = 0 THEN d.{k} END" for k in ("hbucket", "htzoff", "hmodel", "dbucket")
            ]
            # A bucket's copy of a row is counted, and adds nothing to the sums (NULL), which
            # spared the hash aggregation their work: the month's statement 1.95-2.00 s ->
            # 1.83-1.92 s at 1M messages (best of 3, old and new alternating).
            group_sums = _sums(query, "CASE WHEN v.s = 1 THEN d.{} END".format)
            sql = (
                f"SELECT v.s AS histogram, {', '.join(keyed)}, {group_sums} FROM ({inner}) d "
                "CROSS JOIN LATERAL (VALUES (1), (CASE WHEN d.dbucket IS NOT NULL THEN 0 END)) v(s) "
                f"WHERE v.s IS NOT NULL GROUP BY {', '.join(str(i) for i in range(1, len(keyed) + 2))}"
            )
            # (hash aggregation: estimating as many groups as rows, the planner sorted each
            # worker's rows instead, 5.1 s against 2.7 s)
            statements.append("SET LOCAL enable_sort = off")
        else:
            group_names, hist_names = ", ".join(sums_keys), ", ".join(histogram_keys)
            sql = (
                f"SELECT GROUPING(dbucket) AS histogram, {group_names}, hbucket, htzoff, hmodel, dbucket, {sums} "
                f"FROM ({inner}) d GROUP BY GROUPING SETS (({group_names}), ({hist_names})) "
                "HAVING GROUPING(dbucket) = 1 OR dbucket IS NOT NULL"
            )
        if query.packed_histograms:
            sql = _packed_histogram(sql)
        if not model_filter:
            sql += f" UNION ALL {_bare_groups(ops, query, params, '1')}"
        return [*statements, sql], params
    # SQLite, MariaDB: the rows once, into a temporary table both groupings read. Both group by
    # sorting, so each grouping's integer keys are packed into one integer (one column to sort
    # and compare, not five; unpacked per group): see _pack_group and _pack_histogram.
    key = _owner("gkey") if owners else "gkey"
    group_key, group_columns = _pack_group(ops, query, key=key)
    histogram_key = _pack_histogram(ops, query, histogram_keys["hbucket"])
    inner = (
        f"SELECT {group_key} AS gk, model, gkey, {histogram_key} AS hk, {histogram_keys['hmodel']} AS hmodel, "
        f"{carried}tin, tout, tcw, tcr, cost, dur, bad FROM ({rows}) t{where}"
    )
    nulls = ", ".join(["NULL"] * (len(GROUP_COLUMNS) - 9))  # the sums after first and count
    groups = f"SELECT 1 AS histogram, {group_columns}, NULL, NULL, NULL, NULL, {sums} FROM d GROUP BY gk, model, gkey"
    # A histogram row per report period, its buckets' counts as text ("bucket:count,..."):
    # a daily report's 120k (period, bucket) rows were most of the rows fetched, and decoding
    # them in Python took longer than the database's grouping.
    period, low = ops.div("hk", 1 << _DURATION_BITS), f"hk % {1 << _DURATION_BITS}"
    dbucket = f"CASE WHEN {low} < {EXACT_BELOW} THEN {low} ELSE {low} - {EXACT_BELOW} + {LOG_BASE} END"
    histogram = (
        f"SELECT 2, NULL, NULL, NULL, NULL, {key}, NULL, NULL, {ops.div('p', 1 << 18)} - {_PERIOD_FROM}, "
        f"p % {1 << 18} - {_OFFSET_FROM}, hmodel, {ops.bucket_counts}, "
        f"NULL, NULL, {nulls} FROM (SELECT {period} AS p, {dbucket} AS dbucket, hmodel, gkey, count(*) AS n "
        "FROM d WHERE hk IS NOT NULL GROUP BY hk, hmodel, gkey) h GROUP BY p, hmodel, gkey"
    )
    bare = [] if folded or model_filter else [_bare_groups(ops, query, params, "1", packed=True)]
    if backend == "sqlite" or not temporary:
        materialized = " MATERIALIZED" if backend == "sqlite" else ""
        return [
            f"WITH d AS{materialized} ({inner}) {groups} UNION ALL {histogram}"
            + "".join(f" UNION ALL {b}" for b in bare)
        ], params
    # MariaDB computes a common table expression once per reference: the rows go into a
    # temporary table of this connection instead, which each grouping reads in turn (a
    # statement may read a temporary table once). settings() drops it before and after. It is
    # a MyISAM table: written once, read twice, never updated, it needs no InnoDB undo log or
    # buffer pool pages, whose writes took an eighth of a part (4.0 s -> 3.5 s at 500k rows).
    return [
        *(_OWNER_TABLES if owners else ()),
        f"CREATE TEMPORARY TABLE {ROWS_TABLE} ENGINE=MyISAM AS {inner}",
        _MYSQL_GROUPING_MEMORY,
        groups.replace(" FROM d ", f" FROM {ROWS_TABLE} d "),
        histogram.replace(" FROM d ", f" FROM {ROWS_TABLE} d "),
    ], params


def _packed_histogram(sql: str) -> str:
    """PostgreSQL: the rows of the grouping sets ``sql`` with each histogram's buckets as one
    ``dbucket:count`` text, as SQLite and MariaDB give them (kind 2, see :func:`split_rows`):
    a daily report fetched and unpacked 240,000 rows of 23 columns through psycopg."""
    names = [f"c{i}" for i in range(len(GROUP_COLUMNS) + 5)]  # kind, 7 keys, 4 histogram keys, ...
    rest = ", ".join(["NULL"] * (len(names) - 12))
    return (
        f"WITH s({', '.join(names)}) AS MATERIALIZED ({sql}) "
        f"SELECT {', '.join(names[:11])}, CAST(c11 AS text), {', '.join(names[12:])} FROM s WHERE c0 = 1 "
        "UNION ALL SELECT 2, NULL, NULL, NULL, NULL, c5, NULL, NULL, c8, c9, c10, "
        f"string_agg(c11 || ':' || c13, ','), {rest} FROM s WHERE c0 = 0 GROUP BY c8, c9, c10, c5"
    )


def split_rows(query: AggregateQuery, rows: Iterable[Any]) -> list[tuple[Any, ...]]:
    """The rows of :func:`build` as ``aggregate_messages`` returns them: with
    ``query.histograms``, each group row as :data:`GROUP_COLUMNS` and each histogram row as
    :data:`HISTOGRAM_COLUMNS` (group rows first; with ``query.packed_histograms``, a period's
    buckets in one row, as :mod:`chatdb._aggregate` says); otherwise as they are."""
    if not query.histograms:
        return [tuple(row) for row in rows]
    groups: list[tuple[Any, ...]] = []
    histogram: list[tuple[Any, ...]] = []
    # (kind, 7 group keys, hbucket, htzoff, hmodel, dbucket, first, count, sums...), where kind
    # is 1 for a group, 0 for a histogram bucket, and 2 for all of a period's buckets, with
    # their counts as text in place of dbucket ("dbucket:count,...").
    for row in rows:
        if row[0] == 1:
            groups.append((*row[1:4], row[12], *row[4:8], *row[13:]))
        elif row[0] == 2 and query.packed_histograms:
            histogram.append((row[8], row[9], row[10], row[5], None, row[11]))
        elif row[0] == 2:
            for pair in row[11].split(","):
                bucket, count = pair.split(":")
                histogram.append((row[8], row[9], row[10], row[5], int(bucket), int(count)))
        else:
            histogram.append((row[8], row[9], row[10], row[5], row[11], row[13]))
    assert all(len(g) == len(GROUP_COLUMNS) for g in groups[:1])
    assert all(len(h) == len(HISTOGRAM_COLUMNS) for h in histogram[:1])
    return groups + histogram


# A group's sums after ``first``, in GROUP_COLUMNS' order: (aggregate, column).
_SUMS = (
    ("count", "*"), ("sum", "tin"), ("sum", "tout"), ("sum", "tcw"), ("sum", "tcr"), ("sum", "cost"),
    ("sum", "dur"), ("count", "dur"), ("max", "dur"), ("sum", "bad"),
)  # fmt: skip


def _sums(query: AggregateQuery, column: Callable[[str], str] = str) -> str:
    """``first`` (see :func:`_first`) and the sums of a group, each of ``column(name)`` (a row
    count of every row)."""
    first = f"min({column('created_at')})" if query.first_times else "NULL"
    return ", ".join([first, *(f"{f}({c if c == '*' else column(c)})" for f, c in _SUMS)])


def _first(query: AggregateQuery) -> tuple[str, str]:
    """(a group's ``first`` column, the ``created_at, `` its rows carry for it): NULL and
    nothing where the query does not want first times."""
    return ("min(created_at)", "created_at, ") if query.first_times else ("NULL", "")


def _day(ops: _Ops, query: AggregateQuery, bare: bool = False) -> str:
    """A row's UTC day, which prices it (from its epoch second ``e``); with
    ``query.price_days``, the first day of its span between price changes (the day before the
    first change, before it), newest first: most rows are past the last change. ``bare``: a
    message without metadata, which no price applies to (its span is any: the first).

    By week or month, the later of its span's first day and the day before its period's first
    (:func:`_period_first`; before the first change, that day): a day of its span still, as a
    message's UTC day is at most a day before its local one, and at most a month before its
    period's first day, which :func:`_pack_group` packs relative to it."""
    if query.price_days is None:
        return ops.floor_div("e", DAY)
    days = sorted(set(query.price_days))
    first = _period_first(ops, query)
    before = str(days[0] - 1 if days else 0) if first is None else str(1 - _DAYS_FROM)
    if not days or bare:
        span = before
    else:
        spans = " ".join(f"WHEN e >= {day * DAY} THEN {day}" for day in reversed(days))
        span = f"CASE {spans} ELSE {before} END"
    return span if first is None else ops.greatest(span, f"{first} - 1")


def _bucket(ops: _Ops, query: AggregateQuery, day: str) -> str:
    """A row's local bucket (from ``le``); with ``query.price_days``, its ``day`` (no period) or
    its period's first day (week, month)."""
    if query.price_days is None:
        return ops.floor_div("le", query.unit)
    first = _period_first(ops, query)
    return day if first is None else first


def _spans_only(query: AggregateQuery) -> bool:
    """Whether ``query``'s groups are cut by price span alone (no period): their times are
    read only to find their span."""
    return query.price_days is not None and not query.period


def _period_first(ops: _Ops, query: AggregateQuery) -> str | None:
    """With ``query.price_days`` by week or month: the local day a row's period begins on (a
    month's from ``query.month_starts``; outside them, the row's own day). Else None."""
    if query.price_days is None or query.period not in ("week", "month"):
        return None
    if query.period == "week":
        return f"{_period(ops, query)} * 7 - 3"  # (its Monday: see AggregateQuery.period)
    local = ops.floor_div("le", DAY)
    return _by_month(query, lambda start, _: start // DAY, local) if query.month_starts else local


def _select(keys: dict[str, str]) -> str:
    return ", ".join(f"{expr} AS {name}" for name, expr in keys.items())


def _period(ops: _Ops, query: AggregateQuery) -> str:
    """The report period a row falls in (see AggregateQuery.period), as an integer."""
    local = ops.floor_div("le", query.unit)
    if query.period == "week":
        return ops.floor_div(f"{local} + 3", 7)
    if query.period == "month":
        # (comparisons with the months' first seconds: cheaper than a date function a row)
        generic = ops.month("le")
        return _by_month(query, lambda _, month: month, generic) if query.month_starts else generic
    if query.period in ("hour", "day"):
        return local
    return "0"


def _by_month(query: AggregateQuery, value: Callable[[int, int], int], outside: str) -> str:
    """``value(first second, month number)`` of the month (``query.month_starts``) a row's
    local second ``le`` falls in, as a CASE; ``outside`` where it falls outside them all."""
    starts = query.month_starts
    cases = [f"WHEN le < {int(starts[0][0])} THEN {outside}"]
    cases += [
        f"WHEN le < {int(nxt)} THEN {int(value(int(start), int(month)))}"
        for (start, month), (nxt, _) in itertools.pairwise(starts)
    ]
    return f"CASE {' '.join(cases)} ELSE {outside} END"


def _exact_quantiles(ops: _Ops, query: AggregateQuery, rows: str, model_filter: str) -> str:
    """PostgreSQL: the quantiles themselves (percentile_cont), per report period, not buckets."""
    tzoff = "tzoff" if query.period == "hour" else "0"
    model = "model" if query.per_model else "CAST(NULL AS text)"
    wanted = ", ".join(repr(float(q)) for q in query.quantiles)
    inner = (
        f"SELECT {_period(ops, query)} AS period, {tzoff} AS tzoff, {model} AS gmodel, gkey, dur "
        f"FROM ({rows}) t WHERE dur IS NOT NULL" + (f" AND {model_filter}" if model_filter else "")
    )
    return (
        f"SELECT period, tzoff, gmodel, gkey, percentile_cont(ARRAY[{wanted}]) WITHIN GROUP (ORDER BY dur) "
        f"FROM ({inner}) d GROUP BY period, tzoff, gmodel, gkey"
    )


def _model_filter(query: AggregateQuery, params: dict[str, Any]) -> str:
    clauses = []
    for i, name in enumerate(query.models):
        params[f"model_{i}"] = name
        clauses.append(f"model = :model_{i}")
    for i, part in enumerate(query.model_like):
        params[f"model_like_{i}"] = f"%{part}%"
        clauses.append(f"lower(model) LIKE :model_like_{i}")
    return f"({' OR '.join(clauses)})" if clauses else ""


def _ts(value: Any) -> str:
    from .._codec import format_ts

    return format_ts(value)
