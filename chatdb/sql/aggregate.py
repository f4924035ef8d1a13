"""The SQL behind ``SqlRepository.aggregate_messages`` (pure: builds text, runs nothing).

One query per call, over the stored JSON, in four layers: the rows (filters on ``created_at``
and the owner use the existing indexes; the metadata's own JSON type), each usage field's JSON
type and value, the typed value as the export reads it (see :mod:`chatdb._aggregate`), and the
group keys; the outer query groups. What differs between SQLite, PostgreSQL and MySQL/MariaDB —
JSON functions, type names, the epoch of an ISO text — is the :class:`_Ops` of each, here
and nowhere else.

PostgreSQL has no "try" cast of text to ``jsonb`` before version 16: the query casts strictly,
and when a stored value is not JSON (SQLSTATE 22P02) :func:`build` is asked again with
``lenient=True``, which casts through a session-temporary function (slower, rare).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._aggregate import DAY, EXACT_BELOW, LN_GAMMA, LOG_BASE, AggregateQuery

__all__ = ["PG_TRY_JSONB", "build"]

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
_NUMBER_TEXT = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"


@dataclass(frozen=True)
class _Ops:
    backend: str

    def epoch(self, column: str) -> str:
        if self.backend == "sqlite":
            return f"unixepoch({column})"
        if self.backend == "postgres":
            return f"CAST(floor(extract(epoch FROM CAST({column} AS timestamptz))) AS bigint)"
        return f"TIMESTAMPDIFF(SECOND, '1970-01-01 00:00:00', CAST(LEFT({column}, 19) AS DATETIME))"

    def div(self, a: str, b: int) -> str:
        return f"({a}) DIV {b}" if self.backend == "mysql" else f"CAST(({a}) / {b} AS BIGINT)".replace(
            "BIGINT", "INTEGER" if self.backend == "sqlite" else "BIGINT"
        )

    def doc(self, lenient: bool) -> tuple[str, str]:
        """(the parsed metadata expression, its JSON kind) for layer A."""
        m, a = "messages.metadata", "a0.metadata"
        if self.backend == "sqlite":
            kind = f"CASE WHEN {a} IS NULL THEN NULL WHEN json_valid({a}) THEN json_type({a}) ELSE 'bad' END"
            return m, kind
        if self.backend == "postgres":
            parsed = f"pg_temp.chatdb_try_jsonb({m})" if lenient else f"CAST({m} AS jsonb)"
            return parsed, "jsonb_typeof(a0.doc)"
        kind = f"CASE WHEN {a} IS NULL THEN NULL WHEN JSON_VALID({a}) THEN JSON_TYPE({a}) ELSE 'bad' END"
        return m, kind

    @property
    def object_kind(self) -> str:
        return {"sqlite": "'object'", "postgres": "'object'", "mysql": "'OBJECT'"}[self.backend]

    @property
    def null_kind(self) -> str:
        return {"sqlite": "'null'", "postgres": "'null'", "mysql": "'NULL'"}[self.backend]

    @property
    def string_kind(self) -> str:
        return {"sqlite": "'text'", "postgres": "'string'", "mysql": "'STRING'"}[self.backend]

    def field(self, key: str) -> tuple[str, str]:
        """(JSON type name, value as SQL scalar/text) of a metadata key, over ``doc``."""
        if self.backend == "sqlite":
            return f"json_type(doc, '$.{key}')", f"json_extract(doc, '$.{key}')"
        if self.backend == "postgres":
            return f"jsonb_typeof(doc -> '{key}')", f"(doc ->> '{key}')"
        return f"JSON_TYPE(JSON_EXTRACT(doc, '$.{key}'))", f"JSON_UNQUOTE(JSON_EXTRACT(doc, '$.{key}'))"

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

    def exact_int(self, d: str) -> str:
        target = {"sqlite": "INTEGER", "postgres": "bigint", "mysql": "SIGNED"}[self.backend]
        return f"CASE WHEN {d} >= 0 AND {d} < 9.2e18 AND {d} = floor({d}) THEN CAST({d} AS {target}) END"

    def finite(self, d: str) -> str:
        if self.backend == "postgres":
            return f"CASE WHEN {d} >= 0 AND {d} <= 1.7976931348623157e308 THEN CAST({d} AS double precision) END"
        return f"CASE WHEN {d} >= 0 AND {d} <= 1.7976931348623157e308 THEN {d} END"

    @property
    def fence(self) -> str:
        """What keeps a subquery from being merged into the query over it: merged, every
        reference to one of its columns would evaluate the JSON functions behind it again.
        (MariaDB would materialize such a subquery as a temporary table: not fenced.)"""
        return {"sqlite": " LIMIT -1 OFFSET 0", "postgres": " OFFSET 0"}.get(self.backend, "")

    def ln(self, d: str) -> str:
        return f"ln({d})"

    def boolean(self, condition: str) -> str:
        return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


def _typed(ops: _Ops, name: str, kind: str) -> tuple[str, str]:
    """(typed value, unreadable flag) of field ``name`` from layer B's ``t_name``/``v_name``."""
    t, v = f"t_{name}", f"v_{name}"
    if kind == "string":
        text = f"CAST({v} AS CHAR(512))" if ops.backend == "mysql" else v
        # (MariaDB groups a LONGTEXT key in an on-disk temporary table; CHAR stays in memory.)
        value = f"CASE WHEN {t} = {ops.string_kind} THEN {text} END"
        bad = f"({t} IS NOT NULL AND {t} NOT IN ({ops.null_kind}, {ops.string_kind}))"
        return value, bad
    integer, number = ops.native_number(t, v)
    from_text = ops.text_number(v)
    if kind == "int":
        value = (
            f"CASE WHEN {t} = {ops.string_kind} THEN {ops.exact_int(from_text)} "
            f"ELSE coalesce({integer}, {ops.exact_int(number)}) END"
        )
    else:
        value = f"CASE WHEN {t} = {ops.string_kind} THEN {ops.finite(from_text)} ELSE {ops.finite(number)} END"
    bad = f"({t} IS NOT NULL AND {t} <> {ops.null_kind} AND ({name} IS NULL OR {t} = {ops.string_kind}))"
    return value, bad


