"""``no_invalidation()``: suspend event emission for a block of code (bulk imports, fixtures)."""

from __future__ import annotations

from contextlib import ContextDecorator
from contextvars import ContextVar
from typing import Any

_depth: ContextVar[int] = ContextVar("cache_invalidation_suspended", default=0)


def suspended() -> bool:
    return _depth.get() > 0


class no_invalidation(ContextDecorator):  # lowercase: used like a function
    """Writes inside the block emit no invalidation events.

    Nothing is queued for later: caches keep whatever the block made stale until their TTL, so
    call :func:`cache_invalidation.invalidate` afterwards for what the block changed. Works as a
    decorator too, and nests. Scoped to the current thread or asyncio task.
    """

    def _recreate_cm(self) -> no_invalidation:
        # A fresh instance per decorated call: the reset token must not be shared by threads.
        return type(self)()

    def __enter__(self) -> no_invalidation:
        self._token = _depth.set(_depth.get() + 1)
        return self

    def __exit__(self, *exc: Any) -> None:
        _depth.reset(self._token)
