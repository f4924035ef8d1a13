"""What only the MongoDB backend has: the Node app's document shapes, the database name, its
indexes, how it fails without a server, and how delete_chat orders its writes.

The behaviour every backend shares is in tests/test_contract_*.py. Tests marked ``mongodb`` need
the test server (tests/backends.py); the rest are pure or need no server at all.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from chatdb import DbConfig, create_repository, errors
from chatdb._codec import format_ts, parse_ts
from chatdb.mongo import MongoRepository, mapping

from .backends import Backend, free_port, start_nx27017

pymongo = pytest.importorskip("pymongo")
from pymongo import monitoring  # noqa: E402

TS = "2026-11-26T11:21:40.612Z"


def mongo_config(url: str = "mongodb://127.0.0.1:27017/", **options: Any) -> DbConfig:
    return DbConfig(driver="mongodb", mongodb_url=url, **options)


@pytest.fixture
def mongo(mongodb_backend: Backend) -> Backend:
    mongodb_backend.reset()
    return mongodb_backend


@pytest.fixture
def repo(mongo: Backend) -> Iterator[MongoRepository]:
    with MongoRepository(mongo.config) as repository:
        yield repository


def raw(mongo: Backend, collection: str) -> list[dict[str, Any]]:
    return list(mongo.admin[collection].find({}, sort=[("createdAt", 1), ("_id", 1)]))


class CommandLog(monitoring.CommandListener):
    """Records the commands a client sends, to check the order of writes (not to alter them)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def writes(self) -> list[tuple[str, str]]:
        return [
            (name, str(command[name]))
            for name, command in self.commands
            if name in ("insert", "update", "delete", "commitTransaction", "abortTransaction")
        ]


# -- pure: configuration and mapping ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name", "expected"),
    [
        ("mongodb://h:27017/", "given", "given"),
        ("mongodb://h:27017/fromurl", "given", "given"),
        ("mongodb://h:27017/fromurl", None, "fromurl"),
        ("mongodb://u:pw@h/fromurl?authSource=admin", None, "fromurl"),
        ("mongodb+srv://cluster0.example.net/app%2Ddb?retryWrites=true", None, "app-db"),
        ("mongodb://h:27017/", None, "ccluster"),
        ("mongodb://h:27017", None, "ccluster"),
        ("mongodb://h:27017/?replicaSet=rs0", None, "ccluster"),
    ],
)
def test_database_name_is_config_then_url_then_ccluster(url: str, name: str | None, expected: str) -> None:
    config = mongo_config(url, mongodb_name=name)
    assert mapping.database_name(config) == expected
    assert MongoRepository(config).database_name == expected


def test_server_location_names_host_and_port_without_credentials() -> None:
    assert mapping.server_location("mongodb://app:s3cret@db.local/x") == "db.local:27017"
    assert mapping.server_location("mongodb://db.local:27018") == "db.local:27018"
    assert mapping.server_location("mongodb+srv://app:s3cret@cluster0.example.net/") == "cluster0.example.net"


def test_constructing_does_no_io_and_repr_hides_the_password() -> None:
    repo = create_repository(f"mongodb://app:s3cret@127.0.0.1:{free_port()}/x")
    assert isinstance(repo, MongoRepository)
    assert repo.backend == "mongodb"
    assert repo._client is None
    assert "s3cret" not in repr(repo)


def test_message_document_stores_absent_metadata_as_null_like_the_node_app() -> None:
    parts = [{"type": "text", "text": "hi"}]
    assert mapping.message_document("m", "c", "user", parts, TS, None) == {
        "_id": "m",
        "chatId": "c",
        "role": "user",
        "content": parts,
        "createdAt": TS,
        "metadata": None,
    }
    # Documents without the field (older chatdb) and with null read alike.
    stored = mapping.message_document("m", "c", "user", parts, TS, None)
    without = {k: v for k, v in stored.items() if k != "metadata"}
    assert mapping.load_message(stored) == mapping.load_message(without)
    assert mapping.load_message(stored).metadata is None
    assert mapping.message_document("m", "c", "user", parts, TS, {"model": "x"})["metadata"] == {"model": "x"}


