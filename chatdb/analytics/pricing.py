"""Claude model prices, dated, so a message is priced at what its model cost on the day it was sent.

The bundled table (``prices.json`` beside this module) lists USD per million input, output,
cache-write and cache-read tokens per model family, each with the date from which it applies, and
names its source. Dated snapshot names (``claude-sonnet-4-5-20250929``), ``-latest`` aliases and
cloud spellings (``anthropic.claude-3-5-haiku-20241022-v1:0``, ``claude-3-5-sonnet-v2@20241022``)
resolve to their family. A model that resolves to nothing has no price: callers count it as
unpriced, never as $0.

A user file (JSON in the bundled shape, or CSV with columns ``model,from,input,output`` and
optional ``cache_write,cache_read,aliases``) overrides the table: every model it names takes the
file's price history instead of the bundled one; other models keep theirs.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["Price", "PriceTable", "bundled_prices", "load_prices", "normalize_model"]

# Anthropic's standard prompt-cache multipliers, used when a user file gives no cache prices.
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1
_EPOCH = date(1970, 1, 1)

_PROVIDER_PREFIX = re.compile(r"^(?:[a-z]{2,4}\.)?anthropic[./]")
_CLOUD_SUFFIX = re.compile(r"(?:-v\d+(?::\d+)?|@\d{8})$")
_SNAPSHOT_SUFFIX = re.compile(r"(?:-\d{8}|-latest|-v\d+)$")


@dataclass(frozen=True)
class Price:
    """USD per million tokens for one model family from ``effective_from`` (UTC midnight) on."""

    model: str
    effective_from: date
    input: float
    output: float
    cache_write: float
    cache_read: float

    def cost(
        self,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
    ) -> float:
        """The USD cost of these token counts at this price."""
        return (
            input_tokens * self.input
            + output_tokens * self.output
            + cache_creation_input_tokens * self.cache_write
            + cache_read_input_tokens * self.cache_read
        ) / 1_000_000


def normalize_model(model: str) -> str:
    """Lower-case and strip cloud provider spellings (``anthropic.`` prefixes, ``-v1:0``, ``@date``)."""
    name = model.strip().lower()
    name = _PROVIDER_PREFIX.sub("", name)
    return _CLOUD_SUFFIX.sub("", name)


@dataclass(frozen=True)
class PriceTable:
    """Dated prices per model family plus aliases; immutable, cheap to query."""

    prices: tuple[Price, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        history: dict[str, list[Price]] = {}
        for price in sorted(self.prices, key=lambda p: (p.model, p.effective_from)):
            history.setdefault(price.model, []).append(price)
        object.__setattr__(self, "_history", history)

    @property
    def history(self) -> dict[str, list[Price]]:
        """Prices per family, oldest first."""
        value: dict[str, list[Price]] = self._history  # type: ignore[attr-defined]
        return value

    @property
    def models(self) -> list[str]:
        """The priced model families, sorted."""
        return sorted(self.history)

    def family(self, model: str | None) -> str | None:
        """The priced family ``model`` belongs to, or None when it has no price."""
        if not model:
            return None
        name = normalize_model(model)
        for _ in range(3):  # e.g. "...-20241022-v2" needs two strips
            if name in self.history:
                return name
            target = self.aliases.get(name)
            if target is not None and target in self.history:
                return target
            stripped = _SNAPSHOT_SUFFIX.sub("", name)
            if stripped == name:
                break
            name = stripped
        return None

    def price_for(self, model: str | None, at: datetime | date) -> Price | None:
        """The price of ``model`` on ``at`` (UTC), or None: unknown model, or before its first price."""
        family = self.family(model)
        if family is None:
            return None
        day = at.astimezone(UTC).date() if isinstance(at, datetime) else at
        current = None
        for price in self.history[family]:
            if price.effective_from <= day:
                current = price
        return current

    def cost(
        self,
        model: str | None,
        at: datetime | date,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
    ) -> float | None:
        """USD for these tokens at the price of the day, or None when the model has no price."""
        price = self.price_for(model, at)
        if price is None:
            return None
        return price.cost(input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens)

    def merged(self, override: PriceTable) -> PriceTable:
        """This table with every family named in ``override`` taking the override's history."""
        replaced = set(override.history)
        kept = [p for p in self.prices if p.model not in replaced]
        sources = " + ".join(s for s in (self.source, override.source) if s)
        return PriceTable(tuple(kept) + override.prices, {**self.aliases, **override.aliases}, sources)


