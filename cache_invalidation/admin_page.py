"""The "Cache invalidation" admin page: a manual invalidation form and a dashboard.

Served by :class:`~cache_invalidation.admin.ManualInvalidationAdmin` (``get_urls``, through
``admin_site.admin_view``) at ``<admin>/cache_invalidation/manualinvalidation/invalidate/``.
Needs ``cache_invalidation.invalidate_cache``: 403 otherwise, for GET and POST alike. GET
shows; only a POST (with the CSRF token) changes anything.

Tags and keys are invalidated on the first POST. A key pattern is first previewed (how many
keys match, a sample of them) and deleted only by a second POST that carries a signed
confirmation token for the same user and the same submission, valid
:data:`CONFIRM_MAX_AGE` seconds. The token is bound to its preview: confirming deletes the keys
that preview matched and no others (keys added since are left for a new preview), and it works
once (a second POST of the same token deletes nothing and previews again). Every POST writes a
``ManualInvalidation`` row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import dashboard, keypatterns, manual
from .conf import get_config

PERMISSION = "cache_invalidation.invalidate_cache"
SALT = "cache_invalidation.admin.confirm-pattern"
CONFIRM_MAX_AGE = keypatterns.CONFIRM_MAX_AGE
TEMPLATE = "admin/cache_invalidation/invalidate.html"


class ManualInvalidationForm(forms.Form):
    tags = forms.CharField(
        label=_("Tags"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text=_("One per line, e.g. product:7. Every entry carrying a tag is dropped."),
    )
    keys = forms.CharField(
        label=_("Keys"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=_("Plain cache keys, one per line, as your code names them."),
    )
    model = forms.ChoiceField(label=_("Model"), required=False, choices=())
    pk = forms.CharField(
        label=_("Primary key"),
        required=False,
        max_length=255,
        help_text=_(
            "Drops what a save of this row would: its declared tags and keys, read "
            "from the database."
        ),
    )
    pattern = forms.CharField(
        label=_("Key pattern"),
        required=False,
        max_length=keypatterns.MAX_PATTERN_LENGTH,
        help_text=_(
            "A glob over cache keys without the cache's prefix, e.g. product:*:page "
            "(wildcards * and ?). Previewed first; deleted after you confirm."
        ),
    )
    apply_now = forms.BooleanField(
        label=_("Apply now"),
        required=False,
        help_text=_(
            "Invalidate tags and keys in this web process instead of publishing "
            "through the configured transport."
        ),
    )
    confirm = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan: manual.Plan | None = None
        model_field = self.fields["model"]
        assert isinstance(model_field, forms.ChoiceField)
        model_field.choices = [("", "---------")] + [
            (label, label) for label in manual.declared_models()
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            self.plan = manual.plan(
                tags=data.get("tags", ""),
                keys=data.get("keys", ""),
                model=data.get("model", ""),
                pk=data.get("pk", ""),
                pattern=data.get("pattern", ""),
            )
        except manual.ManualError as exc:
            self.add_error(exc.field, str(exc))
        return data

    def error_text(self) -> str:
        return " ".join(str(e) for errors in self.errors.values() for e in errors)

    def raw(self) -> dict[str, Any]:
        return {
            name: self.data.get(name, "") for name in ("tags", "keys", "model", "pk", "pattern")
        }


def _digest(plan: manual.Plan, apply_now: bool, user: Any) -> str:
    alias = plan.pattern.alias if plan.pattern else ""
    raw = json.dumps(
        [
            plan.tags,
            plan.keys,
            plan.model,
            plan.pk,
            plan.pattern_text,
            alias,
            apply_now,
            str(user.pk),
        ]
    )
    return hashlib.sha256(raw.encode()).hexdigest()


def confirmation_token(plan: manual.Plan, apply_now: bool, user: Any, nonce: str) -> str:
    """A signed, timestamped token for exactly this submission by this user and the preview
    remembered under ``nonce`` (:meth:`.keypatterns.KeyPattern.remember`)."""
    return signing.dumps({"digest": _digest(plan, apply_now, user), "preview": nonce}, salt=SALT)


def confirmed_nonce(token: str, plan: manual.Plan, apply_now: bool, user: Any) -> str | None:
    """The preview nonce of ``token`` if it is signed, fresh and for this submission and user."""
    if not token:
        return None
    try:
        data = signing.loads(token, salt=SALT, max_age=CONFIRM_MAX_AGE)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or data.get("digest") != _digest(plan, apply_now, user):
        return None
    nonce = data.get("preview")
    return nonce if isinstance(nonce, str) and nonce else None


def _what(plan: manual.Plan) -> str:
    tags = ngettext("%(count)d tag", "%(count)d tags", len(plan.tags)) % {"count": len(plan.tags)}
    keys = ngettext("%(count)d key", "%(count)d keys", len(plan.keys)) % {"count": len(plan.keys)}
    return _("%(tags)s and %(keys)s") % {"tags": tags, "keys": keys}


def report(
    model_admin: admin.ModelAdmin, request: HttpRequest, plan: manual.Plan, outcome: manual.Outcome
) -> None:
    """Tell the user what happened, one message per part, in their language."""
    from .models import ManualInvalidation  # noqa: PLC0415 - models need the app registry

    Status = ManualInvalidation.Status
    if not outcome.ok:
        model_admin.message_user(
            request,
            _("The invalidation failed: %(result)s") % {"result": outcome.result},
            messages.ERROR,
        )
        return
    if plan.tags or plan.keys:
        if outcome.status == Status.PUBLISHED:
            model_admin.message_user(
                request,
                _(
                    "Published the invalidation of %(what)s through the %(transport)s transport "
                    "(event %(event)s)."
                )
                % {"what": _what(plan), "transport": outcome.transport, "event": outcome.event_id},
                messages.SUCCESS,
            )
        else:
            tag_deleted = (outcome.deleted or 0) - (outcome.pattern_deleted or 0)
            model_admin.message_user(
                request,
                ngettext(
                    "Invalidated %(what)s: %(count)d cache entry deleted.",
                    "Invalidated %(what)s: %(count)d cache entries deleted.",
                    tag_deleted,
                )
                % {"what": _what(plan), "count": tag_deleted},
                messages.SUCCESS,
            )
    if plan.pattern is not None and outcome.pattern_deleted is not None:
        count = outcome.pattern_deleted
        model_admin.message_user(
            request,
            ngettext(
                "Deleted %(count)d key matching %(pattern)s.",
                "Deleted %(count)d keys matching %(pattern)s.",
                count,
            )
            % {"count": count, "pattern": plan.pattern.pattern},
            messages.SUCCESS,
        )


def invalidate_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """The page. ``admin_site.admin_view`` has checked staff status and CSRF on POST."""
    from .models import ManualInvalidation  # noqa: PLC0415 - models need the app registry

    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    Status = ManualInvalidation.Status
    preview: dict[str, Any] | None = None
    if request.method == "POST":
        form = ManualInvalidationForm(request.POST)
        if not form.is_valid() or form.plan is None:
            manual.audit(
                None,
                None,
                source="admin",
                user=request.user,
                status=Status.REFUSED,
                error=form.error_text(),
                raw=form.raw(),
            )
            return _render(model_admin, request, form, None)
        plan = form.plan
        apply_now = bool(form.cleaned_data.get("apply_now"))
        wants_preview = "_preview" in request.POST
        token = form.cleaned_data.get("confirm") or ""
        confirmed = plan.pattern is None
        warning: Any = None  # a message, lazily translated
        if plan.pattern is not None and not wants_preview:
            nonce = confirmed_nonce(token, plan, apply_now, request.user)
            if nonce is not None:
                try:
                    plan.preview = plan.pattern.take(nonce)
                except Exception as exc:
                    warning = _("Could not read the preview back: %(error)s") % {
                        "error": f"{type(exc).__name__}: {exc}"
                    }
                else:
                    confirmed = plan.preview is not None
                    if not confirmed:
                        warning = _(
                            "This confirmation was already used or its preview expired; check "
                            "the preview and confirm again."
                        )
            elif token:
                warning = _(
                    "The confirmation expired or no longer matches the form; check the "
                    "preview and confirm again."
                )
        if wants_preview or not confirmed:
            if warning is not None:
                model_admin.message_user(request, warning, messages.WARNING)
            preview = _preview(model_admin, request, plan, apply_now)
            return _render(model_admin, request, form, preview)
        outcome = manual.execute(
            plan, sync=apply_now, source="admin", username=request.user.get_username()
        )
        manual.audit(plan, outcome, source="admin", user=request.user)
        report(model_admin, request, plan, outcome)
        return HttpResponseRedirect(request.path)
    return _render(model_admin, request, ManualInvalidationForm(), None)


def _preview(
    model_admin: admin.ModelAdmin, request: HttpRequest, plan: manual.Plan, apply_now: bool
) -> dict[str, Any]:
    """Count the pattern's matches, write the preview's audit row, say what confirming does."""
    from .models import ManualInvalidation  # noqa: PLC0415 - models need the app registry

    Status = ManualInvalidation.Status
    refusal = error = ""
    try:
        plan.look()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    if plan.pattern is not None and plan.preview is not None:
        refusal = plan.pattern.refusal(plan.preview) or ""
    manual.audit(
        plan,
        None,
        source="admin",
        user=request.user,
        dry_run=True,
        status=Status.FAILED if error else Status.PREVIEWED,
        error=error or refusal,
    )
    if error:
        model_admin.message_user(
            request,
            _("Could not count the keys matching the pattern: %(error)s") % {"error": error},
            messages.ERROR,
        )
    nonce = ""
    if not (error or refusal) and plan.pattern is not None and plan.preview is not None:
        try:
            nonce = plan.pattern.remember(plan.preview)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            model_admin.message_user(
                request,
                _("Could not keep the preview for the confirmation: %(error)s") % {"error": error},
                messages.ERROR,
            )
    # Tags, keys and rows need no token (they are done on submit); a pattern needs its preview.
    can_confirm = not (error or refusal) and (plan.pattern is None or bool(nonce))
    return {
        "plan": plan,
        "matched": plan.preview.matched if plan.preview else None,
        "sample": plan.preview.sample if plan.preview else (),
        "refusal": refusal,
        "error": error,
        "token": confirmation_token(plan, apply_now, request.user, nonce) if nonce else "",
        "can_confirm": can_confirm,
    }


def _render(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    form: ManualInvalidationForm,
    preview: dict[str, Any] | None,
) -> HttpResponse:
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": _("Cache invalidation"),
        "opts": opts,
        "app_label": opts.app_label,
        "has_view_permission": model_admin.has_view_permission(request),
        "form": form,
        "preview": preview,
        "transport": get_config()["TRANSPORT"],
        "cache_alias": get_config()["CACHE_ALIAS"],
        "dashboard": dashboard.context(scan_index=request.GET.get("scan_index") == "1"),
    }
    return TemplateResponse(request, TEMPLATE, context)