def test_scan_filter_pushes_range_owner_and_resume_point_into_the_query() -> None:
    since, until = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    assert mapping.scan_filter("chats") == {}
    assert mapping.scan_filter("chats", owner_filter="u1") == {"userId": "u1"}
    assert mapping.scan_filter("users", owner_filter="u1") == {"_id": "u1"}
    assert mapping.scan_filter("messages", since=since, until=until, after=(TS, "id-9")) == {
        "$and": [
            {"createdAt": {"$gte": "2026-01-01T00:00:00.000Z", "$lt": "2026-02-01T00:00:00.000Z"}},
            {"$or": [{"createdAt": {"$gt": TS}}, {"createdAt": TS, "_id": {"$gt": "id-9"}}]},
        ]
    }


def test_import_document_turns_sql_rows_into_node_shapes() -> None:
    row = {
        "id": "m1",
        "chat_id": "c1",
        "role": "assistant",
        "content": '[{"type":"text","text":"hé 🚀"}]',
        "created_at": TS,
        "metadata": '{"model":"claude","inputTokens":3}',
    }
    assert mapping.import_document("messages", row) == {
        "_id": "m1",
        "chatId": "c1",
        "role": "assistant",
        "content": [{"type": "text", "text": "hé 🚀"}],
        "createdAt": TS,
        "metadata": {"model": "claude", "inputTokens": 3},
    }
    decoded = {**row, "content": [{"type": "text", "text": "x"}], "metadata": None}
    assert mapping.import_document("messages", decoded)["metadata"] is None  # as the Node app stores it
    key = mapping.import_document(
        "api_keys",
        {
            "id": "k",
            "user_id": "u",
            "key_hash": "h",
            "key_prefix": "p",
            "name": "n",
            "created_at": parse_ts(TS),
            "last_used_at": None,
            "revoked_at": None,
        },
    )
    assert key == {
        "_id": "k",
        "userId": "u",
        "keyHash": "h",
        "keyPrefix": "p",
        "name": "n",
        "createdAt": TS,
        "lastUsedAt": None,
        "revokedAt": None,
    }


def test_loaders_accept_bson_dates_written_by_other_programs() -> None:
    stamp = datetime(2026, 11, 26, 11, 21, 40, 612000, tzinfo=UTC)
    chat = mapping.load_chat({"_id": "c", "title": "t", "userId": "u", "createdAt": stamp, "updatedAt": TS})
    assert chat.created_at == chat.updated_at == stamp
    assert chat.session_id is None
    naive = stamp.replace(tzinfo=None)  # pymongo's default for BSON dates
    assert mapping.scan_row("chats", {"_id": "c", "createdAt": naive}, False)[4] == TS


# -- no server ------------------------------------------------------------------------------------


def test_unreachable_server_fails_fast_naming_host_but_not_password() -> None:
    port = free_port()
    repo = MongoRepository(mongo_config(f"mongodb://app:s3cret-pw@127.0.0.1:{port}/x", connect_timeout=1))
    started = time.monotonic()
    with pytest.raises(errors.BackendUnavailableError) as caught:
        repo.create_chat("u1")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message
    assert isinstance(caught.value.__cause__, pymongo.errors.PyMongoError)
    repo.close()


def test_missing_pymongo_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = MongoRepository(mongo_config(f"mongodb://127.0.0.1:{free_port()}/"))
    monkeypatch.setitem(sys.modules, "pymongo", None)
    with pytest.raises(errors.ConfigError, match=r"pip install 'chatdb\[mongodb\]'"):
        repo.count_rows()


# -- against the server ---------------------------------------------------------------------------


