"""Keep password and key hashes out of pymongo's logs.

At DEBUG, pymongo's ``pymongo.command`` logger prints the documents of every command and reply
(up to 1,000 characters each): a user's ``passwordHash`` as it is inserted or read, an API key's
``keyHash`` in the filter that looks it up, and a duplicate-key error message that quotes the
hash. pymongo itself hides only authentication commands. :func:`install` adds a filter to the
driver's loggers that replaces those values with ``***`` before any handler formats the record:
first in the command and reply documents (a copy: the documents sent are not touched), then, in
case pymongo's log record changes shape, in the formatted text.

The filter is process-wide and idempotent; every MongoRepository (chatdb.aio's too) installs it
when it is made.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SECRET_FIELDS", "install", "scrub_text"]

SECRET_FIELDS = frozenset({"passwordHash", "keyHash", "password_hash", "key_hash"})
_LOGGERS = (
    "pymongo.command",
    "pymongo.connection",
    "pymongo.serverSelection",
    "pymongo.topology",
    "pymongo.client",
)
_DOCUMENTS = ("command", "reply", "failure")
# A secret field's name, the quotes, backslashes, colon and spaces that follow it (as JSON, as
# JSON inside a JSON string, or in a server message such as "dup key: { keyHash: "..." }"), and
# its (string) value up to the closing quote.
_IN_TEXT = re.compile(
    r"(?P<name>" + "|".join(sorted(SECRET_FIELDS)) + r")(?P<sep>(?:\\*\"|\s)*[:=]\s*\\*\")"
    r"(?P<value>(?:\\\\|[^\"\\])*)"
)


def scrub_text(text: str) -> str:
    """``text`` with the value after every secret field name replaced by ``***``."""
    if not any(name in text for name in SECRET_FIELDS):
        return text
    return _IN_TEXT.sub(lambda m: f"{m['name']}{m['sep']}***" if m["value"] else m.group(), text)


def _scrub(value: Any) -> Any:
    """A copy of a document with secret fields' values (and secrets quoted in text) hidden."""
    if isinstance(value, Mapping):
        return {
            key: "***" if key in SECRET_FIELDS and value[key] is not None else _scrub(value[key])
            for key in value
        }
    if isinstance(value, (list, tuple)):
        return [_scrub(item) for item in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


class _HideHashes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record.msg, "_kwargs", None)
        if isinstance(fields, dict):
            for name in _DOCUMENTS:
                if fields.get(name) is not None:
                    fields[name] = _scrub(fields[name])
        record.msg = scrub_text(record.getMessage())
        record.args = None
        return True


_FILTER = _HideHashes()


def install() -> None:
    """Add the filter to pymongo's loggers (once per process)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
