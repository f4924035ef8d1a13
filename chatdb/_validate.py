"""The contract's input limits, checked before any I/O so every backend rejects the same input.

Lengths are in characters (code points), which is what MySQL's VARCHAR counts too.
"""

from __future__ import annotations

from typing import Any

from .errors import ValidationError

MAX_LIMIT = 1000
MAX_USERNAME = 255
MAX_USER_ID = 255
MAX_KEY_HASH = 128
MAX_KEY_PREFIX = 20
MAX_KEY_NAME = 255
MAX_SESSION_ID = 255
ROLES = ("user", "assistant")
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
