"""Which database to use: ``DbConfig``, built directly, from a URL, or from the environment.

A URL's secrets are kept for connecting and shown nowhere else: ``repr``, error messages and
``redacted_url`` print ``***`` in their place. Secrets are the password in ``user:password@``, the
value of every query parameter whose name holds ``pass``, ``pwd``, ``secret``, ``token``,
``key``-like words (see :data:`SECRET_PARAMETER_WORDS`: ``password``, ``sslpassword``,
``tlsCertificateKeyFilePassword``, ``access_token``, ...), and within MongoDB's
``authMechanismProperties`` the values of such properties (``AWS_SESSION_TOKEN:***``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal, cast
from urllib.parse import SplitResult, quote, unquote, unquote_plus, urlsplit

from .errors import ConfigError

__all__ = [
    "DRIVERS",
    "SECRET_PARAMETER_WORDS",
    "DbConfig",
    "Driver",
    "redact_text",
    "redact_url",
    "url_secrets",
]

Driver = Literal["sqlite", "postgres", "mysql", "mongodb"]
DRIVERS: tuple[Driver, ...] = ("sqlite", "postgres", "mysql", "mongodb")
DEFAULT_SQLITE_PATH = "./data/chat.db"
DEFAULT_MONGODB_NAME = "ccluster"

_SCHEMES: dict[str, Driver] = {
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "postgresql+psycopg": "postgres",
    "postgresql+psycopg2": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mysql+pymysql": "mysql",
    "mariadb+pymysql": "mysql",
    "mysql+mysqldb": "mysql",
    "mariadb+mysqldb": "mysql",
    "mongodb": "mongodb",
    "mongodb+srv": "mongodb",
}
_URL_FIELD: dict[Driver, str] = {
    "postgres": "postgres_url",
    "mysql": "mysql_url",
    "mongodb": "mongodb_url",
}


# A query parameter (or authMechanismProperties entry) whose lower-cased name contains one of
# these holds a secret. Broad on purpose: hiding a harmless value (a key file's path) costs less
# than printing a credential.
SECRET_PARAMETER_WORDS = (
    "pass",  # password, passwd, sslpassword, passfile, tlsCertificateKeyFilePassword
    "pwd",
    "secret",
    "token",  # token, access_token, AWS_SESSION_TOKEN
    "apikey",
    "api_key",
    "accesskey",
    "access_key",
    "credential",
    "signature",
    "private",
)
_PROPERTY_LISTS = ("authmechanismproperties",)  # values that are comma lists of NAME:value


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_PARAMETER_WORDS)


def _query_pairs(query: str) -> list[tuple[str, str | None]]:
    """The raw (still percent-encoded) ``name=value`` pairs of a query; None for a bare name."""
    pairs: list[tuple[str, str | None]] = []
    for item in query.replace(";", "&").split("&"):
        name, equals, value = item.partition("=")
        pairs.append((name, value if equals else None))
    return pairs


def _secret_properties(value: str) -> list[str]:
    """Secret values inside an ``authMechanismProperties`` list (``NAME:value,NAME:value``)."""
    found = []
    for item in unquote_plus(value).split(","):
        name, colon, secret = item.partition(":")
        if colon and secret and _is_secret_name(name):
            found.append(secret)
    return found


def url_secrets(url: str) -> list[str]:
    """Every secret a URL holds (password, secret query values), each as written and decoded,
    longest first (for replacing in text); never raises."""
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        parts, found = None, []
    query = parts.query if parts is not None else url.partition("?")[2]
    for name, value in _query_pairs(query):
        if not value:
            continue
        if _is_secret_name(unquote_plus(name)):
            found.append(value)
        elif unquote_plus(name).lower() in _PROPERTY_LISTS:
            found += _secret_properties(value)
    variants = {
        text
        for secret in found
        for text in (secret, unquote(secret), unquote_plus(secret), quote(unquote_plus(secret), safe=""))
        if text
    }
    return sorted(variants, key=len, reverse=True)


def _redact_query(query: str) -> str:
    pairs = []
    for name, value in _query_pairs(query):
        plain = unquote_plus(name)
        if value and _is_secret_name(plain):
            value = "***"
        elif value and plain.lower() in _PROPERTY_LISTS:
            items = []
            for item in unquote_plus(value).split(","):
                key, colon, secret = item.partition(":")
                items.append(f"{key}:***" if colon and secret and _is_secret_name(key) else item)
            value = quote(",".join(items), safe=":,*")
        pairs.append(name if value is None else f"{name}={value}")
    return "&".join(pairs)


def redact_url(url: str) -> str:
    """The URL with its secrets (see the module docstring) replaced by ``***``; never raises."""
    try:
        parts = original = urlsplit(url)
        if parts.password is not None:
            userinfo, _, hostinfo = parts.netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            parts = parts._replace(netloc=f"{user}:***@{hostinfo}")
        if parts.query:
            parts = parts._replace(query=_redact_query(parts.query))
        return url if parts == original else parts.geturl()
    except ValueError:
        return "<unparseable URL>"


def redact_text(text: str, *urls: str | None) -> str:
    """``text`` (a driver's error message) without the secrets of ``urls`` and with every URL
    in it redacted; never raises."""
    for url in urls:
        for secret in url_secrets(url) if url else ():
            text = text.replace(secret, "***")
    return _URL_IN_TEXT.sub(lambda found: redact_url(found.group()), text) if "://" in text else text


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]+")


def _check_url(field: str, url: str, driver: Driver) -> SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{field} is required for driver {driver!r}")
    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # a MongoDB replica set lists several host:port pairs
            parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{field} is not a valid URL ({exc}): {redact_url(url)}") from None
    scheme = parts.scheme.lower()
    if _SCHEMES.get(scheme) != driver:
        expected = ", ".join(f"{s}://" for s, d in _SCHEMES.items() if d == driver)
        raise ConfigError(f"{field} must start with one of {expected}: {redact_url(url)}")
    if driver != "sqlite" and not parts.hostname:
        raise ConfigError(f"{field} has no host: {redact_url(url)}")
    return parts


@dataclass(frozen=True, repr=False)
class DbConfig:
    """Where the data lives. Field names are the Node app's settings in snake_case.

    ``connect_timeout`` (seconds) bounds how long an unreachable server is waited for before
    :class:`~chatdb.errors.BackendUnavailableError`. ``pool_size`` is the most connections an
    :class:`~chatdb.aio.AsyncChatRepository` opens (the sync repository keeps one per thread).
    """

    driver: Driver = "sqlite"
    sqlite_path: str = DEFAULT_SQLITE_PATH
    postgres_url: str | None = None
    mysql_url: str | None = None
    mongodb_url: str | None = None
    mongodb_name: str | None = None
    connect_timeout: float = 5.0
    pool_size: int = 10

    def __post_init__(self) -> None:
        if self.driver not in DRIVERS:
            raise ConfigError(f"driver must be one of {', '.join(DRIVERS)}, not {self.driver!r}")
        if self.driver == "sqlite":
            if not isinstance(self.sqlite_path, str) or not self.sqlite_path:
                raise ConfigError("sqlite_path is required for driver 'sqlite'")
            if "\x00" in self.sqlite_path:
                raise ConfigError("sqlite_path must not contain NUL characters")
        else:
            field = _URL_FIELD[self.driver]
            _check_url(field, getattr(self, field), self.driver)
        if self.mongodb_name is not None and (
            not isinstance(self.mongodb_name, str) or not self.mongodb_name
        ):
            raise ConfigError("mongodb_name must be a non-empty string when given")
        if not isinstance(self.connect_timeout, (int, float)) or self.connect_timeout <= 0:
            raise ConfigError("connect_timeout must be a number of seconds > 0")
        if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int) or self.pool_size < 1:
            raise ConfigError("pool_size must be a whole number of connections >= 1")

    @property
    def url(self) -> str:
        """The URL that selects this database (with its password: do not print it)."""
        if self.driver == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        return cast(str, getattr(self, _URL_FIELD[self.driver]))

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    @property
    def is_memory(self) -> bool:
        return self.driver == "sqlite" and self.sqlite_path in (":memory:", "")

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "sqlite_path" and self.driver != "sqlite"):
                continue
            if f.name == "pool_size" and value == f.default:
                continue
            if f.name.endswith("_url"):
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"DbConfig({', '.join(shown)})"

    @classmethod
    def from_url(cls, url: str, **options: object) -> DbConfig:
        """``sqlite:///path`` (``sqlite:///:memory:``), ``postgresql://``, ``mysql://``,
        ``mariadb://``, ``mongodb://`` and their ``+driver`` forms; raises ConfigError."""
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"url must look like scheme://..., not {redact_url(str(url))!r}")
        scheme = url.split("://", 1)[0].lower()
        driver = _SCHEMES.get(scheme)
        if driver is None:
            known = ", ".join(sorted({s.split("+")[0] for s in _SCHEMES}))
            raise ConfigError(f"url scheme {scheme!r} is not supported (use one of: {known})")
        if driver == "sqlite":
            rest = url.split("://", 1)[1]
            if rest and not rest.startswith("/"):
                raise ConfigError(f"sqlite url must be sqlite:///PATH, not {redact_url(url)!r}")
            path = unquote(rest[1:].split("?", 1)[0]) if rest else ":memory:"
            return cls(driver="sqlite", sqlite_path=path or ":memory:", **options)  # type: ignore[arg-type]
        return cls(driver=driver, **{_URL_FIELD[driver]: url}, **options)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DbConfig:
        """``DB_DRIVER`` (default sqlite), ``SQLITE_PATH``, ``POSTGRES_URL``, ``MYSQL_URL``,
        ``MONGODB_URL``, ``MONGODB_DB_NAME`` as the Node application reads them."""
        env = os.environ if environ is None else environ
        driver = (env.get("DB_DRIVER") or "sqlite").strip().lower()
        if driver == "postgresql":
            driver = "postgres"
        if driver not in DRIVERS:
            raise ConfigError(f"DB_DRIVER must be one of {', '.join(DRIVERS)}, not {driver!r}")
        names = {
            "postgres_url": "POSTGRES_URL",
            "mysql_url": "MYSQL_URL",
            "mongodb_url": "MONGODB_URL",
        }
        values = {field: env.get(var) or None for field, var in names.items()}
        if driver != "sqlite" and not values[_URL_FIELD[driver]]:
            var = names[_URL_FIELD[driver]]
            raise ConfigError(f"{var} is required when DB_DRIVER={driver}")
        return cls(
            driver=driver,
            sqlite_path=env.get("SQLITE_PATH") or DEFAULT_SQLITE_PATH,
            mongodb_name=env.get("MONGODB_DB_NAME") or None,
            **values,  # type: ignore[arg-type]
        )

    def replace(self, **changes: object) -> DbConfig:
        from dataclasses import replace

        return replace(self, **changes)  # type: ignore[arg-type]


def config_from(source: DbConfig | str) -> DbConfig:
    if isinstance(source, DbConfig):
        return source
    if isinstance(source, str):
        return DbConfig.from_url(source)
    raise ConfigError(f"expected a DbConfig or a URL string, not {type(source).__name__}")
