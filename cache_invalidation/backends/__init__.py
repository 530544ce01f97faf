"""Storage strategies behind :class:`cache_invalidation.tagging.TaggedCache`.

``redis``: a tag index of Redis sets, deleted by one Lua script per batch (django-redis caches).
``stamps``: version stamps that work on any Django cache backend (LocMem, database, file...).
Both implement the same small interface, :class:`Backend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

MISSING: Any = object()


class Backend(Protocol):
    def get(self, key: str) -> Any:
        """The stored value, or :data:`MISSING`."""

    def lookup(self, key: str, tags: Sequence[str]) -> tuple[Any, Any]:
        """(value or MISSING, a snapshot of ``tags``' versions to pass to :meth:`store`)."""

    def store(
        self, key: str, value: Any, tags: Sequence[str], timeout: int, snapshot: Any = None
    ) -> bool:
        """Store ``value``; with a snapshot, only if no tag was invalidated since it was taken."""

    def delete(self, key: str) -> bool:
        """Delete one key; True if it existed."""

    def invalidate(self, tags: Sequence[str], keys: Sequence[str]) -> int:
        """Drop every entry tagged with ``tags`` and the plain ``keys``; raise on failure."""
