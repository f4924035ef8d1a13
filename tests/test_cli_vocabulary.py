"""One vocabulary for the CLI and the library: singular and plural report names, any case, zone
names in any case (UTC, utc, Z), global options before or after the subcommand; ``info --json``
is one object."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from chatdb import analytics
from chatdb.errors import ValidationError

from .cli_support import invoke, ok, ok_json, one_error_line

SMALL_DEMO = ("demo", "--users", "3", "--chats", "12", "--messages", "300", "--days", "40", "--seed", "3")


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('vocabulary') / 'chat.db'}"
    ok(url, *SMALL_DEMO)
    return url


@pytest.mark.parametrize(
    ("spellings", "key"),
    [
        (("hourly", "hour", "hours", "Hourly"), "period"),
        (("daily", "day", "days", "DAY"), "period"),
        (("weekly", "week", "weeks"), "period"),
        (("monthly", "month", "months"), "period"),
        (("models", "model", "Model"), "model"),
        (("users", "user"), "user_id"),
        (("chats", "chat"), "chat_id"),
    ],
)
def test_every_spelling_of_a_report_gives_the_same_rows(
    demo_url: str, spellings: tuple[str, ...], key: str
) -> None:
    reports = [ok_json(demo_url, "usage", name) for name in spellings]
    assert reports[0] and key in reports[0][0]
    assert all(report == reports[0] for report in reports)


@pytest.mark.parametrize("by", ["hour", "hours", "hourly", "Daily", "MONTHS", "model", "models", "user_id"])
def test_the_library_takes_the_same_names(by: str) -> None:
    frame = pl.DataFrame(
        {"chat_id": ["c"], "user_id": ["u"], "created_at": ["2026-05-01T10:00:00.000Z"], "model": ["m"]}
    )
    breakdown = "Models" if by.lower().startswith("h") else None
    assert analytics.usage_report(frame, by, breakdown=breakdown).height == 1


@pytest.mark.parametrize("zone", ["UTC", "utc", "Z", "z", "Etc/UTC"])
def test_utc_in_any_spelling(demo_url: str, zone: str) -> None:
    assert ok_json(demo_url, "usage", "--timezone", zone) == ok_json(demo_url, "usage")


def test_zone_names_in_any_case(demo_url: str) -> None:
    berlin = ok_json(demo_url, "usage", "hourly", "--timezone", "Europe/Berlin")
    assert ok_json(demo_url, "usage", "hourly", "--timezone", "europe/berlin") == berlin
    assert berlin[0]["period"].endswith(("+01:00", "+02:00"))
    assert analytics.resolve_timezone("AMERICA/NEW_YORK").key == "America/New_York"
    with pytest.raises(ValidationError, match="Mars/Olympus"):
        analytics.resolve_timezone("Mars/Olympus")


def test_breakdown_takes_the_plural_too(demo_url: str) -> None:
    assert ok_json(demo_url, "usage", "monthly", "--breakdown", "models") == ok_json(
        demo_url, "usage", "monthly", "--breakdown", "model"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("info", "--db", "{url}"),
        ("users", "list", "--db", "{url}"),
        ("usage", "models", "--db", "{url}", "--json"),
        ("chats", "list", "--user", "nobody", "--db", "{url}", "-q"),
    ],
)
def test_global_options_after_the_subcommand(demo_url: str, args: tuple[str, ...]) -> None:
    after = invoke(None, *(a.replace("{url}", demo_url) for a in args))
    before = [a for a in args if a not in ("--db", "{url}")]
    expected = invoke(demo_url, *before)
    assert (after.exit_code, after.stdout) == (expected.exit_code, expected.stdout)


def test_db_after_the_subcommand_wins_and_debug_and_quiet_work_there(demo_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    line = one_error_line(invoke(demo_url, "info", "--db", f"sqlite:///{missing}"))
    assert str(missing) in line
    quiet = invoke(demo_url, "users", "list", "--limit", "1", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_info_json_is_one_object(demo_url: str) -> None:
    facts = ok_json(demo_url, "info")
    assert isinstance(facts, dict)
    assert facts["backend"] == "sqlite" and facts["messages_rows"] == 300
    assert set(facts) == {
        "backend",
        "url",
        "users_rows",
        "chats_rows",
        "messages_rows",
        "api_keys_rows",
        "first_message_at",
        "last_message_at",
    }