def _offset(ops: _Ops, query: AggregateQuery) -> str:
    if len(query.shifts) == 1:
        return str(query.shifts[0][1])
    cases = []
    for (_, value), (start, _) in zip(query.shifts, query.shifts[1:], strict=False):
        cases.append(f"WHEN e < {int(start or 0)} THEN {int(value)}")
    return f"CASE {' '.join(cases)} ELSE {int(query.shifts[-1][1])} END"


def build(backend: str, query: AggregateQuery, *, lenient: bool = False) -> tuple[str, dict[str, Any]]:
    """SQL text with named parameters (``:name``) and the parameters, for one aggregation."""
    ops = _Ops(backend)
    params: dict[str, Any] = {}
    doc, doc_kind = ops.doc(lenient)
    where = []
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
    if query.key == "chat":
        key = "messages.chat_id"
    elif query.key == "user":
        source = "messages LEFT JOIN chats ON chats.id = messages.chat_id"
        key = "chats.user_id"
    fence = " OFFSET 0" if backend == "postgres" else ""
    layer_a = (
        f"SELECT messages.created_at AS created_at, {ops.epoch('messages.created_at')} AS e, "
        f"{key} AS gkey, messages.metadata AS metadata, {doc} AS doc FROM {source}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + fence
    )
    layer_a = f"SELECT a0.*, {doc_kind} AS mk FROM ({layer_a}) a0"
    fields_b = []
    for name, key_name, _ in _FIELDS:
        t, v = ops.field(key_name)
        guard = f"mk = {ops.object_kind}"
        fields_b.append(f"CASE WHEN {guard} THEN {t} END AS t_{name}")
        fields_b.append(f"CASE WHEN {guard} THEN {v} END AS v_{name}")
    layer_b = f"SELECT created_at, e, gkey, metadata, mk, {', '.join(fields_b)} FROM ({layer_a}) a{ops.fence}"
    typed, bads = [], [f"(metadata IS NOT NULL AND (mk IS NULL OR mk NOT IN ({ops.object_kind}, {ops.null_kind})))"]
    for name, _, kind in _FIELDS:
        value, bad = _typed(ops, name, kind)
        typed.append(f"{value} AS {name}")
        bads.append(bad)
    layer_c = f"SELECT created_at, e, gkey, metadata, mk, {', '.join([f't_{n}' for n, _, _ in _FIELDS])}, {', '.join(typed)} FROM ({layer_b}) b{ops.fence}"
    model_filter = _model_filter(query, params)
    offset = _offset(ops, query)
    if query.durations and query.quantiles and backend == "postgres":
        return _exact_quantiles(ops, query, layer_c, offset, model_filter), params
    if query.durations:
        bucket = (
            f"CASE WHEN dur < {EXACT_BELOW} THEN dur "
            f"ELSE {LOG_BASE} + CAST(floor({ops.ln('dur')} / {LN_GAMMA!r}) AS {'SIGNED' if backend == 'mysql' else 'INTEGER' if backend == 'sqlite' else 'bigint'}) END"
        )
        # Per report period (and model only when the report has one): a histogram per day and
        # model would hold about as many rows as there are messages.
        tzoff = offset if query.period == "hour" else "0"
        model = "model" if query.per_model else "NULL"
        layer_d = (
            f"SELECT {_period(ops, query, offset)} AS bucket, {tzoff} AS tzoff, {model} AS gmodel, gkey, "
            f"{bucket} AS dbucket FROM ({layer_c}) c WHERE dur IS NOT NULL{model_filter}"
        )
        sql = (
            f"SELECT bucket, tzoff, gmodel, gkey, dbucket, count(*) FROM ({layer_d}) d "
            "GROUP BY bucket, tzoff, gmodel, gkey, dbucket"
        )
        return sql, params
    has_tokens = ops.boolean("tin IS NOT NULL OR tout IS NOT NULL OR tcw IS NOT NULL OR tcr IS NOT NULL")
    layer_d = (
        f"SELECT {ops.div(f'e + {offset}', query.unit)} AS bucket, {offset} AS tzoff, "
        f"{ops.div('e', DAY)} AS utc_day, created_at, model, gkey, {ops.boolean('cost IS NOT NULL')} AS has_reported, "
        f"{has_tokens} AS has_tokens, tin, tout, tcw, tcr, cost, dur, "
        f"{ops.boolean(' OR '.join(bads))} AS bad FROM ({layer_c}) c"
        + (f" WHERE {model_filter[5:]}" if model_filter else "")
    )
    sql = (
        "SELECT bucket, tzoff, utc_day, min(created_at), model, gkey, has_reported, has_tokens, count(*), "
        "sum(tin), sum(tout), sum(tcw), sum(tcr), sum(cost), sum(dur), count(dur), max(dur), sum(bad) "
        f"FROM ({layer_d}) d GROUP BY bucket, tzoff, utc_day, model, gkey, has_reported, has_tokens"
    )
    return sql, params


