"""The transactional outbox (``TRANSPORT = "outbox"``): at-least-once delivery.

Each event is written as an :class:`~.models.OutboxEvent` row in the same database
transaction as the change, so it commits or rolls back with it. After commit the app tries to
deliver that batch at once, in-process (``OUTBOX_DELIVER_ON_COMMIT``); if the process dies
first, or the cache is down, the rows stay and :func:`relay` delivers them later:
``manage.py relay_outbox`` (once, or as a loop) or the ``cache_invalidation.relay_outbox``
Celery beat task. Rows are taken in ``select_for_update(skip_locked=True)`` batches, so any
number of relays can run; a delivered row is deleted, a failing one is retried with backoff and
dead-lettered after ``MAX_RETRIES``.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.db.models import Count, Min
from django.utils import timezone

from . import deadletter, recorder, signals
from .apply import apply_events
from .conf import get_config
from .events import InvalidationEvent, InvalidEventError, decode_each
from .logfields import log_extra
from .retry import backoff

logger = logging.getLogger("cache_invalidation")


def write(event: InvalidationEvent, batch: uuid.UUID, using: str) -> None:
    from .models import OutboxEvent  # noqa: PLC0415 - models need the app registry

    OutboxEvent.objects.using(using).create(batch=batch, event=event.to_dict())


def wrap_save_base(model: Any) -> None:
    """Make an autocommit ``save()`` of ``model`` one transaction when the outbox is on.

    Django commits a plain ``save()``'s UPDATE before ``post_save`` is sent, so the outbox row
    would follow in a transaction of its own, and a crash between the two commits would lose
    the event. With ``TRANSPORT = "outbox"``, ``save_base`` runs inside
    ``atomic(savepoint=False)`` when no transaction is open: the row and its outbox entry
    commit together (one commit instead of two). Deletes, m2m changes and bulk writes already
    run in a transaction of Django's or of this app's.
    """
    original = model.save_base
    if getattr(original, "_cache_invalidation", False):
        return

    def save_base(self: Any, *args: Any, **kwargs: Any) -> Any:
        if get_config()["TRANSPORT"] == "outbox":
            using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
            if not connections[using].in_atomic_block:
                with transaction.atomic(using=using, savepoint=False):
                    return original(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    save_base._cache_invalidation = True  # type: ignore[attr-defined]
    save_base.__doc__ = original.__doc__
    model.save_base = save_base


def committed(events: list[InvalidationEvent], batch: uuid.UUID, using: str) -> None:
    """A batch's rows committed: tell the listeners, then deliver it now if configured to.

    It counts as *published* when it leaves the outbox (the delivery's own script call counts
    it, with no round trip here); until then it is part of the outbox backlog."""

    recorder.published(events, "outbox")
    signals.send(signals.invalidation_published, events=events, transport="outbox")
    deliver_after_commit(batch, using)


def deliver_after_commit(batch: uuid.UUID, using: str) -> None:
    """Called once the batch's transaction committed: deliver it now if configured to."""

    if get_config()["OUTBOX_DELIVER_ON_COMMIT"]:
        relay(using=using, batch=batch)


@dataclass
class RelayResult:
    batches: int = 0
    events: int = 0
    failed: int = 0
    dead_lettered: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "events": self.events,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
        }


def relay(
    limit: int = 500, using: str = DEFAULT_DB_ALIAS, batch: uuid.UUID | None = None
) -> RelayResult:
    """Deliver up to ``limit`` due outbox rows (only ``batch``'s when given), batch by batch."""
    from .models import DeadLetter, OutboxEvent  # noqa: PLC0415 - models need the app registry

    result = RelayResult()
    now = timezone.now()
    with transaction.atomic(using=using):
        rows = OutboxEvent.objects.using(using).select_for_update(skip_locked=True)
        rows = rows.filter(batch=batch) if batch is not None else rows.filter(available_at__lte=now)
        groups: dict[uuid.UUID, list[Any]] = defaultdict(list)
        for row in rows.order_by("created_at", "pk")[:limit]:
            groups[row.batch].append(row)
        for batch_id, members in groups.items():
            # A row that does not decode (written by other code, edited by hand) is
            # dead-lettered alone: the valid rows of its batch are still delivered.
            events, rejected, problems = decode_each([row.event for row in members])
            bad = [r for r in members if r.event in rejected] if rejected else []
            if bad:
                deadletter.record(
                    [r.event for r in bad], DeadLetter.Reason.MALFORMED, InvalidEventError(problems)
                )
                OutboxEvent.objects.using(using).filter(pk__in=[r.pk for r in bad]).delete()
                result.dead_lettered += 1
                members = [r for r in members if r not in bad]
                if not members:
                    continue
            ids = [row.pk for row in members]
            try:
                apply_events(events, published=True)
            except Exception as exc:
                attempts = max(row.attempts for row in members) + 1
                result.failed += 1
                result.errors.append(f"{batch_id}: {type(exc).__name__}: {exc}")
                if attempts > int(get_config()["MAX_RETRIES"]):
                    deadletter.record(
                        events, DeadLetter.Reason.RETRIES_EXHAUSTED, exc, attempts=attempts
                    )
                    OutboxEvent.objects.using(using).filter(pk__in=ids).delete()
                    result.dead_lettered += 1
                    continue

                OutboxEvent.objects.using(using).filter(pk__in=ids).update(
                    attempts=attempts,
                    last_error=f"{type(exc).__name__}: {exc}",
                    available_at=now + timedelta(seconds=backoff(attempts - 1, get_config())),
                )
                logger.warning(
                    "cache_invalidation: outbox batch %s failed (attempt %d): %s",
                    batch_id,
                    attempts,
                    exc,
                    extra=log_extra(events, stage="relay", batch=str(batch_id)),
                )
                continue
            OutboxEvent.objects.using(using).filter(pk__in=ids).delete()
            result.batches += 1
            result.events += len(events)
    return result


def backlog(using: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """How many rows wait, and the age in seconds of the oldest (None when empty)."""

    from .models import OutboxEvent  # noqa: PLC0415 - models need the app registry

    summary = OutboxEvent.objects.using(using).aggregate(rows=Count("pk"), oldest=Min("created_at"))
    oldest = summary["oldest"]
    age = (timezone.now() - oldest).total_seconds() if oldest else None
    return {"rows": summary["rows"], "oldest_age": age}
