"""chatdb: the database layer of a chat application, and analytics over it.

>>> import chatdb
>>> with chatdb.create_repository("sqlite:///:memory:") as repo:
...     chat = repo.create_chat("user-1", "Hello")
...     repo.add_message(chat.id, "user", [{"type": "text", "text": "hi"}]).role
'user'
"""

from . import errors
from .aio import AsyncChatRepository, create_async_repository
from .config import DbConfig
from .factory import create_repository
from .models import ApiKey, Chat, Message, MessageMetadata, Page, User, UserWithPasswordHash
from .repository import ChatRepository

__version__ = "0.1.0"

__all__ = [
    "ApiKey",
    "AsyncChatRepository",
    "Chat",
    "ChatRepository",
    "DbConfig",
    "Message",
    "MessageMetadata",
    "Page",
    "User",
    "UserWithPasswordHash",
    "__version__",
    "create_async_repository",
    "create_repository",
    "errors",
]
