"""What to invalidate when a row of a model changes: the frozen policy types.

A :class:`Policy` is built once at startup per model, from its ``Meta`` declaration
(:mod:`.declarations`), its parents' and proxies' (merged with :func:`merge`), or implicitly
(:mod:`.implicit`); :mod:`.registry` holds them. Pure: no settings, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from django.db import models

from .keytemplates import KeyTemplate

OPTION = "cache_invalidation"
OPTIONS = ("tags", "keys", "on_fields", "related")


@dataclass(frozen=True)
class Problem:
    id: str
    model: type[models.Model]
    msg: str
    hint: str | None = None


@dataclass(frozen=True)
class Relation:
    """A ``related`` entry: changes of this model also invalidate ``target``'s rows.

    ``forward``: this model holds the key (``attname``, e.g. ``product_id``) of the target row.
    Otherwise the target holds this model's key in its column ``attname`` (a reverse relation,
    such as a product's reviews).
    """

    name: str
    target: type[models.Model]
    attname: str
    forward: bool
    #: Field names of the target that count as changed (a many-to-many through row names the
    #: relation on each side, so ``on_fields`` rules on it apply as for ``m2m_changed``).
    changed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """What to invalidate when a row of ``model`` changes.

    ``tracked`` holds the attribute names whose loaded values are kept on each instance, so the
    old state's tags are known without a query; ``names`` maps them to field names. It includes
    every concrete foreign key of the model (for the automatic tags of :mod:`.resolve`);
    ``auto_tracked`` lists those the declaration itself does not watch, which never count as
    changed fields.
    """

    model: type[models.Model]
    tags: tuple[KeyTemplate, ...]
    keys: tuple[KeyTemplate, ...]
    on_fields: tuple[tuple[str, tuple[KeyTemplate, ...]], ...]  # (field name, templates)
    tracked: tuple[str, ...]
    names: Mapping[str, str] = field(default_factory=dict)  # attname -> field name
    related: tuple[Relation, ...] = ()
    auto_tracked: tuple[str, ...] = ()
    #: True for a model that declares nothing but whose rows declared models read or share (see
    #: :func:`implicit_policies`): it has the automatic tags only.
    implicit: bool = False

    @property
    def label(self) -> str:
        return self.model._meta.label

    def templates_for(self, changed: Iterable[str] | None) -> tuple[KeyTemplate, ...]:
        """Tag templates that apply to a change of ``changed`` field names (None: everything)."""
        result = list(self.tags)
        wanted = None if changed is None else set(changed)
        for name, templates in self.on_fields:
            # A rule also fires when a field its templates read changed: the row then left one
            # group and joined another (a product moved to another category changes both
            # categories' pricing even if its price did not change).
            if wanted is None or name in wanted or not wanted.isdisjoint(self._read_by(templates)):
                result.extend(templates)
        return tuple(result)

    def _read_by(self, templates: tuple[KeyTemplate, ...]) -> set[str]:
        pk_attname = self.model._meta.pk.attname
        attnames = (pk_attname if f == "pk" else f for t in templates for f in t.fields)
        return {self.names.get(a, a) for a in attnames}


def empty(model: type[models.Model]) -> Policy:
    """A policy with no declared rule: the automatic tags only."""
    return Policy(model=model, tags=(), keys=(), on_fields=(), tracked=())


def merge(model: type[models.Model], policies: list[Policy]) -> Policy:
    def unique(items: Iterable[KeyTemplate]) -> tuple[KeyTemplate, ...]:
        out: dict[str, KeyTemplate] = {}
        for item in items:
            out.setdefault(item.source, item)
        return tuple(out.values())

    if len(policies) == 1 and policies[0].model is model:
        return policies[0]
    on_fields: dict[str, list[KeyTemplate]] = {}
    for policy in policies:
        for name, templates in policy.on_fields:
            on_fields.setdefault(name, []).extend(templates)
    names: dict[str, str] = {}
    for policy in policies:
        names.update(policy.names)
    return Policy(
        model=model,
        tags=unique(t for p in policies for t in p.tags),
        keys=unique(t for p in policies for t in p.keys),
        on_fields=tuple((name, unique(ts)) for name, ts in on_fields.items()),
        related=tuple(dict.fromkeys(r for p in policies for r in p.related)),
        tracked=tuple(dict.fromkeys(a for p in policies for a in p.tracked)),
        names=names,
    )


def track_foreign_keys(policy: Policy) -> Policy:
    """``policy`` also remembering every concrete foreign key of its model (own and inherited):
    the automatic foreign-key tags are rendered from the old and new states (see :mod:`.resolve`).
    """
    fields = [
        f
        for f in policy.model._meta.concrete_fields
        if f.is_relation and (f.many_to_one or f.one_to_one)
    ]
    extra = tuple(f.attname for f in fields if f.attname not in policy.tracked)
    if not extra:
        return policy
    return replace(
        policy,
        tracked=(*policy.tracked, *extra),
        names={**policy.names, **{f.attname: f.name for f in fields if f.attname in extra}},
        auto_tracked=extra,
    )
