"""Usage reports over the ``messages`` export schema, computed in Polars (skeleton)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import polars as pl

from .pricing import PriceTable

__all__ = [
    "GROUPINGS",
    "REPORT_COLUMNS",
    "cost_reported_vs_estimated",
    "latency_percentiles",
    "messages_frame",
    "token_mix",
    "top_chats",
    "top_users",
    "usage_report",
    "usage_totals",
]

REPORT_COLUMNS = (
    "messages",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "total_tokens",
    "cost_usd",
    "estimated_cost_usd",
    "avg_duration_ms",
    "p95_duration_ms",
    "unpriced_messages",
)
# by= value -> grouping key column
GROUPINGS = {
    "hour": "period",
    "day": "period",
    "week": "period",
    "month": "period",
    "model": "model",
    "user": "user_id",
    "chat": "chat_id",
}

Source = Any
When = datetime | date | str | None
CostMode = Literal["auto", "calculate", "display"]


def messages_frame(source: Source, *, since: When = None, until: When = None, user_id: str | None = None,
                   timezone: str = "UTC") -> pl.LazyFrame:
    raise NotImplementedError


def usage_report(source: Source, by: str = "day", *, timezone: str = "UTC", since: When = None,
                 until: When = None, user_id: str | None = None, model: str | None = None,
                 breakdown: str | None = None, order: str = "asc", cost_mode: CostMode = "auto",
                 prices: PriceTable | str | None = None) -> pl.DataFrame:
    raise NotImplementedError


def usage_totals(report: pl.DataFrame) -> pl.DataFrame:
    raise NotImplementedError


def cost_reported_vs_estimated(source: Source, **options: Any) -> pl.DataFrame:
    raise NotImplementedError


def latency_percentiles(source: Source, **options: Any) -> pl.DataFrame:
    raise NotImplementedError


def top_users(source: Source, n: int = 10, **options: Any) -> pl.DataFrame:
    raise NotImplementedError


def top_chats(source: Source, n: int = 10, **options: Any) -> pl.DataFrame:
    raise NotImplementedError


def token_mix(source: Source, **options: Any) -> pl.DataFrame:
    raise NotImplementedError
