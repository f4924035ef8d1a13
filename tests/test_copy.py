"""``copy_database`` in every direction: SQLite, PostgreSQL, MySQL/MariaDB and MongoDB, each to each
(16 pairs, same-backend copies included), on demo data, the Node fixture, an image over 1 MB and
messages whose stored JSON is unreadable (copied byte for byte, not "fixed")."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import chatdb
from chatdb import DbConfig, demo
from chatdb.copy import COPY_ORDER, copy_database, same_database
from chatdb.errors import ConfigError

from .backends import Backend, run_id
from .cli_support import invoke, one_error_line

KINDS = ("sqlite", "postgres", "mysql", "mongodb")
SQL = ("sqlite", "postgres", "mysql")
PAIRS = [
    pytest.param(source, target, marks=[getattr(pytest.mark, source), getattr(pytest.mark, target)],
                 id=f"{source}-to-{target}")
    for source in KINDS
    for target in KINDS
]  # fmt: skip
BIG_IMAGE = base64.b64encode(os.urandom(900_000)).decode("ascii")  # 1.2 MB of base64
UNREADABLE = (
    ("bad-content", '[{"type":"text","text":"cut off', None),
    ("bad-metadata", '[{"type":"text","text":"fine"}]', '{"model": "claude", oops}'),
    ("not-json", "plain text from another program", "NaN-ish: {"),
    ("escapes", "tab\there\nnew\\line\r\\N \u2603 \U0001f600 '\"", "\\"),
)


class Databases:
    """New, empty databases of any kind for one test module, dropped at its end."""

    def __init__(self, request: pytest.FixtureRequest, folder: Path) -> None:
        self.request, self.folder = request, folder
        self.cleanups: list[Callable[[], None]] = []
        self.sources: dict[str, tuple[DbConfig, dict[str, list[tuple[Any, ...]]]]] = {}

    def new(self, kind: str) -> DbConfig:
        name = run_id()
        if kind == "sqlite":
            return DbConfig(driver="sqlite", sqlite_path=str(self.folder / f"{name}.db"))
        backend: Backend = self.request.getfixturevalue(f"{kind}_backend")
        if kind == "mongodb":
            client = backend.extra["client"]
            self.cleanups.append(lambda: client.drop_database(name))
            return DbConfig(driver="mongodb", mongodb_url=backend.config.mongodb_url, mongodb_name=name)
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        admin = backend.extra["server_admin"]
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))

        def drop() -> None:
            force = " WITH (FORCE)" if kind == "postgres" else ""
            with admin.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))

        self.cleanups.append(drop)
        url = make_url(backend.url).set(database=name).render_as_string(hide_password=False)
        return DbConfig.from_url(url)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


@pytest.fixture(scope="module")
def databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Databases]:
    made = Databases(request, tmp_path_factory.mktemp("copy"))
    yield made
    made.close()


def fill(repo: Any, fixtures_dir: Path, folder: Path) -> None:
    """Demo data, the Node application's database, a big image and unreadable JSON."""
    demo.generate(repo, users=2, chats=5, messages=40, days=3, seed=8)
    node = folder / "node.sqlite"
    shutil.copy(fixtures_dir / "ccluster-node.sqlite", node)
    node.chmod(0o644)
    with chatdb.create_repository(f"sqlite:///{node}") as source:
        copy_database(source, repo)
    chat_id = next(row[0] for batch in repo.scan_rows("chats") for row in batch)
    image = [
        {"type": "text", "text": "big"},
        {"type": "image", "imageData": BIG_IMAGE, "mimeType": "image/png"},
    ]
    rows = [
        {"id": "big-image", "chat_id": chat_id, "role": "user", "content": json.dumps(image),
         "created_at": "2026-11-30T10:00:00.000Z", "metadata": None},
        *({"id": mid, "chat_id": chat_id, "role": "assistant", "content": content,
           "created_at": f"2026-11-30T10:00:0{i}.000Z", "metadata": meta}
          for i, (mid, content, meta) in enumerate(UNREADABLE, start=1)),
    ]  # fmt: skip
    repo.import_rows("messages", rows)


def stored(repo: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: sorted(
            (row for batch in repo.scan_rows(table, stored=True) for row in batch), key=lambda r: r[0]
        )
        for table in COPY_ORDER
    }


