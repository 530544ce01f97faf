"""Apply a batch: drop its tags and keys from the cache, report the outcome. Used by every
transport (inline for ``sync``, inside the Celery task for ``celery``)."""

from __future__ import annotations

import logging
import time

from . import signals
from .events import InvalidationEvent, union
from .tagging import TaggedCache

logger = logging.getLogger("cache_invalidation")


def apply_events(events: list[InvalidationEvent]) -> int:
    """Invalidate the union of the events' tags and keys in one atomic call.

    Returns the number of entries deleted; raises whatever the cache raised, untouched, so the
    caller decides between retrying and reporting.
    """
    tags, keys = union(events)
    started = time.monotonic()
    deleted = TaggedCache().invalidate_many(tags, keys)
    duration = time.monotonic() - started
    logger.debug(
        "cache_invalidation: applied %d event(s), %d tag(s), %d key(s), %d entries deleted",
        len(events), len(tags), len(keys), deleted,
        extra={"event_ids": [e.id for e in events], "tags": list(tags), "keys": list(keys)},
    )
    signals.invalidation_applied.send(
        sender=None, events=events, deleted=deleted, duration=duration
    )
    return deleted


def report_failure(
    events: list[InvalidationEvent], error: BaseException, stage: str, will_retry: bool
) -> None:
    """Make a failure visible: an ERROR log carrying the events, and the signal."""
    level = logging.WARNING if will_retry else logging.ERROR
    logger.log(
        level,
        "cache_invalidation: %s of %d event(s) failed%s: %s; events: %s",
        stage,
        len(events),
        " (will retry)" if will_retry else "",
        error,
        [e.to_dict() for e in events],
        exc_info=not will_retry,
        extra={"event_ids": [e.id for e in events], "stage": stage},
    )
    signals.invalidation_failed.send_robust(
        sender=None, events=events, error=error, stage=stage, will_retry=will_retry
    )