@pytest.mark.mongodb
def test_documents_have_the_node_apps_shapes(repo: MongoRepository, mongo: Backend) -> None:
    user = repo.create_user("alice", "hash-1")
    chat = repo.create_chat(user.id, "Hello")
    assert repo.set_chat_session(chat.id, "sess-1", user.id)
    first = repo.add_message(chat.id, "user", [{"type": "text", "text": "hi 🚀"}])
    second = repo.add_message(
        chat.id,
        "assistant",
        [{"type": "text", "text": "yo"}],
        {"model": "claude", "input_tokens": 3, "outputTokens": 5, "totalCostUsd": 1.0, "durationMs": 9},
    )
    key = repo.create_api_key(user.id, "k" * 64, "ccl_abcdefgh", "laptop")
    assert repo.revoke_api_key(key.id, user.id)

    [user_doc] = raw(mongo, "users")
    assert user_doc == {
        "_id": user.id,
        "username": "alice",
        "passwordHash": "hash-1",
        "createdAt": format_ts(user.created_at),
        "updatedAt": format_ts(user.updated_at),
    }
    [chat_doc] = raw(mongo, "chats")
    assert list(chat_doc) == ["_id", "title", "sessionId", "userId", "createdAt", "updatedAt"]
    assert chat_doc["sessionId"] == "sess-1"
    assert chat_doc["updatedAt"] == format_ts(second.created_at)
    first_doc, second_doc = raw(mongo, "messages")
    assert first_doc == {
        "_id": first.id,
        "chatId": chat.id,
        "role": "user",
        "content": [{"type": "text", "text": "hi 🚀"}],
        "createdAt": format_ts(first.created_at),
        "metadata": None,
    }
    assert second_doc["metadata"] == {
        "model": "claude",
        "inputTokens": 3,
        "outputTokens": 5,
        "totalCostUsd": 1,
        "durationMs": 9,
    }
    [key_doc] = raw(mongo, "apiKeys")
    assert list(key_doc) == [
        "_id",
        "userId",
        "keyHash",
        "keyPrefix",
        "name",
        "createdAt",
        "lastUsedAt",
        "revokedAt",
    ]
    assert key_doc["lastUsedAt"] is None and key_doc["revokedAt"].endswith("Z")


@pytest.mark.mongodb
def test_content_is_stored_as_a_bson_array_not_a_string(repo: MongoRepository, mongo: Backend) -> None:
    chat = repo.create_chat("u1")
    repo.add_message(
        chat.id,
        "user",
        [{"type": "text", "text": "a"}, {"type": "image", "imageData": "AA==", "mimeType": "image/png"}],
    )
    assert mongo.admin.messages.count_documents({"content": {"$type": "array"}}) == 1
    assert mongo.admin.messages.count_documents({"content.type": "image"}) == 1
    assert mongo.admin.messages.count_documents({"content": {"$type": "string"}}) == 0


@pytest.mark.mongodb
def test_documents_written_by_the_node_app_are_read(repo: MongoRepository, mongo: Backend) -> None:
    mongo.admin.chats.insert_one(
        {"_id": "c1", "title": "Old", "sessionId": None, "userId": "u1", "createdAt": TS, "updatedAt": TS}
    )
    mongo.admin.messages.insert_one(
        {
            "_id": "m1",
            "chatId": "c1",
            "role": "user",
            "content": [{"type": "text", "text": "hi"}],
            "createdAt": TS,
        }
    )
    page = repo.get_messages("c1", user_id="u1")
    assert [m.content for m in page.items] == [[{"type": "text", "text": "hi"}]]
    added = repo.add_message("c1", "assistant", [{"type": "text", "text": "yo"}])
    assert added.created_at > parse_ts(TS)
    assert repo.list_chats("u1").items[0].updated_at == added.created_at


@pytest.mark.mongodb
def test_the_database_comes_from_the_url_when_no_name_is_given(mongo: Backend) -> None:
    client = mongo.extra["client"]
    database = f"{mongo.admin.name}_url"
    base = mongo.url.split("?")[0].rstrip("/")
    try:
        with MongoRepository(mongo_config(f"{base}/{database}")) as repo:
            repo.create_chat("u1", "in the url's database")
        assert client[database].chats.count_documents({}) == 1
        assert mongo.admin.chats.count_documents({}) == 0
    finally:
        client.drop_database(database)


