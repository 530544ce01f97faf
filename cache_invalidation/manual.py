"""Manual invalidation: what the admin page and ``manage.py invalidate_cache`` share.

An operator names what to drop in four ways, combinable: tags, plain keys, one row of a
declared model (``"shop.Product"`` + pk: the tags and keys a save of that row would
invalidate, read from the database), and a **key pattern**, a glob over the cache's keys.
:class:`Plan` gathers them (input mistakes raise :class:`ManualError`), :func:`execute`
carries them out and :func:`audit` writes the :class:`~.models.ManualInvalidation` row.

Tags and keys go through :func:`cache_invalidation.invalidate` (the configured transport), or
with ``sync=True`` through ``tagged_cache.invalidate_many`` in this process. A pattern is always
deleted here and now (no transport carries patterns) and, unlike a tag, bumps no version: it is
a plain delete, like ``cache.delete()``.

The pattern guard and the scanning live in :mod:`.keypatterns`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.translation import gettext_lazy as _

from . import deadletter, signals
from .api import invalidate
from .backends import PartialInvalidation
from .conf import get_config
from .events import InvalidationEvent
from .keypatterns import INTERNAL_PREFIX, KeyPattern, PatternError, Preview, bind
from .registry import registry
from .related import related_invalidations
from .resolve import resolve
from .rowstates import watched
from .tagging import tagged_cache

# Messages: tests assert on them; formatted with %-style mappings (translatable).
INTERNAL_KEY = _(
    "The key %(key)r is in the app's own namespace (%(prefix)s...: tag index, versions, "
    "sequence, leases, counters) and is never deleted as a plain key; invalidate a tag instead."
)
NOTHING = _("Say what to invalidate: tags, keys, a model and primary key, or a key pattern.")
UNKNOWN_MODEL = _("%(model)r is not a model that declares cache_invalidation.%(hint)s")
NEED_PK = _("Give the primary key of the %(model)s row.")
NEED_MODEL = _("Choose the model the primary key %(pk)r belongs to.")
BAD_PK = _("%(pk)r is not a valid primary key for %(model)s.")
NO_ROW = _("%(model)s with primary key %(pk)r does not exist.")
NUL = _(
    "The %(field)s field holds a NUL character (\\x00); no cache key, tag or database row can "
    "hold one. Remove it."
)


class ManualError(ValueError):
    """Input that cannot be carried out; the message says what to change."""

    def __init__(self, message: Any, field: str | None = None) -> None:
        self.field = field
        super().__init__(str(message))


def lines(value: str | Iterable[str] | None) -> list[str]:
    """Non-empty stripped entries, once each, in order (text is split on lines)."""
    if value is None:
        return []
    items = value.splitlines() if isinstance(value, str) else value
    return list(dict.fromkeys(s.strip() for s in items if s and s.strip()))


# -- rows of declared models ------------------------------------------------------------------
def declared_models() -> list[str]:
    """Labels (``"shop.Product"``) of the models with a policy, sorted."""

    return sorted(model._meta.label for model in registry.policies)


def resolve_row(label: str, pk: Any, using: str = DEFAULT_DB_ALIAS) -> tuple[list[str], list[str]]:
    """The tags and keys a save of this row would invalidate: its declared and automatic tags,
    its declared keys and those of its ``related`` rows, rendered from its stored values.

    Raises :class:`ManualError` for an unknown model, a malformed key or a missing row.
    """

    policies = {model._meta.label: policy for model, policy in registry.policies.items()}
    policy = policies.get(label)
    if policy is None:
        close = difflib.get_close_matches(label, list(policies), n=1)
        hint = (
            f" Did you mean {close[0]}?"
            if close
            else (" Declared models: " + (", ".join(sorted(policies)) or "none") + ".")
        )
        raise ManualError(UNKNOWN_MODEL % {"model": label, "hint": hint}, "model")
    if pk is None or str(pk).strip() == "":
        raise ManualError(NEED_PK % {"model": label}, "pk")
    model = policy.model
    try:
        key = model._meta.pk.to_python(str(pk).strip())
        model._meta.pk.get_db_prep_value(key, connections[using])
    except Exception as exc:
        raise ManualError(BAD_PK % {"pk": str(pk), "model": label}, "pk") from exc
    state = (
        model._base_manager.using(using).filter(pk=key).order_by().values(*watched(policy)).first()
    )
    if state is None:
        raise ManualError(NO_ROW % {"model": label, "pk": str(pk).strip()}, "pk")
    tags, keys = resolve(policy, state, None, None)
    more_tags, more_keys = related_invalidations(policy, [state], using)
    return list(dict.fromkeys((*tags, *more_tags))), list(dict.fromkeys((*keys, *more_keys)))


# -- plans and their execution ----------------------------------------------------------------
@dataclass
class Plan:
    """Everything one submission asks for, checked. ``tags``/``keys`` include the row's."""

    tags: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    model: str = ""
    pk: str = ""
    pattern: KeyPattern | None = None
    preview: Preview | None = None

    @property
    def pattern_text(self) -> str:
        return self.pattern.pattern if self.pattern else ""

    def look(self) -> Preview | None:
        """Count the pattern's matches now (raises if Redis fails)."""
        if self.pattern is not None:
            self.preview = self.pattern.preview()
        return self.preview


