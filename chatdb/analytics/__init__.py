"""Usage analytics over a chatdb database: reports, prices and charts, as Polars frames.

Every function takes a *source* — a repository, a Polars ``DataFrame``/``LazyFrame`` in the
``messages`` export schema (see :mod:`chatdb.export`), a Parquet file/dataset path, a DuckDB
connection holding a ``messages`` table (and ``chats`` for user ids), an Arrow stream or an Ibis
table — and computes where the data lives: a repository in its database (only group sums leave
it), Parquet, DuckDB and Arrow streams in DuckDB, Ibis in its engine, frames in Polars; never by
looping over Python objects, and in memory that grows with the groups, not the messages.

>>> from chatdb import analytics
>>> report = analytics.usage_report(repo, by="day", timezone="Europe/Berlin")   # doctest: +SKIP
>>> analytics.usage_totals(report)                                               # doctest: +SKIP

Report columns are :data:`REPORT_COLUMNS` plus the grouping key (``period``, ``model``,
``user_id`` or ``chat_id``; with ``breakdown="model"`` both ``period`` and ``model``). Cost follows
``cost_mode``: ``"auto"`` uses the reported ``totalCostUsd`` where present and estimates the rest
from :func:`load_prices`; ``"calculate"`` always estimates; ``"display"`` only sums reported cost.
A message whose model has no price is never counted as $0: it is counted in ``unpriced_messages``.
Charts live in :mod:`chatdb.analytics.plots` (matplotlib, Agg backend).
"""

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .pricing import Price, PriceTable, load_prices

if TYPE_CHECKING:
    from .usage import (
        GROUPINGS,
        REPORT_COLUMNS,
        cost_reported_vs_estimated,
        latency_percentiles,
        messages_frame,
        resolve_timezone,
        token_mix,
        top_chats,
        top_users,
        usage_report,
        usage_totals,
    )


def __getattr__(name: str) -> Any:
    """Reports load Polars on first use, so prices (and ``chatdb demo``) work without it."""
    if name not in _USAGE_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import usage
    except ImportError as exc:
        raise ConfigError(f"usage reports need Polars: pip install 'chatdb[analytics]' ({exc})") from None
    return getattr(usage, name)


__all__ = [
    "GROUPINGS",
    "REPORT_COLUMNS",
    "Price",
    "PriceTable",
    "cost_reported_vs_estimated",
    "latency_percentiles",
    "load_prices",
    "messages_frame",
    "resolve_timezone",
    "token_mix",
    "top_chats",
    "top_users",
    "usage_report",
    "usage_report_with_totals",
    "usage_totals",
]

# Everything but prices lives in .usage, imported on first use.
_USAGE_NAMES = frozenset(__all__) - {"Price", "PriceTable", "load_prices"}