@pytest.mark.mongodb
def test_indexes_are_created_on_first_use(repo: MongoRepository, mongo: Backend) -> None:
    assert repo.count_rows() == {"users": 0, "chats": 0, "messages": 0, "api_keys": 0}
    nx = mongo.extra["server"] == "nx-27017"
    for collection, keys, unique in mapping.INDEXES:
        wanted = [(field, direction) for field, direction in keys]
        if nx:  # the test server cannot index _id in a compound key, nor report directions
            wanted = [(field, 1) for field, _ in wanted if field != "_id" or len(wanted) == 1]
        found = {
            (tuple(index["key"].items()), bool(index.get("unique")))
            for index in mongo.admin[collection].list_indexes()
        }
        assert (tuple(wanted), unique) in found, (collection, wanted, found)


@pytest.mark.mongodb
def test_creating_indexes_twice_is_harmless(mongo: Backend) -> None:
    for _ in range(2):
        with MongoRepository(mongo.config) as repo:
            repo.ensure_schema()
    assert len(list(mongo.admin.users.list_indexes())) >= 2


@pytest.mark.mongodb
def test_without_transactions_delete_chat_removes_the_chat_before_its_messages(mongo: Backend) -> None:
    log = CommandLog()
    with MongoRepository(mongo.config) as repo:
        repo._client = pymongo.MongoClient(mongo.url, event_listeners=[log])
        repo.ensure_schema()
        repo._transactions = False
        chat = repo.create_chat("u1")
        repo.add_message(chat.id, "user", [{"type": "text", "text": "x"}])
        log.commands.clear()
        assert repo.delete_chat(chat.id, "u1")
        assert log.writes() == [("delete", "chats"), ("delete", "messages")]
        assert not repo.delete_chat(chat.id, "u1")
    assert mongo.admin.messages.count_documents({}) == 0


@pytest.mark.mongodb
def test_with_transactions_delete_chat_commits_both_deletes_together(mongo: Backend) -> None:
    hello = mongo.extra["client"].admin.command("hello")
    if mongo.extra["server"] != "nx-27017" and not (hello.get("setName") or hello.get("msg") == "isdbgrid"):
        pytest.skip("this MongoDB is a standalone server: transactions need a replica set")
    log = CommandLog()
    with MongoRepository(mongo.config) as repo:
        repo._client = pymongo.MongoClient(mongo.url, event_listeners=[log])
        repo.ensure_schema()
        repo._transactions = True  # what a replica set reports; the test server accepts transactions
        chat = repo.create_chat("u1")
        repo.add_message(chat.id, "user", [{"type": "text", "text": "x"}])
        log.commands.clear()
        assert repo.delete_chat(chat.id, "u1")
        assert log.writes() == [
            ("delete", "chats"),
            ("delete", "messages"),
            ("commitTransaction", "1"),
            ("delete", "messages"),  # the sweep for an add_message that raced the transaction
        ]
        deletes = [command for name, command in log.commands if name == "delete"]
        assert [command.get("autocommit") is False for command in deletes] == [True, True, False]
    assert mongo.admin.chats.count_documents({}) == 0
    assert mongo.admin.messages.count_documents({}) == 0


@pytest.mark.mongodb
def test_a_standalone_server_is_not_asked_for_transactions(repo: MongoRepository, mongo: Backend) -> None:
    repo.ensure_schema()
    hello = mongo.extra["client"].admin.command("hello")
    assert repo._transactions == (bool(hello.get("setName")) or hello.get("msg") == "isdbgrid")


