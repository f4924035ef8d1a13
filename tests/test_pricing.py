"""The price table: dated prices, model aliases, user overrides, and unpriced never counted as $0."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from chatdb.analytics import load_prices, usage_report, usage_totals
from chatdb.analytics.pricing import bundled_prices
from chatdb.errors import ConfigError


def test_bundled_table_names_its_source_and_date() -> None:
    table = bundled_prices()
    assert "anthropic.com" in table.source and "as of 20" in table.source


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
        ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),
        ("Claude-Opus-4-1", "claude-opus-4-1"),
        ("gpt-4o", None),
        ("llama-3.1-8b-instruct", None),
        ("", None),
    ],
)
def test_snapshot_and_cloud_names_resolve_to_their_family(name: str, family: str | None) -> None:
    assert load_prices().family(name) == family


def test_every_family_of_each_generation_is_priced() -> None:
    models = set(load_prices().models)
    for family in ("claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-3-7-sonnet",
                   "claude-3-5-sonnet", "claude-3-5-haiku", "claude-3-opus", "claude-3-haiku"):  # fmt: skip
        assert family in models


def test_a_price_applies_from_its_date_so_history_is_repriced_right() -> None:
    table = load_prices()
    # Claude 3.5 Haiku launched at $1/$5 and was cut to $0.80/$4.
    before = table.price_for("claude-3-5-haiku-20241022", date(2024, 11, 20))
    after = table.price_for("claude-3-5-haiku-20241022", datetime(2024, 12, 2, 0, 0, tzinfo=UTC))
    assert before is not None and (before.input, before.output) == (1.0, 5.0)
    assert after is not None and (after.input, after.output) == (0.8, 4.0)
    # Nothing applies before a model's first price: unpriced, not the later price.
    assert table.price_for("claude-sonnet-4-5", date(2025, 9, 28)) is None


def test_cost_counts_all_four_token_kinds_per_million() -> None:
    cost = load_prices().cost(
        "claude-sonnet-4-5-20250929", date(2025, 10, 1), 1_000_000, 100_000, 10_000, 200_000
    )
    assert cost == pytest.approx(3.0 + 1.5 + 0.0375 + 0.06)
    assert load_prices().cost("gpt-4o", date(2025, 10, 1), 10, 10) is None


def _frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    base = {"message_id": "m", "chat_id": "c", "user_id": "u", "role": "assistant"}
    return pl.DataFrame([base | {"message_id": f"m{i}"} | row for i, row in enumerate(rows)])


def _at(day: int) -> datetime:
    return datetime(2025, 10, day, 12, tzinfo=UTC)


def test_a_model_without_price_is_reported_as_unpriced_never_as_zero() -> None:
    frame = _frame(
        [
            {"created_at": _at(1), "model": "mystery-model", "input_tokens": 1000, "output_tokens": 10},
            {"created_at": _at(2), "model": "mystery-model", "input_tokens": 1000, "output_tokens": 10},
            {
                "created_at": _at(2),
                "model": "claude-sonnet-4-5",
                "input_tokens": 1_000_000,
                "output_tokens": 0,
            },
        ]
    )
    by_model = usage_report(frame, "model").rows_by_key("model", named=True, unique=True)
    assert by_model["mystery-model"]["cost_usd"] is None
    assert by_model["mystery-model"]["unpriced_messages"] == 2
    assert by_model["mystery-model"]["input_tokens"] == 2000
    days = usage_report(frame, "day")
    assert days["cost_usd"].to_list() == [None, pytest.approx(3.0)]
    assert days["unpriced_messages"].to_list() == [1, 1]
    totals = usage_totals(frame)
    assert totals.row(0, named=True)["cost_usd"] == pytest.approx(3.0)
    assert totals.row(0, named=True)["unpriced_messages"] == 2


def test_cost_modes_choose_reported_estimated_or_both() -> None:
    frame = _frame(
        [
            {
                "created_at": _at(16),
                "model": "claude-haiku-4-5",
                "input_tokens": 1_000_000,
                "total_cost_usd": 9.0,
            },
            {"created_at": _at(20), "model": "claude-haiku-4-5", "input_tokens": 1_000_000},
        ]
    )

    def total(mode: str) -> dict[str, object]:
        return usage_totals(frame, cost_mode=mode).row(0, named=True)  # type: ignore[arg-type]

    assert (total("auto")["cost_usd"], total("auto")["estimated_cost_usd"]) == (10.0, 1.0)
    assert (total("calculate")["cost_usd"], total("calculate")["estimated_cost_usd"]) == (2.0, 2.0)
    display = total("display")
    assert (display["cost_usd"], display["estimated_cost_usd"], display["unpriced_messages"]) == (9.0, 0.0, 1)


def test_messages_without_any_usage_are_neither_costed_nor_unpriced() -> None:
    frame = _frame(
        [{"created_at": _at(1), "role": "user"}, {"created_at": _at(16), "model": "claude-haiku-4-5"}]
    )
    row = usage_totals(frame).row(0, named=True)
    assert (row["messages"], row["cost_usd"], row["unpriced_messages"]) == (2, 0.0, 0)


def test_a_json_override_replaces_the_history_of_the_models_it_names(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "prices": [
                    {"model": "claude-sonnet-4-5", "input": 2.0, "output": 10.0},
                    {"model": "in-house-model", "from": "2025-01-01", "input": 0.5, "output": 1.0},
                ],
                "aliases": {"house-v2": "in-house-model"},
            }
        )
    )
    table = load_prices(path)
    sonnet = table.price_for("claude-sonnet-4-5-20250929", date(2024, 1, 1))
    assert sonnet is not None and (sonnet.input, sonnet.cache_write, sonnet.cache_read) == (2.0, 2.5, 0.2)
    assert table.family("house-v2") == "in-house-model"
    assert table.family("claude-3-haiku") == "claude-3-haiku"  # not named: bundled price kept
    assert load_prices(path, replace=True).family("claude-3-haiku") is None
    frame = _frame([{"created_at": _at(1), "model": "house-v2", "input_tokens": 2_000_000}])
    assert usage_totals(frame, prices=path)["cost_usd"].item() == pytest.approx(1.0)


def test_a_csv_override_with_aliases(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(
        "model,from,input,output,cache_write,cache_read,aliases\n"
        "claude-haiku-4-5,2025-10-15,1,5,,,\n"
        "claude-haiku-4-5,2026-01-01,0.5,2.5,0.6,0.05,haiku-fast;haiku-cheap\n"
    )
    table = load_prices(path)
    assert table.price_for("haiku-cheap", date(2026, 2, 1)).input == 0.5  # type: ignore[union-attr]
    assert table.price_for("claude-haiku-4-5", date(2025, 12, 1)).cache_read == pytest.approx(0.1)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.json", '{"prices": [{"model": "x", "input": "cheap", "output": 1}]}', "must be a number"),
        (
            "bad.json",
            '{"prices": [{"model": "x", "from": "soon", "input": 1, "output": 1}]}',
            "must be a date",
        ),
        ("bad.csv", "name,price\nx,1\n", "CSV needs the columns"),
    ],
)
def test_a_malformed_price_file_is_a_config_error(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_prices(path)


def test_a_missing_price_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read price file"):
        load_prices(tmp_path / "nope.json")
