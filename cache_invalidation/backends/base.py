"""The contract every storage strategy behind ``TaggedCache`` fulfils.

Every backend keeps one *invalidation sequence*: a counter bumped by every invalidation,
whose value is written as the version of each tag it invalidates. A lookup that misses returns
the sequence (``since``); a store given ``since`` is refused if any of its tags was invalidated
after it. The tags need not be known before computing, so tags captured while computing are
checked too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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

    def probe(self, timeout: float) -> dict[str, Any]:
        """Ask the cache whether it answers: ``{"detail", "server_version", "eviction"}``
        (``eviction``: see :func:`.probes.eviction_from_info`, None where the cache has no such
        thing). Raises when it does not answer within ``timeout`` seconds."""

    def read_counters(
        self, names: Sequence[str], fields: Callable[[], list[str]]
    ) -> list[dict[str, int]]:
        """The fields of each counter hash written by :class:`~.bookkeeping.Bookkeeping`, in
        order (empty when absent). ``fields()`` lists the candidates, for caches that store
        one key per field. Raises on cache errors."""

    def count_and_read(self, counter: str, ttl: int, keys: Sequence[str]) -> tuple[int, list[bool]]:
        """Increment ``counter`` (created with ``ttl`` seconds to live) and tell which of
        ``keys`` exist, in one round trip where the cache allows it; raises on failure."""

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


@runtime_checkable
class KeyScanning(Protocol):
    """What pattern deletion needs of a backend (Redis only): raw keys, scans, lists."""

    def raw_key(self, name: str) -> str:
        """The key the server stores for the logical ``name`` (prefix and version added)."""

    def scan_keys(
        self, glob: str, count: int, max_calls: int
    ) -> Iterator[tuple[list[bytes], bool]]:
        """``SCAN`` for ``glob``: each call's keys and whether it was the last, at most
        ``max_calls`` calls."""

    def unlink(self, keys: Sequence[bytes]) -> int:
        """``UNLINK`` raw ``keys``; how many existed."""

    def keep_list(self, name: str, items: Sequence[bytes], ttl: int) -> None:
        """Store ``items`` as the list ``name`` for ``ttl`` seconds (one transaction)."""

    def take_list(self, name: str) -> list[bytes]:
        """Read and delete the list ``name`` in one transaction (empty when missing)."""
