"""Tag index on Redis via django-redis: a set of member keys per tag, plus a version counter.

Layout (every name passes through the cache's ``make_key``, so ``KEY_PREFIX``/``VERSION``
apply): the value at ``make_key(key)``; the members of a tag at ``make_key("ci:t:" + tag)``;
the tag's version counter at ``make_key("ci:v:" + tag)``. Writes and invalidations are single
Lua scripts, so a batch is atomic and costs one round trip.

Errors: reads and writes honour the cache's ``IGNORE_EXCEPTIONS`` (a failed read is a miss, a
failed write stores nothing); an invalidation never does: it raises, so a failed delete can
never be reported as done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from . import MISSING

logger = logging.getLogger("cache_invalidation")

# KEYS: value key, then n tag-member keys, then n version keys.
# ARGV: encoded value, ttl ms, index ttl ms, n, conditional flag, then n expected versions.
_STORE = """
local n = tonumber(ARGV[4])
if ARGV[5] == '1' then
  for i = 1, n do
    local current = redis.call('GET', KEYS[1 + n + i]) or ''
    if current ~= ARGV[5 + i] then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 1, n do
  redis.call('SADD', KEYS[1 + i], KEYS[1])
  if redis.call('PTTL', KEYS[1 + i]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1 + i], ARGV[3])
  end
end
return 1
"""

# KEYS: value key, then version keys. Returns {value or false, version...}.
_LOOKUP = """
local out = {redis.call('GET', KEYS[1])}
for i = 2, #KEYS do out[i] = redis.call('GET', KEYS[i]) or '' end
return out
"""

# KEYS: n tag-member keys, n version keys, then plain keys. ARGV: n, version ttl ms.
# Members are deleted in slices so no single DEL call carries an unbounded argument list.
_INVALIDATE = """
local n = tonumber(ARGV[1])
local deleted = 0
for i = 1, n do
  local members = redis.call('SMEMBERS', KEYS[i])
  for s = 1, #members, 500 do
    deleted = deleted + redis.call('DEL', unpack(members, s, math.min(s + 499, #members)))
  end
  redis.call('DEL', KEYS[i])
  redis.call('INCR', KEYS[n + i])
  redis.call('PEXPIRE', KEYS[n + i], ARGV[2])
end
for i = 2 * n + 1, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[i])
end
return deleted
"""


class RedisTagBackend:
    def __init__(self, cache: Any, max_ttl: int) -> None:
        self.cache = cache
        self.client_wrapper = cache.client
        self.max_ttl = max_ttl
        self._scripts: dict[str, Any] = {}

    # -- plumbing -------------------------------------------------------------------------
    def _redis(self) -> Any:
        return self.client_wrapper.get_client(write=True)

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._redis().register_script(source)
        return script

    def _key(self, key: str) -> str:
        return str(self.client_wrapper.make_key(key))

    def _tag_keys(self, tags: Sequence[str]) -> tuple[list[str], list[str]]:
        return [self._key("ci:t:" + t) for t in tags], [self._key("ci:v:" + t) for t in tags]

    def _index_ttl_ms(self) -> int:
        # The index must outlive every member (each has a TTL <= MAX_TTL) but not forever.
        return (self.max_ttl + 60) * 1000

    def _tolerate(self, exc: RedisError, what: str) -> bool:
        if getattr(self.cache, "_ignore_exceptions", False):
            logger.warning("cache_invalidation: %s failed and was ignored: %s", what, exc)
            return True
        return False

    # -- Backend ---------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        try:
            raw = self._redis().get(self._key(key))
        except RedisError as exc:
            if self._tolerate(exc, "get"):
                return MISSING
            raise
        return MISSING if raw is None else self.client_wrapper.decode(raw)

    def lookup(self, key: str, tags: Sequence[str]) -> tuple[Any, Any]:
        _, version_keys = self._tag_keys(tags)
        try:
            reply = self._script(_LOOKUP)(keys=[self._key(key), *version_keys], client=self._redis())
        except RedisError as exc:
            if self._tolerate(exc, "get"):
                return MISSING, None
            raise
        raw, versions = reply[0], [v.decode() if isinstance(v, bytes) else v for v in reply[1:]]
        value = MISSING if raw is None else self.client_wrapper.decode(raw)
        return value, versions

    def store(
        self, key: str, value: Any, tags: Sequence[str], timeout: int, snapshot: Any = None
    ) -> bool:
        tag_keys, version_keys = self._tag_keys(tags)
        conditional = snapshot is not None
        argv = [
            self.client_wrapper.encode(value),
            timeout * 1000,
            self._index_ttl_ms(),
            len(tags),
            "1" if conditional else "0",
            *(snapshot if conditional else [""] * len(tags)),
        ]
        try:
            stored = self._script(_STORE)(
                keys=[self._key(key), *tag_keys, *version_keys], args=argv, client=self._redis()
            )
        except RedisError as exc:
            if self._tolerate(exc, "set"):
                return False
            raise
        return bool(stored)

    def delete(self, key: str) -> bool:
        return bool(self._redis().delete(self._key(key)))

    def invalidate(self, tags: Sequence[str], keys: Sequence[str]) -> int:
        tag_keys, version_keys = self._tag_keys(tags)
        plain = [self._key(k) for k in keys]
        if not tag_keys and not plain:
            return 0
        return int(
            self._script(_INVALIDATE)(
                keys=[*tag_keys, *version_keys, *plain],
                args=[len(tags), self._index_ttl_ms()],
                client=self._redis(),
            )
        )
