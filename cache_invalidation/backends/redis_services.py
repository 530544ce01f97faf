"""The Redis commands a backend runs besides the tag index: probes, scans, counters.

:class:`RedisServices` is mixed into :class:`.redis.RedisTagBackend`: health probes, the
key scans and confirmation lists of pattern deletion, the delivery counter and duplicate
marks read by the worker, metrics counters, and bookkeeping written on its own. Each is one
round trip (a pipeline or a transaction) and raises on failure, except
:meth:`RedisServices.write_bookkeeping`, which must never break the work it accounts for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..bookkeeping import Bookkeeping
from . import probes


class RedisServices:
    """Needs ``cache`` (a django-redis cache), ``_redis()`` (its raw client) and ``_key()``."""

    cache: Any

    def _redis(self) -> Any:
        raise NotImplementedError

    def _key(self, key: str) -> str:
        raise NotImplementedError

    def probe(self, timeout: float) -> dict[str, Any]:
        version, eviction = probes.ping(self._redis(), timeout)
        return {"detail": "PING answered", "server_version": version, "eviction": eviction}

    # -- key scanning (pattern deletion, see .keypatterns) ------------------------------------
    def raw_key(self, name: str) -> str:
        return str(self.cache.client.make_key(name))

    def scan_keys(
        self, glob: str, count: int, max_calls: int
    ) -> Iterator[tuple[list[bytes], bool]]:
        client = self._redis()
        cursor, calls = 0, 0
        while calls < max_calls:
            cursor, found = client.scan(cursor=cursor, match=glob, count=count)
            calls += 1
            last = int(cursor) == 0
            yield list(found), last
            if last:
                return

    def unlink(self, keys: Sequence[bytes]) -> int:
        return int(self._redis().unlink(*keys)) if keys else 0

    def keep_list(self, name: str, items: Sequence[bytes], ttl: int) -> None:
        key = self.raw_key(name)
        pipe = self._redis().pipeline(transaction=True)
        pipe.rpush(key, *items)
        pipe.expire(key, ttl)
        pipe.execute()

    def take_list(self, name: str) -> list[bytes]:
        key = self.raw_key(name)
        pipe = self._redis().pipeline(transaction=True)
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        members, _ = pipe.execute()
        return list(members or [])

    def read_counters(
        self, names: Sequence[str], fields: Callable[[], list[str]]
    ) -> list[dict[str, int]]:
        pipe = self._redis().pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._key(name))
        return [{_text(k): int(v) for k, v in (raw or {}).items()} for raw in pipe.execute()]

    def count_and_read(self, counter: str, ttl: int, keys: Sequence[str]) -> tuple[int, list[bool]]:
        make_key = self.cache.client.make_key
        pipe = self._redis().pipeline(transaction=False)
        pipe.set(make_key(counter), 0, ex=ttl, nx=True)
        pipe.incr(make_key(counter))
        if keys:
            pipe.mget([make_key(k) for k in keys])
        replies = pipe.execute()
        found = replies[2] if keys else []
        return int(replies[1]), [raw is not None for raw in found]

    def write_bookkeeping(self, bookkeeping: Bookkeeping, what: str = "bookkeeping") -> None:
        """Write ``bookkeeping`` on its own: one pipelined round trip. Never raises."""
        try:
            make_key = self.cache.client.make_key
            pipe = self._redis().pipeline(transaction=False)
            for name, ttl in bookkeeping.marks:
                pipe.set(make_key(name), 1, ex=ttl)
            for name, ttl, fields in bookkeeping.counters:
                key = make_key(name)
                for f, n in fields.items():
                    pipe.hincrby(key, f, n)
                pipe.expire(key, ttl)
            for name, amount, ttl in bookkeeping.rates:
                key = make_key(name)
                pipe.set(key, 0, ex=ttl, nx=True)
                pipe.incrby(key, amount)
            if bookkeeping.deletes:
                pipe.delete(*(make_key(name) for name in bookkeeping.deletes))
            replies = pipe.execute()
        except Exception as exc:  # bookkeeping must never break the work it accounts for
            bookkeeping.failed(exc, what)
            return
        bookkeeping.written = True
        offset = len(bookkeeping.marks) + sum(len(f) + 1 for _, _, f in bookkeeping.counters)
        bookkeeping.totals = [
            int(replies[offset + 2 * i + 1]) for i in range(len(bookkeeping.rates))
        ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