@pytest.mark.mongodb
def test_scan_rows_yields_decoded_values_and_each_messages_owner(
    repo: MongoRepository, mongo: Backend
) -> None:
    chat = repo.create_chat("u1")
    other = repo.create_chat("u2")
    meta = {"model": "m", "inputTokens": 1}
    ids = [repo.add_message(chat.id, "user", [{"type": "text", "text": str(i)}], meta).id for i in range(5)]
    theirs = repo.add_message(other.id, "user", [{"type": "text", "text": "theirs"}]).id
    mongo.admin.messages.insert_one(
        {
            "_id": "orphan",
            "chatId": "gone",
            "role": "user",
            "content": [],
            "createdAt": "2099-01-01T00:00:00.000Z",
        }
    )

    batches = list(repo.scan_rows("messages", batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 2, 1]
    rows = [row for batch in batches for row in batch]
    assert [row[0] for row in rows] == [*ids, theirs, "orphan"]
    assert rows[0][2] == "u1" and rows[5][2] == "u2" and rows[6][2] is None
    assert rows[0][4] == [{"type": "text", "text": "0"}] and rows[0][6] == meta
    assert rows[5][6] is None

    mine = [row for batch in repo.scan_rows("messages", user_id="u1") for row in batch]
    assert [row[0] for row in mine] == ids and {row[2] for row in mine} == {"u1"}
    resumed = [
        row[0] for batch in repo.scan_rows("messages", after=(rows[2][5], rows[2][0])) for row in batch
    ]
    assert resumed == [row[0] for row in rows[3:]]
    since, until = parse_ts(rows[1][5]), parse_ts(rows[4][5])
    ranged = [row[0] for batch in repo.scan_rows("messages", since=since, until=until) for row in batch]
    assert ranged == [row[0] for row in rows[1:4]]

    stored = next(repo.scan_rows("users", stored=True), [])
    assert stored == []
    repo.create_user("alice", "secret-hash")
    [[user_row]] = list(repo.scan_rows("users", stored=True))
    assert user_row[1:3] == ("alice", "secret-hash")
    with pytest.raises(errors.ValidationError):
        repo.scan_rows("nope")


@pytest.mark.mongodb
def test_scan_batches_have_the_asked_size_across_the_pieces_read(
    repo: MongoRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = repo.create_chat("u1")
    ids = [repo.add_message(chat.id, "user", [{"type": "text", "text": str(i)}]).id for i in range(8)]
    monkeypatch.setattr("chatdb.mongo.repository._SCAN_PIECE", 2)  # read 2 documents at a time
    batches = list(repo.scan_rows("messages", batch_size=3))
    assert [len(batch) for batch in batches] == [3, 3, 2]
    assert [row[0] for batch in batches for row in batch] == ids


@pytest.mark.mongodb
def test_scan_batches_end_early_at_the_byte_bound(
    repo: MongoRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages with images are MBs each: a batch of 2,500 of them would be GBs."""
    chat = repo.create_chat("u1")
    image = [{"type": "image", "imageData": "A" * 5_000, "mimeType": "image/png"}]
    ids = [repo.add_message(chat.id, "user", image).id for _ in range(6)]
    monkeypatch.setattr("chatdb._batches.BATCH_BYTES", 10_000)  # two of those documents
    batches = list(repo.scan_rows("messages", batch_size=100))
    assert [len(batch) for batch in batches] == [2, 2, 2]
    assert [row[0] for batch in batches for row in batch] == ids


@pytest.mark.mongodb
def test_a_scan_stopped_early_stops_its_reading_thread(repo: MongoRepository) -> None:
    chat = repo.create_chat("u1")
    for i in range(7):
        repo.add_message(chat.id, "user", [{"type": "text", "text": str(i)}])
    scan = cast(Generator[Any, None, None], repo.scan_rows("messages", batch_size=2))
    assert len(next(scan)) == 2
    scan.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "chatdb-export-scan"]
    assert repo.add_message(chat.id, "user", [{"type": "text", "text": "after"}]).id


@pytest.mark.mongodb
def test_a_server_gone_mid_scan_is_a_typed_error(tmp_path: Path) -> None:
    started = start_nx27017(tmp_path)
    assert started is not None, "nx-27017 did not start"
    url, process = started
    try:
        repo = MongoRepository(mongo_config(url + "scan", connect_timeout=1))
        chat = repo.create_chat("u1")
        for i in range(7):
            repo.add_message(chat.id, "user", [{"type": "text", "text": str(i)}])
        scan = repo.scan_rows("messages", batch_size=1)
        assert len(next(scan)) == 1
        process.kill()
        process.wait()
        with pytest.raises((errors.BackendUnavailableError, errors.BackendError)):
            list(scan)
        repo.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.mongodb
def test_import_rows_takes_sql_rows_and_skips_existing_ids(repo: MongoRepository, mongo: Backend) -> None:
    chat_row = {
        "id": "c1",
        "title": "t",
        "session_id": None,
        "user_id": "u1",
        "created_at": TS,
        "updated_at": TS,
    }
    message_rows = [
        {
            "id": f"m{i}",
            "chat_id": "c1",
            "role": "user",
            "content": json.dumps([{"type": "text", "text": str(i)}]),
            "created_at": TS,
            "metadata": None,
        }
        for i in range(5)
    ]
    assert repo.import_rows("chats", [chat_row]) == 1
    assert repo.import_rows("messages", message_rows[:3], batch_size=2) == 3
    assert repo.import_rows("messages", message_rows, batch_size=2) == 2
    assert repo.import_rows("chats", [chat_row]) == 0
    assert repo.count_rows() == {"users": 0, "chats": 1, "messages": 5, "api_keys": 0}
    assert mongo.admin.messages.find_one({"_id": "m4"})["content"] == [{"type": "text", "text": "4"}]
    assert [m.id for m in repo.get_messages("c1", user_id="u1").items] == [f"m{i}" for i in range(5)]


@pytest.mark.mongodb
def test_a_server_error_is_a_backend_error_chained_to_the_driver(
    repo: MongoRepository, mongo: Backend
) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.BackendError) as caught, repo._errors():
        mongo.admin.chats.update_one({"_id": chat.id}, {"$noSuchOperator": {"title": "x"}})
    assert isinstance(caught.value.__cause__, pymongo.errors.OperationFailure)
    assert not isinstance(caught.value, errors.BackendUnavailableError)


@pytest.mark.mongodb
def test_the_server_compares_timestamps_as_exact_strings(mongo: Backend) -> None:
    """The compare-and-set of updatedAt and the scan ranges rely on it (see tests/_nx27017.py)."""
    mongo.admin.chats.insert_one({"_id": "c", "updatedAt": "2026-11-26T12:02:39.925Z"})
    same_second = {"_id": "c", "updatedAt": "2026-11-26T12:02:39.111Z"}
    assert mongo.admin.chats.update_one(same_second, {"$set": {"title": "x"}}).matched_count == 0
    assert mongo.admin.chats.count_documents({"updatedAt": {"$gt": "2026-11-26T12:02:39.924Z"}}) == 1


@pytest.mark.mongodb
def test_a_message_over_the_document_limit_is_rejected_before_any_write(repo: MongoRepository) -> None:
    chat = repo.create_chat("u1")
    with pytest.raises(errors.ValidationError, match="16 MiB"):
        repo.add_message(chat.id, "user", [{"type": "text", "text": "x" * (16 * 1024 * 1024)}])
    assert repo.get_chat(chat.id, "u1") == chat
    assert repo.get_messages(chat.id).total == 0


@pytest.mark.mongodb
def test_the_node_database_survives_a_trip_through_mongodb_unchanged(
    repo: MongoRepository, fixtures_dir: Path, tmp_path: Path
) -> None:
    """SQL rows (JSON text) -> documents (BSON arrays) -> SQL rows again, every value identical."""
    from chatdb._base import IMPORT_COLUMNS
    from chatdb.copy import copy_database

    source_path = tmp_path / "node.sqlite"
    shutil.copy(fixtures_dir / "ccluster-node.sqlite", source_path)
    with (
        create_repository(f"sqlite:///{source_path}") as source,
        create_repository("sqlite:///:memory:") as back,
    ):
        copy_database(source, repo)
        copy_database(repo, back)
        for table in IMPORT_COLUMNS:
            original = [row for batch in source.scan_rows(table, stored=True) for row in batch]
            assert original, table
            assert [row for batch in back.scan_rows(table, stored=True) for row in batch] == original


def test_import_document_keeps_unreadable_json_text_as_it_was() -> None:
    row = {
        "id": "m",
        "chat_id": "c",
        "role": "user",
        "content": "[{not json",
        "created_at": TS,
        "metadata": "{x",
    }
    document = mapping.import_document("messages", row)
    assert (document["content"], document["metadata"]) == ("[{not json", "{x")
