"""The tag-aware cache: ``tagged_cache``.

``tagged_cache`` is bound to ``CACHE_INVALIDATION["CACHE_ALIAS"]`` and picks its storage when
first used: the Redis tag index for a django-redis cache, version stamps for any other Django
cache backend. Keys are the same keys the plain Django cache uses, so ``cache.get(key)`` sees a
value written by ``tagged_cache.set`` on django-redis, and a declared ``keys`` template deletes
what ``cache.set(key, ...)`` wrote.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from asgiref.sync import sync_to_async

from . import localcache, pending, recorder
from .backends import MISSING, Backend, Lookup, backend_for
from .bookkeeping import Bookkeeping
from .capture import capturing, is_active, record
from .coarse import coarse_tags_for
from .conf import get_config


def record_outer(tags: list[str]) -> None:
    """Tell an enclosing capture (if any) about an inner entry's explicit tags."""

    record(tags)


def _config() -> dict[str, Any]:
    return get_config()


def _with_coarse(tags: list[str]) -> list[str]:
    """Add the coarse tags storm control may invalidate instead (see :mod:`.storm`)."""

    return tags + [t for t in coarse_tags_for(tags) if t not in tags]


def _capture_if(capture: bool) -> AbstractContextManager[set[str]]:
    """Collect what the block reads (see :mod:`.capture`), or nothing with ``capture=False``."""
    if not capture:
        return nullcontext(set())

    return capturing()


