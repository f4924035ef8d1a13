"""The storage format as pure functions: no database needed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from chatdb import MessageMetadata, errors
from chatdb._codec import (
    dump_content,
    dump_json,
    dump_metadata,
    format_ts,
    js_number,
    load_content,
    load_metadata,
    next_ts,
    normalize_metadata,
    parse_ts,
)


def test_timestamps_are_iso_milliseconds_with_z() -> None:
    value = datetime(2026, 11, 26, 10, 57, 38, 123456, tzinfo=UTC)
    assert format_ts(value) == "2026-11-26T10:57:38.123Z"
    assert parse_ts("2026-11-26T10:57:38.123Z") == value.replace(microsecond=123000)
    assert parse_ts("2026-11-26T11:57:38.123456+01:00") == value.replace(microsecond=123000)
    assert parse_ts("2026-11-26T10:57:38") == datetime(2026, 11, 26, 10, 57, 38, tzinfo=UTC)


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is not UTC (as on most desktops)."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_naive_datetime_is_utc_whatever_the_machine_s_time_zone(berlin: None) -> None:
    """As parse_ts reads text without an offset, and as pymongo decodes BSON dates: never
    the local time, which would shift filters and stored times by the machine's offset."""
    naive = datetime(2026, 1, 1, 0, 30)
    assert format_ts(naive) == "2026-01-01T00:30:00.000Z"
    assert format_ts(naive.replace(tzinfo=UTC)) == "2026-01-01T00:30:00.000Z"


def test_next_ts_is_strictly_after_the_previous_stored_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert next_ts(None, now) == now
    assert next_ts("2025-12-31T23:59:59.000Z", now) == now
    assert next_ts("2026-01-01T00:00:00.000Z", now) == now + timedelta(milliseconds=1)
    assert next_ts("2026-01-01T00:00:05.000Z", now) == now + timedelta(seconds=5, milliseconds=1)
    assert next_ts("not a time", now) == now


def test_metadata_is_dumped_in_the_node_key_order_without_absent_fields() -> None:
    meta = normalize_metadata({"durationMs": 5, "model": "m", "totalCostUsd": 1.0, "x": [1]})
    assert dump_metadata(meta) == '{"model":"m","totalCostUsd":1,"durationMs":5,"x":[1]}'
    assert dump_metadata(None) is None


def test_loading_metadata_keeps_wrongly_typed_known_keys_in_extra() -> None:
    loaded = load_metadata('{"model":"m","inputTokens":"12","outputTokens":3,"durationMs":4.0}')
    assert loaded == MessageMetadata(model="m", output_tokens=3, duration_ms=4, extra={"inputTokens": "12"})
    assert load_metadata("{not json") is None
    assert load_metadata("[1, 2]") is None
    assert load_metadata(None) is None
    assert load_metadata(
        '{"model":"m","inputTokens":1,"outputTokens":2,"totalCostUsd":0.5,"durationMs":3}'
    ) == (MessageMetadata("m", 1, 2, 0.5, 3))
    assert load_metadata('{"inputTokens":true}') == MessageMetadata(extra={"inputTokens": True})


def test_unreadable_content_is_shown_as_one_text_part() -> None:
    assert load_content('[{"type":"text","text":"hi"}]') == [{"type": "text", "text": "hi"}]
    assert load_content("{broken") == [{"type": "text", "text": "{broken"}]
    assert load_content('{"type":"text"}') == [{"type": "text", "text": '{"type":"text"}'}]


def test_metadata_given_with_an_extra_key_that_names_a_field_is_rejected() -> None:
    with pytest.raises(errors.ValidationError):
        normalize_metadata(MessageMetadata(extra={"inputTokens": 3}))


