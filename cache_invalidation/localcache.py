"""L1: an in-process copy of hot entries, kept coherent by the invalidation announcements.

``get_or_set(..., local=True)`` (and ``@cached``/``{% cachetagged %}`` with ``local=True``, or
every call with ``LOCAL_CACHE["DEFAULT"]``) first looks in this process's memory. A local hit
costs a dictionary lookup and the decoding of the stored bytes (each caller gets its own copy
of the value); no round trip.

**What is kept.** Per entry: the bytes stored in Redis, its tags (as the names announcements
use), the announcement number it was filled under and its deadline (``MAX_AGE`` seconds, or
the entry's own timeout when shorter). At most ``MAX_ENTRIES`` entries, least recently used
first out.

**Coherence.** One subscriber per process (:mod:`.backends.pubsub`, started lazily, again
after a fork) receives every announced invalidation, delete and overwrite, in order, and drops
the local entries it names. The rules, each closing one way of serving a stale value:

1. *Bypass unless live.* Until the subscription is confirmed, and from the moment it is lost
   (connection closed or killed, Redis restarted, a ping unanswered for ``HEARTBEAT``
   seconds, redis-py resubscribing on its own, an unreadable message), the local cache is
   flushed and every read goes to Redis.
2. *Gaps flush.* Announcements are numbered by the invalidation sequence, one number each; a
   skipped number (a message lost) or a new epoch (Redis lost its sequence) flushes
   everything.
3. *Fills check what they missed.* A value read from Redis (or computed and stored) enters
   the local cache only if no announcement processed since the read began names its key or
   one of its tags, and no flush happened meanwhile. An announcement processed after the fill
   drops it. Both happen under one lock.
4. *The writer drops at once.* A process that applies an invalidation drops its own copies
   when the script returns, before its announcement comes back.
5. *``MAX_AGE`` caps everything else*: even if all of the above failed, no local entry is
   served longer than ``MAX_AGE`` seconds after it was filled.

The remaining window is the time an announcement takes to reach a subscriber (sub-millisecond
on loopback; ``python -m benchmarks local`` measures it): a read in another process during
that window may still see the old value, as a Redis read may during a drain.

Counters (hits, misses, bypasses, fills, refused fills, evictions, flushes by cause) are kept
per process and added to the shared hash ``ci:local`` every :data:`COUNTS_EVERY` seconds
(by a thread of their own, never the subscriber's); a process that dies loses at most its last
five seconds of counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar
from functools import cache
from typing import Any

from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from .backends import backend_for, is_django_redis
from .backends.pubsub import Announcement, Subscriber
from .backends.redis import RedisTagBackend
from .conf import CONFIG_SETTINGS, get_config
from .logfields import log_extra

logger = logging.getLogger("cache_invalidation")

DEFAULTS: dict[str, Any] = {
    "MAX_ENTRIES": 10_000,
    "MAX_AGE": 60,
    "HEARTBEAT": 1.0,
    "DEFAULT": False,
}
#: Names remembered with the number of the last announcement that named them, for rule 3;
#: past this many, all are forgotten and every fill begun earlier is refused.
RECENT_NAMES = 65_536
#: The shared counters hash, and how long it is kept after its last write.
STATS_KEY = "ci:local"
STATS_TTL = 7 * 86400
#: Seconds between two writes of a process's counts to the shared hash.
COUNTS_EVERY = 5.0
#: Flush causes, in display order.
CAUSES = (
    "start",
    "disconnected",
    "ping",
    "resubscribed",
    "unreadable",
    "gap",
    "epoch",
    "cleared",
    "stopped",
)
_served: ContextVar[bool] = ContextVar("cache_invalidation_served_locally", default=False)


def served_locally() -> bool:
    """Whether the last ``get_or_set``/``aget_or_set`` of this context was a local hit."""
    return _served.get()


def _starts(announcement: Announcement) -> bool:
    """Whether ``announcement`` is the first of a sequence (started at its epoch: by a lookup,
    which announces the start itself, or by the script that bumped it first)."""
    try:
        start = int(announcement.epoch)
    except ValueError:
        return False
    return announcement.seq in (start, start + 1)


class Entry:
    """One local copy. ``value()`` gives the caller its own copy of the stored value."""

    __slots__ = ("deadline", "immutable", "load", "names", "raw", "seq", "tags")

    def __init__(
        self,
        raw: bytes,
        tags: tuple[str, ...],
        names: tuple[str, ...],
        seq: int,
        deadline: float,
        loader: tuple[bool, Any],
    ) -> None:
        self.raw = raw
        self.tags = tags
        self.names = names  # the made key first, then the tag set names
        self.seq = seq
        self.deadline = deadline
        self.immutable, self.load = loader

    def value(self) -> Any:
        return self.load if self.immutable else self.load(self.raw)


class Mark:
    """Where the announcements stood when a read began (see rule 3)."""

    __slots__ = ("generation", "seq")

    def __init__(self, seq: int, generation: int) -> None:
        self.seq = seq
        self.generation = generation


class LocalCache:
    """The local copies of one cache alias in this process (see the module docstring)."""

    def __init__(self, alias: str, options: dict[str, Any]) -> None:
        self.alias = alias
        self.max_entries = int(options["MAX_ENTRIES"])
        self.max_age = float(options["MAX_AGE"])
        self.heartbeat = float(options["HEARTBEAT"])
        self.backend: RedisTagBackend = backend_for(alias)  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._by_name: dict[str, set[str]] = {}
        self._recent: dict[str, int] = {}
        self._floor = 0  # fills that began before this announcement number are refused
        self._seq = 0
        self._epoch = ""
        self._generation = 0
        self.live = False
        self.counts: Counter[str] = Counter()
        self._flushed: Counter[str] = Counter()  # counts already added to the shared hash
        self._subscriber: Subscriber | None = None
        self._counting = threading.Event()
        self._pid = os.getpid()
        self.backend.listeners.append(self.drop)

    # -- the subscription -------------------------------------------------------------------
    def ensure_started(self) -> None:
        if self._subscriber is None:
            with self._lock:
                if self._subscriber is not None:
                    return
                backend = self.backend
                self._subscriber = Subscriber(
                    backend._redis(),
                    backend.channel(),
                    backend.sequence,
                    live=self._on_live,
                    announced=self._on_announcement,
                    lost=self._on_lost,
                    heartbeat=self.heartbeat,
                )
                self._counting = threading.Event()
                counter = threading.Thread(
                    target=self._count_loop,
                    args=(self._counting,),
                    name="cache_invalidation-local-counts",
                    daemon=True,
                )
            self._subscriber.start()
            counter.start()

    def _count_loop(self, stopped: threading.Event) -> None:
        # In a thread of its own: a slow write here must never hold back the subscription.
        while not stopped.wait(COUNTS_EVERY):
            self.flush_counts()

    def stop(self) -> None:
        subscriber, self._subscriber = self._subscriber, None
        self._counting.set()
        if subscriber is not None:
            subscriber.stop()
        self._on_lost("stopped")
        with contextlib.suppress(ValueError):
            self.backend.listeners.remove(self.drop)

    def wait_live(self, timeout: float = 5.0) -> bool:
        """Start the subscriber if needed and wait until it is live (tests, warm-up)."""
        self.ensure_started()
        deadline = time.monotonic() + timeout
        while not self.live and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.live

    def _on_live(self, seq: int, epoch: str) -> None:
        with self._lock:
            self._flush("start")
            self._seq, self._epoch = seq, epoch
            self._floor = seq
            self.live = True

    def _on_lost(self, cause: str) -> None:
        with self._lock:
            self.live = False
            self._flush(cause)

    def _on_announcement(self, announcement: Announcement) -> None:
        with self._lock:
            seq = announcement.seq
            if self._seq == 0 and _starts(announcement):
                pass  # no sequence when we subscribed, and this is its start: nothing missed
            elif announcement.epoch != self._epoch:
                self._flush("epoch")  # Redis lost its sequence (restarted empty, flushed...)
            elif seq <= self._seq:  # announced before we read the sequence: already reflected
                return
            elif seq != self._seq + 1:
                self._flush("gap")
            self._seq, self._epoch = seq, announcement.epoch or self._epoch
            self._forget(announcement.names, seq)

    # -- under the lock ---------------------------------------------------------------------
    def _flush(self, cause: str) -> None:
        if self._entries or cause != "stopped":
            self.counts["flush:" + cause] += 1
        self._entries.clear()
        self._by_name.clear()
        self._recent.clear()
        self._generation += 1
        self._floor = self._seq

    def _forget(self, names: Sequence[str], seq: int) -> None:
        recent = self._recent
        if len(recent) + len(names) > RECENT_NAMES:
            recent.clear()
            self._floor = seq
        for name in names:
            recent[name] = seq
            keys = self._by_name.pop(name, None)
            if keys:
                for key in keys:
                    self._remove(key)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for name in entry.names:
            keys = self._by_name.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_name[name]

    # -- reads and fills --------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The local copy of ``key``, or None: a miss, or bypassed."""
        if not self.live:
            self.ensure_started()
            self.counts["bypass"] += 1
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.counts["miss"] += 1
                return None
            if entry.deadline < time.monotonic():
                self._remove(key)
                self.counts["expired"] += 1
                return None
            self._entries.move_to_end(key)
            self.counts["hit"] += 1
            return entry

    def mark(self) -> Mark | None:
        """Where the announcements stand now; None when the local cache is bypassed."""
        if not self.live:
            return None
        return Mark(self._seq, self._generation)

    def fill(
        self, key: str, raw: bytes, tags: Sequence[str], mark: Mark | None, timeout: float
    ) -> bool:
        """Keep ``raw`` for ``key`` unless an announcement since ``mark`` may have made it
        stale (rule 3). Returns whether it was kept."""
        if mark is None or not self.live:
            return False
        backend = self.backend
        names = (backend.made_key(key), *backend.tag_names(tags))
        loader = backend.loader(raw)
        with self._lock:
            if (
                not self.live
                or mark.generation != self._generation
                or mark.seq < self._floor
                or any(self._recent.get(name, 0) > mark.seq for name in names)
            ):
                self.counts["refused"] += 1
                return False
            self._remove(key)
            self._entries[key] = Entry(
                raw,
                tuple(tags),
                names,
                mark.seq,
                time.monotonic() + min(self.max_age, timeout),
                loader,
            )
            for name in names:
                self._by_name.setdefault(name, set()).add(key)
            self.counts["fill"] += 1
            while len(self._entries) > self.max_entries:
                oldest = next(iter(self._entries))
                self._remove(oldest)
                self.counts["evicted"] += 1
        return True

    def drop(self, names: Sequence[str]) -> None:
        """Drop the entries ``names`` name, now (this process applied their invalidation)."""
        with self._lock:
            seq = self._seq + 1  # refuse fills begun before now, as an announcement would
            for name in names:
                self._recent[name] = max(self._recent.get(name, 0), seq)
                keys = self._by_name.pop(name, None)
                for key in keys or ():
                    self._remove(key)

    def clear(self) -> None:
        with self._lock:
            self._flush("cleared")

    def __len__(self) -> int:
        return len(self._entries)

    # -- counters ---------------------------------------------------------------------------
    def flush_counts(self) -> None:
        """Add the counts since the last flush to the shared hash (the subscriber calls it)."""
        with self._lock:
            delta = {
                k: v - self._flushed[k] for k, v in self.counts.items() if v != self._flushed[k]
            }
            self._flushed.update(delta)
        if not delta:
            return
        try:
            self.backend.add_counts(STATS_KEY, delta, STATS_TTL)
        except Exception as exc:  # counting never breaks what it counts
            with self._lock:
                self._flushed.subtract(delta)
            logger.debug(
                "cache_invalidation: local cache counts not written: %s",
                exc,
                extra=log_extra(stage="local"),
            )


