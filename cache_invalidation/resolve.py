"""Which tags and keys a change invalidates. Pure: a policy and two states in, strings out.

A *state* maps attribute names (``category_id``) to the values a row had. The old state is the
row as it was loaded (None for a new row), the new state the row as written (None once deleted).
Templates are rendered against both, so moving a product from category 3 to 4 yields the tags of
both categories.

Besides the declared tags, every change yields the *automatic* tags that
:mod:`cache_invalidation.capture` puts on values computed while capturing: ``"<label>:<pk>"``
for the row (``"shop.Product:7"``), ``"<label>:*"``, the collection tag of every queryset
that read the model, and, for each concrete foreign key of the model, the *foreign-key tag*
``"<label>:<attname>=<value>"`` (``"shop.Review:product_id=5"``) of the old and the new value,
the tag of querysets filtered on that key. Labels are those of the concrete model and its
concrete parents, so a proxy or a multi-table child shares its parent's tags (a foreign key
is tagged under the label of the model whose table holds it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import suppress
from functools import cache
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from .registry import Policy
from .tagnames import (
    auto_labels,
    coarse_tag,
    collection_tag,
    foreign_key_tag,
    instance_tag,
)

__all__ = [  # the tag spellings are re-exported for the modules that resolve
    "auto_labels",
    "automatic_tags",
    "changed_fields",
    "collection_tag",
    "foreign_key_tag",
    "foreign_key_tags",
    "foreign_keys",
    "instance_tag",
    "key_text",
    "resolve",
    "unknown_foreign_key_tag",
]


@cache
def foreign_keys(model: type[models.Model]) -> tuple[tuple[str, models.Field], ...]:
    """(label, field) of every concrete foreign key (and one-to-one) the rows of ``model`` have,
    under the label of the model whose own table holds it (see :func:`auto_labels`)."""
    concrete = model._meta.concrete_model or model
    return tuple(
        (owner._meta.label, f)
        for owner in (concrete, *concrete._meta.get_parent_list())
        for f in owner._meta.local_concrete_fields
        if f.is_relation and (f.many_to_one or f.one_to_one)
    )


def key_text(field: models.Field, value: Any) -> str | None:
    """A foreign key's value as its tags spell it, the same for a stored value, a value from an
    instance and a filter's prepared value (``5``, ``"5"``; a UUID object or its text).

    None for None (a filter on None is ``IS NULL``, no equality) and for expressions.
    """
    if value is None or hasattr(value, "resolve_expression"):
        return None
    target: Any = field.target_field  # type: ignore[attr-defined]
    # A value the field refuses is one the database refuses too (or compares as given).
    with suppress(ValidationError, TypeError, ValueError):
        value = target.to_python(value)
    return None if value is None else str(value)


def foreign_key_tags(model: type[models.Model], state: Mapping[str, Any]) -> list[str]:
    """The foreign-key tags of one state of a row of ``model``.

    A foreign key whose value the state does not hold (or holds as an expression) cannot be
    named: the model's coarse tag (see :mod:`.storm`), which every entry carrying one of the
    model's automatic tags also carries, is invalidated instead.
    """
    tags: list[str] = []
    for label, f in foreign_keys(model):
        attname = f.attname
        value = state.get(attname)
        if value is None and attname in state:
            continue  # no row matches an equality on NULL
        text = key_text(f, value)
        if text is None:
            tags.append(unknown_foreign_key_tag(label))
        else:
            tags.append(foreign_key_tag(label, attname, text))
    return tags


def unknown_foreign_key_tag(label: str) -> str:
    """What to invalidate when a foreign key's value under ``label`` is not known."""
    return coarse_tag(label)


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
    # any write reaches their collection tag; entries that loaded the row by key carry its own;
    # querysets filtered on a foreign key value the row had or has carry that value's tag.
    if automatic:
        pks = dict.fromkeys(values.get("pk") for values in states)
        tags.update(dict.fromkeys(automatic_tags(policy.model, pks)))
        for values in states:
            tags.update(dict.fromkeys(foreign_key_tags(policy.model, values)))
    return tuple(tags), tuple(keys)


def changed_fields(
    policy: Policy, old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[str, ...]:
    """Names of the watched fields whose values differ between the two states (foreign keys
    remembered only for the automatic tags do not count)."""
    return tuple(
        policy.names.get(attname, attname)
        for attname in policy.tracked
        if attname not in policy.auto_tracked
        and old.get(attname, _UNSET) != new.get(attname, _UNSET)
    )


_UNSET = object()
