"""Money and averages are rounded to a fixed precision (6 and 1 decimal places), so the same
data gives byte-identical reports on every backend, in every format."""

from __future__ import annotations

import csv
import io
import json

import pytest

from chatdb.analytics import usage

from .backends import Backend
from .cli_support import invoke

DEMO = ("demo", "--users", "3", "--chats", "15", "--messages", "400", "--days", "20", "--seed", "11")
REPORTS = [
    ("usage", "daily", "--json"),
    ("usage", "models", "--csv"),
    ("usage", "monthly", "--breakdown", "model", "--format", "nl"),
    ("usage", "weekly", "--format", "tsv"),
    ("usage", "users", "--format", "table"),
]


def run(backend: Backend, *args: str) -> str:
    """``chatdb args`` on ``backend`` (MongoDB through the seed's variables, which name the database)."""
    env = {}
    url: str | None = backend.url
    if backend.name == "mongodb":
        url = None
        env = {
            "DB_DRIVER": "mongodb",
            "MONGODB_URL": backend.config.mongodb_url or "",
            "MONGODB_DB_NAME": backend.config.mongodb_name or "",
        }
    result = invoke(url, *args, env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
@pytest.mark.sqlite
@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.mongodb
def test_the_same_data_gives_byte_identical_reports_on_every_backend(request: pytest.FixtureRequest) -> None:
    outputs: dict[str, list[str]] = {}
    for name in ("sqlite", "postgres", "mysql", "mongodb"):
        backend: Backend = request.getfixturevalue(f"{name}_backend")
        backend.reset()
        run(backend, *DEMO)
        outputs[name] = [run(backend, *args) for args in REPORTS]
    for name, texts in outputs.items():
        for args, text, expected in zip(REPORTS, texts, outputs["sqlite"], strict=True):
            assert text == expected, f"{name}: {' '.join(args)}"
    assert_rounded(outputs["sqlite"])


def assert_rounded(texts: list[str]) -> None:
    daily = json.loads(texts[0])
    models = list(csv.DictReader(io.StringIO(texts[1])))
    assert daily and models
    for row in [*daily, *models]:
        for column, places in (
            ("cost_usd", usage.COST_DECIMALS),
            ("estimated_cost_usd", usage.COST_DECIMALS),
            ("avg_duration_ms", usage.DURATION_DECIMALS),
            ("p95_duration_ms", usage.DURATION_DECIMALS),
        ):
            value = str(row[column])
            if value not in ("", "None"):
                assert len(value.partition(".")[2]) <= places, (column, value)
