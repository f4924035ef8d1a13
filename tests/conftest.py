"""Fixtures: ``repo`` runs each contract test once per backend (see tests/backends.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
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
# The contract suite (tests/test_contract_*.py) also runs each backend through chatdb.aio.
CONTRACT_BACKENDS = ALL_BACKENDS + [pytest.param(f"{p.values[0]}_async", marks=p.marks) for p in ALL_BACKENDS]
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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``backend`` runs over ALL_BACKENDS (CONTRACT_BACKENDS in the contract suite) unless the
    test names its own."""
    if "backend" not in metafunc.fixturenames or any(
        "backend" in str(mark.args[0]) for mark in metafunc.definition.iter_markers("parametrize")
    ):
        return
    module = metafunc.module.__name__.rpartition(".")[2]
    params = CONTRACT_BACKENDS if module.startswith("test_contract_") else ALL_BACKENDS
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """The selected backend, emptied: every test starts from no rows. A name ending in
    ``_async`` is the same database through ``chatdb.aio`` (see tests/async_face.py)."""
    name = str(request.param)
    selected: Backend = request.getfixturevalue(f"{name.removesuffix('_async')}_backend")
    if name.endswith("_async"):
        selected = replace(selected, asynchronous=True)
    selected.reset()
    return selected


@pytest.fixture
def repo(backend: Backend) -> Iterator[ChatRepository]:
    with backend.new_repo() as repository:
        yield repository


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