def _tags(tags: Iterable[str] | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of strings, not the string {tags!r}")
    out = list(dict.fromkeys(tags))
    for tag in out:
        if not isinstance(tag, str) or not tag:
            raise TypeError(f"every tag must be a non-empty string, got {tag!r}")
    return out


class TaggedCache:
    """A cache whose entries carry tags; invalidating a tag drops every entry that carries it.

    ``alias`` defaults to ``CACHE_INVALIDATION["CACHE_ALIAS"]``, read when used, not when built.
    """

    def __init__(self, alias: str | None = None) -> None:
        self._alias = alias

    @property
    def alias(self) -> str:
        if self._alias is not None:
            return self._alias

        return str(get_config()["CACHE_ALIAS"])

    @property
    def backend(self) -> Backend:
        return backend_for(self.alias)

    def _timeout(self, timeout: int | None) -> int:
        max_ttl = int(get_config()["MAX_TTL"])
        if timeout is None:
            return max_ttl
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return min(int(timeout), max_ttl)

    def get(self, key: str, default: Any = None) -> Any:
        """The value, or ``default`` if missing, expired or invalidated."""
        value = self.backend.get(key)
        recorder.read(self, key, value is not MISSING)
        return default if value is MISSING else value

    def set(
        self, key: str, value: Any, tags: Sequence[str] | None = None, timeout: int | None = None
    ) -> bool:
        """Store ``value`` tagged with ``tags``. ``timeout`` is capped at ``MAX_TTL``
        (``None`` means ``MAX_TTL``). Returns whether it was stored."""
        all_tags = _with_coarse(_tags(tags))
        ttl = self._timeout(timeout)
        stored = self.backend.store(key, value, all_tags, ttl)
        recorder.write(self, key, all_tags, ttl, stored)
        return stored

    def index_stats(self) -> dict[str, int]:
        """Size of the tag index (Redis): tag sets, members, dead members. Scans; not for hot
        paths. Empty on version-stamp backends, which keep no index."""
        stats = getattr(self.backend, "stats", None)
        return stats() if stats else {}

    def prune_index(self) -> dict[str, int]:
        """Remove members of expired entries from every tag set (Redis), chunk by chunk."""
        prune = getattr(self.backend, "prune", None)
        return prune() if prune else {}

    def get_or_set(
        self,
        key: str,
        default: Any,
        tags: Sequence[str] | None = None,
        timeout: int | None = None,
        *,
        capture: bool = True,
        stale_while_revalidate: bool = False,
        lease: bool = True,
        local: bool | None = None,
    ) -> Any:
        """Return the cached value, or compute ``default`` (a callable, or a value) and store it.

        - **No stale set**: the lookup returns the invalidation sequence; the value is stored
          only if none of its tags was invalidated after it, checked in the same script call
          as the store. A value computed from rows older than a committed change is returned
          to this caller but never stored.
        - **Capture** (``capture=True``): the value is also tagged with every declared-model
          instance and queryset the computation read (see :mod:`.capture`).
        - **Herd control** (``lease=True``): of concurrent misses one computes; the others wait
          up to ``LEASE_WAIT`` seconds for its value, or, with ``stale_while_revalidate=True``,
          return at once the last value stored under this key (kept ``STALE_TTL`` seconds
          longer, even across invalidations) when there is one.

        - **Local copy** (``local=True``, or ``LOCAL_CACHE["DEFAULT"]`` when ``local`` is not
          given): served from this process's memory when it holds the entry, kept coherent by
          the invalidation announcements (see :mod:`.localcache`).

        A hit costs one round trip (a plain ``GET`` on Redis), a local hit none. An exception
        from ``default`` propagates; nothing is stored.
        """
        if local or (local is None and localcache.default_local()):
            local_cache = localcache.local_for(self.alias)
            entry = local_cache.get(key)
            if entry is not None:  # a local hit: no round trip
                return self._local_hit(key, entry, tags)
            return self._get_or_set_local(
                local_cache, key, default, tags, timeout, capture, stale_while_revalidate, lease
            )
        if localcache._served.get():  # served_locally() answers for the last call, any call
            localcache._served.set(False)
        tag_list = _tags(tags)

        nested = is_active()
        want_tags = nested or recorder.current() is not None
        backend = self.backend
        found = backend.peek(key, want_tags)  # a hit: one GET, nothing else
        if found.value is not MISSING:
            return self._hit(key, found, tag_list, nested)
        return self._miss(key, default, tag_list, timeout, capture, stale_while_revalidate, lease)

    def _local_hit(self, key: str, entry: localcache.Entry, tags: Sequence[str] | None) -> Any:
        localcache._served.set(True)
        if is_active() or recorder.current() is not None:
            found = Lookup(entry.value(), 0, tags=list(entry.tags))
            return self._hit(key, found, _tags(tags), is_active())
        return entry.value()

    def _get_or_set_local(
        self,
        local: localcache.LocalCache,
        key: str,
        default: Any,
        tags: Sequence[str] | None,
        timeout: int | None,
        capture: bool,
        stale_while_revalidate: bool,
        lease: bool,
    ) -> Any:
        """A local miss: read Redis (keeping what it holds locally), or compute and store."""
        localcache._served.set(False)
        tag_list = _tags(tags)
        backend = local.backend
        mark = local.mark()  # before the read: what is announced after it refuses the fill
        raw, stored_tags = backend.peek_raw(key)
        if raw is not None:
            local.fill(key, raw, stored_tags, mark, self._timeout(timeout))
            found = Lookup(backend.decode(raw), 0, tags=stored_tags)
            return self._hit(key, found, tag_list, is_active())
        return self._miss(
            key,
            default,
            tag_list,
            timeout,
            capture,
            stale_while_revalidate,
            lease,
            (local, mark),
        )

    def _miss(
        self,
        key: str,
        default: Any,
        tag_list: list[str],
        timeout: int | None,
        capture: bool,
        stale_while_revalidate: bool,
        lease: bool,
        local: tuple[localcache.LocalCache, localcache.Mark | None] | None = None,
    ) -> Any:
        nested = is_active()
        want_tags = nested or recorder.current() is not None
        backend = self.backend
        config = _config()
        token = uuid.uuid4().hex if lease else None
        deadline: float | None = None
        pause = 0.005
        while True:
            found = backend.lookup(
                key, token, config["LEASE_TIMEOUT"], stale_while_revalidate, want_tags
            )
            if found.value is not MISSING:
                return self._hit(key, found, tag_list, nested)
            if found.leased or token is None:
                held = token if found.leased else None
                return self._compute(
                    key,
                    default,
                    tag_list,
                    timeout,
                    found.since,
                    held,
                    capture,
                    stale_while_revalidate,
                    local,
                )
            if stale_while_revalidate and found.stale is not MISSING:
                return found.stale
            now = time.monotonic()
            if deadline is None:
                deadline = now + float(config["LEASE_WAIT"])
            if now >= deadline:  # the lease holder is slow or gone: compute without it
                return self._compute(
                    key,
                    default,
                    tag_list,
                    timeout,
                    found.since,
                    None,
                    capture,
                    stale_while_revalidate,
                    local,
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _hit(self, key: str, found: Lookup, tags: list[str], nested: bool) -> Any:
        if nested:  # an enclosing computation depends on everything this entry does
            record_outer(found.tags or tags)
        recorder.read(self, key, True, found.tags or tags)
        return found.value

    def _compute(
        self,
        key: str,
        default: Any,
        tags: list[str],
        timeout: int | None,
        since: int,
        lease: str | None,
        capture: bool,
        keep_stale: bool,
        local: tuple[localcache.LocalCache, localcache.Mark | None] | None = None,
    ) -> Any:
        mark = pending.next_seq()
        try:
            with _capture_if(capture) as captured:
                value = default() if callable(default) else default
        except BaseException:
            if lease:
                self.backend.release(key, lease)
            raise
        self._store_computed(
            key, value, tags, captured, timeout, since, lease, keep_stale, mark, local
        )
        record_outer(tags)
        return value

    def _store_computed(
        self,
        key: str,
        value: Any,
        tags: list[str],
        captured: builtins.set[str],  # `set` is a method name in this class
        timeout: int | None,
        since: int,
        lease: str | None,
        keep_stale: bool,
        mark: int | None = None,
        local: tuple[localcache.LocalCache, localcache.Mark | None] | None = None,
    ) -> bool:
        """Store a computed value, unless it may hold uncommitted rows (``mark``: see
        :func:`.pending.reads_uncommitted`); then it is only returned to its caller."""
        all_tags = _with_coarse(tags + sorted(captured.difference(tags)))
        if mark is not None and pending.reads_uncommitted(all_tags, mark):
            if lease:
                self.backend.release(key, lease)
            recorder.read(self, key, False, all_tags)
            recorder.write(self, key, all_tags, 0, False)
            return False
        stale_ttl = int(_config()["STALE_TTL"]) if keep_stale else 0
        ttl = self._timeout(timeout)
        stored = self.backend.store(key, value, all_tags, ttl, since, lease, stale_ttl)
        if stored and local is not None:
            cache, local_mark = local
            cache.fill(key, cache.backend.encode(value), all_tags, local_mark, ttl)
        recorder.read(self, key, False, all_tags)
        recorder.write(self, key, all_tags, ttl, stored)
        return stored

    def delete(self, key: str) -> bool:
        """Delete one entry; return whether it existed (stamp backends: whether deleted)."""
        recorder.delete(self, key)
        return self.backend.delete(key)

    def invalidate_tags(self, tags: Sequence[str]) -> int:
        """Drop every entry tagged with any of ``tags`` now, in this process.

        Returns the number of entries deleted (always 0 on version-stamp backends, where
        entries are dropped lazily). Raises if the cache could not be reached: never reports
        a failed invalidation as done. To invalidate after a transaction commits, through the
        configured transport, use :func:`cache_invalidation.invalidate`.
        """
        tag_list = _tags(tags)
        recorder.invalidated(self, tag_list)
        return self.backend.invalidate(tag_list, [])

    def invalidate_many(
        self,
        tags: Sequence[str] = (),
        keys: Sequence[str] = (),
        drains: Sequence[str] = (),
        bookkeeping: Bookkeeping | None = None,
    ) -> int:
        """Drop tagged entries and plain keys in one atomic call (what the worker applies).

        ``drains`` finishes the cleanup that a :class:`~.backends.PartialInvalidation` left;
        ``bookkeeping`` is written once the invalidation succeeded (in the same script call on
        Redis).
        """
        return self.backend.invalidate(_tags(tags), list(dict.fromkeys(keys)), drains, bookkeeping)

    # async twins: the Django cache API is synchronous underneath; run it off the event loop.
    async def aget(self, key: str, default: Any = None) -> Any:
        return await sync_to_async(self.get, thread_sensitive=False)(key, default)

    async def aset(
        self, key: str, value: Any, tags: Sequence[str] | None = None, timeout: int | None = None
    ) -> bool:
        return await sync_to_async(self.set, thread_sensitive=False)(key, value, tags, timeout)

    async def aget_or_set(
        self,
        key: str,
        default: Callable[[], Any] | Any,
        tags: Sequence[str] | None = None,
        timeout: int | None = None,
        *,
        capture: bool = True,
        stale_while_revalidate: bool = False,
        lease: bool = True,
        local: bool | None = None,
    ) -> Any:
        """Like :meth:`get_or_set`; ``default`` may be a coroutine function, and waiting for
        another caller's lease does not block the event loop. A local hit is answered on the
        event loop itself (memory only)."""
        local_args: tuple[localcache.LocalCache, localcache.Mark | None] | None = None
        if local or (local is None and localcache.default_local()):
            local_cache = localcache.local_for(self.alias)
            entry = local_cache.get(key)
            if entry is not None:
                return self._local_hit(key, entry, tags)
            localcache._served.set(False)
            mark = local_cache.mark()
            peek_raw = sync_to_async(local_cache.backend.peek_raw, thread_sensitive=False)
            raw, stored_tags = await peek_raw(key)
            if raw is not None:
                local_cache.fill(key, raw, stored_tags, mark, self._timeout(timeout))
                found_raw = Lookup(local_cache.backend.decode(raw), 0, tags=stored_tags)
                return self._hit(key, found_raw, _tags(tags), is_active())
            local_args = (local_cache, mark)
        elif localcache._served.get():
            localcache._served.set(False)

        tag_list = _tags(tags)

        nested = is_active()
        want_tags = nested or recorder.current() is not None
        backend = self.backend
        found = await sync_to_async(backend.peek, thread_sensitive=False)(key, want_tags)
        if found.value is not MISSING:
            return self._hit(key, found, tag_list, nested)
        config = _config()
        token = uuid.uuid4().hex if lease else None
        lookup = sync_to_async(backend.lookup, thread_sensitive=False)
        deadline: float | None = None
        pause = 0.005
        while True:
            found = await lookup(
                key, token, config["LEASE_TIMEOUT"], stale_while_revalidate, want_tags
            )
            if found.value is not MISSING:
                return self._hit(key, found, tag_list, nested)
            held = token if found.leased else None
            if not (found.leased or token is None):
                if stale_while_revalidate and found.stale is not MISSING:
                    return found.stale
                now = time.monotonic()
                if deadline is None:
                    deadline = now + float(config["LEASE_WAIT"])
                if now < deadline:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.05)
                    continue
            try:
                with _capture_if(capture) as captured:
                    if inspect.iscoroutinefunction(default):
                        value = await default()
                    elif callable(default):
                        value = await sync_to_async(default)()
                    else:
                        value = default
            except BaseException:
                if held:
                    await sync_to_async(self.backend.release, thread_sensitive=False)(key, held)
                raise
            await sync_to_async(self._store_computed, thread_sensitive=False)(
                key,
                value,
                tag_list,
                captured,
                timeout,
                found.since,
                held,
                stale_while_revalidate,
                None,
                local_args,
            )
            record(tag_list)
            return value

    async def adelete(self, key: str) -> bool:
        return await sync_to_async(self.delete, thread_sensitive=False)(key)

    async def ainvalidate_tags(self, tags: Sequence[str]) -> int:
        return await sync_to_async(self.invalidate_tags, thread_sensitive=False)(tags)


#: The tag-aware cache on ``CACHE_INVALIDATION["CACHE_ALIAS"]`` (a :class:`TaggedCache`).
tagged_cache = TaggedCache()
