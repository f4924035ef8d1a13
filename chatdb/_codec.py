"""The storage format shared with the Node application, as pure functions.

Timestamps are ISO 8601 UTC strings with milliseconds and ``Z`` (``new Date().toISOString()``);
``content`` and ``metadata`` are compact JSON with camelCase keys, non-ASCII kept as UTF-8
(``JSON.stringify``). Every backend goes through these functions, so the same input is stored the
same way everywhere; the loaders are lenient because other programs write these tables too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from . import _validate
from .errors import ValidationError
from .models import ContentPart, MessageMetadata

__all__ = [
    "METADATA_FIELDS",
    "dump_content",
    "dump_json",
    "dump_metadata",
    "format_ts",
    "js_number",
    "load_content",
    "load_metadata",
    "metadata_to_dict",
    "next_ts",
    "next_ts_after",
    "normalize_content",
    "normalize_metadata",
    "parse_ts",
    "parse_ts_or_none",
    "utcnow",
]

_MS = timedelta(milliseconds=1)

# (attribute, stored camelCase key); the attribute name is accepted on input as well
METADATA_FIELDS: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("input_tokens", "inputTokens"),
    ("output_tokens", "outputTokens"),
    ("total_cost_usd", "totalCostUsd"),
    ("duration_ms", "durationMs"),
)
_BY_KEY = {camel: attr for attr, camel in METADATA_FIELDS} | {attr: attr for attr, _ in METADATA_FIELDS}
_STORED_KEYS = {camel: attr for attr, camel in METADATA_FIELDS}
_STORED_KEY_SET = frozenset(_STORED_KEYS)
_decoder = json.JSONDecoder()
_raw_decode = _decoder.raw_decode


def _decode(text: str) -> Any:
    """``json.loads`` for stored JSON: the C scanner directly (stored JSON is compact), the full
    decoder only for text with surrounding whitespace or errors (which it raises)."""
    try:
        value, end = _raw_decode(text)
        if end == len(text):
            return value
    except ValueError:
        pass
    return _decoder.decode(text)


# -- timestamps --------------------------------------------------------------------------------


def utcnow() -> datetime:
    """Now in UTC, truncated to milliseconds (what the database can hold)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_ts(value: datetime) -> str:
    """The stored form. A naive datetime is UTC (as ``parse_ts`` reads text without an offset,
    and as pymongo decodes BSON dates), never the machine's local time."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_ts(text: str) -> datetime:
    if len(text) == 24 and text[23] == "Z":  # the stored form: already UTC, whole milliseconds
        return datetime.fromisoformat(text)
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def parse_ts_or_none(text: str | None) -> datetime | None:
    return None if text is None else parse_ts(text)


def next_ts(previous: str | None, now: datetime | None = None) -> datetime:
    """A timestamp strictly after ``previous`` (a stored one), normally just now.

    Writes that must be ordered (messages of one chat, ``updated_at`` moving forward) take
    ``max(now, previous + 1 ms)``: ordering by the stored string then equals insertion order,
    on every backend and for the Node application that orders by ``created_at`` alone.
    """
    return next_ts_after((previous,), now)


def next_ts_after(previous: Iterable[str | None], now: datetime | None = None) -> datetime:
    """A timestamp strictly after every one of ``previous`` (stored ones; None and unreadable
    values are ignored), normally just now: ``max(now, latest + 1 ms)``. A message's
    ``created_at`` takes it over the chat's ``updated_at`` and its last message's
    ``created_at``, so another writer moving ``updated_at`` back cannot put a message before
    the chat's earlier ones."""
    stamp = now or utcnow()
    for value in previous:
        if not value:
            continue
        try:
            floor = parse_ts(value) + _MS
        except (TypeError, ValueError):
            continue
        stamp = max(stamp, floor)
    return stamp


# -- JSON ----------------------------------------------------------------------------------------


