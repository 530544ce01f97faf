"""django-cache-invalidation: committed model writes invalidate tagged cache entries.

Public names are listed in ``__all__`` and loaded lazily, so importing the package never
touches Django settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "InvalidEventError",
    "InvalidationEvent",
    "TaggedCache",
    "cache_page_tagged",
    "cached",
    "invalidate",
    "no_invalidation",
    "tagged_cache",
]

__version__ = "0.1.0"

_LAZY = {
    "InvalidationEvent": "cache_invalidation.events",
    "InvalidEventError": "cache_invalidation.events",
    "TaggedCache": "cache_invalidation.tagging",
    "tagged_cache": "cache_invalidation.tagging",
    "cache_page_tagged": "cache_invalidation.decorators",
    "cached": "cache_invalidation.api",
    "invalidate": "cache_invalidation.api",
    "no_invalidation": "cache_invalidation.suspend",
}

if TYPE_CHECKING:
    from .api import cached, invalidate
    from .decorators import cache_page_tagged
    from .events import InvalidationEvent, InvalidEventError
    from .suspend import no_invalidation
    from .tagging import TaggedCache, tagged_cache


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cache_invalidation' has no attribute {name!r}")
    from importlib import import_module  # noqa: PLC0415 - lazy: importing the package touches no settings

    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
