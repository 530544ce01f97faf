"""Small writes that accompany an invalidation: counters, duplicate marks, rate counts.

Applying a batch used to cost a round trip per piece of bookkeeping (the metrics pipeline, the
duplicate marks, the rate-limit counters, the delivery counter), each after the invalidation
itself: on a 0.1 ms loopback that was most of a ``sync`` save's overhead and most of a
worker's time per task (see docs/benchmarks.rst). A :class:`Bookkeeping` collects them; the
Redis backend runs them **inside the invalidation script** (one round trip for everything,
atomic with the invalidation, so ids are marked applied only if it succeeded), and any other
backend, or a caller with nothing to invalidate, runs them with :meth:`Bookkeeping.write`.

Names are logical cache keys: they go through the cache's ``make_key`` (``KEY_PREFIX``,
``VERSION``) like every other key of the app. Writes never break the work they count: in the
script each one runs under ``redis.pcall``; :meth:`write` catches and logs at DEBUG.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .logfields import log_extra

logger = logging.getLogger("cache_invalidation")


@dataclass
class Bookkeeping:
    #: keys set to 1 for a number of seconds (duplicate marks)
    marks: list[tuple[str, int]] = field(default_factory=list)
    #: hashes whose fields are incremented, then expired after a number of seconds (metrics)
    counters: list[tuple[str, int, dict[str, int]]] = field(default_factory=list)
    #: integer keys incremented (created with a number of seconds to live); totals come back
    rates: list[tuple[str, int, int]] = field(default_factory=list)
    #: keys deleted (a finished message's delivery counter)
    deletes: list[str] = field(default_factory=list)
    #: after the write: the total of each of :attr:`rates`, in order (None where unknown)
    totals: list[int | None] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.marks or self.counters or self.rates or self.deletes)

    # -- on Redis, inside a script ------------------------------------------------------------
    def script_args(self, make_key: Callable[[str], Any]) -> tuple[list[str], str]:
        """The keys and the JSON list of operations :data:`LUA` runs, one operation per key."""
        keys: list[str] = []
        ops: list[list[Any]] = []
        for name, ttl in self.marks:
            keys.append(str(make_key(name)))
            ops.append(["set", ttl])
        for name, ttl, fields in self.counters:
            keys.append(str(make_key(name)))
            ops.append(["hincr", ttl, *(x for f, n in fields.items() for x in (f, n))])
        for name, amount, ttl in self.rates:
            keys.append(str(make_key(name)))
            ops.append(["incr", ttl, amount])
        for name in self.deletes:
            keys.append(str(make_key(name)))
            ops.append(["del"])
        return keys, json.dumps(ops)

    def script_result(self, totals: Any) -> None:
        """Take the rate totals the script returned."""
        self.totals = [None if t is False or t is None else int(t) for t in (totals or [])]

    # -- anywhere else -----------------------------------------------------------------------
    def write(self, cache: Any, what: str = "bookkeeping") -> None:
        """Run everything now, in one pipelined round trip on django-redis, or through the
        Django cache API on any other backend (several calls). Never raises."""
        from .tagging import is_django_redis

        try:
            if is_django_redis(cache):
                self._write_redis(cache)
            else:
                self._write_generic(cache)
        except Exception as exc:  # bookkeeping must never break the work it accounts for
            self.totals = [None] * len(self.rates)
            logger.debug(
                "cache_invalidation: %s not recorded: %s",
                what,
                exc,
                extra=log_extra(stage="metrics"),
            )

    def _write_redis(self, cache: Any) -> None:
        make_key = cache.client.make_key
        pipe = cache.client.get_client(write=True).pipeline(transaction=False)
        for name, ttl in self.marks:
            pipe.set(make_key(name), 1, ex=ttl)
        for name, ttl, fields in self.counters:
            key = make_key(name)
            for f, n in fields.items():
                pipe.hincrby(key, f, n)
            pipe.expire(key, ttl)
        for name, amount, ttl in self.rates:
            key = make_key(name)
            pipe.set(key, 0, ex=ttl, nx=True)
            pipe.incrby(key, amount)
        if self.deletes:
            pipe.delete(*(make_key(name) for name in self.deletes))
        replies = pipe.execute()
        offset = len(self.marks) + sum(len(f) + 1 for _, _, f in self.counters)
        self.totals = [int(replies[offset + 2 * i + 1]) for i in range(len(self.rates))]

    def _write_generic(self, cache: Any) -> None:
        # One key per hash field: other backends have no hashes (metrics reads this layout).
        for name, ttl in self.marks:
            cache.set(name, 1, ttl)
        for name, ttl, fields in self.counters:
            for f, n in fields.items():
                key = f"{name}:{f}"
                cache.add(key, 0, ttl)
                cache.incr(key, n)
        totals: list[int | None] = []
        for name, amount, ttl in self.rates:
            try:
                cache.add(name, 0, ttl)
                totals.append(int(cache.incr(name, amount)))
            except ValueError:  # evicted between add and incr
                totals.append(None)
        self.totals = totals
        if self.deletes:
            cache.delete_many(self.deletes)


#: Lua run at the end of the invalidation script. KEYS[first..] are the bookkeeping keys, in
#: the order of ``ops`` (:meth:`Bookkeeping.script_args`); ``pcall``: a key of the wrong type
#: must not fail the invalidation that already happened. Sets ``totals``.
LUA = """
local totals = {}
for i, op in ipairs(ops) do
  local key = KEYS[first + i - 1]
  local kind = op[1]
  if kind == 'set' then
    redis.pcall('SET', key, '1', 'EX', op[2])
  elseif kind == 'hincr' then
    for f = 3, #op, 2 do redis.pcall('HINCRBY', key, op[f], op[f + 1]) end
    redis.pcall('EXPIRE', key, op[2])
  elseif kind == 'incr' then
    redis.pcall('SET', key, '0', 'EX', op[2], 'NX')
    local total = redis.pcall('INCRBY', key, op[3])
    if type(total) == 'number' then totals[#totals + 1] = total else totals[#totals + 1] = false end
  elseif kind == 'del' then
    redis.pcall('DEL', key)
  end
end
"""