def js_number(value: float) -> str:
    """A float as ``JSON.stringify`` writes it (ECMAScript Number::toString): the shortest
    digits that round-trip (as Python's ``repr``), without an exponent for magnitudes in
    [1e-6, 1e21), ``-0`` as ``0`` and integral values without ``.0``: ``0.000036``, not
    ``3.6e-05``; ``1e+21``; ``1e-7``. Other readers of the database (SQL reports, ``jq``)
    then see the bytes the Node application writes. Raises ValueError for NaN and infinities."""
    if not math.isfinite(value):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)  # finite
    digits = "".join(map(str, digit_tuple))
    significant = digits.rstrip("0")
    k = len(significant)  # value = 0.<significant> * 10**n
    n = exponent + len(digits)
    if k <= n <= 21:
        text = significant + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{significant[:n]}.{significant[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + significant
    else:
        power = f"e{'+' if n >= 1 else '-'}{abs(n - 1)}"
        text = significant + power if k == 1 else f"{significant[0]}.{significant[1:]}{power}"
    return "-" + text if sign else text


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(isinstance(key, float) or _has_float(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_float(item) for item in value)
    return False


def _js_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return js_number(key)
    if key is None or isinstance(key, (bool, int)):
        return json.dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _dump_js(value: Any, depth: int = 0) -> str:
    """``json.dumps`` (compact, UTF-8 kept) with floats written by :func:`js_number`: the
    standard encoder's C speed-up writes ``repr(float)`` and takes no hook for it."""
    if depth > 500:
        raise ValueError("value nests too deeply (or is circular)")
    if isinstance(value, float):
        return js_number(value)
    if isinstance(value, dict):
        items = (
            f"{json.dumps(_js_key(k), ensure_ascii=False)}:{_dump_js(v, depth + 1)}" for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_dump_js(item, depth + 1) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def dump_json(value: Any, what: str) -> str:
    """Compact JSON as ``JSON.stringify`` writes it (numbers too: see :func:`js_number`);
    ValidationError if it cannot be stored."""
    try:
        if _has_float(value):
            text = _dump_js(value)
        else:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{what} cannot be stored as JSON: {exc}") from None
    return text


# -- content -------------------------------------------------------------------------------------


def normalize_content(content: Any) -> list[ContentPart]:
    """Check the parts of a message and return them as a fresh list of dicts (a deep copy, by
    the rules of :func:`chatdb._validate.json_value`)."""
    if isinstance(content, (str, bytes, Mapping)) or not isinstance(content, (list, tuple)):
        raise ValidationError("content must be a list of parts such as {'type': 'text', 'text': ...}")
    if not content:
        raise ValidationError("content must have at least one part")
    parts: list[ContentPart] = []
    for index, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise ValidationError(f"content[{index}] must be an object, not {type(part).__name__}")
        kind = part.get("type")
        if not isinstance(kind, str) or not kind:
            raise ValidationError(f"content[{index}] needs a string 'type'")
        required = {"text": ("text",), "image": ("imageData", "mimeType")}.get(kind, ())
        for key in required:
            if not isinstance(part.get(key), str):
                raise ValidationError(f"content[{index}] of type {kind!r} needs a string {key!r}")
        parts.append(_validate.json_value(f"content[{index}]", part, depth=2))
    return parts


def dump_content(parts: list[ContentPart]) -> str:
    return dump_json(parts, "content")


def load_content(raw: Any) -> list[ContentPart]:
    """Parts as stored; unreadable content is shown as one text part holding the raw value."""
    if isinstance(raw, list):
        return raw
    if isinstance(raw, (str, bytes)):
        try:
            value = _decode(raw if isinstance(raw, str) else raw.decode("utf-8"))
        except ValueError:
            value = None
        if isinstance(value, list):
            return value
        return [{"type": "text", "text": raw if isinstance(raw, str) else raw.decode("utf-8", "replace")}]
    return []


# -- metadata ------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_metadata_value(attr: str, value: Any) -> Any:
    if value is None:
        return None
    if attr == "model":
        if not isinstance(value, str):
            raise ValidationError("metadata model must be a string")
        return value
    if attr == "total_cost_usd":
        if _is_int(value) or isinstance(value, float):
            try:
                number = float(value)
            except OverflowError:  # an int such as 10**400
                number = math.inf
            if math.isfinite(number) and number >= 0:
                return number
        raise ValidationError("metadata totalCostUsd must be a finite number >= 0")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or not 0 <= value <= _validate.MAX_INT:
        raise ValidationError(f"metadata {attr} must be an integer from 0 to 2**63 - 1")
    return int(value)


def normalize_metadata(metadata: Any) -> MessageMetadata | None:
    """Accept a MessageMetadata or a mapping with camelCase or snake_case keys."""
    if metadata is None:
        return None
    if isinstance(metadata, MessageMetadata):
        values = {attr: getattr(metadata, attr) for attr, _ in METADATA_FIELDS}
        extra = dict(metadata.extra)
    elif isinstance(metadata, Mapping):
        values, extra = {}, {}
        for key, value in metadata.items():
            if not isinstance(key, str):
                raise ValidationError("metadata keys must be strings")
            attr = _BY_KEY.get(key)
            if attr is None:
                extra[key] = value
            elif attr in values:
                raise ValidationError(f"metadata gives {attr} twice")
            else:
                values[attr] = value
    else:
        raise ValidationError("metadata must be a MessageMetadata or a mapping")
    for key in extra:
        if key in _BY_KEY:
            raise ValidationError(f"metadata extra may not hold the field {key!r}")
    checked = {attr: _check_metadata_value(attr, value) for attr, value in values.items()}
    if all(value is None for value in checked.values()) and not extra:
        return None
    return MessageMetadata(**checked, extra=_validate.json_value("metadata", extra))


def metadata_to_dict(metadata: MessageMetadata) -> dict[str, Any]:
    """The stored shape: camelCase keys in the Node order, absent fields left out, extra last."""
    stored: dict[str, Any] = {}
    for attr, camel in METADATA_FIELDS:
        value = getattr(metadata, attr)
        if value is None:
            continue
        if attr == "total_cost_usd" and float(value).is_integer() and value <= _validate.MAX_INT:
            value = int(value)  # JSON.stringify(1.0) == "1" (and within what MongoDB can store)
        stored[camel] = value
    stored.update(metadata.extra)
    return stored


def dump_metadata(metadata: MessageMetadata | None) -> str | None:
    return None if metadata is None else dump_json(metadata_to_dict(metadata), "metadata")


def _count_or_none(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 0)


class _MetadataSlots:
    """MessageMetadata's slot layout without the frozen ``__init__`` (see load_metadata)."""

    __slots__ = MessageMetadata.__slots__


def load_metadata(raw: Any) -> MessageMetadata | None:
    """Lenient: a known key of the wrong type stays in ``extra`` unchanged, so nothing is lost."""
    if raw is None:
        return None
    if isinstance(raw, (str, bytes)):
        try:
            raw = _decode(raw if isinstance(raw, str) else raw.decode("utf-8"))
        except ValueError:
            return None
    if not isinstance(raw, Mapping):
        return None
    if _STORED_KEY_SET.issuperset(raw):  # the common case, read on every page of messages
        model, cost = raw.get("model"), raw.get("totalCostUsd")
        tokens_in, tokens_out, duration = (
            raw.get("inputTokens"),
            raw.get("outputTokens"),
            raw.get("durationMs"),
        )
        if (
            (model is None or type(model) is str)
            and _count_or_none(tokens_in)
            and _count_or_none(tokens_out)
            and _count_or_none(duration)
            and (cost is None or (type(cost) in (int, float) and 0 <= cost < math.inf))
        ):
            # Built as sql.mapping.load_chat builds a Chat: slot stores, then the frozen class.
            metadata: Any = _MetadataSlots.__new__(_MetadataSlots)
            metadata.model, metadata.input_tokens, metadata.output_tokens = model, tokens_in, tokens_out
            metadata.total_cost_usd = None if cost is None else float(cost)
            metadata.duration_ms, metadata.extra = duration, {}
            metadata.__class__ = MessageMetadata
            built: MessageMetadata = metadata
            return built
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        attr = _STORED_KEYS.get(key)
        if attr is not None and attr not in values:
            try:
                values[attr] = _check_metadata_value(attr, value)
                continue
            except ValidationError:
                pass
        extra[key] = value
    return MessageMetadata(**values, extra=extra)
