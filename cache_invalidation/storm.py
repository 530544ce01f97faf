"""Storm control: a cascade must not turn into millions of deletes.

Every entry stored through ``tagged_cache`` also carries the *coarse tag* (``"<label>:#"``)
of each declared model whose templates could have produced one of its tags (and of the model
named by an automatic tag). Invalidating a model's coarse tag therefore drops every entry that
any change of that model could reach, in one tag.

When applying a batch, a model's event is *escalated* to the coarse tags of the models it
concerns (its keys are still deleted one by one) when

- it derives more than ``MAX_TAGS_PER_EVENT`` tags (a bulk update of 100,000 rows), or
- its model published more than ``MODEL_RATE_LIMIT`` events within ``RATE_LIMIT_WINDOW``
  seconds across all processes (a runaway loop or cascade). The shared count is kept in the
  invalidation cache and comes back with each invalidation (no round trip of its own), so a
  process escalates from its first batch after it learned the model is over; a batch that is
  over the limit on its own is escalated at once.

Each escalation logs a WARNING and counts in the ``escalated`` counter. Escalating
over-invalidates (more entries recomputed), never under-invalidates: a tag of the event that
none of the chosen coarse tags covers (a tag no declared template could produce, a template
rendered with a NULL foreign key such as ``author:None:books``) stays in the escalated event and
is applied precisely. A manual event (:func:`~cache_invalidation.invalidate`, the admin page,
``manage.py invalidate_cache``) is never escalated: an operator named those tags, and the
backend applies a batch of any size in bounded script calls anyway.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from django.apps import apps
from django.core.signals import setting_changed
from django.dispatch import receiver

from . import coarse, metrics
from .bookkeeping import Bookkeeping
from .coarse import cascade_labels, coarse_tags_for, uncovered
from .conf import CONFIG_SETTINGS, get_config
from .events import InvalidationEvent
from .logfields import log_extra
from .tagnames import coarse_tag

logger = logging.getLogger("cache_invalidation")

#: The ``type`` of an event made by :func:`~cache_invalidation.invalidate` (and the admin).
MANUAL = "manual"


def reset() -> None:
    coarse.forget_patterns()
    forget_rates()


def forget_rates() -> None:
    """Forget which models were seen over their rate limit (the limits may have changed)."""
    _over.clear()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in CONFIG_SETTINGS:
        forget_rates()


def control(events: list[InvalidationEvent], bookkeeping: Bookkeeping) -> list[InvalidationEvent]:
    """Escalate the events that exceed the tag cap or their model's rate limit.

    The batch's events are added to their models' counters by ``bookkeeping`` (on Redis, in
    the invalidation's own script call); call :func:`learn` with it once written.
    """

    config = get_config()
    cap = int(config["MAX_TAGS_PER_EVENT"])
    over_rate = _over_rate(
        events,
        int(config["MODEL_RATE_LIMIT"]),
        int(config["RATE_LIMIT_WINDOW"]),
        bookkeeping,
    )
    result = []
    for event in events:
        reason = None
        if event.type == MANUAL:
            pass  # named by an operator: applied as it is (in bounded calls by the backend)
        elif len(event.tags) > cap:
            reason = f"{len(event.tags)} tags exceed MAX_TAGS_PER_EVENT ({cap})"
        elif event.entity_type and event.entity_type in over_rate:
            reason = f"{event.entity_type} is over MODEL_RATE_LIMIT"
        result.append(_escalate(event, reason) if reason else event)
    return result


def _escalate(event: InvalidationEvent, reason: str) -> InvalidationEvent:
    coarse = _coarse_for_event(event)
    # Only tags a coarse tag covers may be dropped: an entry carries the coarse tag of a model
    # exactly when one of its tags matches that model's pattern (see coarse_tags_for).
    precise = uncovered(event.tags, coarse)
    logger.warning(
        "cache_invalidation: escalated event %s (%s) to %s%s: %s",
        event.id,
        event.type,
        coarse,
        f" and {len(precise)} tag(s) no coarse tag covers" if precise else "",
        reason,
        extra=log_extra([event], stage="escalate"),
    )
    metrics.incr("escalated", model=metrics.label(event))
    return replace(
        event,
        tags=tuple(dict.fromkeys([*coarse, *precise])),
        metadata={**event.metadata, "escalated": reason},
    )


def _coarse_for_event(event: InvalidationEvent) -> list[str]:
    labels: dict[str, None] = {}
    if event.entity_type:
        try:
            model: Any = apps.get_model(event.entity_type)
        except (LookupError, ValueError):
            model = None
        if model is not None:
            labels.update(dict.fromkeys(cascade_labels(model)))
    tags = [coarse_tag(label) for label in labels]
    if not tags or not event.entity_type:
        # No model named (a foreign message): find the models its tags belong to (sampled: the
        # cap is large; tags of models not found stay precise).
        tags = list(dict.fromkeys([*tags, *coarse_tags_for(event.tags[:1000])]))
    return tags


#: Models this process saw over their limit: label -> the window (slot) it was over in.
_over: dict[str, int] = {}
RATE_PREFIX = "ci:rate:"


def _over_rate(
    events: list[InvalidationEvent], limit: int, window: int, bookkeeping: Bookkeeping
) -> set[str]:
    """Models over ``limit`` events in the current window (0: no limit).

    A model is over when this batch alone exceeds the limit, or when an earlier batch of this
    process learned (:func:`learn`) that the shared count across all processes did. So the
    event that crosses the limit is still applied precisely, and the next ones escalate: the
    count needs no round trip of its own.
    """
    if limit <= 0:
        return set()
    counts: Counter[str] = Counter()
    declared = metrics.declared_labels()
    for event in events:
        # Only declared models have a count (an event's entity_type and metadata come from a
        # message: no unbounded set of counters, no poisoned batch from a bad "rows").
        if event.entity_type in declared:
            counts[event.entity_type] += _rows(event)
    if not counts:
        return set()
    slot = int(time.time() // window)
    bookkeeping.rates.extend(
        (f"{RATE_PREFIX}{label}:{slot}", n, window * 2) for label, n in counts.items()
    )
    return {label for label, n in counts.items() if n > limit or _over.get(label) == slot}


def _rows(event: InvalidationEvent) -> int:
    """The rows a bulk event stands for (``metadata["rows"]``), 1 when absent or not a count."""
    rows = event.metadata.get("rows", 1)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        return 1
    return rows


def learn(bookkeeping: Bookkeeping) -> None:
    """Remember the models whose shared count ``bookkeeping`` found over the limit."""

    limit = int(get_config()["MODEL_RATE_LIMIT"])
    if limit <= 0:
        return
    for (name, _, _), total in zip(bookkeeping.rates, bookkeeping.totals, strict=False):
        if total is not None and total > limit and name.startswith(RATE_PREFIX):
            label, _, slot = name[len(RATE_PREFIX) :].rpartition(":")
            _over[label] = int(slot)
