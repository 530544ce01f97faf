"""Apply a batch: drop its tags and keys from the cache, report the outcome. Used by every
transport (inline for ``sync``, in the Celery task, by the outbox relay) and by replays."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from . import dedup, metrics, metricstore, signals, storm
from .bookkeeping import Bookkeeping
from .conf import get_config
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
    mark: bool = True,
) -> int:
    """Invalidate the events' tags and keys (or the given remainder) in one atomic call.

    Events whose id was already applied within ``DEDUP_WINDOW`` are skipped and counted as
    ``duplicates``; ids are marked applied only after success. ``done`` is the set of ids the
    caller already knows were applied (``set()`` for a batch made in this process: nothing to
    look up). With ``published``, the events also count as published (``sync``: applied where
    they were made). ``forget`` names cache keys to delete once applied (a message's delivery
    counter). On Redis all that bookkeeping rides in the invalidation's script call. With
    ``mark=False`` the ids are not marked applied: for a batch that can never be delivered
    again (``sync``: applied where it was made, once).

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
    alias = get_config()["CACHE_ALIAS"]
    if events and not fresh and not drains:  # nothing to invalidate: count the duplicates
        metricstore.add(alias, fields, now)
        if forget:
            TaggedCache().invalidate_many((), (), bookkeeping=Bookkeeping(deletes=list(forget)))
        return 0
    # What this process counted before rides in the script call once writing it is due (see
    # metricstore). A batch that can be delivered again counts itself in the same call, atomic
    # with its marks: a retry after a lost reply then finds it counted exactly once. A batch
    # that cannot (sync) joins the aggregate once applied.
    taken = metricstore.take(alias) or {}
    carried = {key: Counter(counts) for key, counts in taken.items()}
    if mark:
        carried.setdefault((alias, int(now // metricstore.MINUTE)), Counter()).update(fields)
    book = Bookkeeping(deletes=list(forget), counters=metricstore.bucket_writes(carried, alias))
    if tags is None or keys is None:
        tags, keys = union(storm.control(fresh, book))
    if mark:
        book.marks = dedup.marks(e.id for e in fresh)
    started = time.monotonic()
    try:
        deleted = TaggedCache().invalidate_many(tags, keys, drains=drains, bookkeeping=book)
    except BaseException:
        if taken and not book.written:  # the call that carried them did not run (or its
            metricstore.restore(taken)  # reply was lost: see metricstore)
        if book.written and not mark:  # the last call ran; a drain after it failed
            metricstore.add(alias, fields, now)
        raise
    if not mark:
        metricstore.add(alias, fields, now)
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
