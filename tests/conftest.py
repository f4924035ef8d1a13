"""Fixtures: ``repo`` runs each contract test once per backend (see tests/backends.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from _pytest.mark.structures import ParameterSet

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
# ... and on databases whose tables the Node layer's own DDL made (tests/fixtures/*schema*.sql):
# MySQL before `chatdb upgrade` (Backend.limits: the tests assert the differences) and after it.
NODE_SCHEMA_BACKENDS = [
    pytest.param("sqlite_node", marks=[pytest.mark.sqlite, pytest.mark.node_schema]),
    pytest.param("postgres_node", marks=[pytest.mark.postgres, pytest.mark.node_schema]),
    pytest.param("mysql_node", marks=[pytest.mark.mysql, pytest.mark.node_schema]),
    pytest.param("mysql_node_upgraded", marks=[pytest.mark.mysql, pytest.mark.node_schema]),
]
# CI time: the whole suite on all four adds about 9 minutes on two shared cores, so the variants
# run where they can differ: everything after the upgrade; the CRUD modules (and, on MySQL before
# the upgrade, the stateful model, which then asserts the collation) on the Node DDL as it is.
_CRUD = {"test_contract_chats", "test_contract_messages", "test_contract_users_keys"}
NODE_SCHEMA_MODULES: dict[str, set[str] | None] = {
    "sqlite_node": _CRUD,
    "postgres_node": _CRUD,
    "mysql_node": _CRUD | {"test_contract_stateful"},
    "mysql_node_upgraded": None,  # the whole suite
}


def contract_backends(module: str) -> list[ParameterSet]:
    """CONTRACT_BACKENDS, and those of NODE_SCHEMA_BACKENDS that run in ``module``."""
    node = [p for p in NODE_SCHEMA_BACKENDS if module in (NODE_SCHEMA_MODULES[str(p.values[0])] or {module})]
    return CONTRACT_BACKENDS + node


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
def sqlite_node_backend(session_dir: Path) -> Iterator[Backend]:
    yield from backends.node_schema_backend("sqlite", session_dir)


@pytest.fixture(scope="session")
def postgres_node_backend(session_dir: Path) -> Iterator[Backend]:
    yield from backends.node_schema_backend("postgres", session_dir)


@pytest.fixture(scope="session")
def mysql_node_backend(session_dir: Path) -> Iterator[Backend]:
    yield from backends.node_schema_backend("mysql", session_dir)


@pytest.fixture(scope="session")
def mysql_node_upgraded_backend(session_dir: Path) -> Iterator[Backend]:
    yield from backends.node_schema_backend("mysql", session_dir, upgraded=True)


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
    params = contract_backends(module) if module.startswith("test_contract_") else ALL_BACKENDS
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
