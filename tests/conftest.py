"""Fixtures: ``repo`` runs each contract test once per backend (see tests/backends.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatdb.repository import ChatRepository

from . import backends
from .backends import Backend

ALL_BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("sqlite_memory", marks=pytest.mark.sqlite),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("mongodb", marks=pytest.mark.mongodb),
]
SERVER_BACKENDS = [p for p in ALL_BACKENDS if p.values[0] not in ("sqlite_memory",)]
# The Node application's output, kept in the project (see tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    yield from backends.temp_dir()


@pytest.fixture(scope="session")
def sqlite_backend(session_dir: Path) -> Iterator[Backend]:
    yield from backends.sqlite_file_backend(session_dir)


@pytest.fixture(scope="session")
def sqlite_memory_backend() -> Iterator[Backend]:
    yield from backends.sqlite_memory_backend()


@pytest.fixture(scope="session")
def postgres_backend() -> Iterator[Backend]:
    yield from backends.server_backend("postgres")


@pytest.fixture(scope="session")
def mysql_backend() -> Iterator[Backend]:
    yield from backends.server_backend("mysql")


@pytest.fixture(scope="session")
def mongodb_backend(session_dir: Path) -> Iterator[Backend]:
    yield from backends.mongodb_backend(session_dir)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """The selected backend, emptied: every test starts from no rows."""
    selected: Backend = request.getfixturevalue(f"{request.param}_backend")
    selected.reset()
    return selected


@pytest.fixture
def repo(backend: Backend) -> Iterator[ChatRepository]:
    with backend.new_repo() as repository:
        yield repository


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
