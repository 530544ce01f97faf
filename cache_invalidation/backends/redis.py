"""Tag index on Redis via django-redis: a set of member keys per tag, and tag versions.

Layout (every name passes through the cache's ``make_key``, so ``KEY_PREFIX``/``VERSION``
apply): the value at ``make_key(key)``; the members of a tag at ``make_key("ci:t:" + tag)``;
the tag's version at ``make_key("ci:v:" + tag)``; the invalidation sequence at
``make_key("ci:seq")``; a compute lease at ``make_key("ci:l:" + key)``; a stale copy at
``make_key("ci:s:" + key)``; an entry's tags, as a JSON list, at ``make_key("ci:tl:" + key)``;
member sets being drained at ``make_key("ci:d:...")``, listed in the sorted set
``make_key("ci:draining")`` (:data:`DRAINING`).

The sequence survives nothing but itself: when Redis lost it (restarted empty, flushed, the
key expired), the next invalidation or missed lookup starts it again from the server clock in
microseconds and records that start as the *epoch* (``make_key("ci:epoch")``). A store whose
lookup saw a number older than the epoch, or above the current sequence (lost, not restarted
yet), is refused: a value computed before the loss cannot be stored as fresh after it (its
tags' versions may have been lost with the sequence).

Invalidation is one Lua script call per :data:`TAGS_PER_CALL` tags (and
:data:`KEYS_PER_CALL` plain keys) of a batch: it bumps the sequence, writes it as the version
of each of its tags (so no computation that started earlier can store under them any more),
deletes the members of small tags and the plain keys, and renames each large tag's member set
to a "draining" key. A store that lands between two calls, under a tag of a later call, has
added itself to that tag's member set, which the later call deletes. The batch's bookkeeping
(counters, duplicate marks) rides in the last call; a failure part way raises
:class:`~.PartialInvalidation` naming the tags and keys left.

The draining sets are then emptied :data:`CHUNK` members per script call, so Redis is never
blocked for long and members are never all loaded into Python. Until a drain finishes, plain
reads of its not-yet-deleted members still see the old values: that window is part of the
invalidation lag. Every draining set is registered with the time it was last claimed; one
whose drainer is lost (the reply naming it never arrived, the process died) is claimed after
:data:`ORPHANED_AFTER_MS` by the next invalidation, or by :meth:`~RedisTagBackend.prune`.
The registry is also what makes a drain named from outside (a retry message's ``drains``, a
dead letter's) safe: the drain script touches only sets under this cache's ``ci:d:`` prefix
that the registry lists, and refuses (logs) any other name.

Stores prune the index as they go: each store checks two random members of each of its tags
and removes those whose entry expired, so under churn a tag's set stays within about twice its
live members. :func:`prune` sweeps everything for a periodic task.

Errors: reads and writes honour the cache's ``IGNORE_EXCEPTIONS`` (a failed read is a miss, a
failed write stores nothing); invalidation never does: it raises, so a failed delete can never
be reported as done.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from itertools import zip_longest
from typing import Any

from django.core.cache.backends.base import default_key_func
from django_redis.exceptions import CompressorError
from redis.exceptions import RedisError

from ..bookkeeping import Bookkeeping
from ..logfields import log_extra
from .base import MISSING, Lookup, PartialInvalidation
from .redis_lua import DELETE_KEYS as _DELETE_KEYS
from .redis_lua import DRAIN as _DRAIN
from .redis_lua import INVALIDATE as _INVALIDATE
from .redis_lua import LOOKUP as _LOOKUP
from .redis_lua import PRUNE as _PRUNE
from .redis_lua import STORE as _STORE
from .redis_services import RedisServices

logger = logging.getLogger("cache_invalidation")

#: Members deleted per script call: well under a millisecond of Redis time.
CHUNK = 200
#: Tags and plain keys handled per invalidation script call: a batch's union of tags is not
#: capped (storm control caps each event), so a large one is applied in several calls, each
#: about a millisecond of Redis time.
TAGS_PER_CALL = 250
KEYS_PER_CALL = 500
#: The registry of draining sets (see :func:`RedisTagBackend.invalidate`), and how long a set
#: may go unclaimed before another invalidation takes over its drain: its drainer is then
#: presumed lost (a reply lost after the script ran, a process killed while draining).
DRAINING = "ci:draining"
#: Draining sets named per drain script call.
DRAINS_PER_CALL = 100
ORPHANED_AFTER_MS = 30_000
#: The Pub/Sub channel (through ``make_key``) on which every script that deletes entries or
#: bumps the sequence announces what it did, in the same atomic call (see :mod:`.pubsub`).
CHANNEL = "ci:announce"


class RedisTagBackend(RedisServices):
    def __init__(self, cache: Any, max_ttl: int) -> None:
        self.cache = cache
        self.client_wrapper = cache.client
        self.max_ttl = max_ttl
        self._scripts: dict[str, Any] = {}
        self._loads: Callable[[bytes], Any] | None = None
        #: Called with the tag set names and keys of every invalidation this process applied,
        #: as soon as it is applied (the local cache drops its own copies without waiting for
        #: the announcement to come back).
        self.listeners: list[Callable[[list[str]], None]] = []
        # With Django's own key function a name is the prefix and version, then the key: built
        # here once rather than through make_key for each of a call's dozen names.
        plain = getattr(cache, "key_func", None) is default_key_func
        self._prefix = f"{cache.key_prefix}:{cache.version}:" if plain else None

    # -- plumbing -------------------------------------------------------------------------
    def _redis(self) -> Any:
        return self.client_wrapper.get_client(write=True)

    def _run(self, source: str, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        script = self._scripts.get(source)
        client = self._redis()
        if script is None:
            script = self._scripts[source] = client.register_script(source)
        return script(keys=list(keys), args=list(args), client=client)

    def _key(self, key: str) -> str:
        if self._prefix is not None:
            return self._prefix + key
        return str(self.client_wrapper.make_key(key))

    def _tag_keys(self, tags: Sequence[str]) -> tuple[list[str], list[str]]:
        return [self._key("ci:t:" + t) for t in tags], [self._key("ci:v:" + t) for t in tags]

    def _index_ttl_ms(self) -> int:
        # The index must outlive every member (each has a TTL <= MAX_TTL) but not forever.
        return (self.max_ttl + 60) * 1000

    def _tolerate(self, exc: RedisError, what: str) -> bool:
        if getattr(self.cache, "_ignore_exceptions", False):
            logger.warning(
                "cache_invalidation: %s failed and was ignored: %s",
                what,
                exc,
                extra=log_extra(stage="store"),
            )
            return True
        return False

    def _decode(self, raw: Any) -> Any:
        return MISSING if raw is None else self.client_wrapper.decode(raw)

    # -- Backend ---------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        try:
            return self._decode(self._redis().get(self._key(key)))
        except RedisError as exc:
            if self._tolerate(exc, "get"):
                return MISSING
            raise

    def peek(self, key: str, tags: bool = False) -> Lookup:
        # A hit needs neither the sequence nor the lease: a plain GET (MGET with the tag list)
        # answers it as fast as django-redis' own get.
        value_key = self.client_wrapper.make_key(key)
        try:
            client = self._redis()
            if tags:
                value, tag_list = client.mget(value_key, self._key("ci:tl:" + key))
            else:
                value, tag_list = client.get(value_key), None
        except RedisError as exc:
            if self._tolerate(exc, "get"):
                return Lookup(MISSING, 0)
            raise
        if value is None:
            return Lookup(MISSING, 0)
        return Lookup(self._decode(value), 0, tags=_tag_list(tag_list))

    # -- what the local cache needs (see ..localcache) -----------------------------------
    def made_key(self, key: str) -> str:
        return self._key(key)

    def tag_names(self, tags: Sequence[str]) -> list[str]:
        """The names announcements use for ``tags`` (their member sets' keys)."""
        return [self._key("ci:t:" + t) for t in tags]

    def channel(self) -> str:
        return self._key(CHANNEL)

    def encode(self, value: Any) -> bytes:
        """The bytes Redis holds for ``value`` (django-redis stores an int as its digits)."""
        raw = self.client_wrapper.encode(value)
        return raw if isinstance(raw, bytes) else str(raw).encode()

    def decode(self, raw: bytes) -> Any:
        return self.client_wrapper.decode(raw)

    def loader(self, raw: bytes) -> tuple[bool, Any]:
        """How a local hit turns ``raw`` into a value: ``(True, value)`` when the value is an
        int (immutable: shared as is), else ``(False, loads)``, a function of the bytes that
        skips django-redis' int attempt (one exception per call)."""
        try:
            return True, int(raw)
        except ValueError:
            pass
        loads = self._loads
        if loads is None:
            wrapper = self.client_wrapper
            compressor = getattr(wrapper, "_compressor", None)
            serializer = getattr(wrapper, "_serializer", None)
            if compressor is None or serializer is None:  # another client class
                loads = wrapper.decode
            else:
                loads = _loads_with(compressor, serializer)
            self._loads = loads
        return False, loads

    def peek_raw(self, key: str) -> tuple[bytes | None, list[str]]:
        """The stored bytes of ``key`` and its tags, in one ``MGET``; (None, []) on a miss or
        a tolerated error."""
        try:
            value, tag_list = self._redis().mget(self._key(key), self._key("ci:tl:" + key))
        except RedisError as exc:
            if self._tolerate(exc, "get"):
                return None, []
            raise
        return value, _tag_list(tag_list) if value is not None else []

    def sequence(self) -> tuple[int, str]:
        """The invalidation sequence and epoch now (0 and '' while none was started)."""
        seq, epoch = self._redis().mget(self._key("ci:seq"), self._key("ci:epoch"))
        return int(seq or 0), _text(epoch)

    def subscribers(self) -> int:
        """How many connections listen to this cache's announcements (``PUBSUB NUMSUB``)."""
        found = self._redis().pubsub_numsub(self.channel())
        return int(found[0][1]) if found else 0

    def add_counts(self, name: str, counts: dict[str, int], ttl: int) -> None:
        """Add ``counts`` to the hash ``name`` (one pipelined round trip)."""
        key = self._key(name)
        pipe = self._redis().pipeline(transaction=False)
        for field, amount in counts.items():
            pipe.hincrby(key, field, amount)
        pipe.expire(key, ttl)
        pipe.execute()

    def read_counts(self, name: str) -> dict[str, int]:
        raw = self._redis().hgetall(self._key(name)) or {}
        return {_text(k): int(v) for k, v in raw.items()}

    def _announced(self, names: list[str]) -> None:
        for listener in self.listeners:
            listener(names)

    def lookup(
        self, key: str, lease: str | None, lease_ttl: float, stale: bool, tags: bool = False
    ) -> Lookup:
        keys = [
            self._key(key),
            self._key("ci:seq"),
            self._key("ci:l:" + key),
            self._key("ci:s:" + key),
            self._key("ci:tl:" + key),
            self._key("ci:epoch"),
        ]
        args = [
            "1" if lease else "0",
            lease or "",
            int(lease_ttl * 1000),
            "1" if stale else "0",
            "1" if tags else "0",
            self._index_ttl_ms() * 4,
            self.channel(),
        ]
        try:
            value, since, leased, stale_raw, tag_list = self._run(_LOOKUP, keys, args)
        except RedisError as exc:
            if self._tolerate(exc, "get"):
                return Lookup(MISSING, 0)
            raise
        found = _tag_list(tag_list)
        return Lookup(self._decode(value), int(since), bool(leased), self._decode(stale_raw), found)

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
        tag_keys, version_keys = self._tag_keys(tags)
        keys = [
            self._key(key),
            self._key("ci:l:" + key),
            self._key("ci:s:" + key),
            self._key("ci:tl:" + key),
            *tag_keys,
            *version_keys,
            self._key("ci:epoch"),
            self._key("ci:seq"),
        ]
        args = [
            self.client_wrapper.encode(value),
            timeout * 1000,
            self._index_ttl_ms(),
            len(tags),
            "" if since is None else since,
            lease or "",
            (timeout + keep_stale) * 1000 if keep_stale else 0,
            json.dumps(list(tags), ensure_ascii=False),
            self.channel(),
            self._index_ttl_ms() * 4,
        ]
        try:
            stored = bool(self._run(_STORE, keys, args))
        except RedisError as exc:
            if self._tolerate(exc, "set"):
                return False
            raise
        if since is None and self.listeners:
            self._announced([keys[0]])
        return stored

    def release(self, key: str, lease: str) -> None:
        lease_key = self._key("ci:l:" + key)
        client = self._redis()
        if client.get(lease_key) == lease.encode():
            client.delete(lease_key)

    def lease_held(self, key: str) -> bool:
        return bool(self._redis().exists(self._key("ci:l:" + key)))

    def delete(self, key: str) -> bool:
        return bool(self.delete_keys([self._key(key)]))

    def delete_keys(self, made_keys: Sequence[Any]) -> int:
        """Delete raw keys and announce them, in one script call."""
        if not made_keys:
            return 0
        deleted = int(
            self._run(
                _DELETE_KEYS,
                list(made_keys),
                [self.channel(), self._key("ci:seq"), self._key("ci:epoch"), self._seq_ttl()],
            )
        )
        if self.listeners:
            self._announced([_text(k) for k in made_keys])
        return deleted

    def unlink(self, keys: Sequence[bytes]) -> int:
        """Pattern deletion's deletes (:mod:`..keypatterns`), announced like any other."""
        return self.delete_keys(keys)

    def _seq_ttl(self) -> int:
        return self._index_ttl_ms() * 4

    def invalidate(
        self,
        tags: Sequence[str],
        keys: Sequence[str],
        drains: Sequence[str] = (),
        bookkeeping: Bookkeeping | None = None,
    ) -> int:
        deleted = 0
        remaining = list(drains)  # sets an earlier failure left to drain
        if not tags and not keys:
            if bookkeeping:
                self.write_bookkeeping(bookkeeping)
            return self._finish(remaining, deleted)
        # At most TAGS_PER_CALL tags and KEYS_PER_CALL keys per call. Safe to split: a store
        # between two calls whose tags are not stamped yet adds itself to their member sets,
        # which the later call deletes; a store after a call is refused by its stamps. The
        # bookkeeping (ids marked applied) rides in the last call only.
        calls: list[tuple[list[str], list[str]]] = list(
            zip_longest(_chunks(tags, TAGS_PER_CALL), _chunks(keys, KEYS_PER_CALL), fillvalue=[])
        )
        for index, (tag_chunk, key_chunk) in enumerate(calls):
            last = index == len(calls) - 1
            try:
                done, draining = self._invalidate_call(
                    tag_chunk, key_chunk, bookkeeping if last else None
                )
            except RedisError as exc:
                if index == 0 and not remaining:
                    raise  # nothing happened yet: retrying the whole batch is all there is
                later = calls[index:]
                raise PartialInvalidation(
                    remaining,
                    deleted,
                    tags=[t for c, _ in later for t in c],
                    keys=[k for _, c in later for k in c],
                ) from exc
            deleted += done
            # From here these tags are invalid for stores; what fails now is only the cleanup.
            remaining += draining
        return self._finish(remaining, deleted)

    def _invalidate_call(
        self, tags: Sequence[str], keys: Sequence[str], bookkeeping: Bookkeeping | None
    ) -> tuple[int, list[str]]:
        tag_keys, version_keys = self._tag_keys(tags)
        drain_prefix = self._key(f"ci:d:{uuid.uuid4().hex[:8]}:")
        book_keys, ops = (bookkeeping or Bookkeeping()).script_args(self._key)
        done, draining, totals = self._run(
            _INVALIDATE,
            [
                self._key("ci:seq"),
                *tag_keys,
                *version_keys,
                self._key("ci:epoch"),
                *(self._key(k) for k in keys),
                *book_keys,
            ],
            [
                len(tags),
                self._index_ttl_ms(),
                CHUNK,
                drain_prefix,
                len(keys),
                ops,
                self._key(DRAINING),
                ORPHANED_AFTER_MS,
                self.channel(),
            ],
        )
        if self.listeners:
            self._announced([*tag_keys, *(self._key(k) for k in keys)])
        if bookkeeping is not None:
            bookkeeping.script_result(totals)
        return int(done), [d.decode() if isinstance(d, bytes) else str(d) for d in draining]

    def _finish(self, remaining: list[str], deleted: int) -> int:
        if remaining:
            try:
                deleted += self._drain(remaining)
            except _DrainFailed as failed:
                raise PartialInvalidation(failed.left, deleted + failed.deleted) from (
                    failed.__cause__
                )
        return deleted

    def _drain(self, set_keys: list[str]) -> int:
        """Empty the draining sets, :data:`CHUNK` members per script call across all of them.
        Raises :class:`_DrainFailed` naming the sets still left."""
        deleted = 0
        prefix = self._key("ci:d:")
        # Checked again inside the script (the authority); filtering here too keeps a foreign
        # name out of KEYS, where on a cluster it would hash to another slot and fail the call.
        left = [k for k in dict.fromkeys(set_keys) if k.startswith(prefix)]
        kept = set(left)
        refused = [k for k in set_keys if k not in kept]
        # At most DRAINS_PER_CALL names per call: a message may name any number of them.
        pending = left
        while pending:
            group, pending = pending[:DRAINS_PER_CALL], pending[DRAINS_PER_CALL:]
            while group:
                try:
                    removed, still, denied = self._run(
                        _DRAIN,
                        group,
                        [
                            CHUNK,
                            self._key(DRAINING),
                            prefix,
                            self.channel(),
                            self._key("ci:seq"),
                            self._key("ci:epoch"),
                            self._seq_ttl(),
                        ],
                    )
                except RedisError as exc:
                    raise _DrainFailed(group + pending, deleted) from exc
                deleted += int(removed)
                group = [d.decode() if isinstance(d, bytes) else str(d) for d in still]
                refused += [d.decode() if isinstance(d, bytes) else str(d) for d in denied]
        if refused:
            logger.warning(
                "cache_invalidation: refused to drain %d set(s) that are not this cache's "
                "registered draining sets (under %r): %s",
                len(refused),
                prefix,
                [_show_name(r) for r in refused[:10]],
                extra=log_extra(stage="apply"),
            )
        return deleted

    # -- maintenance ----------------------------------------------------------------------
    def _tag_sets(self) -> Iterator[bytes]:
        # The prefix is escaped: a KEY_PREFIX with glob characters must not match (and prune)
        # the tag sets of other prefixes in the same database.
        return self._redis().scan_iter(match=_glob_escape(self._key("ci:t:")) + "*", count=1000)

    def prune(self) -> dict[str, int]:
        """Remove members whose entry expired from every tag set, and finish draining sets
        whose drainer was lost; chunked, never blocking."""
        client = self._redis()
        registry = self._key(DRAINING)
        server_ms = int(client.time()[0]) * 1000
        orphans = client.zrangebyscore(registry, "-inf", server_ms - ORPHANED_AFTER_MS)
        self._finish([o.decode() if isinstance(o, bytes) else str(o) for o in orphans], 0)
        sets = removed = 0
        for set_key in self._tag_sets():
            sets += 1
            for batch in _batches(client.sscan_iter(set_key, count=CHUNK), CHUNK):
                removed += int(self._run(_PRUNE, [set_key], batch))
        return {"tag_sets": sets, "removed": removed}

    def stats(self) -> dict[str, int]:
        """Size of the tag index: tag sets, members, and how many members are dead."""
        client = self._redis()
        sets = members = dead = 0
        for set_key in self._tag_sets():
            sets += 1
            for batch in _batches(client.sscan_iter(set_key, count=CHUNK), CHUNK):
                members += len(batch)
                pipe = client.pipeline(transaction=False)
                for member in batch:
                    pipe.exists(member)
                dead += sum(1 for alive in pipe.execute() if not alive)
        return {"tag_sets": sets, "members": members, "dead_members": dead}


class _DrainFailed(Exception):
    def __init__(self, left: list[str], deleted: int) -> None:
        super().__init__(f"{len(left)} set(s) left to drain")
        self.left = left
        self.deleted = deleted


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _show_name(name: Any) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _loads_with(compressor: Any, serializer: Any) -> Callable[[bytes], Any]:
    decompress, deserialize = compressor.decompress, serializer.loads

    def loads(raw: bytes) -> Any:
        try:  # noqa: SIM105 - on the local hit path, where suppress() costs more than this
            raw = decompress(raw)
        except CompressorError:  # stored uncompressed (small values)
            pass
        return deserialize(raw)

    return loads


def _text(raw: Any) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _tag_list(raw: bytes | None) -> list[str]:
    """An entry's tags as stored beside it (a JSON list: tags may contain any character)."""
    if not raw:
        return []
    try:
        tags = json.loads(raw)
    except ValueError:
        return []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
