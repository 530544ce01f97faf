"""Event ids already applied, remembered for ``DEDUP_WINDOW`` seconds in the invalidation cache.

Marked only after the invalidation succeeded (a failure must leave the event to be retried):
on Redis the marks are written by the invalidation's own script call
(:mod:`.bookkeeping`). Deletes are idempotent, so this saves work on redelivery and replay
rather than protecting correctness; batches applied where they were made (``sync``) are not
looked up at all: their ids are new. If the cache cannot be read, every event counts as new.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from django.core.cache import caches

from .backends import backend_for
from .conf import get_config

PREFIX = "ci:done:"


def _cache() -> Any:
    return caches[get_config()["CACHE_ALIAS"]]


def window() -> int:
    return int(get_config()["DEDUP_WINDOW"])


def marks(ids: Iterable[str]) -> list[tuple[str, int]]:
    """The duplicate marks of ``ids`` (for :class:`~.bookkeeping.Bookkeeping`)."""
    ttl = window()
    return [(PREFIX + i, ttl) for i in ids]


def applied(ids: Iterable[str]) -> set[str]:
    ids = list(ids)
    if not ids:
        return set()
    try:
        found = _cache().get_many([PREFIX + i for i in ids])
    except Exception:
        return set()
    return {i for i in ids if found.get(PREFIX + i)}


def mark(ids: Iterable[str]) -> None:
    ids = list(ids)
    if not ids:
        return
    with contextlib.suppress(Exception):  # the next delivery applies again: harmless
        _cache().set_many({PREFIX + i: 1 for i in ids}, window())


def lookup(ids: Iterable[str], counter: str) -> tuple[set[str], int]:
    """The ids already applied, and ``counter`` incremented (created for ``DEDUP_WINDOW``
    seconds): one round trip on Redis (see ``Backend.count_and_read``). If the cache cannot
    be reached: no id applied, and a count of 1 (the attempt fails anyway and is retried)."""

    ids = list(ids)
    try:
        backend = backend_for(get_config()["CACHE_ALIAS"])
        count, present = backend.count_and_read(counter, window(), [PREFIX + i for i in ids])
    except Exception:
        return set(), 1
    return {i for i, found in zip(ids, present, strict=True) if found}, count
