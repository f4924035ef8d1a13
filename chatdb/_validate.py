"""The contract's input limits, checked before any I/O so every backend rejects the same input.

Lengths are in characters (code points), which is what MySQL's VARCHAR counts too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import ValidationError

MAX_LIMIT = 1000
MAX_USERNAME = 255
MAX_USER_ID = 255
MAX_KEY_HASH = 128
MAX_KEY_PREFIX = 20
MAX_KEY_NAME = 255
MAX_SESSION_ID = 255
MAX_MESSAGE_ID = 36  # the id columns' width (a UUID's length)
# JSON in content and metadata (see json_value): what every backend stores and reads back.
MAX_JSON_DEPTH = 64  # nested arrays/objects; MongoDB refuses documents over 100 levels
MIN_INT, MAX_INT = -(2**63), 2**63 - 1  # BSON's int64; pymongo cannot encode anything wider
ROLES = ("user", "assistant")
_MESSAGE_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_MESSAGE_ID}}}")
DEFAULT_TITLE = "New Chat"


def text(field: str, value: Any, *, max_len: int | None = None, allow_empty: bool = False) -> str:
    """A string that every backend stores unchanged: no NUL (PostgreSQL rejects it), valid UTF-8."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, not {type(value).__name__}")
    if not value and not allow_empty:
        raise ValidationError(f"{field} must not be empty")
    if max_len is not None and len(value) > max_len:
        raise ValidationError(f"{field} is longer than {max_len} characters")
    if "\x00" in value:
        raise ValidationError(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{field} is not valid Unicode (lone surrogate)") from None
    return value


def user_id(value: Any) -> str:
    return text("user_id", value, max_len=MAX_USER_ID)


def message_id(value: Any) -> str:
    """A client-chosen message id: 1 to MAX_MESSAGE_ID ASCII letters, digits, ``-`` and ``_``
    (a UUID's text fits)."""
    if not isinstance(value, str):
        raise ValidationError(f"message_id must be a string, not {type(value).__name__}")
    if not _MESSAGE_ID.fullmatch(value):
        raise ValidationError(
            f"message_id must be 1 to {MAX_MESSAGE_ID} letters, digits, '-' or '_' (such as a UUID), "
            f"not {value[: MAX_MESSAGE_ID + 4]!r}"
        )
    return value


def role(value: Any) -> str:
    if value not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}, not {value!r}")
    return str(value)


def title(value: Any) -> str | None:
    """None keeps the title (on update); '' means the default title."""
    if value is None:
        return None
    return text("title", value, allow_empty=True) or DEFAULT_TITLE


def page(limit: Any, offset: Any) -> tuple[int, int]:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationError(f"offset must be an integer >= 0, not {offset!r}")
    return limit, offset


def table(value: Any, names: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in names:
        raise ValidationError(f"table must be one of {', '.join(names)}, not {value!r}")
    return value


def batch_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"batch_size must be an integer >= 1, not {value!r}")
    return value


def flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{field} must be True or False, not {value!r}")
    return value


def lookup_id(field: str, value: Any) -> str | None:
    """An id used only to look something up: None when no stored id could equal it."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        return None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return value


def json_value(what: str, value: Any, depth: int = 1) -> Any:
    """A fresh copy of a JSON value that every backend stores and reads back unchanged, or
    ValidationError (never RecursionError or OverflowError) saying where it breaks the rules:

    * objects and arrays nest at most MAX_JSON_DEPTH deep (``depth`` is ``value``'s own level);
    * keys are strings without NUL (BSON keys are C strings) and no object holds both ``$ref``
      and ``$id`` (MongoDB reads that back as a DBRef);
    * integers lie in MIN_INT..MAX_INT (signed 64-bit), floats are finite;
    * strings are valid Unicode (no lone surrogate); tuples become lists; other types are refused.
    """
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return _json_text(what, value)
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise ValidationError(f"{what} holds an integer outside the signed 64-bit range")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{what} holds a number that is not finite ({value!r})")
        return float(value)
    if isinstance(value, (Mapping, list, tuple)):
        if depth > MAX_JSON_DEPTH:
            raise ValidationError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
        if not isinstance(value, Mapping):
            return [json_value(what, item, depth + 1) for item in value]
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{what} has a key that is not a string ({type(key).__name__})")
            if "\x00" in key:
                raise ValidationError(f"{what} has a key with a NUL character")
            copy[_json_text(what, key)] = json_value(what, item, depth + 1)
        if "$ref" in copy and "$id" in copy:
            raise ValidationError(f"{what} has an object with both $ref and $id (MongoDB reads a DBRef)")
        return copy
    raise ValidationError(f"{what} holds a {type(value).__name__}, which JSON cannot store")


def _json_text(what: str, value: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{what} is not valid Unicode (lone surrogate)") from None
    return str(value)
