"""The dead-letter queue: the one place failed invalidations are written, alerted and replayed.

:func:`record` is called when Celery's retries are exhausted, when publishing to the broker
fails, for a malformed message, and when a message was delivered to dying workers too often.
:func:`replay` is shared by ``manage.py replay_dead_letters``, the admin action and the
Celery beat task; concurrent replays never process one row twice
(``select_for_update(skip_locked=True)`` where the database supports it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core import mail
from django.db import transaction
from django.utils import timezone

from . import metrics, signals
from .apply import apply_events
from .backends import PartialInvalidation
from .conf import get_config
from .events import InvalidationEvent, InvalidEventError, decode_batch, json_problem, union
from .logfields import log_extra
from .retry import backoff

logger = logging.getLogger("cache_invalidation")


def left_by(exc: BaseException) -> tuple[BaseException, dict[str, Any]]:
    """The cause of a failed apply and, for a :class:`~.backends.PartialInvalidation`, what it
    left (``tags``, ``keys``, ``drains``: the arguments :func:`record` takes for the remainder).
    The one place a partial invalidation becomes a dead letter's contents."""

    if isinstance(exc, PartialInvalidation):
        return exc.__cause__ or exc, {"tags": exc.tags, "keys": exc.keys, "drains": exc.drains}
    return exc, {}


def record_apply_failure(
    events: Sequence[InvalidationEvent], exc: BaseException, *, attempts: int = 1
) -> Any:
    """Write the dead letter of a batch whose apply failed with ``exc`` (only what is left
    when it failed part way); returns the row, as :func:`record`."""
    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    cause, left = left_by(exc)
    return record(events, DeadLetter.Reason.APPLY_FAILED, cause, attempts=attempts, **left)


def record(
    events: Sequence[InvalidationEvent] | Any,
    reason: str,
    error: BaseException | str,
    *,
    attempts: int = 1,
    tags: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    drains: Sequence[str] = (),
) -> Any:
    """Write one dead letter for a failed batch; returns the row (None if the database failed
    too, in which case the events are logged at CRITICAL so they are never lost from view).

    ``events`` are decoded events or, for a malformed message, the raw payload. ``tags`` and
    ``keys`` default to everything the events name; pass the remainder after a partial failure.
    """
    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    decoded = (
        [e for e in events if isinstance(e, InvalidationEvent)]
        if isinstance(events, (list, tuple))
        else []
    )
    raw = (
        [e.to_dict() if isinstance(e, InvalidationEvent) else _storable(e) for e in events]
        if isinstance(events, (list, tuple))
        else [_storable(events)]
    )
    if tags is None or keys is None:
        tags, keys = union(decoded)
    now = timezone.now()
    # Declared models only (else "unknown"): an entity_type comes from a message, and this
    # column is an admin filter, whose choices must stay few.
    affected = ",".join(sorted({metrics.label(e) for e in decoded}))[:255]
    try:
        row = DeadLetter.objects.create(
            events=raw,
            tags=list(tags),
            keys=list(keys),
            drains=list(drains),
            models_affected=affected,
            reason=reason,
            attempts=attempts,
            first_failed_at=now,
            last_failed_at=now,
            next_attempt_at=now + _backoff(attempts),
            last_error=_text(error),
        )
    except Exception as db_error:
        logger.critical(
            "cache_invalidation: could not write a dead letter (%s) for %s: %s; events: %s",
            db_error,
            reason,
            _text(error),
            raw,
            extra=log_extra(decoded, stage="dead_letter"),
        )
        return None
    metrics.incr_events("dead_lettered", events if isinstance(events, (list, tuple)) else [events])
    _alert(row, decoded, error)
    return row


def _storable(item: Any) -> Any:
    """A malformed payload item as a JSON column can keep it: unchanged if it is plain JSON,
    else its ``ascii()`` text (NaN, NUL or unpaired surrogates would make the write fail, and
    the dead letter, the one durable record of the message, would be lost)."""
    problem = json_problem(item)
    if problem is None:
        return item
    return {"unstorable": ascii(item)[:10_000], "problem": problem}


def _text(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}"


def _backoff(attempts: int) -> timedelta:
    # Never sooner than a second: the periodic replay must not spin on a failing row.
    return timedelta(seconds=backoff(attempts, get_config(), floor=1.0))


