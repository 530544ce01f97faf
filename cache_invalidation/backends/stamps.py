"""Tag versions ("stamps") on any Django cache backend: LocMem, database, file, memcached.

An invalidation bumps the sequence ``"ci:seq"`` and writes it as the version of each tag
(``"ci:v:" + tag``; a tag that is not a portable cache key, with spaces, control characters
or over 200 characters, is named by its SHA-256 instead: ``"ci:vh:" + hexdigest``). An entry
is stored together with the versions its tags had when it was stored; reading it compares
them with the current ones, and any difference (or a version that was evicted) makes it a
miss. So invalidated entries die without being found, and expire with
their TTL. A store given ``since`` is refused when a tag's version is newer, which closes the
race between computing a value and storing it.

The sequence starts from the clock (microseconds), so a sequence the cache lost (cleared,
evicted, restarted) starts again above every number handed out before; a store whose lookup
saw a number above the current sequence is refused, as its tags' versions may be lost too.

The guarantee rests on the backend's ``incr`` and ``add`` being atomic (LocMem, memcached and
Redis are; the database and file backends are not, so there two concurrent invalidations
can share a sequence number and the no-stale-set check is best effort).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..bookkeeping import Bookkeeping
from .base import MISSING, Lookup

SEQ = "ci:seq"


def version_key(tag: str) -> str:
    """The cache key of a tag's version; any tag gives a key memcached accepts."""
    if len(tag) <= 200 and all(32 < ord(c) < 127 for c in tag):
        return "ci:v:" + tag
    return "ci:vh:" + hashlib.sha256(tag.encode("utf-8", "surrogatepass")).hexdigest()


class Stamped:
    """The stored envelope: the value and the tag versions it was stored under."""

    __slots__ = ("value", "versions")

    def __init__(self, value: Any, versions: dict[str, int]) -> None:
        self.value = value
        self.versions = versions

    def __getstate__(self) -> tuple[Any, dict[str, int]]:
        return self.value, self.versions

    def __setstate__(self, state: tuple[Any, dict[str, int]]) -> None:
        self.value, self.versions = state