def plan(
    tags: Iterable[str] = (),
    keys: Iterable[str] = (),
    model: str = "",
    pk: Any = None,
    pattern: str = "",
    *,
    using: str = DEFAULT_DB_ALIAS,
) -> Plan:
    """Check and resolve a submission; raises :class:`ManualError` (first problem found)."""
    tag_list, key_list = lines(tags), lines(keys)
    for name, values in (
        ("tags", tag_list),
        ("keys", key_list),
        ("model", [model]),
        ("pk", [str(pk or "")]),
        ("pattern", [pattern]),
    ):
        if any("\x00" in value for value in values):
            raise ManualError(NUL % {"field": name}, name)
    pk_text = "" if pk is None else str(pk).strip()
    if model:
        row_tags, row_keys = resolve_row(model, pk_text, using)
        tag_list = list(dict.fromkeys((*tag_list, *row_tags)))
        key_list = list(dict.fromkeys((*key_list, *row_keys)))
    elif pk_text:
        raise ManualError(NEED_MODEL % {"pk": pk_text}, "model")
    try:
        bound = bind(pattern) if pattern else None
    except PatternError as exc:
        raise ManualError(str(exc), "pattern") from exc
    for key in key_list:
        if key.startswith(INTERNAL_PREFIX):
            raise ManualError(INTERNAL_KEY % {"key": key, "prefix": INTERNAL_PREFIX}, "keys")
    if not (tag_list or key_list or bound):
        raise ManualError(NOTHING)
    return Plan(tag_list, key_list, model, pk_text, bound)


@dataclass
class Outcome:
    status: str
    result: str
    deleted: int | None = None
    event_id: str = ""
    error: str = ""
    transport: str = ""
    pattern_deleted: int | None = None

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "refused")


def execute(plan: Plan, *, sync: bool = False, source: str = "", username: str = "") -> Outcome:
    """Carry out ``plan``: tags and keys first, then the pattern. Never raises for a cache or
    broker failure: the outcome says ``failed`` and what was done before it."""
    from .models import ManualInvalidation  # noqa: PLC0415 - models need the app registry

    Status = ManualInvalidation.Status
    done: list[str] = []
    outcome = Outcome(Status.APPLIED, "")
    metadata = {"source": source, "user": username}
    if plan.tags or plan.keys:
        outcome = _apply_now(plan, metadata) if sync else _publish(plan, metadata)
        done.append(outcome.result)
        if not outcome.ok:
            if plan.pattern is not None:
                done.append(f"pattern {plan.pattern.pattern!r} not deleted.")
            outcome.result = " ".join(done)
            return outcome
    if plan.pattern is not None:
        preview = plan.preview or plan.look()
        assert preview is not None
        refusal = plan.pattern.refusal(preview)
        if refusal:  # it grew since the preview
            outcome.status, outcome.error = Status.FAILED, refusal
            done.append(f"Pattern not deleted: {refusal}")
        else:
            try:
                count = plan.pattern.delete(preview.keys)
            except Exception as exc:
                outcome.status, outcome.error = Status.FAILED, f"{type(exc).__name__}: {exc}"
                done.append(
                    f"Deleting keys matching {plan.pattern.pattern!r} failed: {outcome.error}"
                )
            else:
                outcome.pattern_deleted = count
                outcome.deleted = (outcome.deleted or 0) + count
                done.append(f"Deleted {count} key(s) matching {plan.pattern.pattern!r}.")
    outcome.result = " ".join(done)
    return outcome


def _event(plan: Plan, metadata: dict[str, Any]) -> Any:
    return InvalidationEvent(
        type="manual", tags=tuple(plan.tags), keys=tuple(plan.keys), metadata=metadata
    )


def _apply_now(plan: Plan, metadata: dict[str, Any]) -> Outcome:
    from .models import ManualInvalidation  # noqa: PLC0415 - models need the app registry

    Status = ManualInvalidation.Status
    event = _event(plan, metadata)
    what = f"{len(plan.tags)} tag(s) and {len(plan.keys)} key(s)"
    try:
        deleted = tagged_cache.invalidate_many(plan.tags, plan.keys)
    except PartialInvalidation as exc:
        # What is left: draining members of tags already invalid for stores, and the tags and
        # keys of the calls that did not run.

        row = deadletter.record_apply_failure([event], exc)
        error = f"{type(exc.__cause__ or exc).__name__}: {exc.__cause__ or exc}"
        letter = f" (dead letter #{row.pk})" if row is not None else ""
        return Outcome(
            Status.FAILED,
            f"Invalidating {what} now failed part way{letter}: {error}",
            exc.deleted,
            event.id,
            error,
            "now",
        )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return Outcome(
            Status.FAILED, f"Invalidating {what} now failed: {error}", None, event.id, error, "now"
        )
    return Outcome(
        Status.APPLIED,
        f"Invalidated {what} now: {deleted} entries deleted.",
        deleted,
        event.id,
        "",
        "now",
    )


