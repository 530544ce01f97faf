"""Implicit policies: undeclared models whose writes change what declared models read.

Built by :func:`.registry.build` after the declared ones: the concrete model behind a declared
proxy and the concrete parents of a declared child (same rows), and the through model of every
many-to-many relation with a declared side (see :func:`implicit_policies`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from django.db import models

from .policies import Policy, Relation, empty, merge, track_foreign_keys


def implicit_policies(
    policies: Mapping[type[models.Model], Policy],
    own: Mapping[type[models.Model], tuple[Policy | None, bool]],
) -> dict[type[models.Model], Policy]:
    """Policies for undeclared models whose writes change what declared models read.

    * The concrete model behind a declared proxy, and the concrete parents of a declared
      multi-table child: the same table, so a write through them changes the declared rows.
      A concrete model takes the declarations of its declared proxies.
    * The through model (auto-created or explicit) of a many-to-many relation with a declared
      side: its rows are read by every query across the relation, and written by related
      managers, ``through.objects`` and the deletion of either side. Each declared side is a
      :class:`Relation` whose changed field is the relation, as for ``m2m_changed``.

    A broken declaration stays without a policy (its problems are reported instead).
    """
    found: dict[type[models.Model], Policy] = {}
    proxies: dict[type[models.Model], list[Policy]] = {}
    for model, policy in policies.items():
        concrete = model._meta.concrete_model or model
        if model._meta.proxy and not policy.implicit:
            proxies.setdefault(concrete, []).append(policy)
        for ancestor in (concrete, *concrete._meta.get_parent_list()):
            if ancestor not in policies and not (own.get(ancestor) or (None, False))[1]:
                proxies.setdefault(ancestor, [])
    for model, declared in proxies.items():
        if model in policies:
            continue
        base = merge(model, declared) if declared else empty(model)
        found[model] = track_foreign_keys(replace(base, model=model, implicit=True))
    every = {**policies, **found}
    for model in list(every):
        for f in model._meta.local_many_to_many:
            _through_policy(f, every, found)
        for rel in model._meta.related_objects:
            if rel.many_to_many and isinstance(rel.field, models.ManyToManyField):
                _through_policy(rel.field, every, found)
    return found


def _through_policy(
    field: models.ManyToManyField,
    every: Mapping[type[models.Model], Policy],
    found: dict[type[models.Model], Policy],
) -> None:
    through: Any = field.remote_field.through
    if not (isinstance(through, type) and issubclass(through, models.Model)):
        return
    if through in every or through in found:
        return
    sides: tuple[tuple[Any, str, str], ...] = (
        (field.model, field.m2m_field_name(), field.name),
        (
            field.remote_field.model,
            field.m2m_reverse_field_name(),
            field.remote_field.get_accessor_name() or field.related_query_name(),
        ),
    )
    relations = tuple(
        Relation(
            name=through._meta.get_field(fk_name).name,
            target=target,
            attname=getattr(through._meta.get_field(fk_name), "attname", fk_name + "_id"),
            forward=True,
            changed=(changed,),
        )
        for target, fk_name, changed in sides
        if isinstance(target, type) and target in every and not every[target].implicit
    )
    if relations:
        found[through] = track_foreign_keys(
            replace(empty(through), related=relations, implicit=True)
        )
