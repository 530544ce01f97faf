"""Functions users call directly: ``invalidate()`` and the ``@cached`` decorator."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction
from django.db import DEFAULT_DB_ALIAS

from .batching import emit
from .events import InvalidationEvent, text_problem
from .keypatterns import INTERNAL_PREFIX
from .tagging import tagged_cache

F = TypeVar("F", bound=Callable[..., Any])


def invalidate(
    tags: Iterable[str] = (),
    keys: Iterable[str] = (),
    *,
    using: str = DEFAULT_DB_ALIAS,
    metadata: Mapping[str, Any] | None = None,
) -> InvalidationEvent:
    """Publish a manual invalidation of ``tags`` and ``keys`` through the configured transport.

    Inside ``transaction.atomic(using=using)`` it joins that transaction's batch and is
    published only if it commits; otherwise it is published now. Use it after raw SQL,
    ``no_invalidation()`` blocks or writes the app cannot see. Returns the event.
    """
    if isinstance(tags, str) or isinstance(keys, str):
        raise TypeError("invalidate() takes lists of tags and keys, not a single string")
    tag_list = tuple(dict.fromkeys(tags))
    key_list = tuple(dict.fromkeys(keys))
    for item in (*tag_list, *key_list):
        if not isinstance(item, str) or not item:
            raise TypeError(f"tags and keys must be non-empty strings, got {item!r}")
        problem = text_problem(item)
        if problem:  # no worker, outbox or dead-letter row could carry it
            raise ValueError(f"invalidate(): the tag or key {item!r} {problem}")
    for key in key_list:
        if key.startswith(INTERNAL_PREFIX):
            raise ValueError(
                f"invalidate(): the key {key!r} is in the app's own namespace "
                f"({INTERNAL_PREFIX}...: tag index, versions, sequence, leases, counters); "
                "it is never deleted as a plain key. Invalidate the tag instead."
            )
    if not tag_list and not key_list:
        raise ValueError("invalidate() needs at least one tag or key")
    event = InvalidationEvent(
        type="manual", tags=tag_list, keys=key_list, metadata=dict(metadata or {})
    )
    emit(event, using)
    return event


def cached(
    tags: Iterable[str] | Callable[..., Iterable[str]] = (),
    timeout: int | None = None,
    key_prefix: str | None = None,
    *,
    local: bool | None = None,
) -> Callable[[F], F]:
    """Cache a function's result in ``tagged_cache``, keyed by its arguments.

    ``local=True`` also keeps hot results in this process's memory (see
    :mod:`cache_invalidation.localcache`); ``None`` follows ``LOCAL_CACHE["DEFAULT"]``.

    ``tags`` is a list of strings or a callable taking the function's arguments and returning
    one. Arguments must be JSON-serialisable (others are keyed by ``str()``). Stores through
    ``get_or_set``, so a result computed across an invalidation is not stored. A coroutine
    function gets an async wrapper that goes through ``aget_or_set`` (``tags`` stays a plain
    callable, run on the event loop). Raises ``TypeError`` at decoration when ``tags`` is a
    string.
    """
    if isinstance(tags, str):
        raise TypeError(f"cached(tags=...) takes a list of tags, not the string {tags!r}")

    def decorate(func: F) -> F:
        prefix = key_prefix or f"cached:{func.__module__}.{func.__qualname__}"

        def key_and_tags(args: Any, kwargs: Any) -> tuple[str, list[str]]:
            raw = json.dumps([args, kwargs], sort_keys=True, default=str)
            key = f"{prefix}:{hashlib.sha256(raw.encode()).hexdigest()[:32]}"
            return key, list(tags(*args, **kwargs) if callable(tags) else tags)

        if iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                key, tag_list = key_and_tags(args, kwargs)

                async def compute() -> Any:
                    return await func(*args, **kwargs)

                return await tagged_cache.aget_or_set(
                    key, compute, tags=tag_list, timeout=timeout, local=local
                )

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key, tag_list = key_and_tags(args, kwargs)
            return tagged_cache.get_or_set(
                key, lambda: func(*args, **kwargs), tags=tag_list, timeout=timeout, local=local
            )

        return wrapper  # type: ignore[return-value]

    return decorate
