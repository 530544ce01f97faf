"""Storage strategies behind :class:`cache_invalidation.tagging.TaggedCache`, and their factory.

``redis``: a tag index of Redis sets, deleted by Lua scripts (django-redis caches).
``stamps``: version stamps that work on any Django cache backend (LocMem, database, file...).

The contract (:class:`Backend`, :class:`Lookup`, :class:`PartialInvalidation`...) is in
:mod:`.base`; :func:`backend_for` builds one backend per cache alias, chosen by the cache's
class, and forgets them when the settings change. A new strategy is one module here plus a
branch in :func:`_build`.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache import caches
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import CONFIG_SETTINGS, get_config
from .base import MISSING, Backend, Lookup, PartialInvalidation
from .redis import RedisTagBackend
from .stamps import StampBackend

__all__ = [
    "MISSING",
    "Backend",
    "Lookup",
    "PartialInvalidation",
    "backend_for",
    "is_django_redis",
    "reset_backends",
]

_backends: dict[str, Backend] = {}
_lock = threading.Lock()


def backend_for(alias: str) -> Backend:
    """The backend of cache ``alias`` (built once per alias and settings)."""
    backend = _backends.get(alias)
    if backend is None:
        with _lock:
            backend = _backends.get(alias)
            if backend is None:
                backend = _backends[alias] = _build(alias)
    return backend


def reset_backends() -> None:
    """Forget the backends built so far (settings changed)."""
    with _lock:
        _backends.clear()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in CONFIG_SETTINGS:
        reset_backends()


def _build(alias: str) -> Backend:
    cache = caches[alias]
    max_ttl = int(get_config()["MAX_TTL"])
    if is_django_redis(cache):
        return RedisTagBackend(cache, max_ttl)
    return StampBackend(cache, max_ttl)


def is_django_redis(cache: Any) -> bool:
    """Whether ``cache`` is a django-redis cache whose client hands out a raw Redis client."""
    try:
        from django_redis.cache import RedisCache  # noqa: PLC0415 - optional dependency
    except ImportError:  # pragma: no cover
        return False
    return isinstance(cache, RedisCache) and hasattr(cache.client, "get_client")
