"""Durable records: the dead-letter queue, the transactional outbox and the audit log of
manual invalidations.

The first two store events as JSON (``InvalidationEvent.to_dict()``), never pickles, so a row
written by one release can be read, shown and replayed by the next.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class DeadLetter(models.Model):
    """An invalidation that could not be applied, kept until it is replayed or discarded.

    ``tags``, ``keys`` and ``drains`` say what is still to do: after a partial failure only
    what failed is here (``drains`` are Redis sets of a large tag whose members were still
    being deleted).
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        REPLAYED = "replayed", _("Replayed")
        DISCARDED = "discarded", _("Discarded")

    class Reason(models.TextChoices):
        RETRIES_EXHAUSTED = "retries_exhausted", _("Retries exhausted")
        PUBLISH_FAILED = "publish_failed", _("Publishing failed")
        MALFORMED = "malformed", _("Malformed event")
        WORKER_LOST = "worker_lost", _("Worker lost too often")
        APPLY_FAILED = "apply_failed", _("Applying failed")

    events = models.JSONField(_("events"), default=list)
    tags = models.JSONField(_("tags still to invalidate"), default=list)
    keys = models.JSONField(_("keys still to delete"), default=list)
    drains = models.JSONField(_("tag sets still draining"), default=list)
    models_affected = models.CharField(_("models"), max_length=255, blank=True, db_index=True)
    reason = models.CharField(_("reason"), max_length=32, choices=Reason.choices)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=1)
    first_failed_at = models.DateTimeField(_("first failure"), default=timezone.now)
    last_failed_at = models.DateTimeField(_("last failure"), default=timezone.now, db_index=True)
    next_attempt_at = models.DateTimeField(_("next automatic replay"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    resolved_at = models.DateTimeField(_("replayed or discarded at"), null=True, blank=True)

    class Meta:
        verbose_name = _("dead letter")
        verbose_name_plural = _("dead letters")
        ordering = ["-last_failed_at", "-pk"]
        permissions = [
            ("replay_deadletter", _("Can replay or discard dead letters")),
            ("invalidate_cache", _("Can invalidate cache entries by hand")),
        ]

    def __str__(self) -> str:
        return f"{self.get_reason_display()}: {self.models_affected or 'manual'} ({self.status})"

    @property
    def event_ids(self) -> list[str]:
        return [e.get("id", "?") for e in self.events if isinstance(e, dict)]


class OutboxEvent(models.Model):
    """An event written in the same transaction as the change that caused it.

    Rows of one transaction share ``batch``; ``manage.py relay_outbox`` (or the Celery beat
    task) delivers them batch by batch and deletes them once applied.
    """

    batch = models.UUIDField(_("batch"), db_index=True)
    event = models.JSONField(_("event"))
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)
    available_at = models.DateTimeField(_("next attempt"), default=timezone.now, db_index=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)

    class Meta:
        verbose_name = _("outbox event")
        verbose_name_plural = _("outbox events")
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        event: dict[str, Any] = self.event if isinstance(self.event, dict) else {}
        return f"{event.get('type', '?')} ({self.batch})"


class ManualInvalidation(models.Model):
    """One manual invalidation asked for from the admin page or ``manage.py invalidate_cache``.

    Written for every submission, including previews and refused ones, so the log answers
    "who dropped what, when, and did it work". ``user`` may be deleted later; ``username``
    keeps who it was.
    """

    class Source(models.TextChoices):
        ADMIN = "admin", _("Admin")
        COMMAND = "command", _("Command")

    class Status(models.TextChoices):
        APPLIED = "applied", _("Applied")
        PUBLISHED = "published", _("Published")
        PREVIEWED = "previewed", _("Previewed")
        FAILED = "failed", _("Failed")
        REFUSED = "refused", _("Refused")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    username = models.CharField(_("username"), max_length=150, blank=True)
    created_at = models.DateTimeField(_("at"), default=timezone.now, db_index=True)
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    tags = models.JSONField(_("tags"), default=list, blank=True)
    keys = models.JSONField(_("keys"), default=list, blank=True)
    model_label = models.CharField(_("model"), max_length=100, blank=True)
    object_pk = models.CharField(_("primary key"), max_length=255, blank=True)
    pattern = models.CharField(_("key pattern"), max_length=255, blank=True)
    dry_run = models.BooleanField(_("dry run"), default=False)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, db_index=True)
    result = models.TextField(_("result"), blank=True)
    matched_count = models.PositiveIntegerField(_("keys matched"), null=True, blank=True)
    deleted_count = models.PositiveIntegerField(_("entries deleted"), null=True, blank=True)
    event_id = models.CharField(_("event id"), max_length=64, blank=True)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        verbose_name = _("manual invalidation")
        verbose_name_plural = _("manual invalidations")
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        who = self.username or "?"
        return f"{self.get_source_display()}, {self.get_status_display()}, by {who}"
