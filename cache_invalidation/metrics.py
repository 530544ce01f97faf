"""Counters shared across processes, kept in the invalidation cache (``CACHE_ALIAS``).

Names in use: ``published``, ``applied``, ``failed``, ``duplicates`` (events skipped because
their id was already applied), ``dead_lettered``, ``escalated`` (storm control). Counting is
best effort: a counter that cannot be written never fails the work it counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("cache_invalidation")

PREFIX = "ci:stats:"
NAMES = ("published", "applied", "failed", "duplicates", "dead_lettered", "escalated")


def _cache() -> Any:
    from django.core.cache import caches

    from .conf import get_config

    return caches[get_config()["CACHE_ALIAS"]]


def _ttl() -> int:
    from .conf import get_config

    return int(get_config()["DEDUP_WINDOW"])


def incr(name: str, amount: int = 1) -> None:
    if amount <= 0:
        return
    cache = _cache()
    key = PREFIX + name
    try:
        cache.add(key, 0, _ttl())
        cache.incr(key, amount)
    except Exception as exc:  # counters must never break the work they count
        logger.debug("cache_invalidation: counter %s not updated: %s", name, exc)


def read(names: Iterable[str] = NAMES) -> dict[str, int]:
    cache = _cache()
    names = list(names)
    try:
        found = cache.get_many([PREFIX + n for n in names])
    except Exception:
        found = {}
    return {n: int(found.get(PREFIX + n) or 0) for n in names}