# -- one local cache per alias and process ---------------------------------------------------
_locals: dict[str, LocalCache] = {}
_lock = threading.Lock()


@cache
def options() -> dict[str, Any] | None:
    """``LOCAL_CACHE`` merged over its defaults, or None when the local cache is off."""
    value = get_config().get("LOCAL_CACHE")
    if value is None:
        return None
    return {**DEFAULTS, **value}


def local_for(alias: str) -> LocalCache:
    """This process's local cache for ``alias``; raises when ``LOCAL_CACHE`` is off or the
    cache cannot announce (not django-redis)."""
    found = _locals.get(alias)  # a fork empties it (see _forked)
    if found is not None:
        return found
    with _lock:
        found = _locals.get(alias)
        if found is not None:
            return found
        opts = options()
        if opts is None:
            raise ImproperlyConfigured(
                "local=True needs CACHE_INVALIDATION['LOCAL_CACHE'] (a dict such as "
                "{'MAX_ENTRIES': 10000, 'MAX_AGE': 60}); it is None, so the local cache is off"
            )
        if not is_django_redis(caches[alias]):
            raise ImproperlyConfigured(
                f"local=True needs a django-redis cache: cache {alias!r} has no Pub/Sub to "
                "announce invalidations, so a local copy could not be kept coherent"
            )
        found = _locals[alias] = LocalCache(alias, opts)
    return found


def default_local() -> bool:
    opts = options()
    return bool(opts and opts["DEFAULT"])


def reset_locals() -> None:
    """Stop every local cache of this process (settings changed, tests)."""
    with _lock:
        found = list(_locals.values())
        _locals.clear()
    for local in found:
        if local._pid == os.getpid():
            local.stop()


def _forked() -> None:
    # Threads do not survive a fork: the child starts its own subscribers, lazily, and never
    # serves what its parent copied.
    global _lock
    for local in _locals.values():
        with contextlib.suppress(ValueError):
            local.backend.listeners.remove(local.drop)
    _locals.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forked)


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in CONFIG_SETTINGS:
        options.cache_clear()
        reset_locals()
