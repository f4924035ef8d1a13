"""chatdb for asyncio: :func:`create_async_repository` and :class:`AsyncChatRepository`.

The same contract, models, errors and stored bytes as the sync repository, on asyncio drivers:
psycopg's ``AsyncConnection`` (PostgreSQL), aiomysql (MySQL/MariaDB) and pymongo's
``AsyncMongoClient`` (MongoDB); SQLite's transactions run on threads (one writer). Install with
``pip install 'chatdb[async]'``. How one code base serves both sides: :mod:`chatdb.aio.repository`.
"""

from __future__ import annotations

from ..config import DbConfig, config_from
from .repository import AsyncChatRepository

__all__ = ["AsyncChatRepository", "create_async_repository"]


def create_async_repository(source: DbConfig | str | None = None) -> AsyncChatRepository:
    """The asyncio repository for ``source``: a :class:`DbConfig`, a URL string, or None for
    :meth:`DbConfig.from_env`; at most ``DbConfig.pool_size`` connections, opened on first use.
    Raises ConfigError (naming the ``pip install`` to run when an asyncio driver is missing)."""
    config = DbConfig.from_env() if source is None else config_from(source)
    if config.driver == "mongodb":
        from ._mongo import BridgedMongoRepository, require_async_pymongo

        require_async_pymongo()
        return AsyncChatRepository(BridgedMongoRepository(config))
    from ..sql.dialects import dialect_for
    from ._sql import BridgedSqlRepository

    dialect_for(config).require_async_driver()
    return AsyncChatRepository(BridgedSqlRepository(config))
