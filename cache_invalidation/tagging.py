"""The tag-aware cache: ``tagged_cache``.

``tagged_cache`` is bound to ``CACHE_INVALIDATION["CACHE_ALIAS"]`` and picks its storage when
first used: the Redis tag index for a django-redis cache, version stamps for any other Django
cache backend. Keys are the same keys the plain Django cache uses, so ``cache.get(key)`` sees a
value written by ``tagged_cache.set`` on django-redis, and a declared ``keys`` template deletes
what ``cache.set(key, ...)`` wrote.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from asgiref.sync import sync_to_async

from .backends import MISSING, Backend

_backends: dict[str, Backend] = {}
_lock = threading.Lock()


def reset_backends() -> None:
    """Forget the backends built so far (settings changed)."""
    with _lock:
        _backends.clear()


def backend_for(alias: str) -> Backend:
    backend = _backends.get(alias)
    if backend is None:
        with _lock:
            backend = _backends.get(alias)
            if backend is None:
                backend = _backends[alias] = _build(alias)
    return backend


def _build(alias: str) -> Backend:
    from django.core.cache import caches

    from .conf import get_config

    cache = caches[alias]
    max_ttl = int(get_config()["MAX_TTL"])
    if is_django_redis(cache):
        from .backends.redis import RedisTagBackend

        return RedisTagBackend(cache, max_ttl)
    from .backends.stamps import StampBackend

    return StampBackend(cache, max_ttl)


def is_django_redis(cache: Any) -> bool:
    try:
        from django_redis.cache import RedisCache
    except ImportError:  # pragma: no cover
        return False
    return isinstance(cache, RedisCache) and hasattr(cache.client, "get_client")


def _tags(tags: Iterable[str] | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of strings, not the string {tags!r}")
    out = list(dict.fromkeys(tags))
    for tag in out:
        if not isinstance(tag, str) or not tag:
            raise TypeError(f"every tag must be a non-empty string, got {tag!r}")
    return out


class TaggedCache:
    """A cache whose entries carry tags; invalidating a tag drops every entry that carries it.

    ``alias`` defaults to ``CACHE_INVALIDATION["CACHE_ALIAS"]``, read when used, not when built.
    """

    def __init__(self, alias: str | None = None) -> None:
        self._alias = alias

    @property
    def alias(self) -> str:
        if self._alias is not None:
            return self._alias
        from .conf import get_config

        return str(get_config()["CACHE_ALIAS"])

    @property
    def backend(self) -> Backend:
        return backend_for(self.alias)

    def _timeout(self, timeout: int | None) -> int:
        from .conf import get_config

        max_ttl = int(get_config()["MAX_TTL"])
        if timeout is None:
            return max_ttl
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return min(int(timeout), max_ttl)

    def get(self, key: str, default: Any = None) -> Any:
        """The value, or ``default`` if missing, expired or invalidated."""
        value = self.backend.get(key)
        return default if value is MISSING else value

    def set(
        self, key: str, value: Any, tags: Sequence[str] | None = None, timeout: int | None = None
    ) -> bool:
        """Store ``value`` tagged with ``tags``. ``timeout`` is capped at ``MAX_TTL``
        (``None`` means ``MAX_TTL``). Returns whether it was stored."""
        return self.backend.store(key, value, _tags(tags), self._timeout(timeout))

    def get_or_set(
        self,
        key: str,
        default: Any,
        tags: Sequence[str] | None = None,
        timeout: int | None = None,
    ) -> Any:
        """Return the cached value, or compute ``default`` (a callable, or a value) and store it.

        The tags' versions are read with the lookup, before computing; the value is stored only
        if none of them was invalidated meanwhile, so a value computed from rows older than a
        committed change is returned to this caller but never stored as fresh.
        """
        tag_list = _tags(tags)
        value, snapshot = self.backend.lookup(key, tag_list)
        if value is not MISSING:
            return value
        value = default() if callable(default) else default
        if snapshot is not None:
            self.backend.store(key, value, tag_list, self._timeout(timeout), snapshot=snapshot)
        return value

    def delete(self, key: str) -> bool:
        """Delete one entry; return whether it existed (stamp backends: whether deleted)."""
        return self.backend.delete(key)

    def invalidate_tags(self, tags: Sequence[str]) -> int:
        """Drop every entry tagged with any of ``tags`` now, in this process.

        Returns the number of entries deleted (always 0 on version-stamp backends, where
        entries are dropped lazily). Raises if the cache could not be reached: never reports
        a failed invalidation as done. To invalidate after a transaction commits, through the
        configured transport, use :func:`cache_invalidation.invalidate`.
        """
        return self.backend.invalidate(_tags(tags), [])

    def invalidate_many(self, tags: Sequence[str] = (), keys: Sequence[str] = ()) -> int:
        """Drop tagged entries and plain keys in one atomic call (what the worker applies)."""
        return self.backend.invalidate(_tags(tags), list(dict.fromkeys(keys)))

    # async twins: the Django cache API is synchronous underneath; run it off the event loop.
    async def aget(self, key: str, default: Any = None) -> Any:
        return await sync_to_async(self.get, thread_sensitive=False)(key, default)

    async def aset(
        self, key: str, value: Any, tags: Sequence[str] | None = None, timeout: int | None = None
    ) -> bool:
        return await sync_to_async(self.set, thread_sensitive=False)(key, value, tags, timeout)

    async def aget_or_set(
        self,
        key: str,
        default: Callable[[], Any] | Any,
        tags: Sequence[str] | None = None,
        timeout: int | None = None,
    ) -> Any:
        """Like :meth:`get_or_set`; ``default`` may be a coroutine function."""
        import inspect

        tag_list = _tags(tags)
        value, snapshot = await sync_to_async(self.backend.lookup, thread_sensitive=False)(
            key, tag_list
        )
        if value is not MISSING:
            return value
        if inspect.iscoroutinefunction(default):
            value = await default()
        elif callable(default):
            value = await sync_to_async(default)()
        else:
            value = default
        if snapshot is not None:
            await sync_to_async(self.backend.store, thread_sensitive=False)(
                key, value, tag_list, self._timeout(timeout), snapshot
            )
        return value

    async def adelete(self, key: str) -> bool:
        return await sync_to_async(self.delete, thread_sensitive=False)(key)

    async def ainvalidate_tags(self, tags: Sequence[str]) -> int:
        return await sync_to_async(self.invalidate_tags, thread_sensitive=False)(tags)


tagged_cache = TaggedCache()
