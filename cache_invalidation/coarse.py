"""Which coarse tags an entry carries: one per declared model whose tags it holds.

Every entry stored through ``tagged_cache`` also carries the coarse tag ``"<label>:#"`` of each
model that one of its tags may belong to: a declared template of the model (``tags`` and
``on_fields``) or one of its automatic tags matches. Storm control (:mod:`.storm`) invalidates
a model's coarse tag instead of a flood of precise ones, and a write whose foreign-key value is
unknown does too. The patterns are built once from the registry (:func:`forget_patterns` when
it changes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from django.db import models

from .registry import registry
from .tagnames import auto_labels, coarse_tag, is_coarse


@lru_cache(maxsize=1)
def _patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    found: dict[str, list[str]] = {}
    for model, policy in registry.policies.items():
        label = (model._meta.concrete_model or model)._meta.label
        parts = found.setdefault(label, [re.escape(label) + r":.*"])
        templates = [*policy.tags, *(t for _, ts in policy.on_fields for t in ts)]
        for template in templates:
            pattern = "".join(
                re.escape(literal) + ("" if name is None else _value_pattern(model, name))
                for literal, name in template.parts
            )
            parts.append(pattern)
    return tuple(
        (label, re.compile("|".join(f"(?:{p})" for p in dict.fromkeys(parts)), re.DOTALL))
        for label, parts in found.items()
    )


def _value_pattern(model: Any, name: str) -> str:
    """What a rendered field value can look like: digits for integer keys, else anything."""
    meta = model._meta
    field = (
        meta.pk
        if name == "pk"
        else next((f for f in meta.concrete_fields if f.attname == name), None)
    )
    while field is not None and field.is_relation:
        field = field.target_field
    if isinstance(field, (models.IntegerField, models.AutoField)):
        return r"-?\d+"
    return ".*"


def forget_patterns() -> None:
    """Build the patterns again on next use (the registry's policies changed)."""
    _patterns.cache_clear()


def coarse_tags_for(tags: Iterable[str]) -> list[str]:
    """The coarse tags an entry with ``tags`` must also carry."""
    labels: dict[str, None] = {}
    tag_list = [t for t in tags if not is_coarse(t)]
    for label, pattern in _patterns():
        if any(pattern.fullmatch(tag) for tag in tag_list):
            labels[label] = None
    return [coarse_tag(label) for label in labels]


def uncovered(tags: Iterable[str], coarse: Iterable[str]) -> list[str]:
    """The ``tags`` that no tag of ``coarse`` reaches: their entries need them invalidated."""
    chosen = set(coarse)
    covering = [pattern for label, pattern in _patterns() if coarse_tag(label) in chosen]
    return [
        tag
        for tag in tags
        if tag not in chosen
        # An entry never gets a coarse tag for a tag that looks like one (see coarse_tags_for).
        and (is_coarse(tag) or not any(p.fullmatch(tag) for p in covering))
    ]


def cascade_labels(model: type[models.Model]) -> list[str]:
    """The labels a change of ``model``'s rows reaches: the model's own and its concrete
    parents' (a child's rows are its parents' rows too), then those of the models its
    ``related`` declarations cascade to, transitively (cycles are refused at startup)."""
    labels: dict[str, None] = {}
    pending: list[type[models.Model]] = [model]
    while pending:
        current = pending.pop()
        own = auto_labels(current)
        if own[0] in labels:
            continue
        labels.update(dict.fromkeys(own))
        policy = registry.get(current)
        if policy is not None:
            pending.extend(r.target for r in policy.related)
    return list(labels)
