"""Apply a batch: drop its tags and keys from the cache, report the outcome. Used by every
transport (inline for ``sync``, in the Celery task, by the outbox relay) and by replays."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from . import dedup, metrics, signals, storm
from .bookkeeping import Bookkeeping
from .events import InvalidationEvent, union
from .logfields import log_extra
from .tagging import TaggedCache

logger = logging.getLogger("cache_invalidation")


def apply_events(
    events: list[InvalidationEvent],
    *,
    tags: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    drains: Sequence[str] = (),
    done: set[str] | None = None,
    published: bool = False,
    forget: Sequence[str] = (),
) -> int:
    """Invalidate the events' tags and keys (or the given remainder) in one atomic call.

    Events whose id was already applied within ``DEDUP_WINDOW`` are skipped and counted as
    ``duplicates``; ids are marked applied only after success. ``done`` is the set of ids the
    caller already knows were applied (``set()`` for a batch made in this process: nothing to
    look up). With ``published``, the events also count as published (``sync``: applied where
    they were made). ``forget`` names cache keys to delete once applied (a message's delivery
    counter). On Redis all that bookkeeping rides in the invalidation's script call.

    Returns the number of entries deleted; raises whatever the cache raised
    (``PartialInvalidation`` says what is left), so the caller decides between retrying and
    dead-lettering.
    """
    if done is None:
        done = dedup.applied(e.id for e in events)
    fresh = [e for e in events if e.id not in done]
    skipped = [e for e in events if e.id in done]
    if skipped:
        logger.info(
            "cache_invalidation: skipped %d event(s) already applied: %s",
            len(skipped),
            sorted(e.id for e in skipped),
            extra=log_extra(skipped, stage="apply"),
        )
    now = time.time()
    fields = metrics.applied_fields(fresh, now, skipped, published=published)
    book = Bookkeeping(deletes=list(forget), counters=metrics.bucket_writes(fields, now))
    if events and not fresh and not drains:  # nothing to invalidate: count the duplicates
        TaggedCache().invalidate_many((), (), bookkeeping=book)
        return 0
    if tags is None or keys is None:
        tags, keys = union(storm.control(fresh, book))
    book.marks = dedup.marks(e.id for e in fresh)
    started = time.monotonic()
    deleted = TaggedCache().invalidate_many(tags, keys, drains=drains, bookkeeping=book)
    duration = time.monotonic() - started
    storm.learn(book)
    if logger.isEnabledFor(logging.DEBUG):  # the extra fields cost more than the call
        logger.debug(
            "cache_invalidation: applied %d event(s), %d tag(s), %d key(s), %d entries deleted",
            len(fresh),
            len(tags),
            len(keys),
            deleted,
            extra=log_extra(fresh, stage="apply", tags=list(tags), keys=list(keys)),
        )
    signals.send(signals.invalidation_applied, events=fresh, deleted=deleted, duration=duration)
    return deleted


def report_failure(
    events: list[InvalidationEvent], error: BaseException, stage: str, will_retry: bool
) -> None:
    """Make a failure visible: a log record carrying the events, and the signal."""
    level = logging.WARNING if will_retry else logging.ERROR
    metrics.record_failed(events, stage)
    logger.log(
        level,
        "cache_invalidation: %s of %d event(s) failed%s: %s; events: %s",
        stage,
        len(events),
        " (will retry)" if will_retry else "",
        error,
        [e.to_dict() for e in events],
        exc_info=None if will_retry else error,
        extra=log_extra(events, stage=stage),
    )
    signals.send(
        signals.invalidation_failed, events=events, error=error, stage=stage, will_retry=will_retry
    )
