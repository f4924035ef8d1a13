"""The MongoDB backend (``pip install 'chatdb[mongodb]'``): documents in the Node application's shapes."""

from .repository import MongoRepository

__all__ = ["MongoRepository"]