class StampBackend:
    def __init__(self, cache: Any, max_ttl: int) -> None:
        self.cache = cache
        self.max_ttl = max_ttl

    def _ttl(self) -> int:
        return self.max_ttl + 60

    def _seq(self) -> int:
        return int(self.cache.get(SEQ) or 0)

    def _bump(self) -> int:
        self.cache.add(SEQ, time.time_ns() // 1000, self._ttl() * 4)
        try:
            return int(self.cache.incr(SEQ))
        except ValueError:  # evicted between add and incr
            self.cache.add(SEQ, time.time_ns() // 1000, self._ttl() * 4)
            return int(self.cache.incr(SEQ))

    def _versions(self, tags: Sequence[str]) -> dict[str, int | None]:
        keys = {version_key(t): t for t in tags}
        found = self.cache.get_many(list(keys)) if keys else {}
        return {t: found.get(k) for k, t in keys.items()}

    def _unwrap(self, raw: Any) -> Any:
        if raw is None:
            return MISSING
        if not isinstance(raw, Stamped):
            return raw  # written by plain cache.set(): no tags to check
        if raw.versions:
            current = self._versions(list(raw.versions))
            if any(current[t] != v for t, v in raw.versions.items()):
                return MISSING
        return raw.value

    def get(self, key: str) -> Any:
        return self._unwrap(self.cache.get(key))

    def _since(self) -> int:
        """The sequence, started now if missing (so a store can tell it was lost later)."""
        seq = self.cache.get(SEQ)
        if seq is None:
            self.cache.add(SEQ, time.time_ns() // 1000, self._ttl() * 4)
            seq = self.cache.get(SEQ)
        return int(seq or 0)

    def peek(self, key: str, tags: bool = False) -> Lookup:
        raw = self.cache.get(key)
        value = self._unwrap(raw)
        found = list(raw.versions) if tags and isinstance(raw, Stamped) else []
        return Lookup(value, 0, tags=found if value is not MISSING else [])

    def lookup(
        self, key: str, lease: str | None, lease_ttl: float, stale: bool, tags: bool = False
    ) -> Lookup:
        since = self._since()
        raw = self.cache.get(key)
        value = self._unwrap(raw)
        if value is not MISSING:
            found = list(raw.versions) if tags and isinstance(raw, Stamped) else []
            return Lookup(value, since, tags=found)
        leased = bool(lease) and self.cache.add("ci:l:" + key, lease, max(1, round(lease_ttl)))
        stale_value = self.cache.get("ci:s:" + key, MISSING) if stale else MISSING
        return Lookup(MISSING, since, leased, stale_value)

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
        try:
            if since is not None and self._seq() < since:
                return False  # the sequence was lost after the lookup: so may the versions be
            versions = self._versions(tags)
            missing = [t for t, v in versions.items() if v is None]
            if missing:
                # An unknown version may have been evicted after an invalidation: start it at
                # the current sequence, which refuses this store if anything moved meanwhile.
                current = self._seq()
                for tag in missing:
                    self.cache.add(version_key(tag), current, self._ttl())
                versions = self._versions(tags)
            if any(v is None for v in versions.values()):
                return False
            if since is not None and any(int(v) > since for v in versions.values()):  # type: ignore[arg-type]
                return False
            self.cache.set(key, Stamped(value, dict(versions)), timeout)  # type: ignore[arg-type]
            if keep_stale:
                self.cache.set("ci:s:" + key, value, timeout + keep_stale)
            return True
        finally:
            if lease:
                self.release(key, lease)

    def release(self, key: str, lease: str) -> None:
        if self.cache.get("ci:l:" + key) == lease:
            self.cache.delete("ci:l:" + key)

    def lease_held(self, key: str) -> bool:
        return self.cache.get("ci:l:" + key) is not None

    def delete(self, key: str) -> bool:
        return bool(self.cache.delete(key))

    def invalidate(
        self,
        tags: Sequence[str],
        keys: Sequence[str],
        drains: Sequence[str] = (),
        bookkeeping: Bookkeeping | None = None,
    ) -> int:
        if tags:
            seq = self._bump()
            failed = self.cache.set_many({version_key(t): seq for t in tags}, self._ttl())
            if failed:
                raise RuntimeError(f"could not write new versions for tags {failed!r}")
        if keys:
            self.cache.delete_many(list(keys))
        if bookkeeping:
            self.write_bookkeeping(bookkeeping)
        return len(keys)

    def probe(self, timeout: float) -> dict[str, Any]:
        key = f"ci:health:{uuid.uuid4().hex}"
        self.cache.set(key, "ok", 30)
        found = self.cache.get(key)
        self.cache.delete(key)
        if found != "ok":
            raise RuntimeError("a probe key written to the cache could not be read back")
        return {
            "detail": "probe key written and read back",
            "server_version": None,
            "eviction": None,
        }

    def read_counters(
        self, names: Sequence[str], fields: Callable[[], list[str]]
    ) -> list[dict[str, int]]:
        candidates = fields()  # one key per hash field here (see Bookkeeping.write_generic)
        keys = [f"{name}:{field}" for name in names for field in candidates]
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # some backends cap the parameters of a query
            found.update(self.cache.get_many(keys[start : start + 500]))
        return [
            {f: int(found[f"{name}:{f}"]) for f in candidates if found.get(f"{name}:{f}")}
            for name in names
        ]

    def count_and_read(self, counter: str, ttl: int, keys: Sequence[str]) -> tuple[int, list[bool]]:
        self.cache.add(counter, 0, ttl)
        count = int(self.cache.incr(counter))
        found = self.cache.get_many(list(keys)) if keys else {}
        return count, [bool(found.get(k)) for k in keys]

    def write_bookkeeping(self, bookkeeping: Bookkeeping, what: str = "bookkeeping") -> None:
        """Write ``bookkeeping`` through the Django cache API. Never raises."""
        try:
            bookkeeping.write_generic(self.cache)
        except Exception as exc:  # bookkeeping must never break the work it accounts for
            bookkeeping.failed(exc, what)
