"""Exports through native Arrow drivers (chatdb.sql.arrow_scan) — large SQLite scans in a child
process, PostgreSQL (ADBC) and MySQL (connectorx) in process — must give exactly what the DB-API
path gives, bad rows, NULLs and filters included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import chatdb
from chatdb import export
from chatdb.sql import SqlRepository
from chatdb.sql.repository import SLIM_CONTENT_BYTES, build_scan

from .backends import Backend
from .test_export import BAD_ROWS, _chat, _message


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlRepository]:
    if request.param == "sqlite":
        repository = chatdb.create_repository(f"sqlite:///{tmp_path / 'native.db'}")
    else:
        backend: Backend = request.getfixturevalue(f"{request.param}_backend")
        backend.reset()
        repository = backend.new_repo()
    assert isinstance(repository, SqlRepository)
    repository.import_rows("chats", [_chat("c-1", "alice"), _chat("c-2", "bob")])
    rows = [
        _message(n, "c-1" if n % 3 else "c-2", f"2025-01-0{1 + n % 5}T00:00:00.{n:03d}Z",
                 None if n % 2 else json.dumps({"model": "m", "inputTokens": n}))
        for n in range(200)
    ]  # fmt: skip
    rows += [
        _message(500 + n, "c-1", f"2025-02-01T00:00:0{n}.000Z", metadata, content)
        for n, (metadata, content, _) in enumerate(BAD_ROWS)
    ]
    rows.append(_message(900, "gone", "2025-03-01T00:00:00.000Z"))
    rows.append(
        _message(901, "c-2", "2025-03-02T00:00:00.000Z",
                 content=json.dumps([{"type": "image", "imageData": "A" * 100_000, "mimeType": "image/png"}]))
    )  # fmt: skip
    repository.import_rows("messages", rows)
    yield repository
    repository.close()


def both_paths(repo: SqlRepository, table: str = "messages", **filters: Any) -> tuple[pa.Table, pa.Table]:
    repo.native_scans = False
    plain = export.read(repo, table, **filters).read_all()
    repo.native_scans, repo.arrow_scan_min_rows = True, 0
    assert repo.scan_arrow(table) is not None, "the ADBC drivers are part of the analytics extra"
    native = export.read(repo, table, **filters).read_all()
    return plain, native


@pytest.mark.filterwarnings("ignore::chatdb.export.ExportWarning")
@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"include_text": True, "include_extra": True},
        {"user_id": "bob"},
        {"since": datetime(2025, 1, 2, tzinfo=UTC), "until": datetime(2025, 1, 4, tzinfo=UTC)},
    ],
)
def test_native_scan_exports_exactly_what_the_sqlite3_path_does(
    repo: SqlRepository, filters: dict[str, Any]
) -> None:
    plain, native = both_paths(repo, **filters)
    assert plain.num_rows > 0
    assert native.equals(plain)


@pytest.mark.filterwarnings("ignore::chatdb.export.ExportWarning")
def test_small_batches_over_shared_timestamps_and_odd_ids_export_every_row_once(repo: SqlRepository) -> None:
    """MySQL's native scan reads page by page after the last (created_at, id) seen: pages
    must split runs of equal timestamps exactly, whatever characters the ids hold."""
    odd = ["q'uote", "back\\slash", "ctrl\x01char", "tab\there", "ünï", "Z", "a", "a "]
    stamp = "2025-01-03T00:00:00.000Z"
    repo.import_rows(
        "messages",
        [_message(700 + n, "c-1", stamp) | {"id": f"{name}-{n}"} for n, name in enumerate(odd * 3)],
    )
    plain, native = both_paths(repo, batch_size=4)
    assert native.equals(plain)
    ids = native["message_id"].to_pylist()
    assert len(ids) == len(set(ids)) == plain.num_rows
    assert sum(1 for i in ids if i.rsplit("-", 1)[0] in odd) == len(odd) * 3


@pytest.mark.filterwarnings("ignore::chatdb.export.ExportWarning")
@pytest.mark.parametrize(
    "filters",
    [
        {"user_id": "bob"},
        {"since": datetime(2025, 1, 2, tzinfo=UTC), "until": datetime(2025, 1, 4, tzinfo=UTC)},
        {"table": "chats"},
    ],
)
def test_small_batches_honour_filters(repo: SqlRepository, filters: dict[str, object]) -> None:
    """Page by page (MySQL), the filters hold on every page, not just the first."""
    arguments = dict(filters)
    table = str(arguments.pop("table", "messages"))
    if table == "chats":  # twenty more, all created at the same millisecond
        repo.import_rows("chats", [_chat(f"c-{n}", "carol") for n in range(10, 30)])
    plain, native = both_paths(repo, table, batch_size=7, **arguments)
    assert plain.num_rows > 7
    assert native.equals(plain)


# Contents over SLIM_CONTENT_BYTES in every shape the slim SQLite scan must treat as the DB-API
# path does: parts of every kind, text that is not a string, elements that are not objects,
# invalid JSON, JSON that is not an array.
_BIG = "x" * (SLIM_CONTENT_BYTES + 10)
LONG_CONTENTS = [
    json.dumps(
        [{"type": "text", "text": 'see é\n"this"'}, {"type": "image", "imageData": _BIG, "mimeType": "p"}]
    ),
    json.dumps([{"type": "text", "text": _BIG + "ünï"}, {"type": "text", "text": "two"}]),
    json.dumps([{"type": "text", "text": {"nested": _BIG}}, "a string", 5, None, [1, 2], {"text": 7}, {}]),
    json.dumps({"type": "text", "text": _BIG}),
    json.dumps(_BIG),
    "[{not json" + _BIG,
    json.dumps([{"type": "image", "source": {"data": _BIG}}, {"type": "text", "text": "after"}]),
]


@pytest.mark.sqlite
@pytest.mark.filterwarnings("ignore::chatdb.export.ExportWarning")
def test_long_contents_of_every_shape_export_as_on_the_db_api_path(tmp_path: Path) -> None:
    repo = chatdb.create_repository(f"sqlite:///{tmp_path / 'long.db'}")
    assert isinstance(repo, SqlRepository)
    repo.import_rows("chats", [_chat("c-1", "alice")])
    repo.import_rows(
        "messages",
        [_message(n, "c-1", f"2025-01-01T00:00:0{n}.000Z", content=c) for n, c in enumerate(LONG_CONTENTS)],
    )
    for include_text in (False, True):
        plain, native = both_paths(repo, include_text=include_text)
        assert native.equals(plain)
        assert plain.num_rows == len(LONG_CONTENTS)
    text = native.column("text").to_pylist()
    assert text[0] == 'see é\n"this"' and text[1] == _BIG + "ünï\ntwo"
    assert native.column("has_image").to_pylist()[:2] == [True, False]
    repo.close()


@pytest.mark.sqlite
def test_the_native_sqlite_scan_leaves_image_payloads_in_the_database(tmp_path: Path) -> None:
    """An image's base64 (MBs) never reaches Arrow: 25,000 such rows overflowed a string
    column (2 GiB) before, and the export reads only each part's type and text."""
    repo = chatdb.create_repository(f"sqlite:///{tmp_path / 'images.db'}")
    assert isinstance(repo, SqlRepository)
    repo.import_rows("chats", [_chat("c-1", "alice")])
    repo.import_rows("messages", [_message(0, "c-1", "2025-01-01T00:00:00.000Z", content=LONG_CONTENTS[0])])
    repo.arrow_scan_min_rows = 0
    tables = repo.scan_arrow("messages")
    assert tables is not None
    [content] = pa.concat_tables(list(tables)).column("content").to_pylist()
    assert json.loads(content) == [
        {"type": "text", "text": 'see é\n"this"'},
        {"type": "image", "text": None},
    ]
    repo.close()


