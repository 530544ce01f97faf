"""The contract every storage strategy behind ``TaggedCache`` fulfils.

Every backend keeps one *invalidation sequence*: a counter bumped by every invalidation,
whose value is written as the version of each tag it invalidates. A lookup that misses returns
the sequence (``since``); a store given ``since`` is refused if any of its tags was invalidated
after it. The tags need not be known before computing, so tags captured while computing are
checked too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..bookkeeping import Bookkeeping

MISSING: Any = object()


class PartialInvalidation(Exception):
    """The cache failed part way through an invalidation. What is left: ``tags`` and ``keys``
    not invalidated yet (a large batch is applied in several script calls), and ``drains``,
    member sets of tags already invalidated that were still being emptied. Invalidating again
    with ``tags=``, ``keys=`` and ``drains=`` finishes it; retrying the whole batch does too,
    with ``drains=``."""

    def __init__(
        self,
        drains: list[str],
        deleted: int,
        tags: Sequence[str] = (),
        keys: Sequence[str] = (),
    ) -> None:
        self.drains = drains
        self.deleted = deleted
        self.tags = list(tags)
        self.keys = list(keys)
        left = f"{len(drains)} tag set(s) left to drain"
        if self.tags or self.keys:
            left += f", {len(self.tags)} tag(s) and {len(self.keys)} key(s) left to invalidate"
        super().__init__(f"{left} after {deleted} deletions")


@dataclass
class Lookup:
    value: Any  # the cached value, or MISSING
    since: int  # the invalidation sequence at the time of the lookup
    leased: bool = False  # this caller holds the lease to compute the value
    stale: Any = MISSING  # the last value stored with keep_stale, even if since invalidated
    tags: list[str] = field(default_factory=list)  # a hit's tags, when asked for


class Backend(Protocol):
    def get(self, key: str) -> Any:
        """The stored value, or :data:`MISSING`."""

    def peek(self, key: str, tags: bool = False) -> Lookup:
        """Read ``key`` only (a hit's fast path): the value or :data:`MISSING`, and with
        ``tags`` the entry's tags. One ``GET`` (``MGET`` with the tags) on Redis."""

    def lookup(
        self, key: str, lease: str | None, lease_ttl: float, stale: bool, tags: bool = False
    ) -> Lookup:
        """Read ``key``; on a miss, try to take the compute lease when ``lease`` (a token)
        is given, and return the stale copy when ``stale``; on a hit, with ``tags``, also the
        entry's tags. One script call on Redis."""

    def store(
        self,
        key: str,
        value: Any,
        tags: Sequence[str],
        timeout: int,
        since: int | None = None,
        lease: str | None = None,
        keep_stale: int = 0,
    ) -> bool:
        """Store ``value``; with ``since``, only if no tag was invalidated after it. Releases
        the lease ``lease`` if held; keeps a stale copy for ``keep_stale`` seconds more."""

    def release(self, key: str, lease: str) -> None:
        """Give the compute lease back without storing (the computation failed)."""

    def lease_held(self, key: str) -> bool:
        """Whether somebody holds the compute lease of ``key``."""

    def delete(self, key: str) -> bool:
        """Delete one key; True if it existed."""

    def write_bookkeeping(self, bookkeeping: Bookkeeping, what: str = "bookkeeping") -> None:
        """Write ``bookkeeping`` on its own (nothing to invalidate with it); never raises: a
        failure is logged at DEBUG and leaves its totals unknown."""

    def invalidate(
        self,
        tags: Sequence[str],
        keys: Sequence[str],
        drains: Sequence[str] = (),
        bookkeeping: Bookkeeping | None = None,
    ) -> int:
        """Drop every entry tagged with ``tags`` and the plain ``keys``, and finish ``drains``
        left by an earlier :class:`PartialInvalidation`; raise on failure. ``bookkeeping``
        is written once the invalidation succeeded (on Redis, in the same script call)."""
