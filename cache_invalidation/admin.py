"""Admin: the dead-letter queue (read-only, with replay and discard), the outbox backlog, and
the audit log of manual invalidations, which also serves the "Cache invalidation" page
(:mod:`.admin_page`)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import deadletter, outbox
from .admin_page import invalidate_view
from .models import DeadLetter, ManualInvalidation, OutboxEvent


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        # A NUL in a filter (?status=%00) reaches PostgreSQL, which refuses it with a
        # DataError (a 500). Refuse it as Django refuses any bad lookup: "?e=1", then the
        # admin's "Database error" page.
        if any("\x00" in text for key, values in request.GET.lists() for text in (key, *values)):
            raise IncorrectLookupParameters("a NUL character in the changelist's query string")
        return super().get_changelist_instance(request)


@admin.register(DeadLetter)
class DeadLetterAdmin(_ReadOnly):
    list_display = (
        "id",
        "reason",
        "models_affected",
        "status",
        "attempts",
        "first_failed_at",
        "last_failed_at",
    )
    list_filter = ("status", "reason", "models_affected", "last_failed_at")
    search_fields = ("models_affected", "last_error")
    date_hierarchy = "last_failed_at"
    actions = ["replay_selected", "discard_selected"]
    fields = (
        "reason",
        "status",
        "models_affected",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "next_attempt_at",
        "resolved_at",
        "last_error",
        "tags",
        "keys",
        "drains",
        "events_json",
    )
    readonly_fields = fields

    @admin.display(description=_("events"))
    def events_json(self, obj: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.events, indent=2, sort_keys=True))

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("cache_invalidation.replay_deadletter")

    @admin.action(permissions=["replay"], description=_("Replay selected dead letters now"))
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        ids = list(queryset.filter(status=DeadLetter.Status.PENDING).values_list("pk", flat=True))
        result = deadletter.replay(ids)
        if result.replayed:
            self.message_user(
                request,
                ngettext(
                    "Replayed %(count)d dead letter.",
                    "Replayed %(count)d dead letters.",
                    len(result.replayed),
                )
                % {"count": len(result.replayed)},
                messages.SUCCESS,
            )
        if result.failed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d dead letter failed again and stays pending.",
                    "%(count)d dead letters failed again and stay pending.",
                    len(result.failed),
                )
                % {"count": len(result.failed)},
                messages.ERROR,
            )
        if not ids:
            self.message_user(
                request, _("No pending dead letters were selected."), messages.WARNING
            )

    @admin.action(permissions=["replay"], description=_("Discard selected dead letters"))
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        count = deadletter.discard(queryset.values_list("pk", flat=True))
        self.message_user(
            request,
            ngettext("Discarded %(count)d dead letter.", "Discarded %(count)d dead letters.", count)
            % {"count": count},
            messages.SUCCESS,
        )


@admin.register(OutboxEvent)
class OutboxEventAdmin(_ReadOnly):
    list_display = ("id", "event_type", "batch", "created_at", "age", "attempts", "last_error")
    list_filter = ("created_at",)
    readonly_fields = ("batch", "event", "created_at", "available_at", "attempts", "last_error")

    @admin.display(description=_("type"))
    def event_type(self, obj: OutboxEvent) -> str:
        return str(obj.event.get("type", "?")) if isinstance(obj.event, dict) else "?"

    @admin.display(description=_("age"))
    def age(self, obj: OutboxEvent) -> str:
        seconds = int((timezone.now() - obj.created_at).total_seconds())
        return f"{seconds} s"

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        backlog = outbox.backlog()
        if backlog["rows"]:
            self.message_user(
                request,
                _("Backlog: %(rows)d row(s), oldest %(age)d s old.")
                % {"rows": backlog["rows"], "age": backlog["oldest_age"] or 0},
                messages.INFO,
            )
        return super().changelist_view(request, extra_context)


@admin.register(ManualInvalidation)
class ManualInvalidationAdmin(_ReadOnly):
    """The audit log: one row per submission of the page or run of ``invalidate_cache``.
    Nobody may add, change or delete rows here."""

    list_display = (
        "created_at",
        "username",
        "source",
        "status",
        "summary",
        "matched_count",
        "deleted_count",
    )
    list_filter = ("source", "status", "dry_run", "created_at")
    search_fields = (
        "username",
        "tags",
        "keys",
        "model_label",
        "object_pk",
        "pattern",
        "result",
        "error",
        "event_id",
    )
    date_hierarchy = "created_at"
    fields = (
        "created_at",
        "user",
        "username",
        "source",
        "status",
        "dry_run",
        "tags",
        "keys",
        "model_label",
        "object_pk",
        "pattern",
        "matched_count",
        "deleted_count",
        "event_id",
        "result",
        "error",
    )
    readonly_fields = fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("what"))
    def summary(self, obj: ManualInvalidation) -> str:
        parts = []
        if obj.tags:
            parts.append(
                ngettext("%(count)d tag", "%(count)d tags", len(obj.tags))
                % {"count": len(obj.tags)}
            )
        if obj.keys:
            parts.append(
                ngettext("%(count)d key", "%(count)d keys", len(obj.keys))
                % {"count": len(obj.keys)}
            )
        if obj.model_label:
            parts.append(f"{obj.model_label} #{obj.object_pk}")
        if obj.pattern:
            parts.append(obj.pattern)
        return ", ".join(parts) or "-"

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}_invalidate"
        return [
            path("invalidate/", self.admin_site.admin_view(self.invalidate_view), name=name),
            *super().get_urls(),
        ]

    def invalidate_view(self, request: HttpRequest) -> HttpResponse:
        return invalidate_view(self, request)
