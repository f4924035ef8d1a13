"""``MongoRepository``: the contract over pymongo, in the Node application's document shapes.

Each storage hook builds a query (pure, :mod:`chatdb.mongo.mapping`), runs it inside
:meth:`MongoRepository._errors` (the one place pymongo exceptions become chatdb errors) and maps
the documents back. There are no row locks, so ordered writes (a message's timestamp, a chat's
``updatedAt``) use an atomic compare-and-set on the chat document instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any

from .. import _batches, _codec
from .._aggregate import AggregateQuery, RowAggregator
from .._base import TABLE_NAMES, MessageIdTaken, RepositoryBase, _DraftMessage, check_import, check_scan
from ..config import DbConfig, redact_text
from ..errors import (
    BackendError,
    BackendUnavailableError,
    ChatDbError,
    ConfigError,
    ConflictError,
    DuplicateApiKeyError,
    DuplicateUsernameError,
    ValidationError,
)
from ..models import ApiKey, Chat, Message, User, UserWithPasswordHash
from . import _logging, mapping

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.collection import Collection
    from pymongo.database import Database

__all__ = ["MongoRepository"]

_DUPLICATE_KEY = 11000
_INDEX_EXISTS_UNDER_OTHER_NAME = 85  # IndexOptionsConflict: the same keys, another name: keep it
_OWNER_CACHE_LIMIT = 100_000
_SCAN_PIECE = 2_500  # documents per read of a scan, or fewer: see _scan
# MongoDB's document limit is 16 MiB; leave room for the other fields and BSON's overhead.
_MAX_MESSAGE_JSON_BYTES = 16 * 1024 * 1024 - 64 * 1024
_GIVE_BACK_WAIT_S = 2.0  # see MongoRepository._give_back


class _DuplicateKey(ConflictError):
    """A unique index refused a write; the hook turns it into the precise ConflictError."""


def _import_pymongo() -> Any:
    try:
        import pymongo
    except ImportError:
        raise ConfigError("MongoDB needs the pymongo driver: pip install 'chatdb[mongodb]'") from None
    return pymongo


def _document_chunks(
    table: str, rows: Iterable[Mapping[str, Any]], most: int
) -> Iterator[list[dict[str, Any]]]:
    """Rows as documents, in lists of at most ``most`` and about BATCH_BYTES of text (measured
    on the stored rows: messages with images are MBs each)."""
    budget = _batches.BATCH_BYTES
    chunk: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        chunk.append(mapping.import_document(table, row))
        size += sum(_text_size(value) for value in row.values())
        if len(chunk) >= most or size >= budget:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _text_size(value: Any) -> int:
    """The characters of text in a stored value (decoded JSON included)."""
    if value.__class__ is str:
        return len(value)
    if isinstance(value, list):
        return sum(_text_size(item) for item in value)
    if isinstance(value, dict):
        return sum(_text_size(item) for item in value.values())
    return 0


def _count(collection: Collection[dict[str, Any]], query: dict[str, Any]) -> int:
    found = next(collection.aggregate(mapping.count_pipeline(query)), None)
    return 0 if found is None else int(found["n"])


class MongoRepository(RepositoryBase):
    """A ``ChatRepository`` on MongoDB 6+ (or Atlas); the client is made on first use."""

    backend = "mongodb"
    aggregates_histograms = True  # (RowAggregator sums and histograms the same rows)

    def __init__(self, config: DbConfig) -> None:
        if config.driver != "mongodb":
            raise ConfigError(f"MongoRepository needs driver 'mongodb', not {config.driver!r}")
        super().__init__(config)
        _logging.install()  # (no I/O, no import: only a filter on pymongo's loggers)
        self.database_name = mapping.database_name(config)
        self._location = mapping.server_location(config.mongodb_url or "")
        self._client: MongoClient[dict[str, Any]] | None = None
        self._client_lock = threading.Lock()
        # Each call names its collections: pymongo builds a Database and a Collection object
        # every time (a tenth of a one-insert call's CPU), so they are kept with the client.
        self._collections: dict[str, Collection[dict[str, Any]]] = {}
        self._transactions = False  # known after the first contact (_create_schema)

    # -- connection -------------------------------------------------------------------------------

    @property
    def client(self) -> MongoClient[dict[str, Any]]:
        """The pymongo client (for advanced use: administration, exports)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    pymongo = _import_pymongo()
                    timeout_ms = max(1, round(self.config.connect_timeout * 1000))
                    with self._errors():
                        self._client = pymongo.MongoClient(
                            self.config.mongodb_url,
                            serverSelectionTimeoutMS=timeout_ms,
                            connectTimeoutMS=timeout_ms,
                            appname="chatdb",
                        )
        return self._client

    @property
    def db(self) -> Database[dict[str, Any]]:
        return self.client[self.database_name]

    def _col(self, name: str) -> Collection[dict[str, Any]]:
        collection = self._collections.get(name)
        if collection is None:
            collection = self._collections[name] = self.db[name]
        return collection

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._collections = {}  # after the client: also what a concurrent call cached meanwhile

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate pymongo exceptions (the only place that does); messages never hold the password."""
        try:
            yield
        except ChatDbError:
            raise
        except Exception as exc:
            if type(exc).__module__.split(".")[0] not in ("pymongo", "bson"):
                raise
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> ChatDbError:
        from pymongo import errors

        # The first line, without pymongo's topology dump after "Timeout:".
        lines = str(exc).split(", Timeout:")[0].strip().splitlines()
        reason = self._clean(lines[0]) if lines else type(exc).__name__
        if isinstance(exc, errors.DuplicateKeyError):
            return _DuplicateKey(reason)
        if isinstance(exc, errors.DocumentTooLarge):  # raised by pymongo before sending
            return ValidationError(f"too large for a MongoDB document (16 MiB): {reason}")
        if isinstance(exc, (errors.ConnectionFailure, errors.ServerSelectionTimeoutError)):
            return BackendUnavailableError(f"cannot reach mongodb server {self._location}: {reason}")
        if isinstance(exc, (errors.InvalidURI, errors.ConfigurationError)):
            if (self.config.mongodb_url or "").lower().startswith("mongodb+srv://"):
                return BackendUnavailableError(f"cannot resolve mongodb server {self._location}: {reason}")
            return ConfigError(f"mongodb_url is not usable ({reason}): {self.config.redacted_url}")
        return BackendError(f"mongodb error: {reason}")

    def _clean(self, text: str) -> str:
        return redact_text(text, self.config.mongodb_url)

    # -- schema ---------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        """Create the indexes (idempotent) and learn whether the server has transactions."""
        pymongo = _import_pymongo()
        with self._errors():
            hello = self.client.admin.command("hello")
            # Transactions need a replica set member or mongos; a standalone server refuses them.
            self._transactions = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
            for collection, keys, unique in mapping.INDEXES:
                try:
                    self._col(collection).create_indexes([pymongo.IndexModel(keys, unique=unique)])
                except pymongo.errors.OperationFailure as exc:
                    if exc.code != _INDEX_EXISTS_UNDER_OTHER_NAME:
                        raise

    def _missing_schema(self) -> list[str]:
        # MongoDB makes a collection on its first insert, so one of them is enough: a chatdb
        # database where, say, no API key was ever made has no api_keys collection.
        with self._errors():
            present = set(self.db.list_collection_names())
        if any(mapping.COLLECTIONS[table] in present for table in TABLE_NAMES):
            return []
        return list(TABLE_NAMES)

    # -- storage-level access ----------------------------------------------------------------------

    def scan_rows(
        self,
        table: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        user_id: str | None = None,
        after: tuple[str, str] | None = None,
        batch_size: int = 10_000,
        stored: bool = False,
    ) -> Iterator[list[tuple[Any, ...]]]:
        """See :meth:`RepositoryBase.scan_rows`. A message's ``user_id`` comes from its chat,
        resolved once per batch with one ``$in`` query (and cached), not a join per message;
        filtering messages by user first collects that user's chat ids."""
        if not check_scan(
            table,
            since=since,
            until=until,
            user_id=user_id,
            after=after,
            batch_size=batch_size,
            stored=stored,
        ):
            return iter(())
        name = mapping.collection_for(table)
        return self._scan(table, name, since, until, user_id, after, batch_size, stored)

    def _scan(
        self,
        table: str,
        name: str,
        since: datetime | None,
        until: datetime | None,
        user_id: str | None,
        after: tuple[str, str] | None,
        batch_size: int,
        stored: bool,
    ) -> Iterator[list[tuple[Any, ...]]]:
        from bson import decode_all
        from bson.raw_bson import DEFAULT_RAW_BSON_OPTIONS

        from .. import _batches

        if not self.has_schema():
            return
        owner_filter: Any = user_id
        if table == "messages" and user_id is not None:
            with self._errors():
                chat_ids = [d["_id"] for d in self._col("chats").find({"userId": user_id}, {"_id": 1})]
            owner_filter = {"$in": chat_ids}
        query = mapping.scan_filter(table, since=since, until=until, owner_filter=owner_filter, after=after)
        projection = mapping.scan_projection(table, stored)
        owners: dict[str, str | None] = {}
        join_owner = table == "messages" and not stored
        collection = self._col(name)
        codec_options = collection.codec_options
        # Read in pieces of at most _SCAN_PIECE documents or BATCH_BYTES (chatdb._batches),
        # undecoded, in a thread: it is left waiting for the server's next piece while this one
        # is decoded and converted, so the two overlap (a cursor asks for its next batch only
        # when the last is used up). A batch also ends early at BATCH_BYTES.
        piece = min(batch_size, _SCAN_PIECE)
        budget = _batches.BATCH_BYTES

        def raw_pieces() -> Iterator[bytes]:
            raw = collection.with_options(codec_options=DEFAULT_RAW_BSON_OPTIONS)
            cursor = raw.find(query, projection, sort=mapping.SCAN_ORDER, batch_size=piece)
            try:
                docs: list[bytes | memoryview] = []
                size = 0
                for doc in cursor:
                    docs.append(doc.raw)
                    size += len(doc.raw)
                    if len(docs) == piece or size >= budget:
                        yield b"".join(docs)
                        docs, size = [], 0
                if docs:
                    yield b"".join(docs)
            finally:
                cursor.close()

        pieces = self._prefetch(raw_pieces)
        rows: list[tuple[Any, ...]] = []
        size = 0  # bytes of the documents in rows
        try:
            while True:
                with self._errors():
                    chunk = next(pieces, None)
                    if chunk is None:
                        break
                    docs = decode_all(chunk, codec_options)
                    size += len(chunk)
                    del chunk
                    if join_owner and user_id is None:
                        self._resolve_owners(owners, {d.get("chatId") for d in docs})
                if join_owner:
                    rows += [
                        mapping.scan_row(table, d, stored, user_id or owners.get(d.get("chatId", "")))
                        for d in docs
                    ]
                else:
                    rows += [mapping.scan_row(table, d, stored) for d in docs]
                del docs
                while len(rows) >= batch_size:
                    yield rows[:batch_size]
                    rows, size = rows[batch_size:], 0
                if size >= budget and rows:
                    yield rows
                    rows, size = [], 0
            if rows:
                yield rows
        finally:
            pieces.close()

    def _prefetch(self, open_scan: Callable[[], Iterator[bytes]]) -> Generator[bytes, None, None]:
        """The scan's raw pieces, read ahead in a thread (chatdb.aio reads them in its task)."""
        from .. import _batches

        return _batches.prefetch(open_scan)

    def aggregate_messages(self, query: AggregateQuery) -> Iterator[list[tuple[Any, ...]]]:
        """See :meth:`RepositoryBase.aggregate_messages`. The filters run in the server (the
        ``createdAt`` and owner indexes); only each message's time, chat and metadata travel,
        and :class:`~chatdb._aggregate.RowAggregator` sums them batch by batch, so memory holds
        the groups, not the messages. (A ``$group`` pipeline would send even less; the test
        server nx-27017 groups by compound keys and converts dates wrongly or not at all.)
        A read: it creates nothing."""
        owner_filter: Any = None
        if query.user_id is not None:
            with self._errors():
                chat_ids = [d["_id"] for d in self._col("chats").find({"userId": query.user_id}, {"_id": 1})]
            owner_filter = {"$in": chat_ids}
        found = mapping.scan_filter(
            "messages", since=query.since, until=query.until, owner_filter=owner_filter
        )
        projection = {"_id": 0, "createdAt": 1, "chatId": 1, "metadata": 1}
        aggregator = RowAggregator(query)
        owners: dict[str, str | None] = {}
        with self._errors():
            cursor = self._col("messages").find(found, projection, batch_size=_SCAN_PIECE)
            try:
                while batch := list(islice(cursor, _SCAN_PIECE)):
                    if query.key == "user":
                        self._resolve_owners(owners, {d.get("chatId") for d in batch})
                    aggregator.add(
                        (
                            mapping.stored_ts(d.get("createdAt")),
                            _group_key(query.key, d.get("chatId"), owners),
                            d.get("metadata"),
                        )
                        for d in batch
                    )
            finally:
                cursor.close()
        rows = list(aggregator.rows())
        return iter([rows] if rows else [])

    def _resolve_owners(self, owners: dict[str, str | None], chat_ids: set[Any]) -> None:
        missing = [cid for cid in chat_ids if cid not in owners]
        if not missing:
            return
        if len(owners) + len(missing) > _OWNER_CACHE_LIMIT:
            owners.clear()
        found = {
            d["_id"]: d.get("userId")
            for d in self._col("chats").find({"_id": {"$in": missing}}, {"userId": 1})
        }
        for cid in missing:
            owners[cid] = found.get(cid)

    def import_rows(self, table: str, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 5_000) -> int:
        """See :meth:`RepositoryBase.import_rows`: unordered bulk inserts of ``batch_size``
        documents (or about 32 MB of them), where only duplicate keys (code 11000) are skipped;
        any other write error fails the import. When the collection is empty at the start,
        chatdb's non-unique indexes on it are dropped and built once at the end (as on SQL);
        otherwise they are kept. An import that fails (or is killed) midway leaves them to the
        next ``ensure_schema``, which creates whatever index is missing."""
        rows = check_import(table, rows, batch_size)
        bulk_write_error = _import_pymongo().errors.BulkWriteError
        collection = self._col(mapping.collection_for(table))
        self.ensure_schema()
        with self._errors():
            fresh = collection.find_one({}, {"_id": 1}) is None
            deferred = self._drop_secondary_indexes(collection) if fresh else []
        inserted = 0
        try:
            for documents in _document_chunks(table, rows, batch_size):
                with self._errors():
                    try:
                        inserted += len(collection.insert_many(documents, ordered=False).inserted_ids)
                    except bulk_write_error as exc:
                        details = exc.details
                        errors = details.get("writeErrors", ())
                        others = [e for e in errors if e.get("code") != _DUPLICATE_KEY]
                        if others or details.get("writeConcernErrors"):
                            first = others[0] if others else details["writeConcernErrors"][0]
                            raise BackendError(
                                f"mongodb import into {table} failed: {first.get('errmsg')}"
                            ) from exc
                        inserted += int(details.get("nInserted", 0))
        except BaseException:
            if deferred:
                self._schema_ready = False  # the next call's ensure_schema builds them
            raise
        self._create_indexes(collection, deferred)
        return inserted

    def _drop_secondary_indexes(self, collection: Collection[dict[str, Any]]) -> list[tuple[Any, str]]:
        """Drop the collection's indexes that are chatdb's non-unique ones (recognised by their
        key pattern, whatever their name); returns their (keys, name) to build them again."""
        wanted = [keys for name, keys, unique in mapping.INDEXES if name == collection.name and not unique]
        dropped = []
        for name, info in collection.index_information().items():
            # (Compared as pairs: a server may send a direction as 1.0, or "text" for another index.)
            found = [(field, direction) for field, direction in info["key"]]
            keys = next((keys for keys in wanted if keys == found), None)
            if keys is not None and not info.get("unique"):
                collection.drop_index(name)
                dropped.append((keys, name))
        return dropped

    def _create_indexes(self, collection: Collection[dict[str, Any]], indexes: list[tuple[Any, str]]) -> None:
        """Build ``indexes`` ((keys, name) pairs) again, under their names; idempotent."""
        if not indexes:
            return
        pymongo = _import_pymongo()
        with self._errors():
            for keys, name in indexes:
                try:
                    collection.create_indexes([pymongo.IndexModel(keys, name=name)])
                except pymongo.errors.OperationFailure as exc:
                    if exc.code != _INDEX_EXISTS_UNDER_OTHER_NAME:
                        raise

    def count_rows(self) -> dict[str, int]:
        if not self.has_schema():
            return dict.fromkeys(TABLE_NAMES, 0)
        with self._errors():
            return {table: _count(self._col(mapping.COLLECTIONS[table]), {}) for table in TABLE_NAMES}

    def _message_time_range(self) -> tuple[str | None, str | None]:
        messages = self._col("messages")
        with self._errors():
            first = messages.find_one({}, {"createdAt": 1}, sort=[("createdAt", 1)])
            last = messages.find_one({}, {"createdAt": 1}, sort=[("createdAt", -1)])
        return (first or {}).get("createdAt"), (last or {}).get("createdAt")

    # -- chats ----------------------------------------------------------------------------------

    def _insert_chat(self, chat: Chat) -> None:
        with self._errors():
            self._col("chats").insert_one(mapping.chat_document(chat))

    def _fetch_chat(self, chat_id: str, user_id: str) -> Chat | None:
        with self._errors():
            doc = self._col("chats").find_one({"_id": chat_id, "userId": user_id})
        return None if doc is None else mapping.load_chat(doc)

    def _fetch_chats(self, user_id: str, limit: int, offset: int) -> tuple[list[Chat], int]:
        chats = self._col("chats")
        with self._errors():
            total = _count(chats, {"userId": user_id})
            if total <= offset:
                return [], total
            docs = list(chats.find({"userId": user_id}, sort=mapping.CHAT_ORDER, skip=offset, limit=limit))
        return [mapping.load_chat(doc) for doc in docs], total

    def _advance_chat(
        self, query: dict[str, Any], changes: Mapping[str, Any], *, after_last_message: bool = False
    ) -> tuple[dict[str, Any], datetime] | None:
        """Move the chat's ``updatedAt`` to ``next_ts(updatedAt)`` (and apply ``changes``) by
        compare-and-set, retried when another writer moved it first; returns the document as it
        was and the new timestamp, or None when no chat matches ``query``.
        ``after_last_message``: the timestamp is also after the chat's last message (another
        writer, the Node app, may have set ``updatedAt`` earlier than that)."""
        chats = self._col("chats")
        while True:
            with self._errors():
                doc = chats.find_one(query)
                if doc is None:
                    return None
                previous = doc.get("updatedAt")
                last = self._last_message_at(doc["_id"]) if after_last_message else None
                stamp = _codec.next_ts_after((mapping.stored_ts(previous), last))
                update = {"$set": mapping.chat_changes(changes, _codec.format_ts(stamp))}
                if chats.update_one({"_id": doc["_id"], "updatedAt": previous}, update).matched_count:
                    return doc, stamp

    def _last_message_at(self, chat_id: Any) -> str | None:
        """The chat's last message's ``createdAt`` (from the (chatId, createdAt) index)."""
        last = self._col("messages").find_one(
            {"chatId": chat_id}, {"createdAt": 1}, sort=[("createdAt", -1), ("_id", -1)]
        )
        return None if last is None else mapping.stored_ts(last.get("createdAt"))

    def _touch_chat(self, chat_id: str, user_id: str, changes: dict[str, Any]) -> Chat | None:
        advanced = self._advance_chat({"_id": chat_id, "userId": user_id}, changes)
        if advanced is None:
            return None
        doc, stamp = advanced
        return replace(mapping.load_chat(doc), **changes, updated_at=stamp)

    def _delete_chat(self, chat_id: str, user_id: str) -> bool:
        """Delete the chat and its messages: in one transaction where the server has them
        (replica set, mongos, Atlas). On a standalone server the chat document goes first, then
        its messages: a failure in between leaves only unreachable messages (they are found by
        chat id alone, and show in scans with no owner), never a visible chat that lost them.

        After a transaction, the chat's messages are swept once more: an add_message that
        inserted after the transaction's snapshot, and saw the chat before the commit, is
        ordered before this delete, so its message goes too (see ``_append_message``)."""
        chats, messages = self._col("chats"), self._col("messages")

        def delete(session: Any = None) -> bool:
            if chats.delete_one({"_id": chat_id, "userId": user_id}, session=session).deleted_count == 0:
                return False
            messages.delete_many({"chatId": chat_id}, session=session)
            return True

        with self._errors():
            if not self._transactions:
                return delete()
            with self.client.start_session() as session:
                deleted = bool(session.with_transaction(delete))
            if deleted:
                messages.delete_many({"chatId": chat_id})
            return deleted

    # -- messages -------------------------------------------------------------------------------

    def _append_message(self, draft: _DraftMessage, user_id: str | None) -> Any:
        """Claim the next timestamp on the chat (compare-and-set), insert the message, then check
        the chat is still there: a delete_chat that removed the messages between the two would
        otherwise leave this one orphaned. If the chat is gone, the message is taken back (None:
        not found), unless delete_chat already removed it, which orders this add before it.

        A caller-chosen id is looked up first (after the chat), so that a retry bumps nothing;
        when a concurrent call stores the same id between that check and the insert, the bump
        is given back (``_give_back``) and MessageIdTaken raised."""
        size = len(draft.content_json.encode()) + len((draft.metadata_json or "").encode())
        if size > _MAX_MESSAGE_JSON_BYTES:
            raise ValidationError(f"message of {size} bytes is too large for a MongoDB document (16 MiB)")
        query = {"_id": draft.chat_id} if user_id is None else {"_id": draft.chat_id, "userId": user_id}
        messages = self._col("messages")
        if draft.chosen_id:  # a retry finds its message before the chat is bumped again
            with self._errors():
                if self._col("chats").find_one(query, {"_id": 1}) is None:
                    return None
                if messages.find_one({"_id": draft.id}, {"_id": 1}) is not None:
                    raise MessageIdTaken(draft.id)
        advanced = self._advance_chat(query, {}, after_last_message=True)
        if advanced is None:
            return None
        doc, stamp = advanced
        metadata = None if draft.metadata is None else _codec.metadata_to_dict(draft.metadata)
        created_at = _codec.format_ts(stamp)
        document = mapping.message_document(
            draft.id, draft.chat_id, draft.role, draft.content, created_at, metadata
        )
        try:
            with self._errors():
                messages.insert_one(document)
        except _DuplicateKey:
            self._give_back(draft.chat_id, created_at, doc.get("updatedAt"))
            raise MessageIdTaken(draft.id) from None
        with self._errors():
            chat_gone = self._col("chats").find_one({"_id": draft.chat_id}, {"_id": 1}) is None
            if chat_gone and messages.delete_one({"_id": draft.id}).deleted_count:
                return None
        return stamp

    def _give_back(self, chat_id: Any, stamp: str, previous: Any) -> None:
        """Undo this call's bump of the chat's ``updatedAt`` to ``stamp`` (set it back to
        ``previous``), after its insert lost a race for a caller-chosen id.

        Only while ``updatedAt`` is still ``stamp`` (compare-and-set). When a later bump sits on
        top, this call waits for it: a real message at or after that bump buries this one for
        good (done); another loser of the same race gives its bump back to ``stamp`` within
        moments (then this one gives back in turn). Giving up after a short while only leaves
        the chat's ``updatedAt`` ahead of its last message, as a crash between bump and insert
        would: another writer's bump without a message (a title change) is never undone."""
        chats = self._col("chats")
        deadline = time.monotonic() + _GIVE_BACK_WAIT_S
        with self._errors():
            while True:
                given = chats.update_one(
                    {"_id": chat_id, "updatedAt": stamp}, {"$set": {"updatedAt": previous}}
                )
                if given.matched_count:
                    return
                chat = chats.find_one({"_id": chat_id}, {"updatedAt": 1})
                if chat is None:
                    return
                current = mapping.stored_ts(chat.get("updatedAt"))
                if current == stamp:
                    continue  # given back to this call's bump since the compare-and-set
                if not isinstance(current, str) or current < stamp:
                    return  # moved back by another writer: nothing of this call is visible
                last = self._last_message_at(chat_id)
                if (last is not None and last >= current) or time.monotonic() > deadline:
                    return
                time.sleep(0.002)

    def _owns_chat(self, chat_id: str, user_id: str) -> bool:
        return self._col("chats").find_one({"_id": chat_id, "userId": user_id}, {"_id": 1}) is not None

    def _fetch_messages(
        self, chat_id: str, user_id: str | None, limit: int, offset: int
    ) -> tuple[list[Message], int]:
        messages = self._col("messages")
        with self._errors():
            if user_id is not None and not self._owns_chat(chat_id, user_id):
                return [], 0
            total = _count(messages, {"chatId": chat_id})
            if total <= offset:
                return [], total
            docs = list(
                messages.find({"chatId": chat_id}, sort=mapping.MESSAGE_ORDER, skip=offset, limit=limit)
            )
        return [mapping.load_message(doc) for doc in docs], total

    def _fetch_message(self, message_id: str, user_id: str | None) -> Message | None:
        with self._errors():
            doc = self._col("messages").find_one({"_id": message_id})
            if doc is None or (user_id is not None and not self._owns_chat(doc["chatId"], user_id)):
                return None
        return mapping.load_message(doc)

    # -- users ----------------------------------------------------------------------------------

    def _insert_user(self, user: UserWithPasswordHash) -> None:
        try:
            with self._errors():
                self._col("users").insert_one(mapping.user_document(user))
        except _DuplicateKey as exc:
            raise DuplicateUsernameError(f"username {user.username!r} is taken") from exc

    def _fetch_user(self, by: str, value: str) -> UserWithPasswordHash | None:
        field = {"id": "_id", "username": "username"}[by]
        with self._errors():
            doc = self._col("users").find_one({field: value})
        if doc is None or doc.get(field) != value:
            return None
        return mapping.load_user_with_hash(doc)

    def _fetch_users(self, limit: int, offset: int) -> tuple[list[User], int]:
        users = self._col("users")
        with self._errors():
            total = _count(users, {})
            if total <= offset:
                return [], total
            docs = list(
                users.find({}, {"passwordHash": 0}, sort=mapping.USER_ORDER, skip=offset, limit=limit)
            )
        return [mapping.load_user(doc) for doc in docs], total

    # -- API keys -------------------------------------------------------------------------------

    def _insert_api_key(self, key: ApiKey, key_hash: str) -> None:
        try:
            with self._errors():
                self._col("apiKeys").insert_one(mapping.api_key_document(key, key_hash))
        except _DuplicateKey:
            # Not chained: the server's message quotes the hash ("dup key: { keyHash: ... }").
            raise DuplicateApiKeyError("an API key with this hash already exists") from None

    def _fetch_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        with self._errors():
            doc = self._col("apiKeys").find_one({"keyHash": key_hash, "revokedAt": None}, {"keyHash": 0})
        return None if doc is None else mapping.load_api_key(doc)

    def _fetch_api_keys(self, user_id: str) -> list[ApiKey]:
        with self._errors():
            docs = list(
                self._col("apiKeys").find({"userId": user_id}, {"keyHash": 0}, sort=mapping.KEY_ORDER)
            )
        return [mapping.load_api_key(doc) for doc in docs]

    def _revoke_api_key(self, key_id: str, user_id: str, now: str) -> bool:
        keys = self._col("apiKeys")
        owned = {"_id": key_id, "userId": user_id}
        with self._errors():
            if keys.update_one({**owned, "revokedAt": None}, {"$set": {"revokedAt": now}}).matched_count:
                return True
            return keys.find_one(owned, {"_id": 1}) is not None

    def _touch_api_key(self, key_id: str, now: str) -> None:
        with self._errors():
            self._col("apiKeys").update_one({"_id": key_id}, {"$set": {"lastUsedAt": now}})


def _group_key(key: str | None, chat_id: Any, owners: dict[str, str | None]) -> Any:
    if key == "chat":
        return chat_id
    if key == "user":
        return owners.get(chat_id)
    return None