# What JSON.stringify writes for these numbers, worked out from ECMAScript's Number::toString:
# shortest round-trip digits, no exponent for magnitudes in [1e-6, 1e21), -0 as 0, no ".0".
JS_NUMBERS = [
    (0.1, "0.1"),
    (1e-7, "1e-7"),
    (1.5e-7, "1.5e-7"),
    (1e-6, "0.000001"),
    (3.6e-05, "0.000036"),
    (0.000001234, "0.000001234"),
    (0.050292, "0.050292"),
    (123456789.123, "123456789.123"),
    (1e20, "100000000000000000000"),
    (1e21, "1e+21"),
    (2.5e25, "2.5e+25"),
    (-0.0, "0"),
    (0.0, "0"),
    (1.0, "1"),
    (-1.5, "-1.5"),
    (-3.6e-05, "-0.000036"),
    (float(2**53), "9007199254740992"),
    (12345678901234567890.0, "12345678901234567000"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (5e-324, "5e-324"),
    (1.23e-18, "1.23e-18"),
]


@pytest.mark.parametrize(("value", "expected"), JS_NUMBERS)
def test_floats_are_written_as_json_stringify_writes_them(value: float, expected: str) -> None:
    assert js_number(value) == expected
    assert float(expected) == value  # the same number comes back


def test_stored_metadata_and_content_have_json_stringify_numbers() -> None:
    # (2**63 - 1: the largest integer metadata may hold, see _validate.json_value)
    meta = normalize_metadata(
        {"model": "m", "totalCostUsd": 3.6e-05, "x": {"f": [1e-7, 1e21, -0.0, 2**63 - 1]}}
    )
    assert dump_metadata(meta) == (
        '{"model":"m","totalCostUsd":0.000036,"x":{"f":[1e-7,1e+21,0,9223372036854775807]}}'
    )
    parts = [{"type": "text", "text": "é 🚀", "score": 123456789.123, "n": 7, "ok": True, "none": None}]
    assert dump_content(parts) == (
        '[{"type":"text","text":"é 🚀","score":123456789.123,"n":7,"ok":true,"none":null}]'
    )
    assert dump_json({1.5: 0.1, 2: "x"}, "value") == '{"1.5":0.1,"2":"x"}'
    with pytest.raises(errors.ValidationError):
        dump_json({"x": float("nan")}, "metadata")
    with pytest.raises(errors.ValidationError):
        dump_json([{"x": 0.5, "y": object()}], "content")


def test_both_number_forms_read_back_the_same() -> None:
    """Rows written before (Python's repr) and after (JSON.stringify's form) read alike."""
    before = load_metadata('{"model":"m","totalCostUsd":3.6e-05}')
    after = load_metadata('{"model":"m","totalCostUsd":0.000036}')
    assert before == after == MessageMetadata(model="m", total_cost_usd=3.6e-05)


def test_a_chat_loaded_from_a_row_is_the_chat_the_constructor_builds() -> None:
    import dataclasses
    import pickle

    from chatdb.models import Chat
    from chatdb.sql.mapping import load_chat

    for stamps in (
        ("2026-01-02T03:04:05.678Z",) * 2,
        ("2026-01-02T03:04:05.678+01:00", "2026-01-02 03:04:05"),
    ):
        row = ("c1", "title", None, "u1", *stamps)
        loaded = load_chat(row)
        built = Chat("c1", "title", None, "u1", parse_ts(stamps[0]), parse_ts(stamps[1]))
        assert type(loaded) is Chat and loaded == built and hash(loaded) == hash(built)
        assert repr(loaded) == repr(built) and dataclasses.asdict(loaded) == dataclasses.asdict(built)
        assert pickle.loads(pickle.dumps(loaded)) == built
        with pytest.raises(dataclasses.FrozenInstanceError):
            loaded.title = "changed"  # type: ignore[misc]


def test_a_message_loaded_from_a_row_is_the_message_the_constructor_builds() -> None:
    import dataclasses
    import pickle

    from chatdb.models import Message
    from chatdb.sql.mapping import load_message

    meta = '{"model":"m","inputTokens":3,"outputTokens":4,"totalCostUsd":1,"durationMs":5}'
    for stamp, metadata in (("2026-01-02T03:04:05.678Z", meta), ("2026-01-02T03:04:05.678+01:00", None)):
        row = ("m1", "c1", "user", '[{"type":"text","text":"hi"}]', stamp, metadata)
        loaded = load_message(row)
        built = Message(
            "m1",
            "c1",
            "user",
            [{"type": "text", "text": "hi"}],
            parse_ts(stamp),
            None if metadata is None else MessageMetadata("m", 3, 4, 1.0, 5, {}),
        )
        assert type(loaded) is Message and loaded == built and repr(loaded) == repr(built)
        assert type(loaded.metadata) is type(built.metadata)
        assert dataclasses.asdict(loaded) == dataclasses.asdict(built)
        assert pickle.loads(pickle.dumps(loaded)) == built
        with pytest.raises(dataclasses.FrozenInstanceError):
            loaded.role = "assistant"  # type: ignore[misc]
        if loaded.metadata is not None:
            assert hash(loaded.metadata.model) == hash("m")
            with pytest.raises(dataclasses.FrozenInstanceError):
                loaded.metadata.model = "x"  # type: ignore[misc]
