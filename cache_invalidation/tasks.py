"""The Celery task that applies a published batch.

Reliability is declared on the task (``acks_late``, JSON only, ignore results). Retries use
Celery's own ``Task.retry``; the retry policy is read from ``CACHE_INVALIDATION`` when the task
runs rather than frozen into decorator arguments at import time, so settings stay lazy and
``override_settings`` applies: exponential backoff ``RETRY_BACKOFF * 2**n`` capped at
``RETRY_BACKOFF_MAX``, with full jitter when ``RETRY_JITTER`` is on, at most ``MAX_RETRIES``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import deadletter, dedup, outbox
from .apply import apply_events, report_failure
from .backends import PartialInvalidation
from .conf import get_config
from .events import InvalidEventError, decode_each, encode_batch
from .logfields import log_extra
from .retry import backoff
from .tagging import TaggedCache

logger = logging.getLogger("cache_invalidation")

#: Errors worth retrying: the cache server was unreachable or slow, not the event wrong.
RETRYABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


@shared_task(
    bind=True,
    name="cache_invalidation.apply_batch",
    acks_late=True,
    reject_on_worker_lost=True,
    serializer="json",
    ignore_result=True,
    max_retries=None,  # per call: MAX_RETRIES for cache errors, unbounded while the DB is down
)
def apply_batch(self: Any, payload: Any, drains: list[str] | None = None) -> int:
    """Apply one published batch (a list of event dicts). Returns entries deleted.

    Every way out ends applied, retried, or in the dead-letter queue: a malformed event
    (or one over ``MAX_EVENT_BYTES``) is dead-lettered at once, alone (the valid events of its
    message are applied); a Redis connection error
    or timeout is retried, then dead-lettered; a message redelivered ``MAX_DELIVERIES`` times
    (its workers kept dying) is dead-lettered instead of looping forever. A dead letter the
    database cannot take is not acknowledged away: the message is retried later.
    """
    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    config = get_config()
    _clamp_retries(self.request, int(config["MAX_RETRIES"]))
    drains = _drain_names(drains)
    try:
        events, rejected, problems = decode_each(
            payload, max_event_bytes=int(config["MAX_EVENT_BYTES"])
        )
    except InvalidEventError as exc:
        report_failure([], exc, stage="decode", will_retry=False)
        return _dead_letter(self, payload, DeadLetter.Reason.MALFORMED, exc)
    if problems:
        invalid = InvalidEventError(problems)
        report_failure([], invalid, stage="decode", will_retry=False)
        if not events:
            return _dead_letter(self, payload, DeadLetter.Reason.MALFORMED, invalid)
        # The bad events alone become the dead letter; the good ones go on, and a retry of
        # this message carries only them (so the bad ones are not dead-lettered twice).
        _dead_letter(self, rejected, DeadLetter.Reason.MALFORMED, invalid)
        self.request.args = [encode_batch(events), *list(self.request.args or ())[1:]]
    done, deliveries = dedup.lookup((e.id for e in events), _delivery_key(self.request))
    if deliveries > int(config["MAX_DELIVERIES"]):
        error = f"delivered {deliveries} times to workers that died before finishing it"
        report_failure(events, RuntimeError(error), stage="apply", will_retry=False)
        return _dead_letter(self, events, DeadLetter.Reason.WORKER_LOST, error, attempts=deliveries)
    attempts = self.request.retries + 1
    logger.info(
        "cache_invalidation: applying %d event(s) (attempt %d, delivery %d): tags %s, keys %s",
        len(events),
        attempts,
        deliveries,
        sorted({t for e in events for t in e.tags}),
        sorted({k for e in events for k in e.keys}),
        extra=log_extra(events, stage="apply", task_id=self.request.id),
    )
    try:
        deleted = apply_events(
            events, drains=drains or (), done=done, forget=[_delivery_key(self.request)]
        )
    except PartialInvalidation as exc:
        cause, left = deadletter.left_by(exc)
        return _retry_or_dead_letter(
            self,
            events,
            cause,
            config,
            attempts,
            # A retry recomputes the events' tags unless the last call ran (ids marked applied).
            kwargs={"drains": exc.drains},
            **left,
        )
    except RETRYABLE as exc:
        return _retry_or_dead_letter(self, events, exc, config, attempts, drains=drains or ())
    except Exception as exc:
        report_failure(events, exc, stage="apply", will_retry=False)
        return _dead_letter(
            self,
            events,
            DeadLetter.Reason.APPLY_FAILED,
            exc,
            attempts=attempts,
            drains=drains or (),
        )
    return deleted


def _clamp_retries(request: Any, max_retries: int) -> None:
    """Bring the message's ``retries`` header into ``0..MAX_RETRIES``. Anyone on the broker can
    write it: a negative count would retry (with zero backoff) practically forever, a huge one
    would make the backoff computation explode, a non-integer would break ``Task.retry``."""
    retries = request.retries
    valid = isinstance(retries, int) and not isinstance(retries, bool)
    clamped = min(max(retries, 0), max(max_retries, 0)) if valid else 0
    if not valid or clamped != retries:
        logger.warning(
            "cache_invalidation: message %s has retries=%s; counted as %d (0 to MAX_RETRIES)",
            request.id,
            _short(retries),
            clamped,
            extra=log_extra(stage="apply", task_id=request.id),
        )
        request.retries = clamped


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _drain_names(drains: Any) -> list[str]:
    """The ``drains`` argument of a message, which anyone on the broker can write: only a list
    of strings is kept (the backend then takes only this cache's registered draining sets)."""
    if not drains:
        return []
    names = drains if isinstance(drains, list) else []
    kept = [d for d in names if isinstance(d, str)]
    if len(kept) != len(names) or not isinstance(drains, list):
        logger.warning(
            "cache_invalidation: ignored a 'drains' argument that is not a list of strings (%s)",
            type(drains).__name__,
            extra=log_extra(stage="apply"),
        )
    return kept


def _dead_letter(task: Any, events: Any, reason: str, error: Any, **fields: Any) -> int:
    """Write the dead letter: the one place the task does. If the database cannot take it,
    the message must not be acknowledged with the events recorded nowhere but a log line:
    retry it later (with backoff, as often as it takes), or leave it to the broker."""

    if deadletter.record(events, reason, error, **fields) is not None:
        return 0
    countdown = backoff(task.request.retries, get_config())
    logger.critical(
        "cache_invalidation: the dead letter could not be written; the message is retried "
        "in %.1f s",
        countdown,
        extra=log_extra(events if isinstance(events, list) else [], stage="dead_letter"),
    )
    try:
        raise task.retry(countdown=countdown, kwargs=task.request.kwargs)
    except Reject as rejected:  # the broker cannot take the retry either: redeliver this one
        raise Reject(getattr(rejected, "reason", rejected), requeue=True) from None


def _retry_or_dead_letter(
    task: Any,
    events: list[Any],
    exc: BaseException,
    config: dict[str, Any],
    attempts: int,
    kwargs: dict[str, Any] | None = None,
    tags: Any = None,
    keys: Any = None,
    drains: Any = (),
) -> int:
    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    will_retry = task.request.retries < int(config["MAX_RETRIES"])
    report_failure(events, exc, stage="apply", will_retry=will_retry)
    if will_retry:
        try:
            raise task.retry(
                exc=exc,
                countdown=backoff(task.request.retries, config),
                max_retries=int(config["MAX_RETRIES"]),
                kwargs=kwargs if kwargs is not None else task.request.kwargs,
            )
        except Reject as rejected:
            # Celery rejects (drops) the message when it cannot publish the retry (the broker
            # is down or out of memory): dead-letter the events instead of losing them.
            return _dead_letter(
                task,
                events,
                DeadLetter.Reason.PUBLISH_FAILED,
                "the retry could not be published "
                f"({getattr(rejected, 'reason', rejected)!r}) after: "
                f"{type(exc).__name__}: {exc}",
                attempts=attempts,
                tags=tags,
                keys=keys,
                drains=drains,
            )
    return _dead_letter(
        task,
        events,
        DeadLetter.Reason.RETRIES_EXHAUSTED,
        exc,
        attempts=attempts,
        tags=tags,
        keys=keys,
        drains=drains,
    )


def _delivery_key(request: Any) -> str:
    return f"ci:deliveries:{request.id}:{request.retries}"


@shared_task(name="cache_invalidation.prune_tag_index", ignore_result=True)
def prune_tag_index() -> dict[str, int]:
    """Periodic sweep of the tag index: drop members whose entry expired (for Celery beat).

    Stores already prune lazily; this catches tags that stopped receiving stores.
    """

    result = TaggedCache().prune_index()
    logger.info(
        "cache_invalidation: pruned the tag index: %s", result, extra=log_extra(stage="prune")
    )
    return result


@shared_task(name="cache_invalidation.replay_dead_letters", ignore_result=True)
def replay_dead_letters(limit: int = 100) -> dict[str, Any]:
    """Replay the pending dead letters whose next attempt is due (for Celery beat).

    Each failure pushes that row's next attempt further out (exponential backoff capped at
    ``RETRY_BACKOFF_MAX``), so an outage is not hammered.
    """

    due = list(deadletter.pending(due_only=True).values_list("pk", flat=True)[:limit])
    result = deadletter.replay(due).as_dict()
    if due:
        logger.info(
            "cache_invalidation: automatic replay: %s", result, extra=log_extra(stage="replay")
        )
    return result


@shared_task(name="cache_invalidation.relay_outbox", ignore_result=True)
def relay_outbox(limit: int = 500) -> dict[str, Any]:
    """Deliver due outbox rows (for Celery beat, with ``TRANSPORT = "outbox"``)."""

    result = outbox.relay(limit=limit).as_dict()
    if result["batches"] or result["failed"]:
        logger.info("cache_invalidation: outbox relay: %s", result, extra=log_extra(stage="relay"))
    return result