def _publish(plan: Plan, metadata: dict[str, Any]) -> Outcome:
    """Publish through the transport; a ``sync`` (or outbox-on-commit) delivery happens inside
    the call, and its signals tell whether it was applied or dead-lettered."""
    from .models import ManualInvalidation  # noqa: PLC0415 - models need the app registry

    Status = ManualInvalidation.Status
    transport = str(get_config()["TRANSPORT"])
    heard: list[tuple[str, set[str], Any]] = []

    def on_applied(events: Sequence[Any], deleted: int = 0, **kwargs: Any) -> None:
        heard.append(("applied", {e.id for e in events}, deleted))

    def on_failed(
        events: Sequence[Any], error: Any = None, will_retry: bool = False, **kwargs: Any
    ) -> None:
        heard.append(("retrying" if will_retry else "failed", {e.id for e in events}, error))

    what = f"{len(plan.tags)} tag(s) and {len(plan.keys)} key(s)"
    uid = f"ci-manual-{id(heard)}"
    signals.invalidation_applied.connect(on_applied, dispatch_uid=uid + "a", weak=False)
    signals.invalidation_failed.connect(on_failed, dispatch_uid=uid + "f", weak=False)
    try:
        event = invalidate(tags=plan.tags, keys=plan.keys, metadata=metadata)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return Outcome(
            Status.FAILED,
            f"Publishing {what} through {transport!r} failed: {error}",
            None,
            "",
            error,
            transport,
        )
    finally:
        signals.invalidation_applied.disconnect(dispatch_uid=uid + "a")
        signals.invalidation_failed.disconnect(dispatch_uid=uid + "f")
    retrying = ""
    for kind, ids, detail in heard:
        if event.id not in ids:
            continue
        error = f"{type(detail).__name__}: {detail}" if detail is not None else kind
        if kind == "failed":
            return Outcome(
                Status.FAILED,
                f"Invalidating {what} through {transport!r} failed and was dead-lettered: {error}",
                None,
                event.id,
                error,
                transport,
            )
        if kind == "retrying":
            retrying = error
            continue
        return Outcome(
            Status.APPLIED,
            f"Invalidated {what} through {transport!r}: {detail} entries deleted.",
            int(detail or 0),
            event.id,
            "",
            transport,
        )
    if retrying:  # e.g. the outbox kept it for the relay: handed over, not applied yet
        return Outcome(
            Status.PUBLISHED,
            f"Published {what} through {transport!r} (event "
            f"{event.id}); the first delivery failed and will be retried: "
            f"{retrying}",
            None,
            event.id,
            retrying,
            transport,
        )
    pending = connections[DEFAULT_DB_ALIAS].in_atomic_block
    when = " when the transaction commits" if pending else ""
    return Outcome(
        Status.PUBLISHED,
        f"Published {what} through {transport!r}{when} (event {event.id}).",
        None,
        event.id,
        "",
        transport,
    )


def _visible(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, (list, tuple)):
        return [_visible(item) for item in value]
    return value


def audit(
    plan: Plan | None,
    outcome: Outcome | None,
    *,
    source: str,
    user: Any = None,
    username: str = "",
    dry_run: bool = False,
    status: str | None = None,
    error: str = "",
    raw: dict[str, Any] | None = None,
) -> Any:
    """Write the audit row of one submission. ``raw`` (tags, keys, model, pk, pattern as typed)
    is recorded when there is no plan (a refused submission)."""
    from .models import ManualInvalidation  # noqa: PLC0415 - models need the app registry

    # Refused input is recorded as typed, except that a NUL (which PostgreSQL text and jsonb
    # refuse) is written as the four characters \x00: the audit row of a refusal must not fail.
    raw = {name: _visible(value) for name, value in (raw or {}).items()}
    error = str(_visible(error))
    user_obj = user if getattr(user, "is_authenticated", False) else None
    username = user_obj.get_username() if user_obj is not None else username
    preview = plan.preview if plan is not None else None
    return ManualInvalidation.objects.create(
        user=user_obj,
        username=username[:150],
        source=source,
        tags=plan.tags if plan else lines(raw.get("tags")),
        keys=plan.keys if plan else lines(raw.get("keys")),
        model_label=(plan.model if plan else str(raw.get("model") or ""))[:100],
        object_pk=(plan.pk if plan else str(raw.get("pk") or ""))[:255],
        pattern=(plan.pattern_text if plan else str(raw.get("pattern") or ""))[:255],
        dry_run=dry_run,
        status=status or (outcome.status if outcome else ManualInvalidation.Status.PREVIEWED),
        result=outcome.result if outcome else "",
        matched_count=preview.matched if preview is not None else None,
        deleted_count=outcome.deleted if outcome else None,
        event_id=outcome.event_id if outcome else "",
        error=error or (outcome.error if outcome else ""),
    )