def _period(ops: _Ops, query: AggregateQuery, offset: str) -> str:
    """The report period a row falls in (see AggregateQuery.period), as an integer."""
    local = ops.div(f"e + {offset}", query.unit)
    if query.period == "week":
        return f"({ops.div(f'{local} + 3', 7)})"
    if query.period == "month":
        seconds = f"(e + {offset})"
        if ops.backend == "sqlite":
            return (
                f"(CAST(strftime('%Y', {seconds}, 'unixepoch') AS INTEGER) * 12 "
                f"+ CAST(strftime('%m', {seconds}, 'unixepoch') AS INTEGER) - 1)"
            )
        if ops.backend == "postgres":
            stamp = f"(to_timestamp({seconds}) AT TIME ZONE 'UTC')"
            return f"CAST(extract(year FROM {stamp}) * 12 + extract(month FROM {stamp}) - 1 AS bigint)"
        months = f"EXTRACT(YEAR_MONTH FROM DATE_ADD('1970-01-01', INTERVAL {seconds} SECOND))"
        return f"(({months}) DIV 100 * 12 + ({months}) % 100 - 1)"
    if query.period in ("hour", "day"):
        return local
    return "0"


def _exact_quantiles(ops: _Ops, query: AggregateQuery, layer_c: str, offset: str, model_filter: str) -> str:
    """PostgreSQL: the quantiles themselves (percentile_cont), per report period, not buckets."""
    tzoff = offset if query.period == "hour" else "0"
    model = "model" if query.per_model else "CAST(NULL AS text)"
    wanted = ", ".join(repr(float(q)) for q in query.quantiles)
    layer_d = (
        f"SELECT {_period(ops, query, offset)} AS period, {tzoff} AS tzoff, {model} AS gmodel, gkey, dur "
        f"FROM ({layer_c}) c WHERE dur IS NOT NULL{model_filter}"
    )
    return (
        f"SELECT period, tzoff, gmodel, gkey, percentile_cont(ARRAY[{wanted}]) WITHIN GROUP (ORDER BY dur) "
        f"FROM ({layer_d}) d GROUP BY period, tzoff, gmodel, gkey"
    )


def _model_filter(query: AggregateQuery, params: dict[str, Any]) -> str:
    clauses = []
    for i, name in enumerate(query.models):
        params[f"model_{i}"] = name
        clauses.append(f"model = :model_{i}")
    for i, part in enumerate(query.model_like):
        params[f"model_like_{i}"] = f"%{part}%"
        clauses.append(f"lower(model) LIKE :model_like_{i}")
    return f" AND ({' OR '.join(clauses)})" if clauses else ""


def _ts(value: Any) -> str:
    from .._codec import format_ts

    return format_ts(value)
