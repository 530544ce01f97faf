"""Per-model policies built from ``class Meta: cache_invalidation = {...}``.

:func:`build` reads every installed model once at startup and returns one frozen
:class:`Policy` per model that declares (or inherits) a declaration, plus the problems found in
broken declarations. Problems are reported by the system checks in :mod:`.checks`; a model whose
declaration is broken gets no policy, so a typo can never invalidate the wrong thing silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import models

from . import keytemplates
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


@dataclass
class Registry:
    policies: dict[type[models.Model], Policy] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def get(self, model: type[models.Model]) -> Policy | None:
        return self.policies.get(model)


registry = Registry()


def declaration_of(model: type[models.Model]) -> Any:
    return getattr(model._meta, OPTION, None)


def build(model_list: Iterable[type[models.Model]]) -> Registry:
    """Validate every declaration and build the policies (a new :class:`Registry`)."""
    result = Registry()
    own: dict[type[models.Model], tuple[Policy | None, bool]] = {}
    for model in model_list:
        declared = declaration_of(model)
        if declared is None:
            own[model] = (None, False)
            continue
        policy, problems = _policy_from_declaration(model, declared)
        result.problems.extend(problems)
        own[model] = (policy, bool(problems))
    for model, (policy, broken) in own.items():
        if broken:
            continue
        merged = [policy] if policy else []
        # Proxies and multi-table children write their parents' rows: apply those rules too.
        for ancestor in _ancestors(model):
            inherited, ancestor_broken = own.get(ancestor) or (None, False)
            if inherited is None and not ancestor_broken and ancestor not in own:
                declared = declaration_of(ancestor)
                if declared is not None:
                    inherited, found = _policy_from_declaration(ancestor, declared)
                    ancestor_broken = bool(found)
            if inherited is not None and not ancestor_broken:
                merged.append(inherited)
        if merged:
            result.policies[model] = _track_foreign_keys(_merge(model, merged))
    result.problems.extend(_relation_problems(result.policies))
    result.policies.update(implicit_policies(result.policies, own))
    return result


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
        base = _merge(model, declared) if declared else _empty(model)
        found[model] = _track_foreign_keys(replace(base, model=model, implicit=True))
    every = {**policies, **found}
    for model in list(every):
        for f in model._meta.local_many_to_many:
            _through_policy(f, every, found)
        for rel in model._meta.related_objects:
            if rel.many_to_many and isinstance(rel.field, models.ManyToManyField):
                _through_policy(rel.field, every, found)
    return found


def _empty(model: type[models.Model]) -> Policy:
    return Policy(model=model, tags=(), keys=(), on_fields=(), tracked=())


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
        found[through] = _track_foreign_keys(
            replace(_empty(through), related=relations, implicit=True)
        )


def _relation_problems(policies: dict[type[models.Model], Policy]) -> list[Problem]:
    """Targets without a declaration, and cycles (which could cascade forever)."""
    problems: list[Problem] = []
    declared = {m._meta.concrete_model for m in policies}
    for model, policy in policies.items():
        for relation in policy.related:
            if relation.target._meta.concrete_model not in declared:
                problems.append(
                    Problem(
                        "cache_invalidation.E007",
                        model,
                        f"{model.__name__}.Meta.{OPTION}: related names {relation.name!r}, which "
                        f"points at {relation.target._meta.label}, a model with no "
                        f"{OPTION} declaration.",
                        f"Declare {OPTION} on {relation.target._meta.label}, or drop "
                        f"{relation.name!r} from related.",
                    )
                )
    reported: set[frozenset[str]] = set()

    def visit(model: type[models.Model], path: list[type[models.Model]]) -> None:
        policy = policies.get(model)
        if policy is None:
            return
        for relation in policy.related:
            target = relation.target
            if target in path:
                cycle = [*path[path.index(target) :], target]
                names = frozenset(m._meta.label for m in cycle)
                if names not in reported:
                    reported.add(names)
                    chain = " -> ".join(m._meta.label for m in cycle)
                    problems.append(
                        Problem(
                            "cache_invalidation.E008",
                            cycle[0],
                            f"{cycle[0].__name__}.Meta.{OPTION}: related relations form a cycle: "
                            f"{chain}.",
                            "Keep 'related' pointing one way (for example from the child to its "
                            "parent) and tag the other direction explicitly.",
                        )
                    )
                continue
            visit(target, [*path, target])

    for model in policies:
        visit(model, [model])
    return problems


def _ancestors(model: type[models.Model]) -> list[type[models.Model]]:
    seen: list[type[models.Model]] = []
    meta = model._meta
    candidates = list(meta.get_parent_list())
    if meta.proxy and meta.concrete_model is not None:
        candidates.append(meta.concrete_model)
        candidates.extend(meta.concrete_model._meta.get_parent_list())
    if meta.proxy_for_model is not None:
        candidates.append(meta.proxy_for_model)
    for candidate in candidates:
        if candidate is not model and candidate not in seen:
            seen.append(candidate)
    return seen


def _merge(model: type[models.Model], policies: list[Policy]) -> Policy:
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


def _track_foreign_keys(policy: Policy) -> Policy:
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


def _policy_from_declaration(
    model: type[models.Model], declared: Any
) -> tuple[Policy | None, list[Problem]]:
    label = f"{model.__name__}.Meta.{OPTION}"
    problems: list[Problem] = []

    def problem(id_: str, msg: str, hint: str | None = None) -> None:
        problems.append(Problem(id_, model, f"{label}: {msg}", hint))

    if not isinstance(declared, Mapping):
        problem(
            "cache_invalidation.E001",
            f"must be a dict, not {type(declared).__name__}.",
            f'Write for example {{"tags": ["{model._meta.model_name}:{{pk}}"]}}.',
        )
        return None, problems
    for name in declared:
        if name not in OPTIONS:
            close = difflib.get_close_matches(_text(name), OPTIONS, n=1)
            problem(
                "cache_invalidation.E002",
                f"unknown option {_show(name)}.",
                (f"Did you mean {close[0]!r}? " if close else "")
                + "Valid options are: "
                + ", ".join(OPTIONS)
                + ".",
            )
    resolver = _FieldResolver(model)
    # The key is always remembered: automatic tags name the row by it.
    tracked: dict[str, None] = {resolver.pk_attname: None}

    def templates(option: str, value: Any) -> tuple[KeyTemplate, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            problem(
                "cache_invalidation.E003",
                f"option {option!r} must be a list of strings, not {type(value).__name__}.",
                f'Write for example "{option}": ["{model._meta.model_name}:{{pk}}"].',
            )
            return ()
        parsed = []
        for source in value:
            if not isinstance(source, str):
                problem(
                    "cache_invalidation.E003",
                    f"option {option!r} must contain only strings, found "
                    f"{type(source).__name__} {_show(source)}.",
                )
                continue
            try:
                template = keytemplates.parse(source)
            except keytemplates.TemplateError as exc:
                problem("cache_invalidation.E005", f"{_kind(option)} {exc}.")
                continue
            ok = True
            for name in template.fields:
                error = resolver.template_field_error(name)
                if error:
                    problem(
                        "cache_invalidation.E004",
                        f"{_kind(option)} {source!r} {error[0]}",
                        error[1],
                    )
                    ok = False
                else:
                    tracked[resolver.attname(name)] = None
            if ok:
                parsed.append(template)
        return tuple(parsed)

    tags = templates("tags", declared.get("tags", ()))
    keys = templates("keys", declared.get("keys", ()))
    on_fields: list[tuple[str, tuple[KeyTemplate, ...]]] = []
    raw_on_fields = declared.get("on_fields", {})
    if not isinstance(raw_on_fields, Mapping):
        problem(
            "cache_invalidation.E003",
            f"option 'on_fields' must be a dict of field name -> list of tag templates, not "
            f"{type(raw_on_fields).__name__}.",
            'Write for example "on_fields": {"price": ["pricing:{pk}"]}.',
        )
        raw_on_fields = {}
    for field_name, value in raw_on_fields.items():
        resolved = resolver.change_field(field_name)
        if resolved is None:
            problem(
                "cache_invalidation.E006",
                f"on_fields names {_show(field_name)}, which is no field of {model._meta.label}.",
                resolver.suggest(field_name),
            )
            continue
        name, attname = resolved
        if attname is not None:
            tracked[attname] = None
        on_fields.append((name, templates(f"on_fields[{field_name!r}]", value)))
    related: list[Relation] = []
    raw_related = declared.get("related", ())
    if isinstance(raw_related, str) or not isinstance(raw_related, (list, tuple)):
        problem(
            "cache_invalidation.E003",
            f"option 'related' must be a list of relation names, not {type(raw_related).__name__}.",
            'Write for example "related": ["product"].',
        )
        raw_related = ()
    for name in raw_related:
        relation = resolver.relation(name)
        if isinstance(relation, str):
            problem(
                "cache_invalidation.E007",
                f"related names {_show(name)}, {relation}",
                resolver.suggest_relation(name),
            )
            continue
        related.append(relation)
        if relation.forward:
            tracked[relation.attname] = None
    if problems:
        return None, problems
    return (
        Policy(
            model=model,
            tags=tags,
            keys=keys,
            on_fields=tuple(on_fields),
            related=tuple(related),
            tracked=tuple(tracked),
            names={att: resolver.name_of(att) for att in tracked},
        ),
        problems,
    )


def _show(value: Any) -> str:
    """repr() for a message; never fails (Python refuses str() of huge integers)."""
    try:
        return repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _show(value)


def _kind(option: str) -> str:
    if option == "tags":
        return "tag template"
    if option == "keys":
        return "key template"
    return f"{option} template"


class _FieldResolver:
    """Maps names used in declarations onto the model's fields."""

    def __init__(self, model: type[models.Model]) -> None:
        meta = model._meta
        self.model = model
        self.pk_attname = meta.pk.attname if meta.pk is not None else "id"
        self.by_attname: dict[str, models.Field] = {}
        self.relations: dict[str, models.Field] = {}
        for f in meta.concrete_fields:
            self.by_attname[f.attname] = f
            if f.name != f.attname:
                self.relations[f.name] = f
        self.m2m: set[str] = {f.name for f in meta.many_to_many}
        self.m2m.update(
            rel.get_accessor_name() or "" for rel in meta.related_objects if rel.many_to_many
        )

    def attname(self, name: str) -> str:
        return self.pk_attname if name == "pk" else name

    def name_of(self, attname: str) -> str:
        f = self.by_attname.get(attname)
        return f.name if f is not None else attname

    def template_field_error(self, name: str) -> tuple[str, str] | None:
        if name == "pk" or name in self.by_attname:
            return None
        if name in self.relations:
            attname = self.relations[name].attname
            return (
                f"names the relation {name!r}; templates take stored values only.",
                f"Use '{{{attname}}}' (the stored key) instead of '{{{name}}}'.",
            )
        if name in self.m2m:
            return (
                f"names the many-to-many relation {name!r}, which has no single value.",
                f"Use on_fields {{{name!r}: [...]}} to react to changes of the relation.",
            )
        return (
            f"names no field of {self.model._meta.label}.",
            self.suggest(name),
        )

    def change_field(self, name: Any) -> tuple[str, str | None] | None:
        if not isinstance(name, str):
            return None
        if name in self.by_attname:
            return self.name_of(name), name
        if name in self.relations:
            return name, self.relations[name].attname
        if name in self.m2m:
            return name, None
        return None

    def relation(self, name: Any) -> Relation | str:
        """The relation called ``name``, or why it cannot be one."""
        if not isinstance(name, str):
            return f"which is not a string but {type(name).__name__}."
        meta = self.model._meta
        try:
            found = meta.get_field(name)
        except Exception:
            found = None
        if found is None:
            for rel in meta.related_objects:
                if rel.get_accessor_name() == name:
                    found = rel
                    break
        if found is None:
            return f"which is no relation of {meta.label}."
        if found.many_to_many:
            return (
                "a many-to-many relation; its changes arrive as m2m_changed events on both "
                "sides already."
            )
        if not found.is_relation or found.related_model is None:
            return f"which is a plain field of {meta.label}, not a relation."
        if found.concrete:  # ForeignKey / OneToOneField held by this model
            return Relation(name, found.related_model, found.attname, forward=True)
        if not isinstance(found, models.ForeignObjectRel):  # e.g. a GenericRelation
            return f"which is not a foreign key, one-to-one or reverse relation of {meta.label}."
        # A reverse relation: the target holds the key.
        return Relation(name, found.related_model, found.field.attname, forward=False)

    def suggest_relation(self, name: Any) -> str:
        meta = self.model._meta
        choices = [
            f.name for f in meta.get_fields() if f.is_relation and not f.many_to_many and f.concrete
        ]
        choices += [r.get_accessor_name() or "" for r in meta.related_objects if not r.many_to_many]
        close = difflib.get_close_matches(_text(name), choices, n=1)
        prefix = f"Did you mean {close[0]!r}? " if close else ""
        return prefix + "Relations: " + (", ".join(sorted(choices)) or "none") + "."

    def suggest(self, name: Any) -> str:
        choices = ["pk", *self.by_attname, *self.m2m]
        close = difflib.get_close_matches(_text(name), choices, n=1)
        prefix = f"Did you mean {close[0]!r}? " if close else ""
        return prefix + "Available: " + ", ".join(sorted(set(choices))) + "."
