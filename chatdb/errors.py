"""Every error chatdb raises on purpose.

Callers catch one root, :class:`ChatDbError`, or a precise subclass::

    ChatDbError
    ├── ValidationError        (also a ValueError) bad input, nothing was written
    ├── NotFoundError          the chat, user or key does not exist (for this user)
    ├── ConflictError          a unique value is already taken
    │   ├── DuplicateUsernameError
    │   ├── DuplicateApiKeyError
    │   └── DuplicateMessageIdError
    ├── ConfigError            bad configuration or a missing optional dependency
    ├── SchemaError            the database lacks chatdb's tables (or has only some of them)
    ├── SchemaUpgradeError     ``chatdb upgrade`` refused: it would fail or merge the rows it names
    └── BackendError           the database failed in a way the caller did not cause
        └── BackendUnavailableError   cannot connect (names backend and host, never a password)

One warning, :class:`SchemaWarning` (a ``UserWarning``): the database's schema (one the Node app
created) cannot keep a promise; issued once per database and column, naming the fix.

Driver exceptions are translated in one place per backend and chained (``raise ... from exc``);
none escapes the public API.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ChatDbError",
    "ConfigError",
    "ConflictError",
    "DuplicateApiKeyError",
    "DuplicateMessageIdError",
    "DuplicateUsernameError",
    "NotFoundError",
    "SchemaError",
    "SchemaUpgradeError",
    "SchemaWarning",
    "ValidationError",
]


class ChatDbError(Exception):
    """Root of every chatdb error."""


class ValidationError(ChatDbError, ValueError):
    """The input breaks the contract (role, content, metadata, limits); nothing was stored."""


class NotFoundError(ChatDbError, LookupError):
    """The referenced object does not exist, or belongs to another user."""


class ConflictError(ChatDbError):
    """A value that must be unique is already stored."""


class DuplicateUsernameError(ConflictError):
    """``create_user`` with a username that is already taken (exact match)."""


class DuplicateApiKeyError(ConflictError):
    """``create_api_key`` with a key hash that is already stored."""


class DuplicateMessageIdError(ConflictError):
    """``add_message(..., message_id=...)`` with an id that is stored for a different message
    (another chat, role, content or metadata). The same message again is not an error: a retry
    returns the stored one."""


class ConfigError(ChatDbError):
    """Invalid configuration (driver, URL, path) or a missing optional dependency."""


class SchemaUpgradeError(ChatDbError):
    """The schema upgrade would fail or merge data; the message names the rows. Nothing changed."""


class SchemaWarning(UserWarning):
    """The database's schema limits a promise (e.g. TEXT content, case-insensitive usernames on a
    MySQL schema the Node app created); the message names the table, the column and the fix."""


class SchemaError(ChatDbError):
    """The database does not hold chatdb's tables, or only some of them, or an older layout of
    them; ``ensure_schema()`` (``chatdb init``) creates or upgrades them."""


class BackendError(ChatDbError):
    """The database reported an error that is not the caller's fault."""


class BackendUnavailableError(BackendError):
    """The database cannot be reached; the message names backend, host and port."""