def _alert(row: Any, events: list[InvalidationEvent], error: BaseException | str) -> None:
    config = get_config()
    message = (
        f"cache_invalidation: dead letter #{row.pk} ({row.reason}) after {row.attempts} "
        f"attempt(s): {_text(error)}; tags {row.tags}, keys {row.keys}"
    )
    extra = log_extra(events, stage="dead_letter", dead_letter=row.pk)
    if row.attempts < int(config["ALERT_AFTER_ATTEMPTS"]):
        logger.error(message, extra=extra)
        return
    logger.critical(message, extra=extra)
    signals.send(
        signals.dead_lettered, sender=type(row), dead_letter=row, events=events, error=error
    )
    if config["MAIL_ADMINS"]:
        # Not fail_silently=True: Django 6.1 deprecates it, and a mail that could not be sent
        # deserves a log line of its own rather than silence.
        try:
            mail.mail_admins(
                f"Cache invalidation dead letter #{row.pk}: {row.get_reason_display()}",
                message + "\n\nReplay it with: manage.py replay_dead_letters --id " + str(row.pk),
            )
        except Exception:
            logger.exception(
                "cache_invalidation: could not mail ADMINS about dead letter #%s", row.pk
            )


@dataclass
class ReplayResult:
    replayed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # locked by a concurrent replay, or done

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": len(self.replayed),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "replayed_ids": self.replayed,
            "failed_ids": {str(k): v for k, v in self.failed.items()},
            "skipped_ids": self.skipped,
        }


def pending(
    ids: Iterable[int] | None = None,
    older_than: timedelta | None = None,
    due_only: bool = False,
) -> Any:
    """The pending dead letters matching the filters, oldest first."""
    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    rows = DeadLetter.objects.filter(status=DeadLetter.Status.PENDING)
    if ids is not None:
        rows = rows.filter(pk__in=list(ids))
    if older_than is not None:
        rows = rows.filter(first_failed_at__lte=timezone.now() - older_than)
    if due_only:
        rows = rows.filter(next_attempt_at__lte=timezone.now())
    return rows.order_by("first_failed_at", "pk")


def replay(
    ids: Iterable[int],
    progress: Callable[[int, bool], None] | None = None,
) -> ReplayResult:
    """Apply each dead letter now, in this process. A success marks it replayed; a failure
    keeps it pending with one more attempt, the error and the next automatic replay time."""
    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    result = ReplayResult()
    for pk in ids:
        with transaction.atomic():
            row = (
                DeadLetter.objects.select_for_update(skip_locked=True)
                .filter(pk=pk, status=DeadLetter.Status.PENDING)
                .first()
            )
            if row is None:
                result.skipped.append(pk)
                if progress:
                    progress(pk, False)
                continue
            try:
                events = decode_batch(row.events)
                if not (row.tags or row.keys or row.drains):
                    raise InvalidEventError(["nothing to invalidate in this dead letter"])
                apply_events(events, tags=row.tags, keys=row.keys, drains=row.drains)
            except Exception as exc:
                now = timezone.now()
                row.attempts += 1
                row.last_failed_at = now
                row.last_error = _text(exc)
                row.next_attempt_at = now + _backoff(row.attempts)
                fields = ["attempts", "last_failed_at", "last_error", "next_attempt_at"]
                if isinstance(exc, PartialInvalidation):
                    # Part of it was done: keep only what is left (the sets this attempt
                    # renamed for draining included, or their members would stay cached).
                    row.tags, row.keys, row.drains = exc.tags, exc.keys, exc.drains
                    fields += ["tags", "keys", "drains"]
                row.save(update_fields=fields)
                result.failed[pk] = row.last_error
                _alert(row, [], exc)
                ok = False
            else:
                row.status = DeadLetter.Status.REPLAYED
                row.resolved_at = timezone.now()
                row.save(update_fields=["status", "resolved_at"])
                result.replayed.append(pk)
                ok = True
        if progress:
            progress(pk, ok)
    return result


def discard(ids: Iterable[int]) -> int:
    """Mark pending dead letters discarded (nothing is invalidated); returns how many."""
    from .models import DeadLetter  # noqa: PLC0415 - models need the app registry

    return DeadLetter.objects.filter(pk__in=list(ids), status=DeadLetter.Status.PENDING).update(
        status=DeadLetter.Status.DISCARDED, resolved_at=timezone.now()
    )
