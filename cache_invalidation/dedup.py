"""Event ids already applied, remembered for ``DEDUP_WINDOW`` seconds in the invalidation cache.

Marked only after the invalidation succeeded (a failure must leave the event to be retried);
deletes are idempotent, so this saves work on redelivery and replay rather than protecting
correctness. If the cache cannot be read, every event counts as new.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

PREFIX = "ci:done:"


def _cache() -> Any:
    from django.core.cache import caches

    from .conf import get_config

    return caches[get_config()["CACHE_ALIAS"]]


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
    from .conf import get_config

    ids = list(ids)
    if not ids:
        return
    with contextlib.suppress(Exception):  # the next delivery applies again: harmless
        _cache().set_many({PREFIX + i: 1 for i in ids}, int(get_config()["DEDUP_WINDOW"]))