@pytest.mark.sqlite
@pytest.mark.filterwarnings("ignore::chatdb.export.ExportWarning")
def test_batches_staged_in_the_sqlite_child_are_converted_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each conversion query has a fixed cost: the child's small staged batches (here of 4
    rows) are gathered for one, and the output still comes in the asked batch size."""
    from chatdb.export._flatten import Flattener

    repo = chatdb.create_repository(f"sqlite:///{tmp_path / 'gathered.db'}")
    assert isinstance(repo, SqlRepository)
    repo.import_rows("chats", [_chat("c-1", "alice")])
    repo.import_rows("messages", [_message(n, "c-1", f"2025-01-01T00:00:00.{n:03d}Z") for n in range(30)])
    repo.native_scans, repo.arrow_scan_min_rows = True, 0
    converted: list[int] = []
    convert = Flattener.convert

    def counting(self: Flattener, source: pa.Table) -> tuple[pa.Table, int]:
        converted.append(source.num_rows)
        return convert(self, source)

    monkeypatch.setattr(Flattener, "convert", counting)
    batches = list(export.read(repo, batch_size=4))
    assert converted == [30]
    assert [batch.num_rows for batch in batches] == [4] * 7 + [2]
    assert [row for batch in batches for row in batch.column("message_id").to_pylist()] == [
        f"m-{n:05d}" for n in range(30)
    ]
    repo.close()


@pytest.mark.parametrize("table", ["chats", "users", "api_keys"])
def test_native_scan_of_the_other_tables_matches(repo: SqlRepository, table: str) -> None:
    repo.create_user("carol", "hash")
    repo.create_api_key("alice", "h" * 64, "cck_x", "k")
    plain, native = both_paths(repo, table)
    assert native.equals(plain)


@pytest.mark.sqlite
def test_small_sqlite_scans_stay_in_process(tmp_path: Path) -> None:
    repo = chatdb.create_repository(f"sqlite:///{tmp_path / 'small.db'}")
    assert isinstance(repo, SqlRepository)
    repo.import_rows("messages", [_message(n, "c", f"2025-01-01T00:00:00.{n:03d}Z") for n in range(200)])
    repo.arrow_scan_min_rows = 10_000
    assert repo.scan_arrow("messages") is None
    repo.arrow_scan_min_rows = 100
    assert repo.scan_arrow("messages") is not None


@pytest.mark.sqlite
def test_a_native_scan_of_a_broken_file_is_a_backend_error(tmp_path: Path) -> None:
    from chatdb.errors import BackendError
    from chatdb.sql import arrow_scan

    target = tmp_path / "not-a-db.sqlite"
    target.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BackendError):
        list(arrow_scan.sqlite_batches(str(target), "SELECT 1", (), 10))


@pytest.mark.filterwarnings("ignore::chatdb.export.ExportWarning")
def test_owners_from_a_join_or_a_lookup_export_the_same(repo: SqlRepository) -> None:
    _, lookup = both_paths(repo)
    repo.owner_lookup_max_chats = 0  # more chats than this: the database joins
    _, joined = both_paths(repo)
    assert lookup.equals(joined)
    assert lookup.filter(pa.compute.equal(lookup["chat_id"], "gone"))["user_id"].null_count == 1


@pytest.mark.filterwarnings("ignore::chatdb.export.ExportWarning")
def test_columns_null_for_a_whole_first_batch_export_as_nulls(repo: SqlRepository) -> None:
    """ADBC types a column from its first batch: the columns that can be NULL are selected
    with a sentinel, the chat owner (an outer join) included."""
    repo.owner_lookup_max_chats = 0  # the owner from the join: null for the orphan below
    repo.import_rows("messages", [_message(990 + n, "gone", f"2024-12-31T00:00:00.00{n}Z") for n in range(5)])
    plain, native = both_paths(repo, batch_size=5)
    assert native.equals(plain)
    first = native.slice(0, 5)
    assert first["user_id"].null_count == 5 and first["model"].null_count == 5


def _alice_sqlite(path: Path, messages: int) -> SqlRepository:
    """A SQLite file with alice's chat c-1 and ``messages`` messages, scanned natively however small."""
    repo = chatdb.create_repository(f"sqlite:///{path}")
    assert isinstance(repo, SqlRepository)
    repo.arrow_scan_min_rows = 0
    repo.import_rows("chats", [_chat("c-1", "alice")])
    stamps = (f"2025-01-01T00:00:{n // 1000:02d}.{n % 1000:03d}Z" for n in range(messages))
    repo.import_rows("messages", [_message(n, "c-1", stamp) for n, stamp in enumerate(stamps)])
    return repo


