"""Small writes that accompany an invalidation: counters, duplicate marks, rate counts.

Applying a batch used to cost a round trip per piece of bookkeeping (the metrics pipeline, the
duplicate marks, the rate-limit counters, the delivery counter), each after the invalidation
itself: on a 0.1 ms loopback that was most of a ``sync`` save's overhead and most of a
worker's time per task (see docs/benchmarks.rst). A :class:`Bookkeeping` collects them; the
Redis backend runs them **inside the invalidation script** (one round trip for everything,
atomic with the invalidation, so ids are marked applied only if it succeeded); with nothing to
invalidate, a backend writes them on their own (``Backend.write_bookkeeping``: one pipeline on
Redis, the Django cache API elsewhere). This module does no I/O of its own.

Names are logical cache keys: they go through the cache's ``make_key`` (``KEY_PREFIX``,
``VERSION``) like every other key of the app. Writes never break the work they count: in the
script each one runs under ``redis.pcall``; a backend's own write catches and logs at DEBUG.
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
    #: what a backend's own write of this raised (see :meth:`failed`)
    error: BaseException | None = None
    #: whether it was written (by a script call, or on its own)
    written: bool = False

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
        self.written = True
        self.totals = [None if t is False or t is None else int(t) for t in (totals or [])]

    # -- anywhere else -----------------------------------------------------------------------
    def failed(self, exc: BaseException, what: str = "bookkeeping") -> None:
        """A backend could not write this: the totals are unknown; logged at DEBUG."""
        self.totals = [None] * len(self.rates)
        self.error = exc
        logger.debug(
            "cache_invalidation: %s not recorded: %s", what, exc, extra=log_extra(stage="metrics")
        )

    def write_generic(self, cache: Any) -> None:
        """Run everything through the Django cache API (several calls; any backend). Raises
        what the cache raises; backends call it (see ``Backend.write_bookkeeping``)."""
        self._write_generic(cache)
        self.written = True

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
    -- A total equal to this amount means the key was just created: give it its lifetime.
    local total = redis.pcall('INCRBY', key, op[3])
    if total == op[3] then redis.pcall('EXPIRE', key, op[2]) end
    if type(total) == 'number' then totals[#totals + 1] = total else totals[#totals + 1] = false end
  elseif kind == 'del' then
    redis.pcall('DEL', key)
  end
end
"""
