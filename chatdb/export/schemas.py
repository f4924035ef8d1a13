"""The fixed Arrow schemas of the exported tables (column names and types are part of the API).

Timestamps are ``timestamp[ms, tz=UTC]``, token counts and durations ``int64``, cost ``float64``;
absent values are null. Users never carry the password hash, API keys never the key hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ValidationError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["EXPORT_TABLES", "METADATA_COLUMNS", "REPEATED_COLUMNS", "schema"]

EXPORT_TABLES = ("messages", "chats", "users", "api_keys")

# (column, stored camelCase metadata key, kind) for the metadata fields with their own column.
METADATA_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "string"),
    ("input_tokens", "inputTokens", "int"),
    ("output_tokens", "outputTokens", "int"),
    ("cache_creation_input_tokens", "cacheCreationInputTokens", "int"),
    ("cache_read_input_tokens", "cacheReadInputTokens", "int"),
    ("total_cost_usd", "totalCostUsd", "float"),
    ("duration_ms", "durationMs", "int"),
)

# Text columns whose values repeat from row to row: dictionary-encoded in Parquet. The others
# (ids, titles, text) are mostly unique, where a dictionary is work thrown away: writing 1M
# messages takes 0.34 s instead of 0.48 s, and the file is 12.8 MB instead of 17.4 MB.
REPEATED_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("chat_id", "user_id", "role", "model"),
    "chats": ("user_id",),
    "users": (),
    "api_keys": ("user_id",),
}


def schema(table: str, *, include_text: bool = False, include_extra: bool = False) -> pa.Schema:
    """The Arrow schema ``read(repo, table, ...)`` yields; ValidationError for an unknown table.

    ``include_text``/``include_extra`` add ``text`` and ``metadata_extra`` to ``messages``.
    """
    import pyarrow as pa

    ts = pa.timestamp("ms", tz="UTC")
    string = pa.string()
    if table == "messages":
        kinds = {"string": string, "int": pa.int64(), "float": pa.float64()}
        fields = [
            pa.field("message_id", string, nullable=False),
            pa.field("chat_id", string, nullable=False),
            pa.field("user_id", string),
            pa.field("role", string, nullable=False),
            pa.field("created_at", ts),
            *(pa.field(name, kinds[kind]) for name, _, kind in METADATA_COLUMNS),
            pa.field("content_chars", pa.int64()),
            pa.field("content_parts", pa.int64()),
            pa.field("has_image", pa.bool_()),
        ]
        if include_text:
            fields.append(pa.field("text", pa.large_string()))
        if include_extra:
            fields.append(pa.field("metadata_extra", string))
        return pa.schema(fields)
    if table == "chats":
        return pa.schema(
            [
                pa.field("chat_id", string, nullable=False),
                pa.field("user_id", string),
                pa.field("title", string),
                pa.field("session_id", string),
                pa.field("created_at", ts),
                pa.field("updated_at", ts),
            ]
        )
    if table == "users":
        return pa.schema(
            [
                pa.field("user_id", string, nullable=False),
                pa.field("username", string),
                pa.field("created_at", ts),
                pa.field("updated_at", ts),
            ]
        )
    if table == "api_keys":
        return pa.schema(
            [
                pa.field("key_id", string, nullable=False),
                pa.field("user_id", string),
                pa.field("name", string),
                pa.field("key_prefix", string),
                pa.field("created_at", ts),
                pa.field("last_used_at", ts),
                pa.field("revoked_at", ts),
            ]
        )
    raise ValidationError(f"table must be one of {', '.join(EXPORT_TABLES)}, not {table!r}")