@pytest.mark.sqlite
def test_the_sqlite_child_parses_content_so_it_never_crosses_the_pipe(tmp_path: Path) -> None:
    from chatdb.export._flatten import text_stage

    repo = _alice_sqlite(tmp_path / "staged.db", 10)
    batches = repo.scan_arrow("messages", stage=text_stage(include_text=False))
    assert batches is not None
    table = pa.concat_tables(list(batches))
    assert "content" not in table.column_names
    assert table.num_rows == 10 and table["content_chars"].null_count == 0
    assert table.schema.field("content_chars").type == pa.int64()
    assert set(table["user_id"].to_pylist()) == {"alice"}


@pytest.mark.postgres
def test_an_unreachable_postgres_native_scan_is_a_backend_unavailable_error() -> None:
    from chatdb.errors import BackendUnavailableError
    from chatdb.sql import arrow_scan

    uri = "postgresql://postgres:secret@127.0.0.1:1/nowhere"
    with pytest.raises(BackendUnavailableError) as caught:
        list(arrow_scan.postgres_batches(uri, "SELECT 1", (), 10, "127.0.0.1:1"))
    assert "127.0.0.1:1" in str(caught.value) and "secret" not in str(caught.value)


def test_a_user_id_with_quotes_and_backslashes_is_matched_exactly(repo: SqlRepository) -> None:
    owner = "o'brien\\x\"; DROP TABLE messages; --"
    repo.import_rows("chats", [_chat("c-q", owner)])
    repo.import_rows("messages", [_message(700 + n, "c-q", f"2025-04-01T00:00:0{n}.000Z") for n in range(2)])
    plain, native = both_paths(repo, user_id=owner)
    assert native.num_rows == 2 and native.equals(plain)
    assert repo.count_rows()["messages"] > 2


