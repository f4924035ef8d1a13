"""Sync code that may await, run in a greenlet: SQLAlchemy's ``greenlet_spawn``, greenlets reused.

``greenlet_spawn`` makes a greenlet for every call, and making and freeing one costs about 10 us
on this project's machine: a sixth of what a point read through chatdb.aio cost above the raw
driver. Here a greenlet whose call has ended waits in a per-thread free list for the next call.
The contract is ``greenlet_spawn``'s: SQLAlchemy's ``await_`` works inside (the greenlet says it
provides), the sync code sees the calling task's contextvars, and an exception raised where a
coroutine was awaited (a cancelled task) is thrown into the sync code, which unwinds.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from greenlet import getcurrent, greenlet

__all__ = ["spawn"]

T = TypeVar("T")
_KEEP = 64  # free greenlets kept per thread: more than that many calls at once make new ones
_local = threading.local()


class _Worker(greenlet):  # type: ignore[misc]
    __sqlalchemy_greenlet_provider__ = True  # what sqlalchemy.util.await_ checks for


class _Done:
    """What a worker hands back when its call has ended."""

    __slots__ = ("error", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None


def _free() -> list[_Worker]:
    free: list[_Worker] | None = getattr(_local, "free", None)
    if free is None:
        free = _local.free = []
    return free


def _serve(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Done:
    """A worker's life: run a call, hand back its end, wait (parked) for the next call."""
    me = getcurrent()
    free = _free()
    while True:
        done = _Done()
        try:
            done.value = fn(*args, **kwargs)
        except BaseException as exc:  # the awaiting task raises it
            done.error = exc
        fn = args = kwargs = None  # type: ignore[assignment]
        if len(free) >= _KEEP:
            return done  # this greenlet ends; its parent gets ``done`` all the same
        free.append(me)
        fn, args, kwargs = me.parent.switch(done)


async def spawn(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a greenlet; where it calls ``await_(coroutine)``, the coroutine is
    awaited here, on the caller's task."""
    current = getcurrent()
    free = _free()
    worker = free.pop() if free else _Worker(_serve, current)
    worker.parent = current
    worker.gr_context = current.gr_context
    result: Any = worker.switch(fn, args, kwargs)
    while type(result) is not _Done:
        try:
            value = await result
        except BaseException:
            result = worker.throw(*sys.exc_info())
        else:
            result = worker.switch(value)
    if not worker.dead:
        worker.gr_context = None  # a parked worker keeps no task's contextvars alive
    if result.error is not None:
        error, result.error = result.error, None
        try:
            raise error
        finally:
            del error
    value = result.value
    return value  # type: ignore[no-any-return]
