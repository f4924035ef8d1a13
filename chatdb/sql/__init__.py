"""SQLite, PostgreSQL and MySQL/MariaDB: one schema and one repository class for all three."""

from .repository import SqlRepository
from .schema import metadata

__all__ = ["SqlRepository", "metadata"]
