"""Tag versions ("stamps") on any Django cache backend: LocMem, database, file, memcached.

Each tag has a random version token at ``"ci:v:" + tag``. An entry is stored together with the
versions of its tags; reading it compares them with the current ones, and any difference (or a
token that was evicted) makes it a miss. Invalidating a tag writes a new token, so entries die
without being found. ``store`` with a snapshot writes the versions seen *before* the value was
computed, so a value computed from data older than an invalidation is born stale: no race
between check and store is possible even though the backend has no scripting.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from . import MISSING


class Stamped:
    """The stored envelope: the value and the tag versions it was computed under."""

    __slots__ = ("value", "versions")

    def __init__(self, value: Any, versions: dict[str, str]) -> None:
        self.value = value
        self.versions = versions

    def __getstate__(self) -> tuple[Any, dict[str, str]]:
        return self.value, self.versions

    def __setstate__(self, state: tuple[Any, dict[str, str]]) -> None:
        self.value, self.versions = state


def _token() -> str:
    return secrets.token_hex(8)


class StampBackend:
    def __init__(self, cache: Any, max_ttl: int) -> None:
        self.cache = cache
        self.max_ttl = max_ttl

    def _version_key(self, tag: str) -> str:
        return "ci:v:" + tag

    def _versions(self, tags: Sequence[str], create: bool) -> dict[str, str | None]:
        keys = {self._version_key(t): t for t in tags}
        found = self.cache.get_many(list(keys)) if keys else {}
        versions: dict[str, str | None] = {t: found.get(k) for k, t in keys.items()}
        missing = [t for t, v in versions.items() if v is None]
        if create and missing:
            for tag in missing:
                self.cache.add(self._version_key(tag), _token(), self._version_ttl())
            again = self.cache.get_many([self._version_key(t) for t in missing])
            for tag in missing:
                versions[tag] = again.get(self._version_key(tag))
        return versions

    def _version_ttl(self) -> int:
        return self.max_ttl + 60

    def _unwrap(self, raw: Any) -> Any:
        if raw is None:
            return MISSING
        if not isinstance(raw, Stamped):
            return raw  # written by plain cache.set(): no tags to check
        if raw.versions:
            current = self._versions(list(raw.versions), create=False)
            if any(current[t] is None or current[t] != v for t, v in raw.versions.items()):
                return MISSING
        return raw.value

    def get(self, key: str) -> Any:
        return self._unwrap(self.cache.get(key))

    def lookup(self, key: str, tags: Sequence[str]) -> tuple[Any, Any]:
        value = self._unwrap(self.cache.get(key))
        if value is not MISSING:
            return value, None
        return MISSING, self._versions(tags, create=True)

    def store(
        self, key: str, value: Any, tags: Sequence[str], timeout: int, snapshot: Any = None
    ) -> bool:
        versions = snapshot if snapshot is not None else self._versions(tags, create=True)
        if any(v is None for v in versions.values()):
            return False  # a version could not be stored: the entry could never be validated
        self.cache.set(key, Stamped(value, dict(versions)), timeout)
        return True

    def delete(self, key: str) -> bool:
        result = self.cache.delete(key)
        return bool(result)

    def invalidate(self, tags: Sequence[str], keys: Sequence[str]) -> int:
        if tags:
            failed = self.cache.set_many(
                {self._version_key(t): _token() for t in tags}, self._version_ttl()
            )
            if failed:
                raise RuntimeError(f"could not write new versions for tags {failed!r}")
        if keys:
            self.cache.delete_many(list(keys))
        return len(keys)
