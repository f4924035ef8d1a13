"""Administration helpers: password hashes, API keys, user lookup and a database summary.

Passwords are stored as ``scrypt$n=16384,r=8,p=1$<salt>$<hash>`` (base64 without padding): the
parameters travel with the hash, so they can be raised later without breaking old hashes. API keys
follow the Node application: a raw key ``cck_`` + 32 hex characters is shown once; the database
keeps only ``sha256(raw).hexdigest()`` and the first 12 characters as a prefix to recognise it by.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from .errors import NotFoundError, ValidationError
from .models import ApiKey, User
from .repository import ChatRepository

__all__ = [
    "API_KEY_PREFIX",
    "DatabaseInfo",
    "NewApiKey",
    "SchemaUpgrade",
    "create_api_key",
    "create_user",
    "database_info",
    "generate_api_key",
    "hash_api_key",
    "hash_password",
    "message_time_range",
    "resolve_user",
    "upgrade_schema",
    "verify_password",
]

API_KEY_PREFIX = "cck_"
KEY_PREFIX_LENGTH = 12
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_SALT_BYTES = 16
_HASH_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    """A salted scrypt hash in a self-describing text format; raises ValidationError when empty."""
    if not isinstance(password, str) or not password:
        raise ValidationError("password must not be empty")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=_HASH_BYTES, **_SCRYPT)
    params = ",".join(f"{k}={v}" for k, v in _SCRYPT.items())
    return f"scrypt${params}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a hash made by :func:`hash_password`; False for any other
    stored value (including the Node app's bcrypt hashes, which need bcrypt to check)."""
    try:
        scheme, params, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        cost = {k: int(v) for k, v in (item.split("=") for item in params.split(","))}
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), dklen=len(expected), n=cost["n"], r=cost["r"], p=cost["p"]
        )
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(actual, expected)


def hash_api_key(raw_key: str) -> str:
    """What the database stores for a raw key: its SHA-256 as lowercase hex."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def generate_api_key() -> tuple[str, str, str]:
    """A new ``(raw_key, key_hash, key_prefix)``: 128 random bits, as the Node app makes them."""
    raw = API_KEY_PREFIX + secrets.token_hex(16)
    return raw, hash_api_key(raw), raw[:KEY_PREFIX_LENGTH]


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: ``raw_key`` exists only here, it is not stored anywhere."""

    key: ApiKey
    raw_key: str

    def __repr__(self) -> str:
        return f"NewApiKey(key={self.key!r}, raw_key='{self.key.key_prefix}...')"


def resolve_user(repo: ChatRepository, user: str) -> User:
    """The user named ``user`` (a username, or failing that a user id); raises NotFoundError."""
    found = repo.get_user_by_username(user)
    if found is not None:
        return User(found.id, found.username, found.created_at, found.updated_at)
    by_id = repo.get_user_by_id(user)
    if by_id is None:
        raise NotFoundError(f"user {user!r} not found")
    return by_id


def create_user(repo: ChatRepository, username: str, password: str) -> User:
    """Store a new user with a hash of ``password``; raises DuplicateUsernameError, ValidationError."""
    return repo.create_user(username, hash_password(password))


def create_api_key(repo: ChatRepository, user: str, name: str) -> NewApiKey:
    """A new key for ``user`` (username or id); raises NotFoundError for an unknown user."""
    owner = resolve_user(repo, user)
    raw, digest, prefix = generate_api_key()
    return NewApiKey(repo.create_api_key(owner.id, digest, prefix, name), raw)


@dataclass(frozen=True)
class DatabaseInfo:
    """What ``chatdb info`` shows: never a password."""

    backend: str
    url: str
    counts: dict[str, int]
    first_message_at: datetime | None
    last_message_at: datetime | None


def database_info(repo: ChatRepository) -> DatabaseInfo:
    """Backend, redacted URL, rows per table and the messages' time range."""
    config = getattr(repo, "config", None)
    url = config.redacted_url if config is not None else ""
    counts = repo.count_rows()
    first, last = message_time_range(repo) if counts.get("messages") else (None, None)
    return DatabaseInfo(repo.backend, url, counts, first, last)


def message_time_range(repo: ChatRepository) -> tuple[datetime | None, datetime | None]:
    """``(first, last)`` message ``created_at``, or ``(None, None)`` without messages."""
    return repo.message_time_range()


@dataclass(frozen=True)
class SchemaUpgrade:
    """What ``chatdb upgrade`` did (or, with ``dry_run``, would do)."""

    backend: str
    statements: tuple[str, ...]
    applied: bool


def upgrade_schema(repo: ChatRepository, *, dry_run: bool = False) -> SchemaUpgrade:
    """Bring a database the Node app created to chatdb's schema, explicitly (never implicit):
    on MySQL/MariaDB ``content``/``metadata`` become LONGTEXT, text columns binary-collated
    VARCHAR/LONGTEXT (usernames then compare exactly), and chatdb's indexes whole; on every SQL
    backend chatdb's indexes get their current shape. Column names and meanings stay, so the
    Node app's queries keep working. MongoDB has nothing to upgrade.

    Returns the statements, run unless ``dry_run``. Raises SchemaUpgradeError, naming the rows,
    when a change would fail (a value too long for its new column) or merge data (values equal
    under the new collation); nothing is changed then."""
    if not isinstance(dry_run, bool):
        raise ValidationError(f"dry_run must be True or False, not {dry_run!r}")
    upgrade = getattr(repo, "upgrade_schema", None)
    statements = [] if upgrade is None else list(upgrade(dry_run=dry_run))
    return SchemaUpgrade(repo.backend, tuple(statements), applied=bool(statements) and not dry_run)
