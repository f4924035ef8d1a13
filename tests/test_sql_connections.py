"""Per-thread connections: released when their thread ends or the repository closes, and they
never keep a repository alive."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest

import chatdb
from chatdb.sql import SqlRepository


@pytest.mark.sqlite
def test_a_finished_threads_connection_is_released(tmp_path: Path) -> None:
    repo = chatdb.create_repository(f"sqlite:///{tmp_path / 'c.db'}")
    assert isinstance(repo, SqlRepository)
    repo.create_chat("u")
    threads = [threading.Thread(target=repo.list_chats, args=("u",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(repo._executor._held) == 5  # the main thread's and the four workers'
    del threads, thread
    gc.collect()
    assert len(repo._executor._held) == 1
    repo.close()
    assert not repo._executor._held and not repo._executor._finalizers


@pytest.mark.sqlite
def test_a_closed_repository_can_be_garbage_collected(tmp_path: Path) -> None:
    repo = chatdb.create_repository(f"sqlite:///{tmp_path / 'c.db'}")
    repo.create_chat("u")
    ref = weakref.ref(repo)
    repo.close()
    del repo
    gc.collect()
    assert ref() is None


@pytest.mark.sqlite
def test_a_repository_works_again_after_close(tmp_path: Path) -> None:
    repo = chatdb.create_repository(f"sqlite:///{tmp_path / 'c.db'}")
    chat = repo.create_chat("u")
    repo.close()
    assert repo.get_chat(chat.id, "u") == chat
    repo.close()