def _number(entry: Mapping[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key!r} must be a number, not {value!r}") from None
    if not number >= 0:
        raise ConfigError(f"{where}: {key!r} must be >= 0")
    return number


def _price(entry: Mapping[str, Any], where: str) -> Price:
    model = entry.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{where}: every price needs a 'model'")
    start = entry.get("from") or entry.get("effective_from")
    try:
        effective = date.fromisoformat(str(start)) if start else _EPOCH
    except ValueError:
        raise ConfigError(f"{where}: 'from' must be a date like 2025-01-31, not {start!r}") from None
    price_in = _number(entry, "input", where)

    def optional(key: str, factor: float) -> float:
        given = entry.get(key)
        return price_in * factor if given in (None, "") else _number(entry, key, where)

    return Price(
        normalize_model(model),
        effective,
        price_in,
        _number(entry, "output", where),
        optional("cache_write", CACHE_WRITE_FACTOR),
        optional("cache_read", CACHE_READ_FACTOR),
    )


def _table_from_entries(
    entries: Iterable[Mapping[str, Any]], aliases: Mapping[str, Any], source: str, where: str
) -> PriceTable:
    prices = tuple(_price(entry, f"{where} price {i + 1}") for i, entry in enumerate(entries))
    names = {normalize_model(str(k)): normalize_model(str(v)) for k, v in aliases.items()}
    return PriceTable(prices, names, source)


def _parse_json(text: str, where: str) -> PriceTable:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    if isinstance(data, list):
        data = {"prices": data}
    if not isinstance(data, dict) or not isinstance(data.get("prices"), list):
        raise ConfigError(f"{where}: expected {{'prices': [...], 'aliases': {{...}}}} or a list of prices")
    aliases = data.get("aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(e, dict) for e in data["prices"]):
        raise ConfigError(f"{where}: 'prices' must be objects and 'aliases' a mapping")
    return _table_from_entries(data["prices"], aliases, str(data.get("source") or where), where)


def _parse_csv(text: str, where: str) -> PriceTable:
    reader = csv.DictReader(text.splitlines())
    missing = {"model", "input", "output"} - set(reader.fieldnames or ())
    if missing:
        raise ConfigError(f"{where}: CSV needs the columns model, input, output (missing {sorted(missing)})")
    entries, aliases = [], {}
    for row in reader:
        entries.append(row)
        for alias in re.split(r"[;\s]+", row.get("aliases") or ""):
            if alias:
                aliases[alias] = row["model"]
    return _table_from_entries(entries, aliases, where, where)


def bundled_prices() -> PriceTable:
    """The price table shipped with chatdb (source and date in its ``source``)."""
    text = resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8")
    return _parse_json(text, "bundled prices.json")


def load_prices(path: str | Path | None = None, *, replace: bool = False) -> PriceTable:
    """The bundled table, overridden by the JSON or CSV file at ``path`` when given.

    Every model the file names takes the file's price history; ``replace=True`` uses the file
    alone. Raises ConfigError when the file cannot be read or is malformed.
    """
    table = bundled_prices()
    if path is None:
        return table
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read price file {str(file)!r}: {exc.strerror or exc}") from None
    where = file.name
    override = _parse_csv(text, where) if file.suffix.lower() == ".csv" else _parse_json(text, where)
    return override if replace else table.merged(override)