def comparable(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """Message JSON as its decoded value where it is JSON (MongoDB holds it decoded, so the
    text's spacing is not kept through it); unreadable text stays the exact text."""

    def value(item: Any) -> Any:
        if isinstance(item, str):
            try:
                return json.loads(item)
            except ValueError:
                return item
        return item

    return {
        table: [
            (*row[:3], value(row[3]), row[4], value(row[5])) if table == "messages" else row
            for row in table_rows
        ]
        for table, table_rows in rows.items()
    }


def source_of(kind: str, databases: Databases, fixtures_dir: Path, folder: Path) -> tuple[DbConfig, Any]:
    """One filled source database per kind for the module (four pairs read each), with its rows."""
    if kind not in databases.sources:
        config = databases.new(kind)
        with chatdb.create_repository(config) as repo:
            fill(repo, fixtures_dir, folder)
            databases.sources[kind] = (config, stored(repo))
    return databases.sources[kind]


@pytest.mark.slow
@pytest.mark.parametrize(("source_kind", "target_kind"), PAIRS)
def test_copy_between_every_pair_of_backends_is_exact_and_resumable(
    source_kind: str, target_kind: str, databases: Databases, fixtures_dir: Path, tmp_path: Path
) -> None:
    source_config, expected = source_of(source_kind, databases, fixtures_dir, tmp_path)
    target_config = databases.new(target_kind)
    with chatdb.create_repository(source_config) as source, chatdb.create_repository(target_config) as target:
        result = copy_database(source, target, batch_size=7)
        counts = {table: len(rows) for table, rows in expected.items()}
        assert {t: (c.read, c.inserted) for t, c in result.tables.items()} == {
            t: (n, n) for t, n in counts.items()
        }
        assert counts["messages"] > 40 and counts["users"] > 2
        got = stored(target)
        if source_kind in SQL and target_kind in SQL:
            assert got == expected  # byte for byte, JSON text included
        else:
            assert comparable(got) == comparable(expected)
        for mid, content, meta in UNREADABLE:  # never "fixed", on any pair
            row = next(r for r in got["messages"] if r[0] == mid)
            if json_text(content) is None:
                assert row[3] == content
            if meta is not None and json_text(meta) is None:
                assert row[5] == meta
        big = next(r for r in got["messages"] if r[0] == "big-image")
        assert BIG_IMAGE in (big[3] if isinstance(big[3], str) else json.dumps(big[3]))
        again = copy_database(source, target)
        assert again.inserted == 0 and again.read == sum(counts.values())
        assert target.count_rows() == counts


def json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


@pytest.mark.sqlite
def test_the_default_sqlite_file_is_the_same_database_by_any_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    default = DbConfig(driver="sqlite", sqlite_path="./data/chat.db")
    for url in (
        "sqlite:///data/chat.db",
        f"sqlite:///{tmp_path}/data/chat.db",
        "sqlite:///./data/../data/chat.db",
    ):
        assert same_database(default, DbConfig.from_url(url)), url
    assert not same_database(default, DbConfig.from_url("sqlite:///data/other.db"))
    memory = DbConfig.from_url("sqlite:///:memory:")
    assert not same_database(memory, memory)
    with chatdb.create_repository(default) as made:
        made.ensure_schema()  # (copy reads an existing database only)
    line = one_error_line(invoke(None, "copy", "--to", "sqlite:///data/chat.db"))
    assert "same database" in line
    with chatdb.create_repository(default) as one, pytest.raises(ConfigError, match="same database"):
        copy_database(one, chatdb.create_repository(f"sqlite:///{tmp_path}/data/chat.db"))


@pytest.mark.sqlite
def test_copy_progress_is_per_table_and_quiet_when_piped(tmp_path: Path) -> None:
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    with chatdb.create_repository(source_url) as source:
        demo.generate(source, users=2, chats=4, messages=30, days=2)
    piped = invoke(source_url, "copy", "--to", f"sqlite:///{tmp_path / 'piped.db'}", "--format", "json")
    assert piped.exit_code == 0 and "rows/s" not in piped.stderr
    assert [row["table"] for row in json.loads(piped.stdout)] == list(COPY_ORDER)
    # On a terminal: one bar per table, with rows/s.
    from chatdb.cli.database import _TableProgress

    class Terminal:
        def show_progress(self) -> bool:
            return True

    import io
    from contextlib import redirect_stderr

    class TerminalStream(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = TerminalStream()
    with redirect_stderr(err), _TableProgress(Terminal(), {"users": 2, "chats": 4}) as bar:  # type: ignore[arg-type]
        bar("users", 2)
        bar("chats", 4)
    shown = err.getvalue()
    assert "users" in shown and "chats" in shown and "rows/s" in shown and "4/4" in shown


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_fresh_postgres_copy_that_meets_a_conflict_skips_it_through_the_staging_table(
    backend: Backend,
) -> None:
    from chatdb.sql.dialects import import_chunk

    columns = ("id", "chat_id", "role", "content", "created_at", "metadata")
    rows = [(f"m{i}", "c", "user", "[]", "2026-01-01T00:00:00.000Z", None) for i in range(6)]
    with backend.new_repo() as repo:
        assert repo.import_rows("messages", [dict(zip(columns, row, strict=True)) for row in rows[:2]]) == 2
        executor = repo._executor  # type: ignore[attr-defined]
        # As if another writer had added two rows after this import found the table empty.
        write = lambda tx: import_chunk("postgres", tx.cursor, "messages", columns, rows, fresh=True)  # noqa: E731
        assert executor.run(write, write=True) == 4
        assert repo.count_rows()["messages"] == 6


def index_sets(repo: Any) -> dict[str, list[tuple[str, tuple[tuple[str, Any], ...], bool]]]:
    """Per MongoDB collection: its indexes as (name, key pattern, unique)."""
    return {
        name: sorted(
            (index, tuple(info["key"]), bool(info.get("unique")))
            for index, info in repo.db[name].index_information().items()
        )
        for name in ("users", "chats", "messages", "apiKeys")
    }


@pytest.mark.sqlite
@pytest.mark.mongodb
def test_a_copy_into_an_empty_mongodb_builds_its_indexes_at_the_end_and_keeps_them_in_a_filled_one(
    databases: Databases, fixtures_dir: Path, tmp_path: Path
) -> None:
    source_config, _ = source_of("sqlite", databases, fixtures_dir, tmp_path)
    with chatdb.create_repository(databases.new("mongodb")) as reference:
        reference.ensure_schema()
        schema = index_sets(reference)
    assert len(schema["messages"]) > 1 and len(schema["chats"]) > 1
    for filled in (False, True):
        with (
            chatdb.create_repository(source_config) as source,
            chatdb.create_repository(databases.new("mongodb")) as target,
        ):
            if filled:
                demo.generate(target, users=1, chats=2, messages=4, days=1, seed=3)
            seen: list[dict[str, Any]] = []

            def look(table: str, _rows: int, target: Any = target, seen: list[Any] = seen) -> None:
                if table == "messages":
                    seen.append(index_sets(target))

            copy_database(source, target, batch_size=7, progress=look)
            assert index_sets(target) == schema
            assert seen
            if filled:  # kept while the rows went in
                assert all(during == schema for during in seen)
            else:  # built once, at the end
                assert all(during["messages"] != schema["messages"] for during in seen)
                assert all(during["users"] == schema["users"] for during in seen)


@pytest.mark.parametrize("kind", [pytest.param(kind, marks=getattr(pytest.mark, kind)) for kind in KINDS])
def test_import_values_writes_value_tuples_skips_existing_ids_and_names_a_wrong_value(
    kind: str, databases: Databases
) -> None:
    from chatdb.errors import ValidationError

    with chatdb.create_repository(databases.new(kind)) as repo:
        chat = repo.create_chat("u1")
        stamp = "2026-01-01T00:00:00.000Z"

        def row(i: int, content: Any = '[{"type":"text","text":"x"}]') -> tuple[Any, ...]:
            return (f"m{i}", chat.id, "user", content, stamp, None)

        # Decoded JSON (as MongoDB holds it) is stored too; each list is written as it comes.
        bulk: Any = repo  # (import_values is RepositoryBase's: not in the ChatRepository protocol)
        decoded = [{"type": "text", "text": "y"}]
        assert bulk.import_values("messages", [[row(0), row(1)], [row(2, decoded)]]) == 3
        assert bulk.import_values("messages", [[row(0), row(3)]]) == 1
        assert [m.content[0]["text"] for m in repo.get_messages(chat.id).items] == ["x", "x", "y", "x"]
        with pytest.raises(ValidationError, match="messages row 1: created_at"):
            bulk.import_values("messages", [[row(4), (*row(5)[:4], 5, None)]])
