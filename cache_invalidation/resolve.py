"""Which tags and keys a change invalidates. Pure: a policy and two states in, strings out.

A *state* maps attribute names (``category_id``) to the values a row had. The old state is the
row as it was loaded (None for a new row), the new state the row as written (None once deleted).
Templates are rendered against both, so moving a product from category 3 to 4 yields the tags of
both categories.

Besides the declared tags, every change yields the *automatic* tags that
:mod:`cache_invalidation.capture` puts on values computed while capturing: ``"<label>:<pk>"``
for the row (``"shop.Product:7"``) and ``"<label>:*"``, the collection tag of every queryset
that read the model. Labels are those of the concrete model and its concrete parents, so a
proxy or a multi-table child shares its parent's tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import models

from .registry import Policy


def auto_labels(model: type[models.Model]) -> tuple[str, ...]:
    """The labels automatic tags use for rows of ``model``: concrete model, then parents."""
    concrete = model._meta.concrete_model or model
    return (concrete._meta.label, *(p._meta.label for p in concrete._meta.get_parent_list()))


def instance_tag(label: str, pk: Any) -> str:
    return f"{label}:{pk}"


def collection_tag(label: str) -> str:
    return f"{label}:*"


def automatic_tags(model: type[models.Model], pks: Iterable[Any]) -> list[str]:
    """Instance tags of ``pks`` and the collection tag, for every label of ``model``."""
    tags: list[str] = []
    for label in auto_labels(model):
        tags.extend(instance_tag(label, pk) for pk in pks if pk is not None)
        tags.append(collection_tag(label))
    return tags


def _values(policy: Policy, state: Mapping[str, Any]) -> dict[str, Any]:
    values = dict(state)
    pk_attname = policy.model._meta.pk.attname
    if pk_attname in values:
        values["pk"] = values[pk_attname]
    return values


def resolve(
    policy: Policy,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    changed: Iterable[str] | None,
    *,
    automatic: bool = True,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tags, keys) for a change from ``old`` to ``new``.

    ``changed`` holds the field names that changed, or None when every rule applies (a row
    created or deleted). ``tags`` always apply; ``on_fields`` rules only when their field is in
    ``changed``. Each string appears once.
    """
    states = [_values(policy, s) for s in (old, new) if s is not None]
    tags: dict[str, None] = {}
    keys: dict[str, None] = {}
    for template in policy.templates_for(changed):
        for values in states:
            tags[template.render(values)] = None
    for template in policy.keys:
        for values in states:
            keys[template.render(values)] = None
    # Captured querysets of this model may include, exclude or order this row differently now:
    # any write reaches their collection tag; entries that loaded the row by key carry its own.
    if automatic:
        pks = dict.fromkeys(values.get("pk") for values in states)
        tags.update(dict.fromkeys(automatic_tags(policy.model, pks)))
    return tuple(tags), tuple(keys)


def changed_fields(
    policy: Policy, old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[str, ...]:
    """Names of the watched fields whose values differ between the two states."""
    return tuple(
        policy.names.get(attname, attname)
        for attname in policy.tracked
        if old.get(attname, _UNSET) != new.get(attname, _UNSET)
    )


_UNSET = object()
