"""Ibis sources: the same reports from Spark (local mode) and Ibis's DuckDB over a chatdb export.

The data is tests/test_analytics_pushdown.py's: a small demo plus edge-case rows (no metadata,
unknown models, invalid JSON and wrong types, which the export writes as nulls; messages either
side of DST changes and of Asia/Kolkata and Asia/Kathmandu midnights), exported by
``export.to_parquet`` as a month-partitioned hive dataset. Each report over an Ibis table equals
the one DuckDB computes over the dataset path (exact percentiles there, so ``p95`` is held to the
histogram's bound) and the Polars reference.

Spark runs in one small local session for the whole run (``local[2]``, two shuffle partitions, no
UI). Without PySpark or Java the Spark tests are skipped with the reason, or fail the run under
``CHATDB_TEST_REQUIRE=all`` (or a list naming ``spark``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import chatdb
from chatdb import analytics, export
from chatdb._aggregate import RELATIVE_ERROR
from chatdb.analytics import usage
from chatdb.errors import ValidationError

from . import _usage_reference as reference
from .backends import unavailable
from .test_analytics_pushdown import _ROUNDING, ZONES, _load

# PySpark 4.0 and Ibis 12 call pandas 3 in ways it deprecates (their warnings, not ours).
pytestmark = [pytest.mark.filterwarnings("ignore:::pyspark"), pytest.mark.filterwarnings("ignore:::ibis")]


class Dataset:
    def __init__(self, path: Path, frame: pl.DataFrame, unreadable: int) -> None:
        self.path = path  # the hive-partitioned Parquet dataset
        self.frame = frame  # the same messages in memory, for the Polars reference
        self.unreadable = unreadable  # rows the export read as nulls


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    folder = tmp_path_factory.mktemp("ibis")
    with chatdb.create_repository(f"sqlite:///{folder / 'demo.db'}") as repo:
        unreadable = _load(repo)
        with pytest.warns(export.ExportWarning):
            frame = export.to_polars(repo, "messages")
            export.to_parquet(repo, folder / "dataset", partition_by="month")
    return Dataset(folder / "dataset", frame, unreadable)


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        unavailable("spark", f"{exc} (pip install 'chatdb[spark]')")
    if shutil.which("java") is None and not _java_home():
        unavailable("spark", "no Java runtime (Spark 4 needs Java 17 or later)")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("chatdb-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def _java_home() -> bool:
    import os

    return bool(os.environ.get("JAVA_HOME"))


@pytest.fixture(scope="module")
def spark_table(spark: Any, dataset: Dataset) -> Any:
    import ibis

    con = ibis.pyspark.connect(spark)
    return con.read_parquet(str(dataset.path))


@pytest.fixture(scope="module")
def duckdb_table(dataset: Dataset) -> Any:
    import ibis

    con = ibis.duckdb.connect()
    return con.read_parquet(str(dataset.path / "**" / "*.parquet"), hive_partitioning=True)


def _check(got: pl.DataFrame, dataset: Dataset, what: str, call: str, *args: Any, **options: Any) -> None:
    """``got`` equals DuckDB's report over the dataset path and the Polars reference: counts
    exactly, money to the report's rounding, percentiles within the histogram's bound."""
    duckdb = getattr(analytics, call)(dataset.path, *args, **options)
    want = getattr(reference, call)(dataset.frame, *args, **options)
    if "cost_usd" in want.columns:
        want = usage._rounded(want)
    for name, other in (("DuckDB", duckdb), ("reference", want)):
        if "unreadable_messages" not in other.columns:
            got = got.drop("unreadable_messages", strict=False)
        try:
            _equal(got, other)
        except AssertionError as exc:
            raise AssertionError(f"{what} vs {name}: {exc}\ngot:\n{got}\nwant:\n{other}") from None


def _equal(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert got.columns == want.columns, (got.columns, want.columns)
    assert got.height == want.height, (got.height, want.height)
    for name in got.columns:
        if not (got[name].dtype.is_float() or want[name].dtype.is_float()):
            assert got[name].to_list() == want[name].to_list(), name
            continue
        percentile = re.fullmatch(r"p\d+(_duration)?_ms", name) is not None
        for a, b in zip(got[name], want[name], strict=True):
            assert (a is None) == (b is None), (name, a, b)
            if b is not None:
                bound = (RELATIVE_ERROR if percentile else 1e-9) * abs(b) + _ROUNDING.get(name, 0) + 1e-9
                assert abs(a - b) <= bound, (name, a, b)


# -- Spark -------------------------------------------------------------------------------------------

# Each Spark report runs two or three jobs of about a second on local[2]: a chosen set rather
# than every zone times every grouping (the DuckDB table below runs all of them).
SPARK_REPORTS = (
    ("hour", "Europe/Berlin"),
    ("day", "America/New_York"),
    ("day", "Asia/Kathmandu"),
    ("week", "Asia/Kolkata"),
    ("month", "Asia/Kolkata"),
    ("model", "UTC"),
    ("user", "UTC"),
    ("chat", "UTC"),
)


@pytest.mark.slow
def test_spark_reports_equal_duckdb_and_the_reference(spark_table: Any, dataset: Dataset) -> None:
    for by, timezone in SPARK_REPORTS:
        got = analytics.usage_report(spark_table, by, timezone=timezone)
        assert got.height > 0
        _check(got, dataset, f"spark usage_report({by!r}, {timezone})", "usage_report", by, timezone=timezone)
    options: dict[str, Any] = {"timezone": "Europe/Berlin", "breakdown": "model", "order": "desc"}
    got = analytics.usage_report(spark_table, "day", **options)
    _check(got, dataset, "spark breakdown", "usage_report", "day", **options)


@pytest.mark.slow
def test_spark_filters_cost_modes_and_the_other_reports(spark_table: Any, dataset: Dataset) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("day", {"cost_mode": "calculate"}),
        ("model", {"cost_mode": "display"}),
        ("model", {"model": "claude-sonnet-4-5-20250929"}),  # a snapshot name matches its family
        ("day", {"user_id": "u-idle"}),  # a user with no messages
        # since/until on period edges, read in the zone: the Kolkata and Berlin midnights.
        ("day", {"timezone": "Asia/Kolkata", "since": date(2026, 10, 31), "until": date(2026, 11, 1)}),
        ("hour", {"timezone": "Europe/Berlin", "since": "2026-10-25T02:00", "until": "2026-10-25T03:00"}),
        ("month", {"timezone": "Asia/Kathmandu", "since": datetime(2026, 10, 30, 18, 15, tzinfo=UTC)}),
    ]
    for by, options in cases:
        got = analytics.usage_report(spark_table, by, **options)
        _check(got, dataset, f"spark usage_report({by!r}, {options})", "usage_report", by, **options)
    totals = analytics.usage_totals(spark_table)
    _check(totals, dataset, "spark usage_totals", "usage_totals")
    # The export read the invalid JSON and wrongly typed rows as nulls: counted, costed as the
    # export costs them, and nothing is left unreadable in the dataset.
    assert dataset.unreadable > 0
    assert totals["messages"].item() == dataset.frame.height
    assert totals["unreadable_messages"].item() == 0
    idle = analytics.usage_totals(spark_table, user_id="u-idle")
    assert idle["messages"].item() == 0 and idle["cost_usd"].item() == 0
    got = analytics.cost_reported_vs_estimated(spark_table, "day", timezone="America/New_York")
    _check(got, dataset, "spark cost_reported_vs_estimated", "cost_reported_vs_estimated", "day",
           timezone="America/New_York")  # fmt: skip
    got = analytics.latency_percentiles(spark_table, "model")
    _check(got, dataset, "spark latency_percentiles", "latency_percentiles", "model")


# -- Ibis over DuckDB ----------------------------------------------------------------------------------


def test_an_ibis_duckdb_table_gives_every_report_in_every_zone(duckdb_table: Any, dataset: Dataset) -> None:
    for timezone in ZONES:
        for by in ("hour", "day", "week", "month", "model", "user", "chat"):
            got = analytics.usage_report(duckdb_table, by, timezone=timezone)
            _check(
                got, dataset, f"ibis usage_report({by!r}, {timezone})", "usage_report", by, timezone=timezone
            )
    got = analytics.latency_percentiles(duckdb_table, "month", timezone="Asia/Kathmandu")
    _check(
        got, dataset, "ibis latency_percentiles", "latency_percentiles", "month", timezone="Asia/Kathmandu"
    )
    _check(analytics.top_users(duckdb_table, 2), dataset, "ibis top_users", "top_users", 2)
    _check(analytics.token_mix(duckdb_table), dataset, "ibis token_mix", "token_mix")


def test_an_ibis_backend_is_read_through_its_messages_table(dataset: Dataset) -> None:
    import ibis

    con = ibis.duckdb.connect()
    with pytest.raises(ValidationError, match="no 'messages' table"):
        analytics.usage_totals(con)
    con.read_parquet(str(dataset.path / "**" / "*.parquet"), table_name="messages", hive_partitioning=True)
    _check(analytics.usage_totals(con), dataset, "ibis backend usage_totals", "usage_totals")
    with pytest.raises(ValidationError, match="missing chat_id"):
        analytics.usage_totals(con.table("messages").drop("chat_id"))
