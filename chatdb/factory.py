"""``create_repository``: a config or URL in, the matching backend out (no I/O until first use)."""

from __future__ import annotations

from .config import DbConfig, config_from
from .repository import ChatRepository

__all__ = ["create_repository"]


def create_repository(source: DbConfig | str | None = None) -> ChatRepository:
    """The repository for ``source``: a :class:`DbConfig`, a URL string, or None for
    :meth:`DbConfig.from_env`. Raises ConfigError; connects lazily, on the first call."""
    config = DbConfig.from_env() if source is None else config_from(source)
    if config.driver == "mongodb":
        from .mongo import MongoRepository

        repo: ChatRepository = MongoRepository(config)
        return repo
    from .sql import SqlRepository

    return SqlRepository(config)