@pytest.mark.mysql
@pytest.mark.parametrize("repo", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_mysql_scans_with_control_characters_take_the_db_api_path(repo: SqlRepository) -> None:
    repo.native_scans = True
    assert repo.scan_arrow("messages", user_id="bad\x01id") is None
    assert repo.scan_arrow("messages", user_id="alice") is not None


@pytest.mark.mysql
def test_mysql_owners_of_chats_created_after_the_lookup_are_read_again(mysql_backend: Backend) -> None:
    """connectorx reads the owner lookup and the scan on two connections (two snapshots): a
    chat created between them is read again when its messages arrive, not exported ownerless."""
    from sqlalchemy import select

    from chatdb.sql import arrow_scan
    from chatdb.sql.schema import chats

    mysql_backend.reset()
    repo = mysql_backend.new_repo()
    assert isinstance(repo, SqlRepository)
    repo.import_rows("chats", [_chat("c-1", "alice"), _chat("c-2", "bob")])
    stamps = [f"2025-01-01T00:00:00.{n:03d}Z" for n in range(120)]
    chat_ids = ["c-1", "c-2", "gone"]
    repo.import_rows("messages", [_message(n, chat_ids[n % 3], stamp) for n, stamp in enumerate(stamps)])
    asked: list[list[str]] = []

    def missing(chat_ids: list[str]) -> list[tuple[object, object]]:
        asked.append(sorted(chat_ids))
        return repo._chat_owners(chat_ids)

    # The lookup as it was read before c-2 existed.
    before_bob = select(chats.c.id, chats.c.user_id).where(chats.c.id != "c-2")
    lookup = arrow_scan.Lookup(before_bob, key="chat_id", name="user_id", position=2, missing=missing)
    native = arrow_scan.for_backend("mysql")
    assert native is not None
    scan = partial(build_scan, "messages", owner=False)
    tables = native.batches(repo.engine.url, repo.config, scan, 50, "mariadb", lookup)
    assert tables is not None
    owners = pa.concat_tables(list(tables)).select(["chat_id", "user_id"]).to_pylist()
    repo.close()
    assert len(owners) == 120
    assert {(row["chat_id"], row["user_id"]) for row in owners} == {
        ("c-1", "alice"), ("c-2", "bob"), ("gone", None)
    }  # fmt: skip
    assert asked == [["c-2", "gone"]]  # asked once: found or not, the answer is kept


@pytest.mark.mysql
def test_mysql_scans_read_at_most_one_page_ahead_of_their_consumer(mysql_backend: Backend) -> None:
    """Memory stays bounded by the page size however slow the consumer (connectorx's own
    stream would read the whole table ahead)."""
    import time

    from sqlalchemy.dialects.mysql import pymysql

    from chatdb.sql import arrow_scan

    mysql_backend.reset()
    repo = mysql_backend.new_repo()
    assert isinstance(repo, SqlRepository)
    stamps = [f"2025-01-01T00:00:{n // 1000:02d}.{n % 1000:03d}Z" for n in range(100)]
    repo.import_rows("messages", [_message(n, "c-1", stamp) for n, stamp in enumerate(stamps)])
    pages: list[object] = []

    def page(after: tuple[str, str] | None, rows: int) -> str:
        pages.append(after)
        statement = build_scan("messages", owner=False, after=after).limit(rows)
        return str(statement.compile(dialect=pymysql.dialect(), compile_kwargs={"literal_binds": True}))

    uri = repo.engine.url.set(drivername="mysql", query={}).render_as_string(hide_password=False)
    tables = arrow_scan.mysql_batches(uri, page, 10, "mariadb")
    first = next(tables)
    time.sleep(0.5)  # a slow consumer: the reading thread must wait for it
    assert first.num_rows == 10 and len(pages) <= 3
    rest = list(tables)
    repo.close()
    assert sum(table.num_rows for table in rest) == 90 and len(pages) == 11


@pytest.mark.mysql
def test_mysql_pages_hold_about_page_bytes_whatever_their_rows_hold(
    mysql_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages with images are MBs each: a page's row count follows the bytes of the page
    before it (25,000 such rows overflowed connectorx's 2 GiB text column: it panicked)."""
    import connectorx

    from chatdb import _batches

    mysql_backend.reset()
    repo = mysql_backend.new_repo()
    assert isinstance(repo, SqlRepository)
    repo.import_rows("chats", [_chat("c-1", "alice")])
    big = json.dumps([{"type": "image", "imageData": "A" * 20_000}])
    large = [_message(n, "c-1", f"2025-01-01T00:00:00.{n:03d}Z", content=big) for n in range(40)]
    small = [_message(100 + n, "c-1", f"2025-02-01T00:00:00.{n:03d}Z") for n in range(300)]
    repo.import_rows("messages", large + small)
    monkeypatch.setattr(_batches, "BATCH_BYTES", 100_000)  # five of the large messages
    monkeypatch.setattr(_batches, "FIRST_ROWS", 3)
    sizes: list[int] = []
    read_sql = connectorx.read_sql

    def counting(uri: str, query: str, **options: Any) -> Any:
        table = read_sql(uri, query, **options)
        if "messages" in query:
            sizes.append(table.num_rows)
        return table

    monkeypatch.setattr(connectorx, "read_sql", counting)
    plain, native = both_paths(repo, batch_size=1_000)
    repo.close()
    assert native.equals(plain) and native.num_rows == 340
    assert sizes[0] == 3 and max(sizes[1:8]) <= 5  # the large messages, five per 100 KB
    assert max(sizes) > 100  # then the small ones, many per page


@pytest.mark.sqlite
def test_stopping_a_native_sqlite_export_early_ends_its_child(tmp_path: Path) -> None:
    import psutil

    repo = _alice_sqlite(tmp_path / "early.db", 30_000)
    reader = export.read(repo, batch_size=1_000)
    first = reader.read_next_batch()
    assert first.num_rows == 1_000
    reader.close()
    del reader  # the reader holds the export's generator: releasing it stops the scan
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "_sqlite_arrow" in " ".join(child.cmdline()):
                children.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue  # another test's child, ended and not yet reaped (ours are waited for)
    assert children == [], "the scan's child process must be gone once the export stops"
    repo.add_message("c-1", "assistant", [{"type": "text", "text": "still writable"}], user_id="alice")
    assert repo.count_rows()["messages"] == 30_001
    repo.close()


@pytest.mark.mysql
@pytest.mark.parametrize("repo", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_mysql_urls_with_connection_options_take_the_db_api_path(repo: SqlRepository) -> None:
    from chatdb.sql import arrow_scan

    native = arrow_scan.for_backend("mysql")
    assert native is not None
    scan = partial(build_scan, "messages")
    location = "127.0.0.1:3306"
    plain_url = repo.engine.url.set(query={"charset": "utf8mb4"})
    assert native.batches(plain_url, repo.config, scan, 10, location) is not None
    ssl_url = repo.engine.url.set(query={"ssl_ca": "/etc/ssl/ca.pem"})
    assert native.batches(ssl_url, repo.config, scan, 10, location) is None


@pytest.mark.sqlite
def test_the_sqlite_child_runs_the_same_chatdb_as_its_parent(tmp_path: Path) -> None:
    """A notebook that puts a chatdb checkout on sys.path (another chatdb installed, or none)
    must not have its scans run by another version's child."""
    import shutil
    import subprocess
    import sys
    import textwrap

    copy = tmp_path / "checkout"
    shutil.copytree(Path(chatdb.__file__).parent, copy / "chatdb")
    marker = tmp_path / "child-ran"
    child = copy / "chatdb" / "_sqlite_arrow.py"  # this copy's child says it ran
    code = child.read_text()
    assert "\ndef main() -> None:\n" in code
    child.write_text(
        code.replace(
            "\ndef main() -> None:\n",
            f"\ndef main() -> None:\n    open({str(marker)!r}, 'w').write(__file__)\n",
        )
    )
    _alice_sqlite(tmp_path / "db.sqlite", 50)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(copy)!r})
        import chatdb
        from chatdb import export
        assert chatdb.__file__.startswith({str(copy)!r}), chatdb.__file__
        repo = chatdb.create_repository({f"sqlite:///{tmp_path / 'db.sqlite'}"!r})
        repo.arrow_scan_min_rows = 0
        print(export.to_polars(repo).height)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "50"
    assert marker.read_text().startswith(str(copy))


@pytest.mark.sqlite
def test_without_a_python_to_start_sqlite_scans_stay_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded interpreters can leave sys.executable empty: the export still works."""
    import sys

    repo = _alice_sqlite(tmp_path / "db.sqlite", 20)
    monkeypatch.setattr(sys, "executable", "")
    assert repo.scan_arrow("messages") is None
    assert export.to_polars(repo).height == 20
