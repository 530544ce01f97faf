"""The Celery task that applies a published batch.

Reliability is declared on the task (``acks_late``, JSON only, ignore results). Retries use
Celery's own ``Task.retry``; the retry policy is read from ``CACHE_INVALIDATION`` when the task
runs rather than frozen into decorator arguments at import time, so settings stay lazy and
``override_settings`` applies: exponential backoff ``RETRY_BACKOFF * 2**n`` capped at
``RETRY_BACKOFF_MAX``, with full jitter when ``RETRY_JITTER`` is on, at most ``MAX_RETRIES``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import shared_task
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .apply import apply_events, report_failure
from .conf import get_config
from .events import InvalidEventError, decode_batch

logger = logging.getLogger("cache_invalidation")

#: Errors worth retrying: the cache server was unreachable or slow, not the event wrong.
RETRYABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


def backoff(retries: int, config: dict[str, Any]) -> float:
    """Seconds to wait before retry number ``retries + 1``."""
    countdown = min(float(config["RETRY_BACKOFF_MAX"]), float(config["RETRY_BACKOFF"]) * 2**retries)
    if config["RETRY_JITTER"]:
        countdown = random.uniform(0, countdown)
    return max(0.0, countdown)


@shared_task(
    bind=True,
    name="cache_invalidation.apply_batch",
    acks_late=True,
    serializer="json",
    ignore_result=True,
)
def apply_batch(self: Any, payload: Any) -> int:
    """Apply one published batch (a list of event dicts). Returns entries deleted."""
    try:
        events = decode_batch(payload)
    except InvalidEventError as exc:
        # A malformed message will never succeed: report it, do not retry.
        report_failure([], exc, stage="decode", will_retry=False)
        logger.error("cache_invalidation: dropped malformed message %r", payload)
        return 0
    try:
        return apply_events(events)
    except RETRYABLE as exc:
        config = get_config()
        will_retry = self.request.retries < int(config["MAX_RETRIES"])
        report_failure(events, exc, stage="apply", will_retry=will_retry)
        if will_retry:
            raise self.retry(
                exc=exc,
                countdown=backoff(self.request.retries, config),
                max_retries=int(config["MAX_RETRIES"]),
            ) from exc
        raise
    except Exception as exc:
        report_failure(events, exc, stage="apply", will_retry=False)
        raise


@shared_task(name="cache_invalidation.prune_tag_index", ignore_result=True)
def prune_tag_index() -> dict[str, int]:
    """Periodic sweep of the tag index: drop members whose entry expired (for Celery beat).

    Stores already prune lazily; this catches tags that stopped receiving stores.
    """
    from .tagging import TaggedCache

    result = TaggedCache().prune_index()
    logger.info("cache_invalidation: pruned the tag index: %s", result)
    return result
